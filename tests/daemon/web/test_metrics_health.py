"""/metrics, /healthz and /readyz on a real `inspectd run`, read over real HTTP: the metrics parse with
prometheus-client's own parser and count exactly what the summary line counts; health turns 503 (with the reason)
while the camera is gone and 200 again when it is back; the control socket's status tells the same."""

from __future__ import annotations

import json
import re
import shutil
import socket
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.collector import Daemon, daemon_config
from tests.support.helpers import REPO, draw_item, make_blur_model, run_cli, write_config
from tests.support.net import free_port, wait_until
from tests.support.reliability import config, run_daemon

REQUIRED = {
    "inspectd_frames",
    "inspectd_verdicts",
    "inspectd_latency_seconds",
    "inspectd_stage_seconds",
    "inspectd_queue_depth",
    "inspectd_state",
    "inspectd_camera_open",
    "inspectd_camera_last_image_age_seconds",
    "inspectd_plc_link_up",
    "inspectd_plc_clients",
    "inspectd_spool_records",
    "inspectd_spool_oldest_record_age_seconds",
    "inspectd_rejects_stored",
    "inspectd_model_info",
    "inspectd_runtime_info",
    "inspectd_healthy",
    "inspectd_ready",
}


@pytest.fixture(scope="module")
def blur_model(tmp_path_factory) -> Path:
    return make_blur_model(tmp_path_factory.mktemp("model") / "m", size=(64, 64), pixel_threshold=0.35)


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as res:
            return res.status, res.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def scrape(url: str) -> dict[str, dict]:
    """name -> {labels tuple: value} for every sample, parsed by prometheus-client's own parser."""
    status, text = get(url + "/metrics")
    assert status == 200
    out: dict[str, dict] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
        out.setdefault("__families__", {})[family.name] = family.type
    return out


def test_metrics_parse_and_count_exactly_what_the_summary_line_counts(tmp_path, blur_model):
    http_port, plc_port = free_port(), free_port()
    extra = (
        f"plc:\n  server:\n    host: 127.0.0.1\n    port: {plc_port}\nhttp:\n  host: 127.0.0.1\n  port: {http_port}\n"
    )
    d = Daemon(daemon_config(tmp_path, blur_model, free_port(), extra=extra))
    url = f"http://127.0.0.1:{http_port}"
    try:
        d.frames(30)
        assert wait_until(lambda: len(d.events("verdict")) >= 30, 30)
        assert wait_until(lambda: d.status()["rejects"]["queued"] == 0, 10)
        m = scrape(url)
        status = d.status()
    finally:
        code = d.stop()
    assert code == 0
    families = m["__families__"]
    assert set(families) >= REQUIRED, REQUIRED - set(families)
    summary = d.events("summary")[-1]
    verdicts = {dict(k)["code"]: v for k, v in m["inspectd_verdicts_total"].items()}
    assert verdicts == {"pass": summary["pass"], "reject": summary["reject"], "error": summary["error"]}
    assert m["inspectd_frames_total"][()] == summary["frames"] == 30
    assert m["inspectd_latency_seconds_count"][()] == summary["pass"] + summary["reject"]
    stages = {dict(k)["stage"] for k in m["inspectd_stage_seconds_count"]}
    assert stages == {"preprocess", "inference", "ssim", "decide"}
    assert m["inspectd_state"][(("state", "running"),)] == 1 and sum(m["inspectd_state"].values()) == 1
    assert m["inspectd_ready"][()] == 1 and m["inspectd_healthy"][()] == 1
    assert m["inspectd_plc_link_up"][(("mode", "server"),)] == 0
    assert m["inspectd_rejects_stored"][()] == status["rejects"]["count"] == summary["reject"]
    model = dict(next(iter(m["inspectd_model_info"])))
    assert model["name"] == "test-blur" and len(model["sha256"]) == 64
    assert "CPUExecutionProvider" in dict(next(iter(m["inspectd_runtime_info"])))["providers"]
    # the control socket reports the same picture
    assert status["state"] == "running" and status["ready"] and status["healthy"]
    assert status["frames"] == 30 and status["verdicts"] == verdicts
    assert status["plc"] == {"mode": "server", "link": "down", "clients": 0}
    assert (
        status["queue_size"] == 4
        and status["plc_link"] == "down"
        and "fps" in status
        and status["spool"]["oldest_age_s"] is None
    )


