"""Registry fixtures: a fresh registry per test on SQLite and, through `backend`, on a real PostgreSQL server that
the test session starts itself (tests/support/postgres.py) and stops at the end."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytest.importorskip("sqlalchemy", reason="the registry needs its extra (pip install -e '.[registry]')")

from tests.support.helpers import cli_env, run_cli
from tests.support.postgres import PostgresServer, find_server


@pytest.fixture(scope="session")
def pg_server():
    _, _, why = find_server()
    if why:
        pytest.skip(f"no PostgreSQL server can run here: {why}")
    server = PostgresServer.start()
    yield server
    server.stop()


@dataclass
class RegistryUnderTest:
    """One empty registry database and the way to run `inspectd registry ...` against it."""

    backend: str
    url: str  # as a plant would pass it: no password (the CLI gets PGPASSWORD in its environment)
    env: dict = field(default_factory=dict)
    api_url: str = ""  # for this process: the password in the URL

    def cli(self, *args: str, timeout: float = 120):
        return run_cli("registry", *args, "--registry", self.url, timeout=timeout, env=cli_env(**self.env))

    def open(self):
        from inspectd.registry.store import Registry

        return Registry.open(self.api_url or self.url)


def make_registry(backend: str, tmp_path: Path, request) -> RegistryUnderTest:
    if backend == "sqlite":
        return RegistryUnderTest("sqlite", str(tmp_path / "registry.db"))
    server = request.getfixturevalue("pg_server")
    url = server.create_database()
    return RegistryUnderTest(
        "postgresql", url, server.env(), url.replace("://inspectd@", f"://inspectd:{server.password}@")
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def registry(request, tmp_path) -> RegistryUnderTest:
    """A fresh registry on each backend."""
    return make_registry(request.param, tmp_path, request)


@pytest.fixture
def sqlite_registry(tmp_path) -> RegistryUnderTest:
    return RegistryUnderTest("sqlite", str(tmp_path / "registry.db"))


CUPS = """\
# The registry document's cup example: round cup contains small and medium, both contain meeting cup, which
# contains ceramic, which contains coffee cup and mug: five levels. Steel (a sibling of ceramic) and children's
# thermos (a kind of small cup) are the other categories of its two candidate models.
categories:
  round cup: []
  small: [round cup]
  medium: [round cup]
  meeting cup: [small, medium]
  ceramic: [meeting cup]
  steel: [meeting cup]
  coffee cup: [ceramic]
  mug: [ceramic]
  children's thermos: [small]
"""

CUP_PRODUCT = """\
product: coffee-cup
categories: [ceramic, coffee cup, mug, round cup, small, medium, meeting cup]
matching:
  quota_ratio: 0.5
  level_quota_ratio: {5: 1.0}
"""


@pytest.fixture
def cup_files(tmp_path) -> tuple[Path, Path]:
    (tmp_path / "cups.yaml").write_text(CUPS)
    (tmp_path / "coffee-cup.yaml").write_text(CUP_PRODUCT)
    return tmp_path / "cups.yaml", tmp_path / "coffee-cup.yaml"
