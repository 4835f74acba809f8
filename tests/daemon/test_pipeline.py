"""The pipeline gives every admitted frame exactly one verdict, in order, whatever fails around it."""

from __future__ import annotations

import time

import pytest

from inspectd.core.types import Code, Verdict
from inspectd.daemon.cameras.base import CameraConfigBase
from inspectd.daemon.dispatch import Dispatcher
from inspectd.daemon.pipeline import Pipeline, State
from inspectd.inspection.inspector import Inspector
from tests.support.helpers import CollectSink, ScriptedCamera, SlowInspector, make_blur_model


class _Cfg(CameraConfigBase):
    type: str = "scripted"


@pytest.fixture(scope="module")
def inspector(tmp_path_factory):
    model = make_blur_model(tmp_path_factory.mktemp("m"), size=(96, 96), pixel_threshold=0.3, min_region_area=4)
    return Inspector.from_model_dir(model, providers=("CPUExecutionProvider",))


def _run(camera, inspector, *, max_frames=0, cfg=None, timeout=30.0, **kw):
    sink = CollectSink()
    disp = Dispatcher([sink])
    pipe = Pipeline(camera, cfg or _Cfg(rate_hz=0), inspector, disp, max_frames=max_frames, **kw)
    pipe.start()
    assert pipe.wait(timeout), "pipeline did not finish in time"
    assert disp.flush() == 0
    return pipe, disp, sink.verdicts


def _assert_one_verdict_each_in_order(verdicts, n):
    assert [v.seq for v in verdicts] == list(range(1, n + 1))


def test_every_frame_gets_one_verdict_in_order(inspector):
    cam = ScriptedCamera(live=False, total=40, defect_every=4)
    pipe, _disp, verdicts = _run(cam, inspector)
    _assert_one_verdict_each_in_order(verdicts, 40)
    assert pipe.stop_reason == "end of stream"
    codes = [v.code for v in verdicts]
    assert codes.count(Code.REJECT) == 10 and codes.count(Code.PASS) == 30
    assert all((v.code is Code.REJECT) == v.truth for v in verdicts)


def test_max_frames_stops_after_exactly_n_verdicts(inspector):
    _pipe, disp, verdicts = _run(ScriptedCamera(), inspector, max_frames=25)
    _assert_one_verdict_each_in_order(verdicts, 25)
    assert disp.summary()["frames"] == 25


def test_overrun_of_a_live_camera_gives_error_verdicts_not_drops(inspector):
    slow = SlowInspector(inspector, 0.03)
    cam = ScriptedCamera(live=True, read_delay_s=0.002)
    _pipe, disp, verdicts = _run(cam, slow, cfg=_Cfg(rate_hz=500), max_frames=60, queue_size=2)
    _assert_one_verdict_each_in_order(verdicts, 60)
    errors = [v for v in verdicts if v.code is Code.ERROR]
    assert errors, "a camera 15x faster than inspection must overrun the queue"
    assert all("queue overrun" in v.error for v in errors)
    assert disp.summary()["error"] == len(errors)


def test_live_camera_at_rate_0_waits_for_the_pipeline_instead_of_overrunning(inspector):
    slow = SlowInspector(inspector, 0.01)
    _, _, verdicts = _run(ScriptedCamera(live=True), slow, cfg=_Cfg(rate_hz=0), max_frames=30, queue_size=1)
    _assert_one_verdict_each_in_order(verdicts, 30)
    assert not [v for v in verdicts if v.code is Code.ERROR]


def test_replay_source_blocks_instead_of_overrunning(inspector):
    slow = SlowInspector(inspector, 0.01)
    _, _, verdicts = _run(ScriptedCamera(live=False, total=30), slow, queue_size=1)
    _assert_one_verdict_each_in_order(verdicts, 30)
    assert not [v for v in verdicts if v.code is Code.ERROR]


def test_camera_read_failure_gives_error_verdict_and_reopens(inspector):
    cam = ScriptedCamera(live=False, fail_reads={5, 6}, total=20)
    cfg = _Cfg(rate_hz=0, reconnect={"initial_s": 0.01, "max_s": 0.05})
    _pipe, _, verdicts = _run(cam, inspector, cfg=cfg)
    _assert_one_verdict_each_in_order(verdicts, 20)
    errors = [v for v in verdicts if v.code is Code.ERROR]
    assert len(errors) == 2 and all("scripted read failure" in v.error for v in errors)
    assert cam.opens == 3  # first open + one reopen per failure


def test_camera_that_cannot_open_is_retried_with_backoff_and_recovers(inspector):
    cam = ScriptedCamera(live=False, fail_opens=3, total=5)
    cfg = _Cfg(rate_hz=0, reconnect={"initial_s": 0.02, "max_s": 0.08})
    t0 = time.monotonic()
    _pipe, _, verdicts = _run(cam, inspector, cfg=cfg)
    elapsed = time.monotonic() - t0
    assert cam.open_attempts == 4
    assert elapsed >= 0.02 + 0.04 + 0.08 - 0.01  # doubling backoff, capped at max_s
    _assert_one_verdict_each_in_order(verdicts, 5)
    assert all(v.code is not Code.ERROR for v in verdicts)


def test_camera_fault_state_is_reported_while_the_camera_is_down(inspector):
    cam = ScriptedCamera(fail_opens=1000)
    cfg = _Cfg(rate_hz=0, reconnect={"initial_s": 0.01, "max_s": 0.02})
    disp = Dispatcher([CollectSink()])
    pipe = Pipeline(cam, cfg, inspector, disp)
    pipe.start()
    deadline = time.monotonic() + 5
    while pipe.state is not State.CAMERA_FAULT and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pipe.state is State.CAMERA_FAULT
    pipe.stop()
    assert pipe.wait(5)


