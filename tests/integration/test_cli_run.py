"""`inspectd run` end to end, as a real subprocess: verdicts, summary, signals, sd_notify, logs."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.support.helpers import (
    cli_env,
    daemon_config,
    make_blur_model,
    parse_json_lines,
    popen_cli,
    run_cli,
    synthetic_camera,
    verify_systemd_unit,
    write_config,
)


@pytest.fixture(scope="module")
def blur_model(tmp_path_factory) -> Path:
    return make_blur_model(tmp_path_factory.mktemp("model") / "m", size=(64, 64), pixel_threshold=0.35)


def _synthetic_config(tmp_path: Path, model: Path, *, rate_hz: float = 0, trigger: str = "free_run") -> Path:
    return daemon_config(tmp_path, model, synthetic_camera(rate_hz=rate_hz, trigger=trigger))


class _Reader:
    """Collects a subprocess's stdout lines in a thread, so the test can wait for events without blocking."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._t = threading.Thread(target=self._run, args=(proc,), daemon=True)
        self._t.start()

    def _run(self, proc) -> None:
        for line in proc.stdout:
            self.lines.append(line)

    def wait_for(self, pred, timeout: float = 60) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred(parse_json_lines("".join(self.lines))):
                return True
            time.sleep(0.05)
        return False

    def join(self) -> list[dict]:
        self._t.join(10)
        return parse_json_lines("".join(self.lines))


def _verdicts(events):
    return [e for e in events if e.get("event") == "verdict"]


def test_run_prints_a_summary_as_its_last_line_and_one_verdict_per_frame(tmp_path, blur_model):
    res = run_cli("run", "--config", str(_synthetic_config(tmp_path, blur_model)), "--max-frames", "30")
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["event"] == "summary"
    for key in ("frames", "pass", "reject", "error", "fps", "latency_ms_p50", "latency_ms_p99"):
        assert key in summary
    assert summary["frames"] == 30 == summary["pass"] + summary["reject"] + summary["error"]
    verdicts = _verdicts(parse_json_lines(res.stdout))
    assert [v["seq"] for v in verdicts] == list(range(1, 31))


def test_logs_are_json_lines_that_name_config_model_provider_and_camera(tmp_path, blur_model):
    cfg = _synthetic_config(tmp_path, blur_model)
    res = run_cli("run", "--config", str(cfg), "--max-frames", "3")
    assert res.returncode == 0, res.stderr[-2000:]
    lines = [line for line in res.stdout.splitlines() if line.strip()]
    events = [json.loads(line) for line in lines]  # every stdout line is a JSON object
    by_name = {e["event"]: e for e in events}
    assert by_name["starting"]["config"] == str(cfg.resolve())
    assert by_name["model_loaded"]["sha256"] and by_name["model_loaded"]["providers_obtained"]
    assert by_name["camera"]["type"] == "synthetic"
    assert "ready" in by_name and "warmed_up" in by_name
    assert not any("array(" in line or "[[" in line for line in lines), "no image arrays in logs"


