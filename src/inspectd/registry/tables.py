"""The registry's schema (SQLAlchemy Core), the same on SQLite and PostgreSQL. Alembic migrations
(migrations/versions/) create and change it; tests check that the migrated database equals this metadata.

    categories          id, name (unique), level (its depth, 1 = top), description
    category_parents    category_id -> parent_id (several parents allowed; no cycles: checked on import)
    blobs               sha256 (key), size, data: every file stored once, by content
    models              id, name (unique), digest (unique: the model directory's content address), identity
                        (manifest identity = onnx sha256, as the daemon logs it), kind, manifest (JSON text), size,
                        training facts (good_count, defect_count, sample_count, final_loss), parent_id / parent
                        identity, created, registered_at, registered_by, note
    model_files         model_id, path (relative, '/'-separated) -> blob sha256, size
    model_categories    model_id, category_id
    evaluations         id, model_id, data, image_auroc, pixel_auroc, f1, result (JSON text), evaluated_at
    assignments         id, line, model_id, assigned_at, assigned_by, note: the newest row per line is what it runs

A registered model is never edited: its files, manifest and facts stay as added (evaluations and assignments are
rows of their own). Times are ISO-8601 UTC strings, so both backends sort and compare them alike.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING)

NAME_LEN = 200
SHA_LEN = 64
TIME_LEN = 40

categories = Table(
    "categories",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(NAME_LEN), nullable=False, unique=True),
    Column("level", Integer, nullable=False),
    Column("description", Text, nullable=False),
)

category_parents = Table(
    "category_parents",
    metadata,
    Column("category_id", Integer, ForeignKey("categories.id", ondelete="CASCADE"), primary_key=True),
    Column("parent_id", Integer, ForeignKey("categories.id", ondelete="CASCADE"), primary_key=True),
)

blobs = Table(
    "blobs",
    metadata,
    Column("sha256", String(SHA_LEN), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("data", LargeBinary, nullable=False),
)

models = Table(
    "models",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(NAME_LEN), nullable=False, unique=True),
    Column("digest", String(SHA_LEN), nullable=False, unique=True),
    Column("identity", String(SHA_LEN), nullable=False, index=True),
    Column("kind", String(32), nullable=False),
    Column("manifest", Text, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("good_count", Integer),
    Column("defect_count", Integer),
    Column("sample_count", Integer),
    Column("final_loss", Float),
    Column("parent_id", Integer, ForeignKey("models.id", ondelete="RESTRICT")),
    Column("parent_identity", String(SHA_LEN)),
    Column("created", String(TIME_LEN), nullable=False),
    Column("registered_at", String(TIME_LEN), nullable=False),
    Column("registered_by", String(NAME_LEN), nullable=False),
    Column("note", Text, nullable=False),
)

model_files = Table(
    "model_files",
    metadata,
    Column("model_id", Integer, ForeignKey("models.id", ondelete="CASCADE"), primary_key=True),
    Column("path", String(500), primary_key=True),
    Column("sha256", String(SHA_LEN), ForeignKey("blobs.sha256", ondelete="RESTRICT"), nullable=False, index=True),
    Column("size", BigInteger, nullable=False),
)

model_categories = Table(
    "model_categories",
    metadata,
    Column("model_id", Integer, ForeignKey("models.id", ondelete="CASCADE"), primary_key=True),
    Column("category_id", Integer, ForeignKey("categories.id", ondelete="RESTRICT"), primary_key=True),
)

evaluations = Table(
    "evaluations",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("model_id", Integer, ForeignKey("models.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("data", Text, nullable=False),
    Column("image_auroc", Float),
    Column("pixel_auroc", Float),
    Column("f1", Float),
    Column("result", Text, nullable=False),
    Column("evaluated_at", String(TIME_LEN), nullable=False),
)

assignments = Table(
    "assignments",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("line", String(NAME_LEN), nullable=False),
    Column("model_id", Integer, ForeignKey("models.id", ondelete="RESTRICT"), nullable=False),
    Column("assigned_at", String(TIME_LEN), nullable=False),
    Column("assigned_by", String(NAME_LEN), nullable=False),
    Column("note", Text, nullable=False),
)
Index("ix_assignments_line_id", assignments.c.line, assignments.c.id)
