"""Opening the registry database: SQLite (the embedded default, one file in WAL mode) or PostgreSQL (a plant with many
line PCs), the same SQL through SQLAlchemy 2; the schema is created and checked with Alembic.

- URL: `sqlite:///PATH` or a plain path (SQLite), `postgresql://USER@HOST/DB` (psycopg 3; put the password in
  ~/.pgpass or PGPASSWORD, never on a command line). Default: $INSPECTD_REGISTRY, else
  ~/.local/share/inspectd/registry.db.
- SQLite: WAL journal (readers never wait for the writer), synchronous=FULL (a committed change survives a power
  cut), foreign keys on, a 30 s busy timeout. Every write transaction starts with BEGIN IMMEDIATE, so two processes
  writing at once queue for the lock instead of failing on a stale snapshot. SQLite needs a local disk: on a
  network share use PostgreSQL.
- Schema: an empty database gets the newest schema (under the write lock: two processes creating it at once
  cannot both do it; on PostgreSQL under an advisory lock); a database on an older revision asks for
  `inspectd registry upgrade`; one on a revision this inspectd does not know (a newer inspectd wrote it) is
  refused: SchemaError, exit 2, nothing touched.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import URL, Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError

from inspectd.registry import tables
from inspectd.registry.errors import RegistryError, RegistryUnavailableError, SchemaError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
ENV_VAR = "INSPECTD_REGISTRY"
SQLITE_BUSY_S = 30.0
PG_LOCK_KEY = 0x1D5EC7D  # pg_advisory_xact_lock key of schema creation and upgrades


def default_url() -> str:
    """$INSPECTD_REGISTRY, else ~/.local/share/inspectd/registry.db (its directory created here)."""
    env = os.environ.get(ENV_VAR)
    if env:
        return env
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "inspectd"
    base.mkdir(parents=True, exist_ok=True)
    return str(base / "registry.db")


def parse_url(text_url: str) -> URL:
    """A registry location -> SQLAlchemy URL (sqlite+pysqlite or postgresql+psycopg); RegistryError otherwise."""
    if "://" not in text_url:
        path = Path(text_url).expanduser()
        return URL.create("sqlite+pysqlite", database=str(path.resolve()))
    try:
        url = make_url(text_url)
    except ArgumentError as exc:
        msg = f"registry URL {text_url!r} is not a URL (expected sqlite:///PATH, a file path, or postgresql://...)"
        raise RegistryError(msg) from exc
    backend = url.get_backend_name()
    if backend == "sqlite":
        if not url.database or url.database == ":memory:":
            msg = "a SQLite registry needs a file (sqlite:///PATH); an in-memory database would be lost at exit"
            raise RegistryError(msg)
        return url.set(drivername="sqlite+pysqlite", database=str(Path(url.database).expanduser().resolve()))
    if backend == "postgresql":
        return url.set(drivername="postgresql+psycopg")
    msg = f"registry URL scheme {url.drivername!r} is not supported (expected sqlite:///PATH or postgresql://...)"
    raise RegistryError(msg)


def shown(url: URL) -> str:
    """The URL as printed in messages: never the password."""
    return url.render_as_string(hide_password=True)


def _enter_wal(cur: sqlite3.Cursor, url: URL) -> None:
    """PRAGMA journal_mode = WAL, waiting out other connections. Switching a new file to WAL answers "database is
    locked" at once, without SQLite's busy handler, while another process is doing the same (seen with two `registry
    add` on a fresh file), so this retries within the busy timeout. A file system without WAL support (a network
    share) keeps another mode: refused, as the registry's durability rests on WAL + full sync."""
    deadline = time.monotonic() + SQLITE_BUSY_S
    while True:
        try:
            mode = str(cur.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()
            break
        except sqlite3.OperationalError as exc:
            if ("locked" not in str(exc) and "busy" not in str(exc)) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)
    if mode != "wal":
        msg = (
            f"the SQLite registry {shown(url)} cannot run in WAL mode (it stays {mode!r}): put it on a local disk, "
            "or use PostgreSQL for a registry shared between PCs"
        )
        raise RegistryError(msg)


def _sqlite_engine(url: URL) -> Engine:
    path = Path(url.database or "")
    if not path.parent.is_dir():
        msg = f"the registry's directory {path.parent} does not exist (create it, or name another file)"
        raise RegistryError(msg)
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_S})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:
        dbapi_conn.isolation_level = None  # SQLAlchemy emits BEGIN itself (below): real transactions, DDL included
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_S * 1000)}")
        _enter_wal(cur, url)
        cur.execute("PRAGMA synchronous = FULL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("inspectd_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def create(url: URL) -> Engine:
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    return create_engine(
        url, pool_pre_ping=True, connect_args={"connect_timeout": 10, "application_name": "inspectd registry"}
    )


@contextmanager
def transaction(engine: Engine, *, write: bool) -> Iterator[Connection]:
    """One transaction: committed when the block ends, rolled back on any exception. `write` takes SQLite's write
    lock at BEGIN. A database that cannot be reached is RegistryUnavailableError."""
    try:
        conn = engine.connect()
    except OperationalError as exc:
        msg = f"cannot open the registry {shown(engine.url)}: {_reason(exc)}"
        raise RegistryUnavailableError(msg) from exc
    try:
        if write:
            conn = conn.execution_options(inspectd_write=True)
        try:
            with conn.begin():
                yield conn
        except OperationalError as exc:
            msg = f"registry {shown(engine.url)}: {_reason(exc)}"
            raise RegistryUnavailableError(msg) from exc
    finally:
        conn.close()


def _reason(exc: OperationalError) -> str:
    return str(exc.orig or exc).strip().splitlines()[0]


def alembic_config(url: str | URL | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", str(url).replace("%", "%%"))
    return cfg


def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    head = _script().get_current_head()
    assert head is not None, "the registry's migrations have no head"
    return head


def current_revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def _lock(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_LOCK_KEY})


def _check(conn: Connection, url: URL, *, allow_upgrade: bool) -> str | None:
    """None when the schema is current, else what to do: 'create' or 'upgrade'; SchemaError when unusable."""
    current, head = current_revision(conn), head_revision()
    if current == head:
        return None
    if current is None:
        ours = set(tables.metadata.tables) & set(inspect(conn).get_table_names())
        if ours:
            msg = (
                f"{shown(url)} has tables {sorted(ours)} but no inspectd schema version (alembic_version): it is not "
                "an inspectd registry, or one damaged by hand; use another database"
            )
            raise SchemaError(msg)
        return "create"
    known = {rev.revision for rev in _script().walk_revisions()}
    if current not in known:
        msg = (
            f"the registry {shown(url)} is on schema revision {current!r}, which this inspectd does not know (its "
            f"newest is {head!r}): a newer inspectd wrote it; upgrade inspectd on this machine to use it"
        )
        raise SchemaError(msg)
    if not allow_upgrade:
        msg = (
            f"the registry {shown(url)} is on schema revision {current!r}, older than this inspectd's {head!r}: run "
            "`inspectd registry upgrade` once (back it up first; older inspectd versions cannot use it afterwards)"
        )
        raise SchemaError(msg)
    return "upgrade"


def ensure_schema(engine: Engine, *, upgrade: bool = False) -> str:
    """Create the schema of an empty database, refuse an unusable one, upgrade an older one when asked; returns
    what happened: 'current', 'created' or 'upgraded'."""
    with transaction(engine, write=False) as conn:  # the common case, without the lock: nothing to do
        if current_revision(conn) == head_revision():
            return "current"
    # Everything else is decided under the lock only. Outside it, another process may commit a new schema between
    # two statements of one check (PostgreSQL's READ COMMITTED gives each statement a new snapshot): "no version"
    # then "our tables" read as a damaged registry although it is a just-created one.
    with transaction(engine, write=True) as conn:
        _lock(conn)
        todo = _check(conn, engine.url, allow_upgrade=upgrade)
        if todo is None:
            return "current"
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    return "created" if todo == "create" else "upgraded"