def test_folder_camera_over_the_real_test_set_gives_exactly_one_verdict_per_image(tmp_path, blur_model, magnetic_tile):
    test_dir = magnetic_tile / "test"
    images = sorted(str(p) for p in test_dir.rglob("*.jpg"))
    assert len(images) > 500
    cfg = write_config(
        tmp_path / "c.yaml",
        f"""
        camera:
          type: folder
          path: {test_dir}
          rate_hz: 0
        model:
          path: {blur_model}
          providers: [CPUExecutionProvider]
        logging:
          format: json
        """,
    )
    res = run_cli("run", "--config", str(cfg), timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    events = parse_json_lines(res.stdout)
    verdicts = _verdicts(events)
    assert sorted(v["source"] for v in verdicts) == images
    assert [v["seq"] for v in verdicts] == list(range(1, len(images) + 1))
    summary = events[-1]
    assert summary["event"] == "summary" and summary["frames"] == len(images) and summary["error"] == 0
    truth = summary["truth"]
    n_good = sum(1 for p in images if Path(p).parent.name == "good")
    assert truth["good_pass"] + truth["good_reject"] == n_good
    assert truth["defect_pass"] + truth["defect_reject"] == len(images) - n_good


def test_sigterm_mid_run_exits_0_and_loses_no_verdict(tmp_path, blur_model):
    proc = popen_cli("run", "--config", str(_synthetic_config(tmp_path, blur_model, rate_hz=40)))
    reader = _Reader(proc)
    assert reader.wait_for(lambda ev: len(_verdicts(ev)) >= 10), "no verdicts within the timeout"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    events = reader.join()
    verdicts = _verdicts(events)
    assert [v["seq"] for v in verdicts] == list(range(1, len(verdicts) + 1))
    summary = events[-1]
    assert summary["event"] == "summary" and summary["frames"] == len(verdicts)
    assert any(e.get("event") == "stopping" and "SIGTERM" in (e.get("reason") or "") for e in events)


def test_sigint_is_a_graceful_stop_too(tmp_path, blur_model):
    proc = popen_cli("run", "--config", str(_synthetic_config(tmp_path, blur_model, rate_hz=40)))
    reader = _Reader(proc)
    assert reader.wait_for(lambda ev: len(_verdicts(ev)) >= 3)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 0
    assert reader.join()[-1]["event"] == "summary"


def test_sd_notify_ready_watchdog_status_and_stopping_reach_the_notify_socket(tmp_path, blur_model):
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(0.2)
    env = cli_env(NOTIFY_SOCKET=str(sock_path), WATCHDOG_USEC="400000")
    proc = popen_cli("run", "--config", str(_synthetic_config(tmp_path, blur_model, rate_hz=20)), env=env)
    reader = _Reader(proc)
    messages: list[str] = []
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                messages.append(sock.recv(4096).decode())
            text = "\n".join(messages)
            # READY carries a first STATUS= (no rate yet): wait for a status with the frame rate itself
            if "READY=1" in text and text.count("WATCHDOG=1") >= 3 and "fps" in text:
                break
        proc.send_signal(signal.SIGTERM)
        end = time.monotonic() + 30
        while time.monotonic() < end and "STOPPING=1" not in "\n".join(messages):
            with contextlib.suppress(TimeoutError):
                messages.append(sock.recv(4096).decode())
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()
    reader.join()
    text = "\n".join(messages)
    assert "READY=1" in text
    assert text.count("WATCHDOG=1") >= 3
    assert "STATUS=" in text and "fps" in text
    assert "STOPPING=1" in text
    # READY comes before the first watchdog ping is needed, STOPPING last
    assert text.index("READY=1") < text.index("STOPPING=1")


def test_software_trigger_from_stdin_takes_one_frame_per_line_and_echoes_item_ids(tmp_path, blur_model):
    cfg = _synthetic_config(tmp_path, blur_model, trigger="software")
    triggers = "".join(f"{i}\n" for i in range(500, 520))
    res = run_cli("run", "--config", str(cfg), "--max-frames", "20", input=triggers)
    assert res.returncode == 0, res.stderr[-2000:]
    verdicts = _verdicts(parse_json_lines(res.stdout))
    assert [v["item_id"] for v in verdicts] == list(range(500, 520))


def test_model_refused_at_start_exits_2_with_a_clear_message(tmp_path, blur_model):
    broken = tmp_path / "broken"
    shutil.copytree(blur_model, broken)
    with open(broken / "model.onnx", "ab") as f:
        f.write(b"x")
    res = run_cli("run", "--config", str(_synthetic_config(tmp_path, broken)), "--max-frames", "1")
    assert res.returncode == 2
    assert "sha256" in res.stderr


def test_systemd_unit_passes_systemd_analyze_verify_without_warnings(tmp_path):
    unit = verify_systemd_unit(tmp_path, "inspectd.service")
    for needed in ("Type=notify", "WatchdogSec=", "Restart=", "ExecStartPre=", "CacheDirectory=", "check-config"):
        assert needed in unit
    assert "PrivateDevices=yes" not in unit


def test_a_model_with_scaled_tiles_runs_in_the_daemon_and_reports_regions_in_camera_pixels(tmp_path):
    """preprocess.scale 0.5: the daemon halves each 200 x 240 frame before tiling, and the defect's region comes back
    where the defect is in the camera frame (a 16 px square at (66, 80)), not in the half-size frame."""
    import cv2
    import numpy as np

    model = make_blur_model(
        tmp_path / "m", size=(32, 32), mode="tile", tile_overlap=8, scale=0.5, pixel_threshold=0.35, min_region_area=4
    )
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(6):
        img = np.full((200, 240), 128, np.uint8) + np.random.default_rng(i).integers(0, 3, (200, 240), dtype=np.uint8)
        if i % 2:
            img[66:82, 80:96] = 10
        cv2.imwrite(str(folder / f"{i:02d}.png"), img)
    cfg = daemon_config(tmp_path, model, f"          type: folder\n          path: {folder}\n          rate_hz: 0")
    res = run_cli("run", "--config", str(cfg), timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    verdicts = _verdicts(parse_json_lines(res.stdout))
    assert [v["code"] for v in verdicts] == ["pass", "reject"] * 3
    for v in verdicts[1::2]:
        r = max(v["regions"], key=lambda r: r["area"])
        cx, cy = r["x"] + r["w"] / 2, r["y"] + r["h"] / 2
        assert abs(cx - 88) <= 4 and abs(cy - 74) <= 4, r  # the square's centre in camera pixels
        assert r["w"] >= 12 and r["h"] >= 12
