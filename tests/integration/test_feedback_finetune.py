"""The loop's last step: `inspectd train --init MODEL_DIR --data COLLECTED` fine-tunes the line's model on the false
rejects the collector gathered, stops by the sample-count loss rule, and records its parent and data."""

from __future__ import annotations

import time

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="fine-tuning needs the train extra (pip install -e '.[train]')")

from inspectd.collector.dataset import Dataset
from inspectd.core.manifest import load_manifest
from inspectd.feedback.protocol import RecordMeta
from inspectd.training.finetune import DEFAULT_LOSS_TABLE, loss_threshold, parse_loss_table
from tests.support.helpers import make_blur_model, run_cli
from tests.support.training import TINY_NET

TINY = [
    "--input-size",
    "32",
    *TINY_NET,
    "--batch-size",
    "8",
    "--threads",
    "1",
    "--log-every",
    "20",
]


def _stripes(n: int, period: float, angle: float, seed: int, size: int = 48) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    u = x * np.cos(angle) + y * np.sin(angle)
    return [
        np.clip(
            128 + 60 * np.sin(u * 2 * np.pi / period + rng.uniform(0, 2 * np.pi)) + rng.normal(0, 2, (size, size)),
            0,
            255,
        ).astype(np.uint8)
        for _ in range(n)
    ]


def _png(img: np.ndarray) -> bytes:
    import cv2

    return cv2.imencode(".png", img)[1].tobytes()


def test_the_loss_threshold_follows_the_seeds_table_by_sample_count():
    assert DEFAULT_LOSS_TABLE == ((100, 0.3), (500, 0.1), (5000, 0.01), (10000, 0.001))
    for lo, hi, t_lo, t_hi in ((100, 500, 0.1, 0.3), (500, 5000, 0.01, 0.1), (5000, 10000, 0.001, 0.01)):
        for n in np.linspace(lo, hi, 7).astype(int):
            assert t_lo - 1e-12 <= loss_threshold(int(n)) <= t_hi + 1e-12, n
    counts = [50, 100, 300, 500, 2000, 5000, 8000, 10000, 50000]
    values = [loss_threshold(n) for n in counts]
    assert values == sorted(values, reverse=True), "more samples, a lower threshold"
    assert loss_threshold(10) == 0.3 and loss_threshold(10**6) == 0.001  # held flat beyond the table's ends
    assert parse_loss_table("100:0.5, 1000:0.05") == ((100, 0.5), (1000, 0.05))
    for bad in ("", "100", "500:0.1,100:0.3", "100:-1"):
        with pytest.raises(ValueError, match="loss table"):
            parse_loss_table(bad)


def test_training_stops_when_the_loss_reaches_the_threshold_or_else_at_the_iteration_cap():
    from inspectd.training.data import InputGeometry, TrainingSet
    from inspectd.training.model import ConvAutoencoder, ModelConfig
    from inspectd.training.train import TrainConfig, train

    cfg = ModelConfig(height=32, width=32, channels=1, base_width=8, max_width=16, latent_channels=8, depth=2)
    data = TrainingSet(_stripes(8, 8, 0.5, 0, size=32), InputGeometry(height=32, width=32))
    easy = train(
        ConvAutoencoder(cfg),
        data,
        TrainConfig(iterations=200, batch_size=4, threads=1, log_every=0, stop_loss=10.0, stop_window=5),
        log=None,
    )
    assert easy.stopped_by == "loss" and easy.iterations == 5
    hard = train(
        ConvAutoencoder(cfg),
        data,
        TrainConfig(iterations=12, batch_size=4, threads=1, log_every=0, stop_loss=0.0, stop_window=5),
        log=None,
    )
    assert hard.stopped_by == "iterations" and hard.iterations == 12


