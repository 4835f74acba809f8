"""Shared fixtures. Fakes and builders reused across tests live in tests/support/helpers.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = Path(os.environ.get("INSPECTD_SHARED_DATASETS", REPO.parent / "shared" / "datasets"))
MAGNETIC_TILE = SHARED_DATASETS / "magnetic-tile"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def magnetic_tile() -> Path:
    """The real magnetic-tile dataset in MVTec layout; skipped with a reason where it is absent."""
    if not (MAGNETIC_TILE / "test").is_dir():
        pytest.skip(
            f"real dataset not found at {MAGNETIC_TILE} (it lives in ../shared/datasets beside the repository; "
            "set INSPECTD_SHARED_DATASETS to point elsewhere)"
        )
    return MAGNETIC_TILE