def test_unreadable_frame_gets_an_error_verdict_and_the_next_one_is_inspected(inspector):
    _, _, verdicts = _run(ScriptedCamera(live=False, bad_frames={2}, total=6), inspector)
    _assert_one_verdict_each_in_order(verdicts, 6)
    assert verdicts[2].code is Code.ERROR and "scripted corrupt frame" in verdicts[2].error
    assert verdicts[3].code is Code.PASS


def test_inspection_exception_gives_error_verdict_and_pipeline_continues(inspector):
    class Flaky:
        def __init__(self):
            self.n = 0

        def inspect(self, image):
            self.n += 1
            if self.n in (2, 3):
                raise RuntimeError("onnxruntime exploded")
            return inspector.inspect(image)

    _, _, verdicts = _run(ScriptedCamera(live=False, total=6), Flaky())
    _assert_one_verdict_each_in_order(verdicts, 6)
    assert [v.code for v in verdicts].count(Code.ERROR) == 2
    assert "onnxruntime exploded" in verdicts[1].error


def test_software_trigger_takes_one_frame_per_trigger_and_echoes_item_id(inspector):
    cam = ScriptedCamera()
    cfg = _Cfg(trigger="software")
    disp = Dispatcher([sink := CollectSink()])
    pipe = Pipeline(cam, cfg, inspector, disp)
    pipe.start()
    for item in range(100, 130):
        pipe.trigger(item)
    deadline = time.monotonic() + 10
    while len(sink.verdicts) < 30 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # no frame may be taken without a trigger
    pipe.stop()
    assert pipe.wait(5)
    assert [v.item_id for v in sink.verdicts] == list(range(100, 130))
    assert cam.reads == 30


def test_stop_finishes_frames_already_admitted(inspector):
    slow = SlowInspector(inspector, 0.02)
    cam = ScriptedCamera(live=False)
    disp = Dispatcher([sink := CollectSink()])
    pipe = Pipeline(cam, _Cfg(rate_hz=0), slow, disp, queue_size=4)
    pipe.start()
    time.sleep(0.3)
    pipe.stop("test")
    assert pipe.wait(5)
    assert disp.flush() == 0
    n = len(sink.verdicts)
    assert n > 0 and cam.reads == n
    _assert_one_verdict_each_in_order(sink.verdicts, n)


def test_free_run_rate_paces_acquisition(inspector):
    cfg = _Cfg(rate_hz=50)
    t0 = time.monotonic()
    _run(ScriptedCamera(), inspector, cfg=cfg, max_frames=20)
    assert time.monotonic() - t0 >= 19 / 50 - 0.02


def test_dispatcher_sends_in_seq_order_and_drops_duplicates():
    sink = CollectSink()
    disp = Dispatcher([sink])
    for seq in (3, 1, 2, 2, 5, 4):
        disp.emit(Verdict(seq=seq, item_id=0, wall_time=0.0, code=Code.PASS))
    assert [v.seq for v in sink.verdicts] == [1, 2, 3, 4, 5]
    assert disp.summary()["frames"] == 5


def test_dispatcher_flush_reports_gaps():
    sink = CollectSink()
    disp = Dispatcher([sink])
    disp.emit(Verdict(seq=2, item_id=0, wall_time=0.0, code=Code.PASS))
    assert sink.verdicts == []
    assert disp.flush() == 1
    assert [v.seq for v in sink.verdicts] == [2]


def test_a_failing_sink_does_not_stop_the_others():
    class Broken:
        name = "broken"

        def emit(self, v):
            raise OSError("disk full")

        def close(self):
            pass

    good = CollectSink()
    disp = Dispatcher([Broken(), good])
    for seq in (1, 2, 3):
        disp.emit(Verdict(seq=seq, item_id=0, wall_time=0.0, code=Code.REJECT))
    assert len(good.verdicts) == 3


class _Blocking(ScriptedCamera):
    """Reads frames until read number `block_at`, which blocks until released (a hung mount, a FIFO)."""

    def __init__(self, block_at: int, **kw) -> None:
        super().__init__(**kw)
        import threading

        self.block_at = block_at
        self.release = threading.Event()

    def read(self, timeout_s: float):
        if self.reads == self.block_at:
            self.release.wait(30)
        return super().read(timeout_s)


def test_a_read_that_blocks_is_bounded_by_camera_timeout_s_and_reported_as_a_camera_fault(inspector):
    cam = _Blocking(3, live=True)
    sink = CollectSink()
    pipe = Pipeline(cam, _Cfg(rate_hz=50, timeout_s=0.3), inspector, Dispatcher([sink]))
    states = []
    pipe.dispatcher.broadcast_state = states.append
    pipe.start()
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(v.code is Code.ERROR for v in sink.verdicts):
            time.sleep(0.02)
        errors = [v for v in sink.verdicts if v.code is Code.ERROR]
        assert errors and "did not return within" in errors[0].error, [v.error for v in sink.verdicts]
        assert pipe.state is State.CAMERA_FAULT and int(State.CAMERA_FAULT) in states
        assert pipe._healthy(), "acquisition is not stuck: the watchdog and heartbeat go on, reporting the fault"
        n = len(sink.verdicts)
        cam.release.set()  # the source answers again: the late read is dropped, the camera reopened
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not [v for v in sink.verdicts[n:] if v.code is not Code.ERROR]:
            time.sleep(0.02)
        assert [v for v in sink.verdicts[n:] if v.code is not Code.ERROR], "no frame after the source recovered"
    finally:
        t0 = time.monotonic()
        pipe.stop("test")
        assert pipe.wait(5)
        assert time.monotonic() - t0 < 2
    _assert_one_verdict_each_in_order(sink.verdicts, len(sink.verdicts))
