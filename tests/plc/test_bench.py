"""bench/modbus.py runs and reports what it promises (smoke mode: a few items, no timing claims)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.helpers import REPO, cli_env


def test_modbus_bench_smoke_writes_its_json(tmp_path):
    out = tmp_path / "bench.json"
    res = subprocess.run(
        [sys.executable, str(REPO / "bench" / "modbus.py"), "--smoke", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env=cli_env(),
        cwd=REPO,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    printed = json.loads(res.stdout.strip().splitlines()[-1])
    assert json.loads(out.read_text()) == printed
    for key in ("latency_ms_p50", "latency_ms_p99", "missed", "peer_last_seq_only_missed", "emit_us", "polls"):
        assert key in printed
    assert printed["items"] == 40 and isinstance(printed["missed"], int) and printed["polls"] > 0
