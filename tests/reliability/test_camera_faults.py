"""Camera faults on the real daemon: a folder that is missing, appears, is emptied and refilled; a video that ends;
an HTTP camera URL that refuses connections, comes up, and goes away again. Each item gets exactly one verdict
(an error verdict, code 3, while the source is gone), the PLC sees state 2 and ready 0 while the camera is down and
the heartbeat keeps moving, and the daemon is alive throughout (exit 0 at the end)."""

from __future__ import annotations

import functools
import http.server
import socketserver
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.support.helpers import draw_item, make_blur_model, run_cli
from tests.support.net import free_port, wait_until
from tests.support.plc import plc_client
from tests.support.reliability import assert_accounted, config, plc_section, plc_view, run_daemon, verdicts


@pytest.fixture(scope="module")
def blur_model(tmp_path_factory) -> Path:
    return make_blur_model(tmp_path_factory.mktemp("model") / "m", size=(64, 64), pixel_threshold=0.35)


def _fill(folder: Path, n: int = 4) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"item{i}.png"
        cv2.imwrite(str(p), draw_item((96, 96), defect=i % 2 == 1, seed=i))
        paths.append(p)
    return paths


def _reconnect(indent: str = "          ") -> str:
    return f"{indent}reconnect:\n{indent}  initial_s: 0.1\n{indent}  max_s: 0.3"


def test_folder_missing_then_filled_then_emptied_then_refilled(tmp_path, blur_model):
    folder = tmp_path / "images"
    port = free_port()
    cam = (
        f"          type: folder\n          path: {folder}\n          loop: true\n          rate_hz: 25\n"
        + _reconnect()
    )
    d = run_daemon(config(tmp_path, blur_model, cam, extra=plc_section(port)))
    c = plc_client(port)
    try:
        # 1. no folder: camera fault, not ready, but alive (the heartbeat moves), no items taken
        assert d.wait_event("camera_open_failed", 20)
        # the state reaches the PLC sink's thread just after the log line: wait for it, do not race it
        assert wait_until(lambda: plc_view(c)["state"] == 2 and not plc_view(c)["ready"], 3), plc_view(c)
        v = plc_view(c)
        assert wait_until(lambda: plc_view(c)["heartbeat"] != v["heartbeat"], 3), "heartbeat must move"
        assert not verdicts(d)
        # 2. the folder appears: running, ready, results
        _fill(folder)
        assert wait_until(lambda: plc_view(c)["state"] == 1 and plc_view(c)["ready"], 10)
        assert wait_until(lambda: len(verdicts(d)) >= 8, 20)
        # 3. emptied under the daemon: each item is an error verdict (code 3), the daemon goes on
        for p in folder.iterdir():
            p.unlink()
        n = len(verdicts(d))
        assert wait_until(lambda: sum(x["code"] == "error" for x in verdicts(d)[n:]) >= 5, 10)
        assert wait_until(lambda: plc_view(c)["last_code"] == 3, 3)
        assert all("cannot read" in x.get("error", "") for x in verdicts(d)[n:] if x["code"] == "error")
        # 4. refilled: good results again
        _fill(folder)
        m = len(verdicts(d))
        assert wait_until(lambda: sum(x["code"] != "error" for x in verdicts(d)[m:]) >= 5, 10)
        assert wait_until(lambda: plc_view(c)["state"] == 1, 3), plc_view(c)
    finally:
        c.close()
        code = d.stop()
    assert code == 0
    s = assert_accounted(d)
    assert s["error"] >= 5 and s["pass"] + s["reject"] >= 13, s


def test_a_video_that_ends_answers_every_frame_and_exits_0(tmp_path, blur_model):
    path = tmp_path / "v.avi"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (96, 96))
    for i in range(24):
        w.write(cv2.cvtColor(draw_item((96, 96), defect=i % 3 == 0, seed=i), cv2.COLOR_GRAY2BGR))
    w.release()
    cam = f"          type: video\n          path: {path}\n          rate_hz: 0"
    d = run_daemon(config(tmp_path, blur_model, cam), ready=False)
    assert d.proc.wait(120) == 0
    d._t.join(5)
    s = assert_accounted(d, expect_frames=24)
    assert s["error"] == 0 and d.events("camera_end_of_stream")
    # a truncated video file: the frames that decode are inspected, the end is an end of stream, not a crash
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    res = run_cli("run", "--config", str(tmp_path / "c.yaml"), timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]


