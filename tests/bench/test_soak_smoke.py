"""bench/soak.py in its smoke mode (20 s): the real daemon at full speed, sampled from outside; the report has the
keys the README describes, every verdict is accounted for, and memory and file descriptors do not grow."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.helpers import REPO, cli_env


def test_soak_smoke_reports_frames_verdicts_rss_and_fds_without_growth(tmp_path):
    out = tmp_path / "soak.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "soak.py"), "--smoke", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=cli_env(),
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert json.loads(proc.stdout) == report
    for key in ("frames", "verdicts", "errors", "rss_mb_start", "rss_mb_end", "fds_start", "fds_end", "samples"):
        assert key in report, key
    assert report["exit_code"] == 0 and report["verdicts_in_order"]
    assert report["frames"] > 20 and report["frames"] == sum(report["verdicts"].values())
    assert report["verdicts"]["error"] == 0 and not report["errors"], report["errors"]
    assert report["fds_end"] <= report["fds_start"] + 2, "file descriptors leak"
    assert report["rss_mb_end"] < report["rss_mb_start"] * 1.25, "memory grows (a loose bound: 20 s on a busy machine)"
    # heartbeat stalls are reported, not asserted: on a loaded 2-core machine a frame can take over a second
    assert report["heartbeat_stalls"] is not None and report["plc_polls"] > 20
