"""The committed demo model (models/demo): a calibrated, reproducible artifact that separates good and defective
synthetic frames through the daemon's own code path."""

from __future__ import annotations

import shlex

from inspectd.core.manifest import load_manifest
from inspectd.evaluation.thresholds import evaluate, open_inspector
from tests.conftest import REPO

DEMO = REPO / "models" / "demo"


def test_the_demo_directory_holds_only_the_model_its_manifest_and_a_readme():
    assert sorted(p.name for p in DEMO.iterdir()) == ["README.md", "manifest.json", "model.onnx"]


def test_the_demo_manifest_is_calibrated_and_records_the_command_that_made_it():
    m = load_manifest(DEMO)  # checks model.onnx's sha256 too
    assert m.thresholds.method.startswith("good-only") and m.thresholds.pixel < 2.0
    cmd = shlex.split(m.training["command"])
    assert cmd[:3] == ["inspectd", "train", "--synthetic"] and cmd[cmd.index("--out") + 1] == "models/demo"
    assert m.training["evaluation"]["good_pass_rate"] >= 0.95


def test_the_demo_model_passes_good_and_rejects_defective_synthetic_frames():
    from inspectd.daemon.cameras.synthetic import SurfaceGenerator, SyntheticCameraConfig

    gen = SurfaceGenerator(SyntheticCameraConfig(seed=4321, defect_rate=0.5))
    caps = [gen.render(i) for i in range(24)]
    confusion = evaluate(open_inspector(DEMO), [c.image for c in caps], [bool(c.truth) for c in caps])
    assert confusion.n_good > 0 and confusion.n_defect > 0
    assert confusion.good_reject == 0 and confusion.defect_pass <= 1, str(confusion)