def test_the_grafana_dashboard_queries_only_metrics_the_daemon_serves(tmp_path, blur_model):
    board = json.loads((REPO / "docs" / "grafana" / "inspectd-fleet.json").read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 10
    names = {n for e in exprs for n in re.findall(r"\b(inspectd_[a-z_]+|process_[a-z_]+)\b", e)}
    http_port = free_port()
    cam = "          type: synthetic\n          width: 64\n          height: 64\n          rate_hz: 20"
    extra = (
        f"        plc:\n          server:\n            host: 127.0.0.1\n            port: {free_port()}\n"
        f"        rejects:\n          dir: {tmp_path / 'rejects'}\n"
        f"        feedback:\n          collector: tcp://127.0.0.1:{free_port()}\n"
        f"          spool_dir: {tmp_path / 's'}\n"
        f"        http:\n          port: {http_port}"
    )
    d = run_daemon(config(tmp_path, blur_model, cam, extra=extra))
    try:
        assert wait_until(lambda: len(d.events("verdict")) >= 5, 20)
        served = set(scrape(f"http://127.0.0.1:{http_port}"))
    finally:
        assert d.stop() == 0
    missing = {n for n in names if n not in served and not any(s.startswith(n) for s in served)}
    assert not missing, f"the dashboard queries metrics /metrics does not serve: {missing}"


def _fill(folder: Path, n: int = 6) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        cv2.imwrite(str(folder / f"item{i}.png"), draw_item((96, 96), defect=i % 2 == 1, seed=i))


def test_healthz_is_503_with_the_reason_while_the_camera_is_gone_and_200_when_it_is_back(tmp_path, blur_model):
    folder = tmp_path / "images"  # missing at start: the camera cannot open
    http_port = free_port()
    cam = (
        f"          type: folder\n          path: {folder}\n          loop: true\n          rate_hz: 10\n"
        "          reconnect:\n            initial_s: 0.1\n            max_s: 0.3"
    )
    d = run_daemon(config(tmp_path, blur_model, cam, extra=f"        http:\n          port: {http_port}"))
    url = f"http://127.0.0.1:{http_port}"

    def reason(path: str) -> str:
        return json.loads(get(url + path)[1])["reason"]

    try:
        # 1. no camera: neither ready (the PLC's ready coil) nor healthy, and both say why
        assert wait_until(lambda: get(url + "/readyz")[0] == 503 and "camera fault" in reason("/readyz"), 10)
        assert get(url + "/healthz")[0] == 503 and "does not exist" in reason("/healthz"), reason("/healthz")
        assert scrape(url)["inspectd_healthy"][()] == 0
        # 2. the camera delivers: 200 and 200
        _fill(folder)
        assert wait_until(lambda: get(url + "/healthz")[0] == 200, 10), reason("/healthz")
        assert get(url + "/readyz") == (200, '{"status":"ok","reason":"ok"}')
        # 3. its files vanish under it: every read fails. Still "ready" (the source opened; the PLC's ready coil
        # stays 1 and each item is an error verdict), but not healthy
        shutil.rmtree(folder)
        assert wait_until(lambda: get(url + "/healthz")[0] == 503, 5), reason("/healthz")
        body = json.loads(get(url + "/healthz")[1])
        assert body["status"] == "unavailable" and "camera" in body["reason"] and "cannot read" in body["reason"]
        # 4. back: healthy again
        _fill(folder)
        assert wait_until(lambda: get(url + "/healthz")[0] == 200, 10), reason("/healthz")
        assert get(url + "/readyz")[0] == 200
        assert get(url + "/")[0] == 404  # no station configured: metrics and health only
    finally:
        assert d.stop() == 0


def test_a_station_without_a_reject_store_is_refused_and_a_busy_port_exits_1(tmp_path, blur_model):
    cfg = write_config(
        tmp_path / "bad.yaml",
        f"""
        camera:
          type: synthetic
        model:
          path: {blur_model}
        http:
          station:
            secret_file: pin
        """,
    )
    res = run_cli("check-config", "--config", str(cfg))
    assert res.returncode == 2 and "http.station" in res.stderr and "rejects:" in res.stderr, res.stderr
    with socket.socket() as s:  # another process's port
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        cam = "          type: synthetic\n          width: 64\n          height: 64\n          rate_hz: 5"
        res = run_cli(
            "run", "--config", str(config(tmp_path, blur_model, cam, extra=f"        http:\n          port: {port}"))
        )
    assert res.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in res.stderr, res.stderr
