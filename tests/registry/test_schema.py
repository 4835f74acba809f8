"""The registry's schema: what the Alembic migration creates is exactly tables.py on both backends; a database
on a schema this inspectd does not know, or one that is not a registry, is refused (exit 2) and left untouched;
SQLite runs in WAL with full sync; an unreachable server is exit 1 and the password never shows."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import text

from inspectd.registry import db
from inspectd.registry.tables import metadata
from tests.support.net import free_port


def test_the_migrated_schema_is_the_metadata(registry):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    reg = registry.open()
    try:
        assert reg.schema == "created"
        with reg.read() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), metadata)
            assert diff == [], diff
            assert db.current_revision(conn) == db.head_revision() == "0001"
    finally:
        reg.close()
    again = registry.open()
    assert again.schema == "current"
    again.close()


def test_a_schema_another_process_commits_during_the_check_is_taken_as_current(registry, monkeypatch):
    """CI saw this race on PostgreSQL: two processes open an empty registry; one commits the new schema between
    the other's "which revision?" and "which tables?" statements, and the other called it damaged (exit 2). Here
    the other process's commit lands exactly there, every time."""
    from alembic import command

    url = db.parse_url(registry.api_url or registry.url)
    other = db.create(url)
    creating = db.transaction(other, write=True)
    conn = creating.__enter__()
    db._lock(conn)
    cfg = db.alembic_config()
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, "head")  # created, not yet committed
    real = db.current_revision
    seen: list[str | None] = []

    def revision_then_the_other_commits(c):
        rev = real(c)
        if not seen:
            creating.__exit__(None, None, None)
        seen.append(rev)
        return rev

    monkeypatch.setattr(db, "current_revision", revision_then_the_other_commits)
    engine = db.create(url)
    try:
        assert db.ensure_schema(engine) == "current"
        assert seen[0] is None and seen[-1] == db.head_revision()
    finally:
        engine.dispose()
        other.dispose()


def test_a_registry_on_a_newer_schema_is_refused_and_left_alone(registry):
    reg = registry.open()
    with reg.write() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099_future'"))
    reg.close()
    for args in (("list",), ("upgrade",)):
        res = registry.cli(*args)
        assert res.returncode == 2, res.stdout + res.stderr
        assert "schema revision '0099_future', which this inspectd does not know" in res.stderr
        assert "upgrade inspectd on this machine" in res.stderr
    reg = db.create(db.parse_url(registry.api_url or registry.url))
    with reg.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0099_future"
    reg.dispose()


def test_a_database_with_our_table_names_but_no_version_is_not_taken_over(sqlite_registry):
    con = sqlite3.connect(sqlite_registry.url)
    con.execute("CREATE TABLE models (id INTEGER PRIMARY KEY, what TEXT)")
    con.commit()
    con.close()
    res = sqlite_registry.cli("list")
    assert res.returncode == 2 and "is not an inspectd registry" in res.stderr
    con = sqlite3.connect(sqlite_registry.url)
    assert [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")] == ["models"]
    con.close()


def test_sqlite_runs_in_wal_mode_with_full_sync(sqlite_registry):
    reg = sqlite_registry.open()
    try:
        with reg.read() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        reg.close()


def test_connections_opening_a_new_sqlite_file_at_once_all_get_it(tmp_path):
    """Switching a new file to WAL answers "database is locked" at once (no busy handler) while another connection
    does the same: CI saw two `registry add` processes fail that way. Three connections (one engine each, as three
    processes would have) race on a new file, 300 times; before the fix about one race in ten failed."""
    import threading

    failures: list[BaseException] = []
    for round_ in range(300):
        engines = [db.create(db.parse_url(str(tmp_path / f"r{round_}.db"))) for _ in range(3)]
        together = threading.Barrier(len(engines))

        def open_at_once(engine, together=together):
            together.wait()
            try:
                engine.connect().close()
            except Exception as exc:
                failures.append(exc)

        threads = [threading.Thread(target=open_at_once, args=(e,)) for e in engines]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        for e in engines:
            e.dispose()
    assert failures == [], f"{len(failures)} failed, first: {failures[0]}"


def test_the_migration_downgrades_and_upgrades_again(sqlite_registry):
    from alembic import command

    reg = sqlite_registry.open()
    with reg.write() as conn:
        cfg = db.alembic_config()
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")
    with reg.read() as conn:
        assert set(conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type='table'").scalars()) == {
            "alembic_version"
        }
    reg.close()
    res = sqlite_registry.cli("upgrade")
    assert res.returncode == 0 and "schema created (revision 0001)" in res.stdout, res.stderr


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mysql://x@h/db", "scheme 'mysql' is not supported"),
        ("sqlite://", "needs a file"),
        ("sqlite:////nonexistent-dir/x.db", "directory /nonexistent-dir does not exist"),
    ],
)
def test_bad_registry_urls_exit_2(url, expected):
    from tests.support.helpers import run_cli

    res = run_cli("registry", "list", "--registry", url)
    assert res.returncode == 2 and expected in res.stderr, res.stderr


def test_an_unreachable_server_is_exit_1_and_hides_the_password():
    from tests.support.helpers import run_cli

    res = run_cli("registry", "list", "--registry", f"postgresql://u:s3cret@127.0.0.1:{free_port()}/db")
    assert res.returncode == 1, res.stderr
    assert "cannot open the registry postgresql+psycopg://u:***@127.0.0.1" in res.stderr
    assert "s3cret" not in res.stderr + res.stdout
