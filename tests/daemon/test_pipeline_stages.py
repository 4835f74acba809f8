"""The staged pipeline: prepare, inference and scoring overlap; a failure in any stage is that frame's one ERROR
verdict; stopping drains every stage; a stuck stage stops the liveness pings; the thread budget rule."""

from __future__ import annotations

import threading
import time

import numba
import numpy as np
import pytest

from inspectd.core.errors import ConfigError
from inspectd.core.types import Code
from inspectd.daemon.cameras.base import CameraConfigBase
from inspectd.daemon.config import parse_config
from inspectd.daemon.dispatch import Dispatcher
from inspectd.daemon.pipeline import Pipeline, thread_budget
from inspectd.inspection.inspector import Inspector
from tests.support.helpers import CollectSink, ScriptedCamera, draw_item, make_blur_model


class _Cfg(CameraConfigBase):
    type: str = "scripted"


@pytest.fixture(scope="module")
def inspector(tmp_path_factory):
    model = make_blur_model(tmp_path_factory.mktemp("m"), size=(96, 96), pixel_threshold=0.3, min_region_area=4)
    return Inspector.from_model_dir(model, providers=("CPUExecutionProvider",))


class Staged:
    """A real Inspector's three stages, with optional delays, failures and a record of when each ran."""

    def __init__(self, inner, *, delay_s=0.0, fail=None, block=None):
        self.inner = inner
        self.delay_s = delay_s
        self.fail = fail or {}  # stage name -> set of call numbers (1-based) that raise
        self.block = block  # (stage, call number, Event): that call waits for the event
        self.calls = {"prepare": 0, "infer": 0, "finish": 0}
        self.spans = {"prepare": [], "infer": [], "finish": []}
        self.numba_threads_seen = []

    def _enter(self, stage):
        self.calls[stage] += 1
        n = self.calls[stage]
        t0 = time.monotonic()
        if self.block and self.block[0] == stage and self.block[1] == n:
            self.block[2].wait(10)
        if self.delay_s:
            time.sleep(self.delay_s)
        if n in self.fail.get(stage, ()):
            raise RuntimeError(f"{stage} exploded on call {n}")
        return t0

    def prepare(self, image):
        t0 = self._enter("prepare")
        out = self.inner.prepare(image)
        self.spans["prepare"].append((t0, time.monotonic()))
        return out

    def infer(self, pending):
        t0 = self._enter("infer")
        out = self.inner.infer(pending)
        self.spans["infer"].append((t0, time.monotonic()))
        return out

    def finish(self, pending):
        self.numba_threads_seen.append(numba.get_num_threads())
        t0 = self._enter("finish")
        out = self.inner.finish(pending)
        self.spans["finish"].append((t0, time.monotonic()))
        return out


def _run(camera, inspector, *, max_frames=0, timeout=30.0, sinks=(), **kw):
    sink = CollectSink()
    disp = Dispatcher([sink, *sinks])
    pipe = Pipeline(camera, _Cfg(rate_hz=0), inspector, disp, max_frames=max_frames, **kw)
    pipe.start()
    assert pipe.wait(timeout), "pipeline did not finish in time"
    assert disp.flush() == 0
    return pipe, sink.verdicts


def _in_order(verdicts, n):
    assert [v.seq for v in verdicts] == list(range(1, n + 1))


# ------------------------------------------------------------------------------------------ Inspector stages


def test_inspect_is_the_three_stages_in_a_row(inspector):
    image = draw_item(defect=True, seed=3)
    whole = inspector.inspect(image)
    staged = inspector.finish(inspector.infer(inspector.prepare(image)))
    assert np.array_equal(whole.score_map, staged.score_map)
    assert whole.decision == staged.decision
    assert np.array_equal(inspector.score_map(image), whole.score_map)
    assert set(staged.timings_ms) == {"preprocess", "inference", "ssim", "decide"}


def test_finish_without_inference_is_refused(inspector):
    with pytest.raises(ValueError, match="infer"):
        inspector.finish(inspector.prepare(draw_item(defect=False)))


# ------------------------------------------------------------------------------------------ errors per stage


@pytest.mark.parametrize("stage", ["prepare", "infer", "finish"])
def test_a_failure_in_any_stage_is_one_error_verdict_for_that_frame(inspector, stage):
    staged = Staged(inspector, fail={stage: {3}})
    _, verdicts = _run(ScriptedCamera(live=False, total=8), staged)
    _in_order(verdicts, 8)
    errors = [v for v in verdicts if v.code is Code.ERROR]
    assert [v.seq for v in errors] == [3]
    assert f"{stage} exploded on call 3" in errors[0].error
    assert all(v.code is Code.PASS for v in verdicts if v.seq != 3)


def test_three_failures_in_a_row_set_inference_fault_and_a_success_clears_it(inspector):
    states = []

    class StateSink(CollectSink):
        name = "states"

        def on_state(self, state):
            states.append(state)

    staged = Staged(inspector, fail={"finish": {2, 3, 4}})
    disp = Dispatcher([sink := CollectSink(), StateSink()])
    pipe = Pipeline(ScriptedCamera(live=False), _Cfg(rate_hz=0), staged, disp)  # endless: no early STOPPING
    pipe.start()
    deadline = time.monotonic() + 10
    while len(sink.verdicts) < 7 and time.monotonic() < deadline:
        time.sleep(0.01)
    pipe.stop("test")
    assert pipe.wait(10)
    assert disp.flush() == 0
    _in_order(sink.verdicts, len(sink.verdicts))
    assert [v.seq for v in sink.verdicts if v.code is Code.ERROR] == [2, 3, 4]
    assert 3 in states  # INFERENCE_FAULT while the failures lasted
    assert states.index(3) < len(states) - 1 and 1 in states[states.index(3) :]  # then RUNNING again


