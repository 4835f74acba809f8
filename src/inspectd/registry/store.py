"""The Registry: categories, models (their files stored once, by sha256), evaluations and line assignments, in
one database (db.py). Every change is one transaction: it happens completely or not at all.

A model is added once and never edited: adding the same directory again (the same digest) changes nothing and says
so; another directory under a taken name is refused. Two processes adding at once queue on SQLite's write lock;
on PostgreSQL a unique-key collision with a concurrent add is retried once, and then finds the other's row.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Connection, delete, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from inspectd.core.clock import iso_utc
from inspectd.core.errors import ModelError
from inspectd.core.manifest import load_manifest
from inspectd.registry import db, modeldir
from inspectd.registry import tables as t
from inspectd.registry.errors import RegistryError
from inspectd.registry.gate import SampleCounts
from inspectd.registry.hierarchy import Hierarchy, suggest
from inspectd.registry.matching import MatchResult, ModelInfo, match
from inspectd.registry.product import MatchPolicy

MIN_PREFIX = 8  # a digest or identity prefix must be at least this long to name a model


def now_utc() -> str:
    return iso_utc(time.time())


def who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"[: t.NAME_LEN]


@dataclass(frozen=True)
class ModelRow:
    id: int
    name: str
    digest: str
    identity: str
    kind: str
    size: int
    good_count: int | None
    defect_count: int | None
    sample_count: int | None
    final_loss: float | None
    parent_id: int | None
    parent_identity: str | None
    created: str
    registered_at: str
    registered_by: str
    note: str
    categories: tuple[str, ...] = ()
    evaluation: float | None = None  # image AUROC of the latest evaluation
    lines: tuple[str, ...] = ()  # lines whose current assignment this is
    parent_name: str | None = None

    @property
    def ratio(self) -> float | None:
        """good:defect of its training data (None: trained on good images only, or unknown)."""
        if self.good_count is None or not self.defect_count:
            return None
        return self.good_count / self.defect_count

    def as_dict(self) -> dict:
        return {
            k: getattr(self, k)
            for k in (
                "id", "name", "digest", "identity", "kind", "size", "good_count", "defect_count", "sample_count",
                "final_loss", "parent_name", "parent_identity", "created", "registered_at", "registered_by", "note",
            )
        } | {"ratio": self.ratio, "categories": list(self.categories), "evaluation_image_auroc": self.evaluation,
             "lines": list(self.lines)}  # fmt: skip


@dataclass(frozen=True)
class AddResult:
    model: ModelRow
    created: bool
    notes: list[str] = field(default_factory=list)


def _manifest_facts(manifest, counts: SampleCounts | None) -> dict:
    tr = manifest.training or {}
    hard = tr.get("hard_defects") or {}
    good = counts.good if counts else _int(tr.get("sample_count"), 0) + _int(tr.get("held_out_count"), 0) or None
    defect = counts.defect if counts else _int(hard.get("images"), 0)
    return {
        "kind": manifest.kind,
        "identity": manifest.identity,
        "good_count": good,
        "defect_count": defect,
        "sample_count": _int(tr.get("sample_count"), None),
        "final_loss": float(tr["final_loss"]) if isinstance(tr.get("final_loss"), (int, float)) else None,
        "parent_identity": (tr.get("parent") or {}).get("onnx_sha256"),
        "created": manifest.created or "",
    }


def _int(value, default):
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else default


def _insert_ignore(conn: Connection, table, rows: list[dict]) -> None:
    if not rows:
        return
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    conn.execute(dialect.insert(table).on_conflict_do_nothing(), rows)


class Registry:
    def __init__(self, engine, schema: str = "current") -> None:
        self.engine = engine
        self.schema = schema  # what opening did: current, created or upgraded (db.ensure_schema)

    @classmethod
    def open(cls, location: str | None = None, *, upgrade: bool = False) -> Registry:
        engine = db.create(db.parse_url(location or db.default_url()))
        try:
            return cls(engine, db.ensure_schema(engine, upgrade=upgrade))
        except BaseException:
            engine.dispose()
            raise

    @property
    def where(self) -> str:
        return db.shown(self.engine.url)

    def close(self) -> None:
        self.engine.dispose()

    def read(self):
        return db.transaction(self.engine, write=False)

    def write(self):
        return db.transaction(self.engine, write=True)

    # --- categories ---------------------------------------------------------------------------------------------

    def hierarchy(self, conn: Connection | None = None) -> Hierarchy:
        if conn is None:
            with self.read() as c:
                return self.hierarchy(c)
        names = dict(conn.execute(select(t.categories.c.id, t.categories.c.name)).all())
        parents: dict[str, list[str]] = {n: [] for n in names.values()}
        for cid, pid in conn.execute(select(t.category_parents.c.category_id, t.category_parents.c.parent_id)):
            parents[names[cid]].append(names[pid])
        desc = dict(conn.execute(select(t.categories.c.name, t.categories.c.description)).all())
        return Hierarchy.build(parents, desc)

    def import_hierarchy(self, h: Hierarchy) -> dict:
        """Make the registry's hierarchy exactly `h`; refuses to drop a category a model is tagged with."""
        with self.write() as conn:
            ids = dict(conn.execute(select(t.categories.c.name, t.categories.c.id)).all())
            used: dict[str, list[str]] = {}
            q = select(t.categories.c.name, t.models.c.name).join_from(t.model_categories, t.categories)
            for cat, model in conn.execute(q.join(t.models).order_by(t.models.c.name)):
                used.setdefault(cat, []).append(model)
            gone = sorted(set(ids) - set(h.parents))
            blocked = [f"{c!r} (models {', '.join(used[c])})" for c in gone if c in used]
            if blocked:
                msg = f"the new hierarchy drops categories that models are tagged with: {'; '.join(blocked)}; keep them"
                raise RegistryError(msg)
            before = self.hierarchy(conn).as_dict() if ids else {}
            conn.execute(delete(t.category_parents))
            if gone:
                conn.execute(delete(t.categories).where(t.categories.c.name.in_(gone)))
            for name in sorted(h.parents):
                values = {"level": h.level(name), "description": h.descriptions.get(name, "")}
                if name in ids:
                    conn.execute(update(t.categories).where(t.categories.c.id == ids[name]).values(**values))
                else:
                    ids[name] = conn.execute(insert(t.categories).values(name=name, **values)).inserted_primary_key[0]
            rows = [{"category_id": ids[n], "parent_id": ids[p]} for n, ps in sorted(h.parents.items()) for p in ps]
            if rows:
                conn.execute(insert(t.category_parents), rows)
            after = h.as_dict()
        return {
            "added": sorted(set(after) - set(before)),
            "removed": gone,
            "changed": sorted(n for n in set(after) & set(before) if after[n] != before[n]),
            "categories": len(after),
        }

    # --- models ---------------------------------------------------------------------------------------------------

    def add(
        self,
        model_dir: str | Path,
        *,
        name: str | None = None,
        categories: Sequence[str] | None = None,
        counts: SampleCounts | None = None,
        evaluation: dict | None = None,
        parent: str | None = None,
        note: str = "",
    ) -> AddResult:
        """Register a model directory (verified: manifest, model.onnx's sha256, no links). `categories` default to
        the manifest's training.categories; `counts` (the gate's count of its training data) to the manifest's facts."""
        try:
            manifest = load_manifest(model_dir)
        except ModelError as exc:
            raise RegistryError(str(exc)) from exc
        files = modeldir.read_files(model_dir)
        digest = modeldir.directory_digest(f for f, _ in files)
        named = name is not None
        name = name or manifest.name
        cats = list(categories) if categories is not None else list(manifest.training.get("categories") or [])
        if evaluation is not None and evaluation.get("model_sha256") not in (None, manifest.identity):
            msg = (
                f"the evaluation is of model {str(evaluation.get('model_sha256'))[:12]}…, not of {model_dir} "
                f"({manifest.identity[:12]}…); evaluate this model directory"
            )
            raise RegistryError(msg)
        facts = _manifest_facts(manifest, counts)
        row = {"name": name, "digest": digest, "manifest": json.dumps(manifest.model_dump(mode="json"), sort_keys=True)}
        row |= facts | {"size": sum(f.size for f, _ in files), "note": note}
        for attempt in (1, 2):
            try:
                with self.write() as conn:
                    return self._add(conn, row, files, cats, evaluation, parent, named=named)
            except IntegrityError:  # PostgreSQL: a concurrent add took the digest or the name; look again
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _add(
        self, conn, row: dict, files, cats: list[str], evaluation: dict | None, parent: str | None, *, named: bool
    ) -> AddResult:
        existing = conn.execute(select(t.models).where(t.models.c.digest == row["digest"])).mappings().first()
        if existing is not None:
            old = self._rows(conn, [existing])[0]
            if named and row["name"] != old.name:
                msg = f"this model directory is already registered as {old.name!r} (digest {old.digest[:12]}…)"
                raise RegistryError(msg)
            if cats and sorted(cats) != sorted(old.categories):
                msg = (
                    f"{old.name!r} is already registered with categories {list(old.categories)}; a registered model is "
                    "never edited (register a copy under another name to tag it differently)"
                )
                raise RegistryError(msg)
            return AddResult(old, created=False, notes=[f"already registered (digest {old.digest[:12]}…): unchanged"])
        if conn.execute(select(t.models.c.id).where(t.models.c.name == row["name"])).first() is not None:
            msg = f"the name {row['name']!r} is taken by another model; choose another --name"
            raise RegistryError(msg)
        h = self.hierarchy(conn)
        h.require(cats, f"model {row['name']!r}")
        notes = []
        parent_id = None
        if parent is not None:
            parent_id = self._resolve(conn, parent)["id"]
        elif row["parent_identity"]:
            q = select(t.models.c.id).where(t.models.c.identity == row["parent_identity"]).order_by(t.models.c.id)
            found = conn.execute(q).scalars().all()
            parent_id = found[-1] if found else None
            if not found:
                notes.append(f"its parent (onnx {row['parent_identity'][:12]}…) is not in the registry")
        _insert_ignore(
            conn,
            t.blobs,
            [{"sha256": f.sha256, "size": f.size, "data": d} for f, d in sorted(files, key=lambda x: x[0].sha256)],
        )
        model_id = conn.execute(
            insert(t.models).values(**row, parent_id=parent_id, registered_at=now_utc(), registered_by=who())
        ).inserted_primary_key[0]
        conn.execute(
            insert(t.model_files),
            [{"model_id": model_id, "path": f.path, "sha256": f.sha256, "size": f.size} for f, _ in files],
        )
        if cats:
            ids = dict(
                conn.execute(select(t.categories.c.name, t.categories.c.id).where(t.categories.c.name.in_(cats))).all()
            )
            conn.execute(
                insert(t.model_categories), [{"model_id": model_id, "category_id": ids[c]} for c in sorted(set(cats))]
            )
        if evaluation is not None:
            self._add_evaluation(conn, model_id, evaluation)
        new = conn.execute(select(t.models).where(t.models.c.id == model_id)).mappings().one()
        return AddResult(self._rows(conn, [new])[0], created=True, notes=notes)

    @staticmethod
    def _add_evaluation(conn: Connection, model_id: int, result: dict) -> None:
        kept = {k: v for k, v in result.items() if k != "images"}  # per-image records stay in the evaluation's file
        conn.execute(
            insert(t.evaluations).values(
                model_id=model_id,
                data=str(result.get("data", "")),
                image_auroc=result.get("image_auroc"),
                pixel_auroc=result.get("pixel_auroc"),
                f1=result.get("f1"),
                result=json.dumps(kept, sort_keys=True),
                evaluated_at=now_utc(),
            )
        )

    def add_evaluation(self, ref: str, result: dict) -> ModelRow:
        with self.write() as conn:
            m = self._resolve(conn, ref)
            if result.get("model_sha256") not in (None, m["identity"]):
                msg = f"the evaluation is of model {str(result['model_sha256'])[:12]}…, not of {m['name']!r}"
                raise RegistryError(msg)
            self._add_evaluation(conn, m["id"], result)
            return self._rows(conn, [m])[0]

    # --- reading ------------------------------------------------------------------------------------------------

    def _resolve(self, conn: Connection, ref: str):
        """A model by name, or by a digest or identity prefix of at least MIN_PREFIX hex digits."""
        m = conn.execute(select(t.models).where(t.models.c.name == ref)).mappings().first()
        if m is not None:
            return m
        if len(ref) >= MIN_PREFIX and all(ch in "0123456789abcdef" for ch in ref):
            q = select(t.models).where(t.models.c.digest.startswith(ref) | t.models.c.identity.startswith(ref))
            found = conn.execute(q.order_by(t.models.c.id)).mappings().all()
            if len(found) == 1:
                return found[0]
            if len(found) > 1:
                msg = f"{ref!r} names {len(found)} models ({', '.join(f['name'] for f in found)}); give more digits"
                raise RegistryError(msg)
        names = conn.execute(select(t.models.c.name)).scalars().all()
        msg = f"no model named {ref!r} in the registry{suggest(ref, names)}; `inspectd registry list` shows them"
        raise RegistryError(msg)

    def _rows(self, conn: Connection, rows: Iterable) -> list[ModelRow]:
        rows = list(rows)
        ids = [r["id"] for r in rows]
        if not ids:
            return []
        cats: dict[int, list[str]] = {i: [] for i in ids}
        q = select(t.model_categories.c.model_id, t.categories.c.name).join(t.categories)
        for mid, cname in conn.execute(q.where(t.model_categories.c.model_id.in_(ids)).order_by(t.categories.c.name)):
            cats[mid].append(cname)
        latest = select(func.max(t.evaluations.c.id)).group_by(t.evaluations.c.model_id)
        evals = dict(
            conn.execute(
                select(t.evaluations.c.model_id, t.evaluations.c.image_auroc).where(t.evaluations.c.id.in_(latest))
            ).all()
        )
        lines: dict[int, list[str]] = {}
        for line, mid in self._current(conn):
            lines.setdefault(mid, []).append(line)
        names = dict(conn.execute(select(t.models.c.id, t.models.c.name)).all())
        columns = [c.name for c in t.models.c if c.name != "manifest"]
        return [
            ModelRow(
                **{k: r[k] for k in columns},
                categories=tuple(cats[r["id"]]),
                evaluation=evals.get(r["id"]),
                lines=tuple(sorted(lines.get(r["id"], []))),
                parent_name=names.get(r["parent_id"]),
            )
            for r in rows
        ]

    @staticmethod
    def _current(conn: Connection) -> list[tuple[str, int]]:
        """(line, model id) of every line's newest assignment."""
        newest = select(func.max(t.assignments.c.id)).group_by(t.assignments.c.line)
        q = select(t.assignments.c.line, t.assignments.c.model_id).where(t.assignments.c.id.in_(newest))
        return [(line, mid) for line, mid in conn.execute(q.order_by(t.assignments.c.line))]

    def models(self) -> list[ModelRow]:
        with self.read() as conn:
            return self._rows(conn, conn.execute(select(t.models).order_by(t.models.c.id)).mappings())

    def exists(self, name: str) -> bool:
        with self.read() as conn:
            return conn.execute(select(t.models.c.id).where(t.models.c.name == name)).first() is not None

    def model(self, ref: str) -> ModelRow:
        with self.read() as conn:
            return self._rows(conn, [self._resolve(conn, ref)])[0]

    def details(self, ref: str) -> dict:
        """Everything about one model: facts, categories with levels, files, lineage, evaluations, lines."""
        with self.read() as conn:
            m = self._resolve(conn, ref)
            row = self._rows(conn, [m])[0]
            h = self.hierarchy(conn)
            files = conn.execute(
                select(t.model_files.c.path, t.model_files.c.sha256, t.model_files.c.size)
                .where(t.model_files.c.model_id == m["id"])
                .order_by(t.model_files.c.path)
            ).all()
            lineage, pid = [], m["parent_id"]
            while pid is not None:
                p = conn.execute(
                    select(t.models.c.id, t.models.c.name, t.models.c.parent_id).where(t.models.c.id == pid)
                ).one()
                lineage.append(p.name)
                pid = p.parent_id
            children = (
                conn.execute(select(t.models.c.name).where(t.models.c.parent_id == m["id"]).order_by(t.models.c.id))
                .scalars()
                .all()
            )
            evals = (
                conn.execute(
                    select(t.evaluations).where(t.evaluations.c.model_id == m["id"]).order_by(t.evaluations.c.id)
                )
                .mappings()
                .all()
            )
            history = (
                conn.execute(
                    select(t.assignments).where(t.assignments.c.model_id == m["id"]).order_by(t.assignments.c.id)
                )
                .mappings()
                .all()
            )
        return row.as_dict() | {
            "category_levels": {c: h.level(c) for c in row.categories},
            "files": [{"path": p, "sha256": s, "size": n} for p, s, n in files],
            "lineage": lineage,
            "children": list(children),
            "evaluations": [
                {k: e[k] for k in ("data", "image_auroc", "pixel_auroc", "f1", "evaluated_at")} for e in evals
            ],
            "assignments": [{k: a[k] for k in ("line", "assigned_at", "assigned_by", "note")} for a in history],
            "manifest": json.loads(m["manifest"]),
        }

    def match(self, categories: Sequence[str], policy: MatchPolicy) -> MatchResult:
        with self.read() as conn:
            h = self.hierarchy(conn)
            rows = self._rows(conn, conn.execute(select(t.models).order_by(t.models.c.id)).mappings())
        infos = [ModelInfo(r.id, r.name, r.digest, r.categories, r.evaluation) for r in rows]
        return match(h, categories, policy, infos)

    def files(self, ref: str) -> tuple[ModelRow, list[tuple[modeldir.StoredFile, bytes]]]:
        with self.read() as conn:
            m = self._resolve(conn, ref)
            q = (
                select(t.model_files.c.path, t.model_files.c.sha256, t.model_files.c.size, t.blobs.c.data)
                .join(t.blobs, t.blobs.c.sha256 == t.model_files.c.sha256)
                .where(t.model_files.c.model_id == m["id"])
                .order_by(t.model_files.c.path)
            )
            files = [(modeldir.StoredFile(p, s, n), bytes(d)) for p, s, n, d in conn.execute(q)]
            return self._rows(conn, [m])[0], files

    def export(self, ref: str, dest: str | Path) -> tuple[ModelRow, Path]:
        """Write a model's directory to `dest`, every file verified against its sha256, all or nothing."""
        row, files = self.files(ref)
        return row, modeldir.write_tree(dest, files, row.digest, row.name)

    # --- lines ----------------------------------------------------------------------------------------------------

    def assign(self, line: str, ref: str, note: str = "") -> ModelRow:
        if not line or len(line) > t.NAME_LEN or any(ord(ch) < 32 for ch in line) or line != line.strip():
            msg = f"line name {line!r} is not allowed (expected 1-{t.NAME_LEN} characters, as the daemon's `line:`)"
            raise RegistryError(msg)
        with self.write() as conn:
            m = self._resolve(conn, ref)
            conn.execute(
                insert(t.assignments).values(
                    line=line, model_id=m["id"], assigned_at=now_utc(), assigned_by=who(), note=note
                )
            )
            return self._rows(conn, [m])[0]

    def assigned(self, line: str) -> ModelRow:
        with self.read() as conn:
            current = dict(self._current(conn))
            if line not in current:
                known = sorted(current)
                msg = (
                    f"no model is assigned to line {line!r}{suggest(line, known)} "
                    f"(`inspectd registry assign {line} MODEL` does that; lines with a model: {known or 'none'})"
                )
                raise RegistryError(msg)
            m = conn.execute(select(t.models).where(t.models.c.id == current[line])).mappings().one()
            return self._rows(conn, [m])[0]
