"""`inspectd train` end to end on a tiny synthetic run: a model directory the daemon loads, a reproducible command."""

from __future__ import annotations

import shlex

from inspectd.cli import main
from inspectd.core.manifest import load_manifest
from tests.support.training import QUIET, TINY_NET


def test_train_writes_a_calibrated_model_directory_and_records_its_command(tmp_path, capsys):
    out = tmp_path / "model"
    argv = [
        "train",
        "--synthetic",
        "--synthetic-frames",
        "12",
        "--synthetic-width",
        "64",
        "--synthetic-height",
        "64",
        "--out",
        str(out),
        "--input-size",
        "32",
        *TINY_NET,
        "--iterations",
        "6",
        "--batch-size",
        "4",
        "--threads",
        "1",
        "--log-every",
        "3",
        "--checkpoint-dir",
        str(tmp_path / "ckpt"),
        "--evaluate",
        "8",
        "--texture-defects",
        "0.5",
        "--band-defects",
        "0.5",
    ]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "thresholds:" in captured.out and "evaluation:" in captured.out
    assert "it 3/6" in captured.err
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.onnx"]  # no checkpoints in the model
    assert (tmp_path / "ckpt" / "checkpoint.pt").is_file()
    m = load_manifest(out)
    assert m.thresholds.method.startswith("good-only") and m.thresholds.model_sha256 == m.onnx.sha256
    t = m.training
    assert t["iterations"] == 6 and t["seed"] == 0 and t["sample_count"] + t["held_out_count"] == 12
    assert t["torch"].startswith("2.13") and t["final_loss"] > 0 and t["time"]
    assert (
        t["evaluation"]["good_pass"]
        + t["evaluation"]["good_reject"]
        + t["evaluation"]["defect_reject"]
        + t["evaluation"]["defect_pass"]
        == 8
    )
    cmd = shlex.split(t["command"])
    assert cmd[:2] == ["inspectd", "train"] and "--synthetic" in cmd and cmd[cmd.index("--iterations") + 1] == "6"
    assert cmd[cmd.index("--input-size") + 1] == "32x32"
    assert cmd[cmd.index("--texture-defects") + 1] == "0.5" and cmd[cmd.index("--band-defects") + 1] == "0.5"


def test_bad_arguments_exit_2_with_a_message(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "m"), "--iterations", "1"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", "--synthetic", "--out", str(tmp_path / "m"), "--input-size", "34", "--iterations", "1"]) == 2
    assert "multiple of" in capsys.readouterr().err
    assert (
        main(["train", "--synthetic", "--out", str(tmp_path / "m"), "--band-defects", "1.5", "--iterations", "1"]) == 2
    )
    assert "band_prob" in capsys.readouterr().err


def test_train_on_an_mvtec_folder_calibrates_with_its_test_defects_when_asked(tmp_path, capsys):
    import cv2
    import numpy as np

    from tests.training.conftest import stripes

    root = tmp_path / "data"
    for sub in ("train/good", "test/good", "test/spot", "ground_truth/spot"):
        (root / sub).mkdir(parents=True)
    for i, img in enumerate(stripes(10, size=48, seed=1)):
        cv2.imwrite(str(root / "train" / "good" / f"{i}.png"), img)
    for i, img in enumerate(stripes(6, size=48, seed=2)):
        if i < 3:
            cv2.imwrite(str(root / "test" / "good" / f"{i}.png"), img)
            continue
        mask = np.zeros_like(img)
        mask[10:22, 20:30] = 255
        img[mask > 0] = 250
        cv2.imwrite(str(root / "test" / "spot" / f"{i}.png"), img)
        cv2.imwrite(str(root / "ground_truth" / "spot" / f"{i}_mask.png"), mask)
    out = tmp_path / "model"
    argv = [
        "train",
        "--kind",
        "autoencoder",
        "--data",
        str(root),
        "--out",
        str(out),
        "--input-size",
        "32",
        *TINY_NET,
        "--iterations",
        "4",
        *QUIET,
        "--checkpoint-dir",
        str(tmp_path / "ckpt"),
        "--calibrate-with-test",
    ]
    assert main(argv) == 0
    m = load_manifest(out)
    assert m.thresholds.method.startswith("good+defect")
    assert m.training["calibration"]["n_defect"] == 3 and m.training["calibration"]["n_good"] == 2 + 3
    assert "--calibrate-with-test" in m.training["command"]