# ------------------------------------------------------------------------------------------ overlap, drain


def test_scoring_of_one_frame_overlaps_inference_of_the_next(inspector):
    staged = Staged(inspector, delay_s=0.02)
    _, verdicts = _run(ScriptedCamera(live=False, total=12), staged)
    _in_order(verdicts, 12)

    def overlaps(a, b):
        return any(s1 < e2 and s2 < e1 for s1, e1 in a for s2, e2 in b)

    assert overlaps(staged.spans["finish"], staged.spans["infer"])
    assert overlaps(staged.spans["prepare"], staged.spans["infer"])


def test_stop_drains_every_stage_and_answers_every_frame_taken(inspector):
    staged = Staged(inspector, delay_s=0.02)
    cam = ScriptedCamera(live=False)
    disp = Dispatcher([sink := CollectSink()])
    pipe = Pipeline(cam, _Cfg(rate_hz=0), staged, disp, queue_size=4)
    pipe.start()
    time.sleep(0.3)
    pipe.stop("test")
    assert pipe.wait(10)
    assert disp.flush() == 0
    n = len(sink.verdicts)
    assert n > 0 and cam.reads == n
    assert staged.calls["finish"] == n  # frames in every queue and stage were finished, none abandoned
    _in_order(sink.verdicts, n)
    assert all(v.code is Code.PASS for v in sink.verdicts)


def test_scoring_thread_uses_the_configured_numba_thread_count(inspector):
    staged = Staged(inspector)
    _run(ScriptedCamera(live=False, total=3), staged, numba_threads=1)
    assert staged.numba_threads_seen == [1, 1, 1]


# ------------------------------------------------------------------------------------------ liveness


class Beats:
    """A sink that records when the pipeline proved it is alive."""

    name = "beats"

    def __init__(self):
        self.times = []

    def emit(self, verdict):
        pass

    def heartbeat(self):
        self.times.append(time.monotonic())

    def close(self):
        pass


def test_a_stuck_inference_stops_the_heartbeat_until_it_moves_again(inspector):
    release = threading.Event()
    staged = Staged(inspector, block=("infer", 3, release))
    beats = Beats()
    disp = Dispatcher([sink := CollectSink(), beats])
    pipe = Pipeline(ScriptedCamera(live=False, total=6), _Cfg(rate_hz=0), staged, disp, stall_s=0.3)
    pipe.start()
    deadline = time.monotonic() + 10
    while staged.calls["infer"] < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    stuck_at = time.monotonic()
    time.sleep(1.2)  # the scoring loop idles (0.25 s polls) while inference hangs
    released_at = time.monotonic()
    release.set()
    assert pipe.wait(10)
    assert disp.flush() == 0
    _in_order(sink.verdicts, 6)
    quiet = [t for t in beats.times if stuck_at + 0.3 + 0.3 < t < released_at]
    assert quiet == [], "heartbeats went on while the inference stage was stuck"
    assert any(t > released_at for t in beats.times), "heartbeats resume once the pipeline moves again"


# ------------------------------------------------------------------------------------------ thread budget


@pytest.mark.parametrize(
    ("cores", "expected"),
    [(1, (1, 1)), (2, (2, 1)), (4, (4, 1)), (6, (6, 1)), (8, (8, 2)), (12, (12, 3)), (16, (16, 4))],
)
def test_automatic_thread_budget_gives_onnxruntime_every_core_and_numba_a_quarter(cores, expected):
    budget = thread_budget(cores=cores)
    assert (budget.onnxruntime, budget.numba) == expected
    assert not budget.oversubscribed  # the planned overlap is no warning


def test_an_explicit_thread_count_is_kept_and_the_other_takes_the_rest():
    assert (thread_budget(onnxruntime=6, cores=8).onnxruntime, thread_budget(onnxruntime=6, cores=8).numba) == (6, 2)
    assert thread_budget(numba=3, cores=8).onnxruntime == 5
    b = thread_budget(onnxruntime=8, numba=8, cores=8)
    assert (b.onnxruntime, b.numba, b.oversubscribed) == (8, 8, True)


def test_thread_budget_config_keys_and_the_moved_intra_op_key():
    cfg = parse_config("camera: {type: synthetic}\npipeline:\n  threads: {onnxruntime: 3, numba: 1}\n")
    assert (cfg.pipeline.threads.onnxruntime, cfg.pipeline.threads.numba) == (3, 1)
    assert (parse_config("camera: {type: synthetic}\n").pipeline.threads.onnxruntime) == 0
    with pytest.raises(ConfigError, match=r"<config>:2: model: model.intra_op_threads moved to pipeline.threads"):
        parse_config("camera: {type: synthetic}\nmodel:\n  intra_op_threads: 2\n")
