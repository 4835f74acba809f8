"""The registry's first schema: categories, blobs, models and their files, categories, evaluations, assignments.

Revision ID: 0001
Revises:
Create Date: 2026-11-20
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "categories",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("level", sa.Integer, nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_categories"),
        sa.UniqueConstraint("name", name="uq_categories_name"),
    )
    op.create_table(
        "category_parents",
        sa.Column("category_id", sa.Integer, nullable=False),
        sa.Column("parent_id", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("category_id", "parent_id", name="pk_category_parents"),
        sa.ForeignKeyConstraint(
            ["category_id"], ["categories.id"], ondelete="CASCADE", name="fk_category_parents_category_id_categories"
        ),
        sa.ForeignKeyConstraint(
            ["parent_id"], ["categories.id"], ondelete="CASCADE", name="fk_category_parents_parent_id_categories"
        ),
    )
    op.create_table(
        "blobs",
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("sha256", name="pk_blobs"),
    )
    op.create_table(
        "models",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("identity", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("manifest", sa.Text, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("good_count", sa.Integer),
        sa.Column("defect_count", sa.Integer),
        sa.Column("sample_count", sa.Integer),
        sa.Column("final_loss", sa.Float),
        sa.Column("parent_id", sa.Integer),
        sa.Column("parent_identity", sa.String(64)),
        sa.Column("created", sa.String(40), nullable=False),
        sa.Column("registered_at", sa.String(40), nullable=False),
        sa.Column("registered_by", sa.String(200), nullable=False),
        sa.Column("note", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_models"),
        sa.UniqueConstraint("name", name="uq_models_name"),
        sa.UniqueConstraint("digest", name="uq_models_digest"),
        sa.ForeignKeyConstraint(["parent_id"], ["models.id"], ondelete="RESTRICT", name="fk_models_parent_id_models"),
    )
    op.create_index("ix_models_identity", "models", ["identity"])
    op.create_table(
        "model_files",
        sa.Column("model_id", sa.Integer, nullable=False),
        sa.Column("path", sa.String(500), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("model_id", "path", name="pk_model_files"),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], ondelete="CASCADE", name="fk_model_files_model_id_models"),
        sa.ForeignKeyConstraint(["sha256"], ["blobs.sha256"], ondelete="RESTRICT", name="fk_model_files_sha256_blobs"),
    )
    op.create_index("ix_model_files_sha256", "model_files", ["sha256"])
    op.create_table(
        "model_categories",
        sa.Column("model_id", sa.Integer, nullable=False),
        sa.Column("category_id", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("model_id", "category_id", name="pk_model_categories"),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], ondelete="CASCADE", name="fk_model_categories_model_id_models"
        ),
        sa.ForeignKeyConstraint(
            ["category_id"], ["categories.id"], ondelete="RESTRICT", name="fk_model_categories_category_id_categories"
        ),
    )
    op.create_table(
        "evaluations",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("model_id", sa.Integer, nullable=False),
        sa.Column("data", sa.Text, nullable=False),
        sa.Column("image_auroc", sa.Float),
        sa.Column("pixel_auroc", sa.Float),
        sa.Column("f1", sa.Float),
        sa.Column("result", sa.Text, nullable=False),
        sa.Column("evaluated_at", sa.String(40), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_evaluations"),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], ondelete="CASCADE", name="fk_evaluations_model_id_models"),
    )
    op.create_index("ix_evaluations_model_id", "evaluations", ["model_id"])
    op.create_table(
        "assignments",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("line", sa.String(200), nullable=False),
        sa.Column("model_id", sa.Integer, nullable=False),
        sa.Column("assigned_at", sa.String(40), nullable=False),
        sa.Column("assigned_by", sa.String(200), nullable=False),
        sa.Column("note", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_assignments"),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], ondelete="RESTRICT", name="fk_assignments_model_id_models"
        ),
    )
    op.create_index("ix_assignments_line_id", "assignments", ["line", "id"])


def downgrade() -> None:
    for index, table in (
        ("ix_assignments_line_id", "assignments"),
        ("ix_evaluations_model_id", "evaluations"),
        ("ix_model_files_sha256", "model_files"),
        ("ix_models_identity", "models"),
    ):
        op.drop_index(index, table_name=table)
    for table in (
        "assignments",
        "evaluations",
        "model_categories",
        "model_files",
        "models",
        "blobs",
        "category_parents",
        "categories",
    ):
        op.drop_table(table)