class _Http:
    """A tiny HTTP server publishing one MJPG video: the network camera that comes and goes."""

    def __init__(self, directory: Path, port: int) -> None:
        handler = functools.partial(_Quiet, directory=str(directory))
        self.server = _Threading(("127.0.0.1", port), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


class _Threading(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_an_http_camera_that_refuses_connections_comes_up_and_goes_away(tmp_path, blur_model):
    www = tmp_path / "www"
    www.mkdir()
    w = cv2.VideoWriter(str(www / "cam.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 25, (96, 96))
    for i in range(3000):  # OpenCV decodes it as fast as it can: a few seconds of stream at most
        w.write(np.full((96, 96, 3), 120 + i % 8, np.uint8))
    w.release()
    http_port, port = free_port(), free_port()
    cam = (
        f"          type: opencv\n          source: http://127.0.0.1:{http_port}/cam.avi\n          trigger: plc\n"
        f"          timeout_s: 1.0\n" + _reconnect()
    )
    d = run_daemon(config(tmp_path, blur_model, cam, extra=plc_section(port)))
    c = plc_client(port)
    items: list[int] = []
    codes: dict[int, int] = {}

    def item(item_id: int) -> int:
        """The PLC's side of one trigger: item id, trigger coil, wait for the acknowledgement and the result."""
        seq = plc_view(c)["last_seq"]
        assert not c.write_register(20, item_id, device_id=1).isError()
        assert not c.write_coil(8, True, device_id=1).isError()
        items.append(item_id)
        assert wait_until(lambda: not c.read_coils(8, count=1, device_id=1).bits[0], 10), "trigger not acknowledged"
        assert wait_until(lambda: plc_view(c)["last_seq"] == seq + 1, 10), "no result"
        regs = c.read_holding_registers(0, count=8, device_id=1).registers
        assert regs[6] == item_id
        codes[item_id] = regs[3]
        return regs[3]

    try:
        assert d.wait_event("camera_open_failed", 20)
        assert wait_until(lambda: plc_view(c)["state"] == 2 and not plc_view(c)["ready"], 3), plc_view(c)
        assert [item(100 + i) for i in range(5)] == [3] * 5, "no camera: every item is an error (reject)"
        srv = _Http(www, http_port)  # the camera comes up
        try:
            assert wait_until(lambda: plc_view(c)["state"] == 1, 15), "camera did not reconnect"
            got = [item(200 + i) for i in range(10)]
            # a finite HTTP video: when it runs out the camera reconnects, and an item taken then is an error
            assert got.count(3) <= 5 and set(got) <= {1, 2, 3}, got
        finally:
            srv.stop()  # and goes away: the stream runs out or the connection drops; reopening is refused
        deadline = time.monotonic() + 30
        for i in range(300):  # items keep coming; the loss is found on a read (the stream ends, the reopen is refused)
            if plc_view(c)["state"] == 2 or time.monotonic() > deadline:
                break
            item(300 + i)
            time.sleep(0.05)
        assert plc_view(c)["state"] == 2
        assert [item(400 + i) for i in range(3)] == [3] * 3
        assert plc_view(c)["state"] == 2 and not plc_view(c)["ready"]
    finally:
        c.close()
        code = d.stop()
    assert code == 0
    assert_accounted(d, expect_frames=len(items))
    assert [v["item_id"] for v in verdicts(d)] == items, "one verdict per PLC item, in order, with its id"
    assert sum(1 for v in verdicts(d) if v["code"] == "error") == sum(1 for x in codes.values() if x == 3)
    assert d.events("camera_lost") or d.events("camera_open_failed")


def test_a_fifo_named_like_an_image_in_a_folder_camera_is_an_error_verdict_not_a_hang(tmp_path, blur_model):
    """Issue 24, item 3: a FIFO `x.png` blocked acquisition forever while ready, state and the heartbeat looked
    healthy, and SIGTERM needed 13 s."""
    import os

    folder = tmp_path / "images"
    _fill(folder, 3)
    os.mkfifo(folder / "item1x.png")  # sorts between item1 and item2; nobody ever writes to it
    port = free_port()
    cam = f"          type: folder\n          path: {folder}\n          loop: true\n          rate_hz: 20"
    d = run_daemon(config(tmp_path, blur_model, cam, extra=plc_section(port)))
    c = plc_client(port)
    try:
        assert wait_until(lambda: len(verdicts(d)) >= 12, 10), f"acquisition stalled at {len(verdicts(d))} verdicts"
        bad = [v for v in verdicts(d) if v["source"].endswith("item1x.png")]
        assert bad and all(v["code"] == "error" and "not a regular file" in v["error"] for v in bad), bad
        assert plc_view(c)["state"] == 1, "the folder itself is fine"
    finally:
        c.close()
        t0 = time.monotonic()
        code = d.stop()
        stop_s = time.monotonic() - t0
    assert code == 0 and stop_s < 5, (code, stop_s)
    assert_accounted(d)


def test_a_source_that_blocks_in_open_is_a_camera_fault_within_its_bound_and_triggers_get_error_verdicts(
    tmp_path, blur_model
):
    """A source where no timeout of its own reaches (OpenCV opening a FIFO blocks in open(2) until a writer comes):
    camera.open_timeout_s bounds it; the PLC sees state 2 and ready 0, its triggers are answered with error
    verdicts, the heartbeat moves, and SIGTERM is not held up."""
    import os

    fifo = tmp_path / "camera.fifo"
    os.mkfifo(fifo)
    port = free_port()
    cam = (
        f"          type: opencv\n          source: {fifo}\n          trigger: plc\n          timeout_s: 0.5\n"
        "          open_timeout_s: 1.0\n" + _reconnect()
    )
    d = run_daemon(config(tmp_path, blur_model, cam, extra=plc_section(port)))
    c = plc_client(port)
    try:
        assert d.wait_event("camera_open_failed", 10), "the blocked open was never reported"
        assert "did not return within 1 s" in d.events("camera_open_failed")[0]["error"]
        assert wait_until(lambda: plc_view(c)["state"] == 2 and not plc_view(c)["ready"], 3), plc_view(c)
        v = plc_view(c)
        assert wait_until(lambda: plc_view(c)["heartbeat"] != v["heartbeat"], 3), "heartbeat must move"
        for item_id in (11, 12, 13):
            seq = plc_view(c)["last_seq"]
            assert not c.write_register(20, item_id, device_id=1).isError()
            assert not c.write_coil(8, True, device_id=1).isError()
            assert wait_until(lambda: not c.read_coils(8, count=1, device_id=1).bits[0], 5), "trigger not answered"
            assert wait_until(lambda s=seq: plc_view(c)["last_seq"] == s + 1, 5)
            assert plc_view(c)["last_code"] == 3
    finally:
        c.close()
        t0 = time.monotonic()
        code = d.stop()
        stop_s = time.monotonic() - t0
    assert code == 0 and stop_s < 5, (code, stop_s)
    assert_accounted(d, expect_frames=3)
    assert [v["item_id"] for v in verdicts(d)] == [11, 12, 13]
