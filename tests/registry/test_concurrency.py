"""Two processes running `inspectd registry add` at the same moment on a fresh registry (both racing to create
its schema, adding models that share files, and adding the same models): every add succeeds once, nothing is
duplicated or lost, and every model comes back byte for byte."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

from tests.support.helpers import REPO, cli_env, make_blur_model

WORKER = textwrap.dedent(
    """
    import json, sys, time
    from inspectd.cli import main
    url, start_at, *pairs = sys.argv[1:]
    while time.time() < float(start_at):
        time.sleep(0.002)
    codes = []
    for pair in pairs:
        path, name = pair.split("=", 1)
        codes.append(main(["registry", "add", path, "--name", name, "--registry", url]))
    print(json.dumps(codes))
    """
)


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_concurrent_adds_from_two_processes_leave_a_consistent_store(registry, tmp_path):
    own = {"a": [], "b": []}
    for i in range(6):
        size = 16 + 8 * i
        for w, thr in (("a", 0.3), ("b", 0.4)):  # the same model.onnx, another manifest: a shared file
            own[w].append(make_blur_model(tmp_path / f"{w}{i}", size=(size, size), pixel_threshold=thr))
    shared = [make_blur_model(tmp_path / f"s{i}", size=(72 + 8 * i, 72 + 8 * i)) for i in range(3)]
    start_at = time.time() + 3.0
    procs = []
    for w in ("a", "b"):
        pairs = [f"{d}={d.name}" for d in own[w]] + [f"{d}={d.name}" for d in (shared if w == "a" else shared[::-1])]
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", WORKER, registry.url, str(start_at), *pairs],
                cwd=REPO,
                env=cli_env(**registry.env),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outs = [p.communicate(timeout=180) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
        assert json.loads(out.strip().splitlines()[-1]) == [0] * 9, err[-3000:]
    already = sum(out.count("\nalready registered: ") + out.startswith("already registered: ") for out, _ in outs)
    assert already == 3, outs  # each shared model: registered by one, found by the other

    reg = registry.open()
    try:
        rows = reg.models()
        expected = {d.name: d for d in (*own["a"], *own["b"], *shared)}
        assert sorted(r.name for r in rows) == sorted(expected)
        assert len({r.digest for r in rows}) == 15
        with reg.read() as conn:
            blobs = conn.exec_driver_sql("SELECT count(*) FROM blobs").scalar()
            orphans = conn.exec_driver_sql(
                "SELECT count(*) FROM blobs WHERE sha256 NOT IN (SELECT sha256 FROM model_files)"
            ).scalar()
            if registry.backend == "sqlite":
                assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
                assert conn.exec_driver_sql("PRAGMA foreign_key_check").all() == []
        assert blobs == 6 + 12 + 6 and orphans == 0  # 6 shared model.onnx, 12 manifests, 3 + 3 of the shared
        (tmp_path / "out").mkdir()
        for r in rows:
            _, out = reg.export(r.name, tmp_path / "out" / r.name)
            assert _files(out) == _files(expected[r.name]), r.name
    finally:
        reg.close()
