"""The runtime never imports torch (nor training, labelling, evaluation or the registry): every module of the
runtime packages, found dynamically, imported in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.conftest import REPO

SCRIPT = textwrap.dedent(
    """
    import importlib, pkgutil, sys
    RUNTIME = ["inspectd.core", "inspectd.inspection", "inspectd.plc", "inspectd.feedback", "inspectd.daemon",
               "inspectd.collector"]
    OFFLINE = ("torch", "inspectd.training", "inspectd.labelling", "inspectd.evaluation", "inspectd.registry")
    def fail(name):
        raise ImportError(f"cannot import package {name}")  # walk_packages would otherwise skip it silently
    names = []
    for pkg in RUNTIME:
        module = importlib.import_module(pkg)
        names.append(pkg)
        for info in pkgutil.walk_packages(module.__path__, prefix=pkg + ".", onerror=fail):
            names.append(info.name)
            importlib.import_module(info.name)
    print(len(names), "modules")
    bad = sorted(m for m in sys.modules if m == "torch" or m.startswith(OFFLINE))
    assert not bad, f"importing the runtime pulled in {bad[:5]}"
    assert len(names) > 30, names
    """
)


def test_importing_every_runtime_module_imports_no_torch():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_train_command_registers_without_importing_torch():
    script = textwrap.dedent(
        """
        import argparse, sys
        import inspectd.training.cli
        p = argparse.ArgumentParser(); sub = p.add_subparsers()
        inspectd.training.cli.register(sub)
        args = p.parse_args(["train", "--synthetic", "--out", "m", "--iterations", "5", "--input-size", "64"])
        assert args.func is inspectd.training.cli.cmd_train and args.input_size == (64, 64)
        assert "torch" not in sys.modules
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_cli_registers_the_registry_without_importing_its_database_libraries():
    """`inspectd run` builds the whole parser (every package's commands); the registry's must not pull in
    SQLAlchemy, Alembic or psycopg (nor torch) until a registry command runs."""
    script = textwrap.dedent(
        """
        import sys
        from inspectd.cli import build_parser
        args = build_parser().parse_args(["run", "--config", "c.yaml"])
        assert args.command == "run"
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("sqlalchemy", "alembic", "psycopg", "torch"))
        assert not heavy, heavy
        assert not any(m.startswith("inspectd.registry.") and m != "inspectd.registry.cli" for m in sys.modules)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
