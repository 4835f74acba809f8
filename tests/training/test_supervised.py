"""`inspectd train-supervised`: a classifier model directory from labelled defects (the pretrained encoder, a tiny
decoder run), that the daemon loads, that joins an ensemble with an autoencoder trained on the same data, and that
`--init` continues only when its decoder weights reproduce its ONNX."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from inspectd.cli import main
from inspectd.core.manifest import load_manifest
from tests.training.conftest import stripes

pytest.importorskip("efficientnet_lite_pytorch", reason="the pretrained backbone is in the train extra")


def tree(root: Path) -> Path:
    for sub in ("train/good", "test/good", "test/spot", "ground_truth/spot"):
        (root / sub).mkdir(parents=True)
    for i, img in enumerate(stripes(10, size=48, seed=1)):
        cv2.imwrite(str(root / "train" / "good" / f"{i}.png"), img)
    for i, img in enumerate(stripes(6, size=48, seed=2)):
        mask = np.zeros_like(img)
        mask[10 + i : 22 + i, 20:30] = 255
        img[mask > 0] = 250
        cv2.imwrite(str(root / "test" / "spot" / f"{i}.png"), img)
        cv2.imwrite(str(root / "ground_truth" / "spot" / f"{i}_mask.png"), mask)
    cv2.imwrite(str(root / "test" / "spot" / "nomask.png"), stripes(1, size=48, seed=3)[0])
    return root


ARGS = ["--size", "64", "--iterations", "4", "--batch-size", "4", "--threads", "1", "--holdout", "0.3"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tree(tmp_path_factory.mktemp("sup") / "data")
    out = root.parent / "cls"
    assert main(["train-supervised", "--data", str(root), "--out", str(out), *ARGS]) == 0
    return root, out


def test_train_supervised_writes_a_calibrated_classifier_the_daemon_runs(trained, capsys):
    from inspectd.inspection.inspector import Inspector

    root, out = trained
    m = load_manifest(out)
    assert m.kind == "classifier" and m.output.shape == (None, 1, 64, 64) and m.preprocess.color == "gray"
    assert 0.5 <= m.thresholds.pixel < 1.0 and m.thresholds.method.startswith("classifier:")
    t = m.training
    assert t["held_out_count"] == 3 and t["sample_count"] == 7 and t["seed"] == 0
    assert len(t["hard_defects"]["files"]) == 6 and t["export"]["parity"]["max_abs_diff"] <= 1e-4
    assert t["supervised"]["encoder"]["sha256"].startswith("579344248a93")
    assert (out / "decoder.pt").is_file()
    insp = Inspector.from_model_dir(out, providers=("CPUExecutionProvider",))
    insp.warmup()
    result = insp.inspect(cv2.imread(str(root / "test" / "spot" / "0.png"), cv2.IMREAD_GRAYSCALE))
    assert result.score_map.shape == (48, 48) and 0 <= result.score_map.min() <= result.score_map.max() <= 1


def test_evaluate_names_a_classifiers_map_for_what_it_is_and_refuses_ssim_variants(trained):
    from inspectd.evaluation.evaluate import evaluate

    root, out = trained
    r = evaluate(out, root, log=None)
    assert r["score"] == "classifier-probability" and r["n_images"] > 0
    with pytest.raises(ValueError, match="is a classifier model: its map is its graph's own output"):
        evaluate(out, root, scores=["l2"], log=None)


def test_init_continues_a_classifier_and_refuses_a_changed_one(trained, tmp_path):
    root, parent = trained
    child = tmp_path / "child"
    assert main(["train-supervised", "--data", str(root), "--out", str(child), "--init", str(parent), *ARGS]) == 0
    assert load_manifest(child).training["supervised"]["parent"]["sha256"] == load_manifest(parent).onnx.sha256
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(parent, bad)
    (bad / "decoder.pt").write_bytes((bad / "decoder.pt").read_bytes()[:-8] + b"12345678")
    assert (
        main(["train-supervised", "--data", str(root), "--out", str(tmp_path / "c2"), "--init", str(bad), *ARGS]) == 2
    )
    assert not (tmp_path / "c2").exists()


def test_a_classifier_joins_an_autoencoder_trained_on_the_same_data_in_one_ensemble(trained, tmp_path):
    from inspectd.inspection.inspector import Inspector

    root, cls = trained
    ae = tmp_path / "ae"
    argv = ["train", "--kind", "autoencoder", "--data", str(root), "--out", str(ae), "--input-size", "32"]
    argv += ["--base-width", "8", "--max-width", "16", "--latent-channels", "8", "--depth", "2", "--iterations", "4"]
    argv += ["--batch-size", "4", "--threads", "1", "--log-every", "0", "--holdout", "0.3"]
    argv += ["--checkpoint-dir", str(tmp_path / "ck")]
    assert main(argv) == 0
    ens = tmp_path / "ens"
    assert main(["ensemble", "--member", str(ae), "--member", str(cls), "--data", str(root), "--out", str(ens)]) == 0
    raw = json.loads((ens / "manifest.json").read_text())
    spec = raw["ensemble"]["members"][0]
    assert spec["divide_by"] == load_manifest(cls).thresholds.pixel  # a classifier is scaled by its own threshold
    insp = Inspector.from_model_dir(ens, providers=("CPUExecutionProvider",))
    assert [m.manifest.kind for m, _ in insp.members] == ["classifier"]
    insp.inspect(cv2.imread(str(root / "test" / "spot" / "0.png"), cv2.IMREAD_GRAYSCALE))


def test_train_supervised_names_missing_labels(tmp_path, capsys):
    root = tmp_path / "data"
    (root / "train" / "good").mkdir(parents=True)
    for i, img in enumerate(stripes(4, size=48)):
        cv2.imwrite(str(root / "train" / "good" / f"{i}.png"), img)
    (root / "test" / "spot").mkdir(parents=True)
    assert main(["train-supervised", "--data", str(root), "--out", str(tmp_path / "m"), *ARGS]) == 2
    assert "no labelled defect" in capsys.readouterr().err
