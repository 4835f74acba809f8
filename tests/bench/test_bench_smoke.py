"""The benchmarks run, in their smoke mode, and write the JSON their README describes (no timing assertions)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.helpers import REPO, cli_env


def _run_bench(script: str, out: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), "--smoke", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env=cli_env(),
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = json.loads(out.read_text())
    assert json.loads(proc.stdout) == written, "the JSON printed is the JSON written"
    return written


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x >= 0


def test_ssim_bench_smoke_reports_every_size_and_thread_count(tmp_path):
    report = _run_bench("ssim.py", tmp_path / "ssim.json")
    rows = report["results"]
    assert {r["size"] for r in rows} == {32, 64}
    assert {r["threads"] for r in rows} >= {1}
    for row in rows:
        for key in ("inspectd_mps", "opencv_mps", "skimage_mps", "max_abs_err"):
            assert _number(row[key]), (key, row)
        assert row["max_abs_err"] < 1e-4
    compile_ = report["compile"]
    assert "first_call_compile_s" in compile_  # null in smoke mode: compiling cold takes seconds
    assert _number(compile_["cached_start_s"])


def test_pipeline_bench_smoke_reports_both_models(tmp_path):
    report = _run_bench("pipeline.py", tmp_path / "pipeline.json")
    models = report["models"]
    assert [m["name"] for m in models] == ["demo", "256x256"]
    for m in models:
        for key in ("pipeline_fps", "ort_fps", "ratio", "latency_ms_p50", "latency_ms_p99", "rss_mb"):
            assert _number(m[key]), (key, m)
        assert m["frames"] == 24 and m["errors"] == 0 and m["gaps"] == 0
        assert m["threads"]["onnxruntime"] >= 1 and m["threads"]["numba"] >= 1


def test_endpoint_bench_smoke_runs_the_daemon_with_and_without_http_under_load(tmp_path):
    report = _run_bench("endpoint.py", tmp_path / "endpoint.json")
    assert _number(report["emit"]["emit_us"]) and _number(report["emit"]["emit_us_while_scraping"])
    assert report["emit"]["scrapes_during"] > 0
    for mode in ("off", "on"):
        (run,) = report["daemon"][mode]
        assert run["frames"] == 30 and all(_number(run[k]) for k in ("fps", "latency_ms_p50", "latency_ms_p99"))
    load = report["daemon"]["on"][0]["load"]
    assert load["scrapes"] > 0 and load["events_bytes"] > 0


def test_genicam_rate_bench_smoke_reports_camera_harvesters_and_daemon(tmp_path):
    import pytest

    pytest.importorskip("harvesters", reason="the genicam extra (harvesters, genicam with viky.cti) is not installed")
    report = _run_bench("genicam_rate.py", tmp_path / "genicam.json")
    assert {r["pixel_format"] for r in report["camera_alone"]} == {"Mono8", "RGBa8"}
    for row in report["camera_alone"] + report["harvesters_alone"]:
        assert _number(row["delivered_fps"]), row
    for run in ("genicam", "synthetic_peer"):
        summary = report["daemon"][run]
        assert summary["frames"] == 10 and summary["error"] == 0, summary