def test_a_fine_tune_on_collected_false_rejects_lowers_their_anomaly_scores(tmp_path):
    from inspectd.evaluation.thresholds import open_inspector

    t0 = time.monotonic()
    # the line's model: trained on one weave (stripes of period 8)
    base = tmp_path / "base"
    for i, img in enumerate(_stripes(24, 8, 0.5, 1)):
        (base / "train" / "good").mkdir(parents=True, exist_ok=True)
        (base / "train" / "good" / f"{i:03d}.png").write_bytes(_png(img))
    parent = tmp_path / "parent"
    res = run_cli(
        "train",
        "--kind",
        "autoencoder",
        "--data",
        str(base),
        "--out",
        str(parent),
        "--iterations",
        "40",
        "--checkpoint-dir",
        str(tmp_path / "ck1"),
        *TINY,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    parent_sha = load_manifest(parent).onnx.sha256

    # a new batch of material the model has never seen: rejected, found good by operators, collected
    rejects = _stripes(30, 4.5, 2.0, 2)
    collected = tmp_path / "collected"
    Dataset(collected).store(
        [
            (
                RecordMeta(
                    id=f"line-7-{i}",
                    mark="good",
                    line="line-7",
                    camera="synthetic",
                    model_sha256=parent_sha,
                    seq=i + 1,
                    plc_seq=i + 1,
                    item_id=i,
                    score=1.0,
                    time="2026-01-01T00:00:00Z",
                    marked_at="2026-01-01T00:01:00Z",
                    marked_by="plc",
                    width=48,
                    height=48,
                    channels=1,
                ),
                _png(img),
            )
            for i, img in enumerate(rejects)
        ]
    )
    child = tmp_path / "child"
    res = run_cli(
        "train",
        "--init",
        str(parent),
        "--data",
        str(collected),
        "--out",
        str(child),
        "--iterations",
        "120",
        "--checkpoint-dir",
        str(tmp_path / "ck2"),
        *TINY[10:],
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]

    before, after = open_inspector(parent), open_inspector(child)
    fresh = _stripes(10, 4.5, 2.0, 3)  # more of the same material, never collected
    s_before = np.mean([before.inspect(img).decision.score for img in rejects])
    s_after = np.mean([after.inspect(img).decision.score for img in rejects])
    f_before = np.mean([before.inspect(img).decision.score for img in fresh])
    f_after = np.mean([after.inspect(img).decision.score for img in fresh])
    print(
        f"mean score of the collected false rejects {s_before:.3f} -> {s_after:.3f}, of fresh ones {f_before:.3f} -> "
        f"{f_after:.3f}"
    )
    assert s_after < 0.9 * s_before, (s_before, s_after)
    assert f_after < 0.9 * f_before, (f_before, f_after)

    t = load_manifest(child).training
    assert t["parent"]["onnx_sha256"] == parent_sha and t["parent"]["import_parity_max_abs_diff"] <= 1e-4
    assert t["data_files"]["files"] == 30 and t["data_files"]["collected"]["good"] == 30
    assert t["data_files"]["collected"]["rejected_by_models"] == [parent_sha]
    rule = t["stop_rule"]
    assert rule["sample_count"] == t["sample_count"] == 24 and rule["threshold"] == 0.3  # < 100 samples: 0.3
    assert t["stopped_by"] == "loss" and t["iterations"] < 120, "the loss rule ends it, not the cap"
    assert "--init" in t["command"] and str(parent) in t["command"]
    assert time.monotonic() - t0 < 120


def test_init_refuses_a_model_it_cannot_continue(tmp_path):
    blur = make_blur_model(tmp_path / "blur")  # not made by `inspectd train`: no architecture facts
    (tmp_path / "d").mkdir()
    for i, img in enumerate(_stripes(4, 8, 0.5, 0)):
        (tmp_path / "d" / f"{i}.png").write_bytes(_png(img))
    res = run_cli(
        "train",
        "--init",
        str(blur),
        "--data",
        str(tmp_path / "d"),
        "--out",
        str(tmp_path / "o"),
        "--iterations",
        "2",
        timeout=120,
    )
    assert res.returncode == 2 and "--init" in res.stderr and "training.model" in res.stderr
