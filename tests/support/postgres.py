"""A real, throwaway PostgreSQL server for the registry's tests: initdb into a temporary directory, started with
pg_ctl on a free port of 127.0.0.1 (password authentication, a random password), stopped and removed at the end.

Debian's `postgresql` package provides the binaries (`make test` installs it where missing). initdb refuses to run
as root, so as root the server runs as the `postgres` user the package creates (runuser). Where neither works,
`find_server()` says why, for the tests to skip with that reason.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from tests.support.net import free_port

USER = "inspectd"


def _bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]), reverse=True)
    if found:
        return Path(found[0]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def find_server() -> tuple[Path | None, list[str], str]:
    """(bin directory, command prefix to run the server as, reason it cannot run or '')."""
    bindir = _bindir()
    if bindir is None or not (bindir / "pg_ctl").exists():
        return (
            None,
            [],
            "PostgreSQL server binaries not found (apt-get install postgresql; `make test` does it as root)",
        )
    if os.geteuid() != 0:
        return bindir, [], ""
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return None, [], "running as root and there is no `postgres` user to run initdb as"
    runuser = shutil.which("runuser")
    if runuser is None:
        return None, [], "running as root and `runuser` is missing (util-linux), so initdb cannot run as postgres"
    return bindir, [runuser, "-u", "postgres", "--"], ""


@dataclass
class PostgresServer:
    bindir: Path
    prefix: list[str]
    root: Path
    port: int
    password: str

    @classmethod
    def start(cls) -> PostgresServer:
        bindir, prefix, why = find_server()
        if bindir is None:
            raise RuntimeError(why)
        root = Path(tempfile.mkdtemp(prefix="inspectd-pg-"))  # under /tmp: the postgres user must reach it
        password = secrets.token_hex(16)
        (root / "pw").write_text(password + "\n")
        if prefix:
            pw = pwd.getpwnam("postgres")
            os.chown(root, pw.pw_uid, pw.pw_gid)
            os.chown(root / "pw", pw.pw_uid, pw.pw_gid)
        server = cls(bindir, prefix, root, free_port(), password)
        try:
            server._run(
                "initdb", "-D", str(root / "data"), "-U", USER, "--auth=scram-sha-256", f"--pwfile={root / 'pw'}",
                "-E", "UTF8", "--locale=C.UTF-8", "--no-sync",
            )  # fmt: skip
            options = (
                f"-c listen_addresses=127.0.0.1 -c port={server.port} -c unix_socket_directories={root} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=50"
            )
            server._run(
                "pg_ctl", "-D", str(root / "data"), "-l", str(root / "log"), "-w", "-t", "60", "-o", options, "start"
            )
        except BaseException:
            server.stop()
            raise
        return server

    def _run(self, tool: str, *args: str) -> None:
        res = subprocess.run(
            [*self.prefix, str(self.bindir / tool), *args], capture_output=True, text=True, timeout=120, cwd=self.root
        )
        if res.returncode != 0:
            log = (self.root / "log").read_text()[-2000:] if (self.root / "log").exists() else ""
            raise RuntimeError(f"{tool} failed ({res.returncode}): {res.stderr[-2000:]} {log}")

    def url(self, database: str = "postgres", *, with_password: bool = False) -> str:
        auth = f"{USER}:{self.password}" if with_password else USER
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{database}"

    def env(self) -> dict[str, str]:
        """What a client process needs besides the URL: the password, the way a plant passes it (not argv)."""
        return {"PGPASSWORD": self.password}

    def create_database(self) -> str:
        """A new empty database; returns its registry URL (password in PGPASSWORD, see env())."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=USER, password=self.password, dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if (self.root / "data" / "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "-w", "-t", "30", "stop")
        shutil.rmtree(self.root, ignore_errors=True)
