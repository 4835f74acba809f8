"""Pipeline.swap_inspector (the model hot reload's swap) under a running pipeline: every frame gets one verdict, and
each frame goes through prepare, infer and finish of ONE inspector, the old one before the swap point and the new
one after it; no frame fails."""

from __future__ import annotations

import time

from inspectd.core.types import Code
from inspectd.daemon.cameras.base import CameraConfigBase
from inspectd.daemon.dispatch import Dispatcher
from inspectd.daemon.pipeline import Pipeline
from inspectd.inspection.inspector import Inspector
from tests.support.helpers import CollectSink, ScriptedCamera, make_blur_model


class _Cfg(CameraConfigBase):
    type: str = "scripted"


class _Tagged:
    """A real Inspector whose stages record which frames they saw (prepare numbers them; one prepare thread)."""

    def __init__(self, inner: Inspector, tag: str, seen: dict) -> None:
        self.inner, self.tag, self.seen = inner, tag, seen

    def prepare(self, image):
        p = self.inner.prepare(image)
        p.frame_no = len(self.seen)  # ids of objects are reused; a number is not
        self.seen[p.frame_no] = [("prepare", self.tag)]
        time.sleep(0.002)
        return p

    def infer(self, p):
        self.seen[p.frame_no].append(("infer", self.tag))
        return self.inner.infer(p)

    def finish(self, p):
        self.seen[p.frame_no].append(("finish", self.tag))
        return self.inner.finish(p)


class _SwapAt:
    """A sink that swaps the model when verdict `seq` goes out (frames behind it are in flight in every stage)."""

    name = "swap"

    def __init__(self, seq: int, swap) -> None:
        self.seq, self.swap = seq, swap

    def emit(self, verdict) -> None:
        if verdict.seq == self.seq:
            self.swap()

    def close(self) -> None:
        pass


def test_a_swap_mid_stream_keeps_every_frame_whole_on_one_inspector(tmp_path):
    a = Inspector.from_model_dir(
        make_blur_model(tmp_path / "a", size=(96, 96), pixel_threshold=0.3), providers=("CPUExecutionProvider",)
    )
    b = Inspector.from_model_dir(
        make_blur_model(tmp_path / "b", size=(48, 48), pixel_threshold=0.3), providers=("CPUExecutionProvider",)
    )
    b.warmup()
    seen: dict = {}
    sink = CollectSink()
    disp = Dispatcher([sink, _SwapAt(40, lambda: pipe.swap_inspector(_Tagged(b, "b", seen)))])
    pipe = Pipeline(
        ScriptedCamera(live=False, total=120, defect_every=5),
        _Cfg(rate_hz=0),
        _Tagged(a, "a", seen),
        disp,
        queue_size=4,
    )
    pipe.start()
    assert pipe.wait(60)
    assert disp.flush() == 0
    assert [v.seq for v in sink.verdicts] == list(range(1, 121))
    assert not [v for v in sink.verdicts if v.code is Code.ERROR]
    tags = [{t for _, t in stages} for stages in seen.values()]
    assert all(len(t) == 1 for t in tags), "a frame was handled by two inspectors"
    assert all(len(stages) == 3 for stages in seen.values())
    assert {"a"} in tags and {"b"} in tags, "the swap happened mid-stream"
