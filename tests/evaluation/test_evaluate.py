"""`inspectd evaluate`, run as the real CLI: AUROC 1.0 on trivially separable images, the decisions at the
calibrated thresholds, the three score variants, the HTML report, and clear errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.evaluation.conftest import tiny_train_argv, write_tree


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "inspectd", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def evaluated(separable_model, separable_tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluated")
    proc = run_cli(
        "evaluate",
        "--model",
        str(separable_model),
        "--data",
        str(separable_tree),
        "--json",
        str(out / "eval.json"),
        "--report",
        str(out / "report"),
        "--score",
        "all",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads((out / "eval.json").read_text()), out / "report", proc.stdout


def test_trivially_separable_images_give_auroc_1(evaluated):
    result, _, stdout = evaluated
    assert result["n_images"] == 12 and result["n_good"] == 6 and result["n_defective"] == 6
    assert result["score"] == "gaussian-ssim"
    assert result["image_auroc"] == 1.0
    assert result["pixel_auroc"] > 0.97 and result["pixel_auroc_tie_bound"] < 1e-3
    assert result["per_class"]["spot"]["image_auroc"] == 1.0 and result["per_class"]["spot"]["n"] == 6
    assert "image AUROC" in stdout and "gaussian-ssim" in stdout


def test_precision_recall_and_f1_are_the_decisions_at_the_calibrated_thresholds(evaluated, separable_model):
    from inspectd.core.manifest import load_manifest

    result, _, _ = evaluated
    t = load_manifest(separable_model).thresholds
    assert result["thresholds"]["pixel"] == t.pixel and result["thresholds"]["min_region_area"] == t.min_region_area
    c = result["confusion"]
    assert c["good_reject"] + c["good_pass"] == 6 and c["defect_reject"] + c["defect_pass"] == 6
    tp, fp, fn = c["defect_reject"], c["good_reject"], c["defect_pass"]
    assert result["precision"] == pytest.approx(tp / (tp + fp)) and result["recall"] == pytest.approx(tp / (tp + fn))
    assert result["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert c["defect_reject"] == 6  # calibrated on a few held-out goods only, it still finds every spot
    assert set(result["pixel"]) >= {"f1", "precision", "recall"} and result["pixel"]["recall"] > 0.5
    images = result["images"]
    assert len(images) == 12 and sum(r["reject"] for r in images) == tp + fp
    assert result["throughput"]["images_per_s"] > 0 and result["throughput"]["ms_per_image_mean"] > 0


def test_the_same_model_is_scored_three_ways_each_with_its_own_calibrated_thresholds(evaluated, separable_model):
    from inspectd.core.manifest import load_manifest

    result, _, stdout = evaluated
    assert set(result["by_score"]) == {"gaussian-ssim", "uniform-ssim", "l2"}
    for name, v in result["by_score"].items():
        assert v["image_auroc"] == 1.0, name
        assert v["thresholds"] is not None and v["f1"] is not None, name
    variants = load_manifest(separable_model).training["score_variants"]
    assert result["by_score"]["l2"]["thresholds"]["pixel"] == variants["l2"]["pixel"]
    assert result["by_score"]["gaussian-ssim"]["image_auroc"] == result["image_auroc"]
    assert "uniform-ssim" in stdout and "l2" in stdout


def test_the_report_shows_every_image_most_anomalous_first_and_its_pictures_exist(evaluated):
    _result, report, _ = evaluated
    page = (report / "index.html").read_text()
    rows = json.loads(re.search(r'<script type="application/json" id="rows">(.*?)</script>', page, re.S).group(1))
    assert len(rows) == 12
    assert all((report / f).is_file() and (report / f).stat().st_size > 0 for r in rows for f in r["panels"].values())
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    assert rows[0]["class"] == "spot"
    assert set(rows[0]["panels"]) == {"input", "recon", "heat", "pred", "truth"}


def test_without_ground_truth_masks_pixel_auroc_is_null(separable_model, tmp_path):
    data = write_tree(tmp_path / "nomask", n_train=0, n_good=3, n_defect=3, masks=False)
    proc = run_cli(
        "evaluate", "--model", str(separable_model), "--data", str(data), "--json", str(tmp_path / "r.json"), "--quiet"
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["pixel_auroc"] is None and result["image_auroc"] == 1.0
    assert result["images_without_ground_truth"] == 3


def test_a_folder_without_the_mvtec_test_layout_exits_2_with_a_message(separable_model, tmp_path):
    proc = run_cli(
        "evaluate", "--model", str(separable_model), "--data", str(tmp_path), "--json", str(tmp_path / "r.json")
    )
    assert proc.returncode == 2 and "test/" in proc.stderr and not (tmp_path / "r.json").exists()


def test_evaluate_never_imports_torch(separable_model, separable_tree, tmp_path):
    script = (
        "import sys; from inspectd.cli import main; "
        f"rc = main(['evaluate', '--model', {str(separable_model)!r}, '--data', {str(separable_tree)!r}, "
        f"'--json', {str(tmp_path / 'r.json')!r}, '--quiet']); "
        "assert rc == 0; assert 'torch' not in sys.modules, 'evaluate imported torch'"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_good_only_calibration_gives_a_threshold_that_passes_its_good_images(separable_model, separable_tree):
    from inspectd.core.manifest import load_manifest
    from inspectd.evaluation.thresholds import evaluate, open_inspector
    from inspectd.training.data import load_folder
    from inspectd.training.workflow import _split

    m = load_manifest(separable_model)
    assert m.thresholds.method.startswith("good-only") and m.thresholds.pixel < 2.0
    assert m.training["calibration"]["good_pass_rate"] == 1.0
    _, held_out = _split(load_folder(separable_tree), m.training["held_out_count"] / 24, m.training["seed"])
    assert len(held_out) == m.training["held_out_count"]
    confusion = evaluate(open_inspector(separable_model), held_out, [False] * len(held_out))
    assert confusion.good_reject == 0 and confusion.good_pass == len(held_out)


def test_evaluate_leaves_out_the_hard_defect_images_the_model_was_trained_on(separable_tree, tmp_path):
    """A model trained with half of each test class as the hard-defect set is evaluated on the other half
    only: the manifest lists the trained-on files by sha256 and evaluate drops them, wherever they lie."""
    pytest.importorskip("torch", reason="training the test model needs the train extra")
    import shutil

    from inspectd.cli import main as train_main
    from inspectd.training.data import hard_defect_files

    model = tmp_path / "model"
    argv = tiny_train_argv(
        separable_tree, model, "--hard-defects", str(separable_tree), "--hard-fraction", "0.5", "--hard-prob", "0.3"
    )
    assert train_main(argv) == 0
    hard = json.loads((model / "manifest.json").read_text())["training"]["hard_defects"]
    chosen = {s for _, _, s in hard_defect_files(separable_tree, 0.5)}
    assert hard["images"] == 3 and {f["image"] for f in hard["files"]} == chosen

    copy = tmp_path / "copy"  # the same files under another root: matched by content, not by path
    shutil.copytree(separable_tree, copy)
    proc = run_cli("evaluate", "--model", str(model), "--data", str(copy), "--json", str(tmp_path / "e.json"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["left_out_trained_on"]["count"] == 3
    assert set(result["left_out_trained_on"]["images"]) == chosen
    assert result["n_images"] == 9 and result["n_defective"] == 3 and result["per_class"]["spot"]["n"] == 3
    assert not chosen & {f"{r['class']}/{r['file'].split('/')[-1]}" for r in result["images"]}
    assert "left out: 3 images" in proc.stdout

    child = tmp_path / "child"  # a fine-tune of that model without hard defects still leaves the parent's out
    assert (
        train_main(
            [
                "train",
                "--init",
                str(model),
                "--data",
                str(separable_tree),
                "--out",
                str(child),
                "--iterations",
                "5",
                "--batch-size",
                "4",
                "--threads",
                "1",
                "--log-every",
                "0",
                "--checkpoint-dir",
                str(tmp_path / "ckpt2"),
                "--loss-threshold",
                "0",
            ]
        )
        == 0
    )
    inherited = json.loads((child / "manifest.json").read_text())["training"]["hard_defects"]["inherited_files"]
    assert {f["image"] for f in inherited} == chosen
    proc = run_cli("evaluate", "--model", str(child), "--data", str(copy), "--json", str(tmp_path / "c.json"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert set(json.loads((tmp_path / "c.json").read_text())["left_out_trained_on"]["images"]) == chosen


def test_a_model_with_scaled_tiles_is_trained_exported_and_evaluated_in_camera_pixels(separable_tree, tmp_path):
    pytest.importorskip("torch", reason="training the test model needs the train extra")
    from inspectd.cli import main as train_main

    model = tmp_path / "model"
    argv = tiny_train_argv(separable_tree, model, "--scale", "0.5", "--smooth-sigma", "1", tile=16, overlap=4)
    assert train_main(argv) == 0
    manifest = json.loads((model / "manifest.json").read_text())
    assert manifest["preprocess"]["scale"] == 0.5 and "--scale 0.5" in manifest["training"]["command"]
    proc = run_cli("evaluate", "--model", str(model), "--data", str(separable_tree), "--json", str(tmp_path / "e.json"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["n_images"] == 12 and result["pixel_auroc"] is not None
    regions = [r for rec in result["images"] for r in rec["regions"]]
    assert regions  # the defective images are found somewhere ...
    for r in regions:  # ... in the 48 x 48 camera frame, not the 24 x 24 resized one
        assert r["x"] >= 0 and r["y"] >= 0 and r["x"] + r["w"] <= 48 and r["y"] + r["h"] <= 48
    assert max(r["x"] + r["w"] for r in regions) > 24 or max(r["y"] + r["h"] for r in regions) > 24
