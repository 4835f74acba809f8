"""The daemon never imports torch (nor export/ or calibration/): every module under daemon/, found dynamically."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.conftest import REPO

SCRIPT = textwrap.dedent(
    """
    import importlib, pkgutil, sys
    import daemon
    def fail(name):
        raise ImportError(f"cannot import package {name}")  # walk_packages would otherwise skip it silently
    names = ["daemon"]
    for info in pkgutil.walk_packages(daemon.__path__, prefix="daemon.", onerror=fail):
        names.append(info.name)
        importlib.import_module(info.name)
    print(len(names), "modules")
    bad = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "export", "calibration"))
    assert not bad, f"importing daemon pulled in {bad[:5]}"
    assert len(names) > 5, names
    """
)


def test_importing_every_daemon_module_imports_no_torch():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_train_command_registers_without_importing_torch():
    script = textwrap.dedent(
        """
        import argparse, sys
        import export.cli
        p = argparse.ArgumentParser(); sub = p.add_subparsers()
        export.cli.register(sub)
        args = p.parse_args(["train", "--synthetic", "--out", "m", "--iterations", "5", "--input-size", "64"])
        assert args.func is export.cli.cmd_train and args.input_size == (64, 64)
        assert "torch" not in sys.modules
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
