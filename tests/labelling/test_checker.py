"""Checker models: export parity (onnxruntime vs PyTorch), manifests, disjoint folds, and the check itself."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from inspectd.labelling.labelme import read_labelme_mask
from tests.support.helpers import REPO, cli_env, run_cli

torch = pytest.importorskip("torch", reason="checker export tests need the train extra")


@pytest.mark.parametrize("image_pool", ["mean", "max"])
def test_checker_export_matches_pytorch(tmp_path, image_pool):
    import onnxruntime as ort

    from inspectd.core.manifest import load_manifest
    from inspectd.labelling.checker import MAP_OUTPUT, PROB_OUTPUT, CheckerConfig, CheckerNet, write_checker_dir

    torch.manual_seed(0)
    model = CheckerNet(CheckerConfig(32, 32, base_width=4, image_pool=image_pool))
    model.train()
    with torch.no_grad():  # give BatchNorm non-trivial running statistics
        model(torch.rand(8, 1, 32, 32))
    samples = np.random.default_rng(0).random((3, 1, 32, 32), dtype=np.float32)
    _, parity = write_checker_dir(model.eval(), tmp_path, samples, name="t", pixel_threshold=0.4)
    assert parity.max_abs_diff <= 1e-4 and parity.batch_sizes == (1, 3)
    loaded = load_manifest(tmp_path)
    assert loaded.kind == "classifier" and loaded.onnx.opset >= 17
    assert loaded.input.shape == (None, 1, 32, 32) and loaded.output.name == MAP_OUTPUT
    assert loaded.training["checker"]["image_output"] == PROB_OUTPUT and loaded.thresholds.pixel == 0.4
    sess = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    prob_map, prob = sess.run([MAP_OUTPUT, PROB_OUTPUT], {"image": samples})
    with torch.no_grad():
        want_map, want_prob = model(torch.from_numpy(samples))
    assert prob_map.shape == (3, 1, 32, 32) and prob.shape == (3, 1, 1, 1)
    np.testing.assert_allclose(prob_map, want_map.numpy(), atol=1e-4)
    np.testing.assert_allclose(prob, want_prob.numpy(), atol=1e-4)
    assert ((prob_map >= 0) & (prob_map <= 1)).all()
    assert loaded.training["checker"]["config"]["image_pool"] == image_pool


def test_max_pooled_image_head_scores_a_defect_the_same_in_a_crop_and_in_a_larger_input():
    """The image head's bottleneck pooling: with "max", padding a crop with more clean surface (what happens when
    a checker trained on crops runs on the whole input) leaves the pooled features of the defect nearly unchanged
    (only the crop's zero-padded border differs); with "mean" they shrink with the added area."""
    from inspectd.labelling.checker import CheckerConfig, CheckerNet

    torch.manual_seed(0)
    crop = torch.full((1, 1, 64, 64), 0.5)
    crop[..., 28:36, 28:36] = 0.0  # a dark spot in the middle
    whole = torch.full((1, 1, 192, 192), 0.5)
    whole[..., 64:128, 64:128] = crop
    pooled = {}
    for pool in ("mean", "max"):
        net = CheckerNet(CheckerConfig(64, 64, base_width=4, image_pool=pool)).eval()
        feats = []
        net.image_head.register_forward_hook(lambda _m, args, _out, feats=feats: feats.append(args[0][0, :-1].clone()))
        with torch.no_grad():
            net(crop)
            net(whole)
        pooled[pool] = feats

    def change(a, b):
        return float((a - b).norm() / a.norm())

    assert change(*pooled["max"]) < 0.15, pooled["max"]
    assert change(*pooled["mean"]) > 3 * change(*pooled["max"]), (change(*pooled["mean"]), change(*pooled["max"]))
    with pytest.raises(ValueError, match="image_pool"):
        CheckerConfig(image_pool="median")


def test_checker_folds_are_disjoint_and_cover_the_data(checkers_dir, mvtec_dir):
    from inspectd.core.manifest import load_manifest
    from inspectd.labelling.dataset import scan

    members = [set(load_manifest(checkers_dir / f"checker_{k}").training["checker"]["members"]) for k in range(2)]
    assert members[0] and members[1] and not members[0] & members[1]
    assert members[0] | members[1] == {i.id for i in scan(mvtec_dir)}
    assert json.loads((checkers_dir / "folds.json").read_text())["folds"] == [sorted(m) for m in members]


def test_each_image_is_checked_only_by_checkers_that_did_not_train_on_it(checkers_dir, mvtec_dir):
    from inspectd.labelling.check import load_checkers, run_check
    from inspectd.labelling.dataset import scan
    from inspectd.labelling.rules import RuleConfig

    checkers = load_checkers(checkers_dir)
    by_name = {c.name: c for c in checkers}
    results = run_check(scan(mvtec_dir), checkers, RuleConfig())
    assert len(results) == 20
    for r in results:
        assert len(r.checkers) == 1 and not r.in_sample
        assert r.item.id not in by_name[r.checkers[0]].members


def test_label_check_cli_writes_json_and_a_report(checkers_dir, mvtec_dir, tmp_path):
    out, report = tmp_path / "check.json", tmp_path / "report"
    # IoU threshold 1.0 flags every defective label a tiny checker does not reproduce exactly: a full report
    proc = run_cli(
        "label",
        "check",
        "--data",
        str(mvtec_dir),
        "--checkers",
        str(checkers_dir),
        "--json",
        str(out),
        "--report",
        str(report),
        "--iou-threshold",
        "1.0",
        "--accepted",
        str(tmp_path / "accepted"),
    )
    assert proc.returncode in (0, 3), proc.stderr
    doc = json.loads(out.read_text())
    assert doc["checked"] == 20 and doc["flagged"] and proc.returncode == 3
    assert doc["rules"]["refine"] == "guided"  # the map is sharpened to the image's edges unless told otherwise
    for f in doc["flagged"]:
        assert set(f) >= {"image", "reason", "iou", "probability"} and re.fullmatch(r"(good|spot)/\d{3}", f["image"])
    page = (report / "index.html").read_text()
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert len(srcs) == 4 * len(doc["flagged"]) and all((report / s).is_file() for s in srcs)
    assert doc["flagged"][0]["image"] in page
    fixes = re.findall(r'<a class="fix" href="([^"]+)"', page)  # one LabelMe file to fix per flagged image
    assert len(fixes) == len(doc["flagged"])
    for href, f in zip(fixes, doc["flagged"], strict=True):
        cls, stem = f["image"].split("/")
        assert href == f"labelme/{cls}/{stem}.json"
        image = cv2.imread(str(mvtec_dir / "test" / cls / f"{stem}.png"), cv2.IMREAD_GRAYSCALE)
        truth = cv2.imread(str(mvtec_dir / "ground_truth" / cls / f"{stem}_mask.png"), cv2.IMREAD_GRAYSCALE)
        truth = np.zeros_like(image) if truth is None else truth
        doc_fix = json.loads((report / href).read_text())
        assert (report / href).parent.joinpath(doc_fix["imagePath"]).resolve() == (
            mvtec_dir / "test" / cls / f"{stem}.png"
        ).resolve()
        np.testing.assert_array_equal(read_labelme_mask(report / href), truth)  # the label as it is now
    accepted = {p.stem for p in (tmp_path / "accepted" / "test").rglob("*.png")}
    assert accepted == {f"{i:03d}" for i in range(20)} - {f["image"].split("/")[1] for f in doc["flagged"]}


def test_label_check_cli_region_contrast_reports_the_ratios_and_takes_its_limits(checkers_dir, mvtec_dir, tmp_path):
    out = tmp_path / "contrast.json"
    # rim_min 100 cannot be met by any label (rim / core is ~1 or less): every defective label is flagged too_large
    proc = run_cli(
        "label",
        "check",
        "--data",
        str(mvtec_dir),
        "--checkers",
        str(checkers_dir),
        "--json",
        str(out),
        "--region",
        "contrast",
        "--rim-min",
        "100",
        "--low-threshold",
        "0",
        "--report",
        str(tmp_path / "report"),
    )
    assert proc.returncode == 3, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["rules"]["region"] == "contrast" and doc["rules"]["rim_min"] == 100
    spots = [f for f in doc["flagged"] if f["image"].startswith("spot/")]
    assert len(spots) == 10
    page = (tmp_path / "report" / "index.html").read_text()
    assert page.count("draw it tighter") >= 10  # the reviewer is told which way the label is wrong
    for f in spots:
        assert f["reason"] == "region_mismatch" and "too_large" in f["contrast_problems"]
        assert set(f["contrast"]) == {"inside", "core", "rim", "band"}
    bad = run_cli(
        "label",
        "check",
        "--data",
        str(mvtec_dir),
        "--checkers",
        str(checkers_dir),
        "--json",
        str(out),
        "--region",
        "contrast",
        "--band-max",
        "-1",
    )
    assert bad.returncode == 2 and "band_max must be >= 0" in bad.stderr


def test_label_check_cli_refines_the_map_by_default_and_takes_refine_options(checkers_dir, mvtec_dir, tmp_path):
    out = tmp_path / "refine.json"
    base = ("label", "check", "--data", str(mvtec_dir), "--checkers", str(checkers_dir), "--json", str(out))
    proc = run_cli(*base, "--refine", "none")
    assert proc.returncode in (0, 3), proc.stderr
    assert json.loads(out.read_text())["rules"]["refine"] == "none"
    bad = run_cli(*base, "--refine-radius", "0")
    assert bad.returncode == 2 and "refine_radius must lie in [1, 64]" in bad.stderr


def test_check_does_not_import_torch():
    code = "import sys, inspectd.labelling.check, inspectd.labelling.report; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_training_folds_in_parallel_processes_gives_the_same_checkers_as_one_after_another(mvtec_dir, tmp_path):
    """jobs=2 spawns one process per fold; each fold's checker depends only on its data and the seed."""
    import onnxruntime as ort

    from inspectd.core.manifest import load_manifest
    from inspectd.labelling.checker import CheckerConfig
    from inspectd.labelling.dataset import scan
    from inspectd.labelling.training import TrainSettings, train_checkers

    kw = dict(
        folds=2,
        config=CheckerConfig(32, 32, base_width=4),
        data_root=str(mvtec_dir),
        log=None,
        settings=TrainSettings(iterations=8, batch_size=8, threads=1),
    )
    serial = train_checkers(scan(mvtec_dir), tmp_path / "serial", jobs=1, **kw)
    parallel = train_checkers(scan(mvtec_dir), tmp_path / "parallel", jobs=2, **kw)
    x = np.random.default_rng(0).random((2, 1, 32, 32), dtype=np.float32)
    for a, b in zip(serial, parallel, strict=False):
        ma, mb = load_manifest(a), load_manifest(b)
        assert ma.training["checker"]["members"] == mb.training["checker"]["members"]
        assert ma.training["final_loss"] == mb.training["final_loss"]
        ra = ort.InferenceSession(str(a / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"image": x})
        rb = ort.InferenceSession(str(b / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"image": x})
        for u, v in zip(ra, rb, strict=False):
            np.testing.assert_allclose(u, v, atol=1e-6)
    assert (tmp_path / "parallel" / "folds.json").read_text() == (tmp_path / "serial" / "folds.json").read_text()


def _with_train_good(mvtec_dir, tmp_path, n=6):
    """A copy of the tiny tree (images linked) plus train/good/ with n flat noisy defect-free images."""
    import shutil

    import cv2

    root = tmp_path / "tree"
    shutil.copytree(mvtec_dir, root, symlinks=True)
    good = root / "train" / "good"
    good.mkdir(parents=True)
    rng = np.random.default_rng(5)
    for k in range(n):
        cv2.imwrite(str(good / f"{k:03d}.png"), np.clip(rng.normal(140, 6, (40, 40)), 0, 255).astype(np.uint8))
    (good / ".hidden.png").write_bytes(b"not an image")  # ignored like every dot file
    return root


def test_train_checker_adds_train_good_to_every_checker_unless_told_not_to(mvtec_dir, tmp_path):
    from inspectd.core.manifest import load_manifest
    from inspectd.labelling.dataset import train_good

    root = _with_train_good(mvtec_dir, tmp_path)
    assert [p.name for p in train_good(root)] == [f"{k:03d}.png" for k in range(6)] and train_good(mvtec_dir) == []
    common = [
        "label",
        "train-checker",
        "--encoder",
        "scratch",
        "--data",
        str(root),
        "--folds",
        "2",
        "--size",
        "32",
        "--base-width",
        "4",
        "--iterations",
        "4",
        "--batch-size",
        "8",
        "--threads",
        "1",
    ]
    proc = run_cli(*common, "--out", str(tmp_path / "with"), "--good-share", "0.5")
    assert proc.returncode == 0, proc.stderr
    for k in range(2):
        facts = load_manifest(tmp_path / "with" / f"checker_{k}").training
        assert facts["extra_good"]["count"] == 6 and facts["extra_good"]["share"] == 0.5
        assert not any(m.startswith("train/") for m in facts["checker"]["members"])  # never a checked image
    proc = run_cli(*common, "--out", str(tmp_path / "without"), "--no-train-good")
    assert proc.returncode == 0, proc.stderr
    assert load_manifest(tmp_path / "without" / "checker_0").training["extra_good"]["count"] == 0
    bad = run_cli(*common, "--out", str(tmp_path / "bad"), "--good-share", "1.0")
    assert bad.returncode == 2 and "good_share must lie in [0, 1)" in bad.stderr


def test_train_checker_exclude_leaves_a_previous_checks_flagged_images_out_of_every_fold(
    checkers_dir, mvtec_dir, tmp_path
):
    """The loop's retraining: `--exclude CHECK_JSON` trains no checker on the labels a check flagged; those images
    are then checked by all checkers (none trained on them), the others by the checker of the other fold."""
    from inspectd.core.manifest import load_manifest
    from inspectd.labelling.check import load_checkers, run_check
    from inspectd.labelling.dataset import scan

    first = tmp_path / "first.json"
    proc = run_cli(
        "label",
        "check",
        "--data",
        str(mvtec_dir),
        "--checkers",
        str(checkers_dir),
        "--json",
        str(first),
        "--iou-threshold",
        "1.0",
    )
    flagged = [f["image"] for f in json.loads(first.read_text())["flagged"]]
    assert proc.returncode == 3 and 0 < len(flagged) < 18, proc.stderr
    common = [
        "label",
        "train-checker",
        "--encoder",
        "scratch",
        "--data",
        str(mvtec_dir),
        "--folds",
        "2",
        "--size",
        "32",
        "--base-width",
        "4",
        "--iterations",
        "4",
        "--batch-size",
        "8",
        "--threads",
        "1",
    ]
    proc = run_cli(*common, "--out", str(tmp_path / "ck"), "--exclude", str(first))
    assert proc.returncode == 0, proc.stderr
    assert f"{len(flagged)} flagged image(s) left out of training" in proc.stdout
    folds = json.loads((tmp_path / "ck" / "folds.json").read_text())
    assert folds["excluded"] == sorted(flagged)
    members = [set(load_manifest(tmp_path / "ck" / f"checker_{k}").training["checker"]["members"]) for k in range(2)]
    assert not (members[0] | members[1]) & set(flagged)
    assert members[0] | members[1] | set(flagged) == {i.id for i in scan(mvtec_dir)}
    for r in run_check(scan(mvtec_dir), load_checkers(tmp_path / "ck")):
        assert len(r.checkers) == (2 if r.item.id in flagged else 1) and not r.in_sample
    (tmp_path / "bad.json").write_text('{"checked": 3}')
    bad = run_cli(*common, "--out", str(tmp_path / "bad"), "--exclude", str(tmp_path / "bad.json"))
    assert bad.returncode == 2 and "is not a `label check` result" in bad.stderr
    (tmp_path / "other.json").write_text('{"flagged": [{"image": "spot/999"}]}')
    other = run_cli(*common, "--out", str(tmp_path / "other"), "--exclude", str(tmp_path / "other.json"))
    assert other.returncode == 2 and "not in the data, e.g. 'spot/999'" in other.stderr


def test_train_checker_crop_option_trains_on_whole_inputs_with_0_and_refuses_a_tiny_crop(mvtec_dir, tmp_path):
    from inspectd.core.manifest import load_manifest

    common = [
        "label",
        "train-checker",
        "--encoder",
        "scratch",
        "--data",
        str(mvtec_dir),
        "--folds",
        "2",
        "--size",
        "32",
        "--base-width",
        "4",
        "--iterations",
        "3",
        "--batch-size",
        "8",
        "--threads",
        "1",
    ]
    proc = run_cli(*common, "--out", str(tmp_path / "whole"), "--crop", "0")
    assert proc.returncode == 0, proc.stderr
    assert load_manifest(tmp_path / "whole" / "checker_0").training["settings"]["crop"] is None
    proc = run_cli(*common, "--out", str(tmp_path / "crop"), "--crop", "16")
    assert proc.returncode == 0, proc.stderr
    assert load_manifest(tmp_path / "crop" / "checker_1").training["settings"]["crop"] == 16
    bad = run_cli(*common, "--out", str(tmp_path / "bad"), "--crop", "4")
    assert bad.returncode == 2 and "crop must be >= 8 input px" in bad.stderr
    odd = run_cli(*common, "--out", str(tmp_path / "odd"), "--crop", "12")
    assert odd.returncode == 2 and "crop 12 must be a multiple of 2^depth = 8" in odd.stderr
    assert not (tmp_path / "odd").exists()  # refused before anything is written


def _spawned_children(pid: int) -> list[int]:
    """The spawned multiprocessing workers among pid's children (not its resource tracker)."""
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        for child in (task / "children").read_text().split():
            cmd = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
            if b"spawn_main" in cmd:
                out.append(int(child))
    return out


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")  # a zombie has exited and only waits to be reaped


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc to find the worker processes")
def test_train_checker_workers_stop_when_the_cli_is_killed(mvtec_dir, tmp_path):
    """SIGKILL cannot be caught, so the pool cannot shut itself down: the workers must notice on their own."""
    import signal
    import time

    args = [
        "label",
        "train-checker",
        "--encoder",
        "scratch",
        "--data",
        str(mvtec_dir),
        "--out",
        str(tmp_path / "ck"),
        "--folds",
        "2",
        "--jobs",
        "2",
        "--size",
        "32",
        "--base-width",
        "4",
        "--iterations",
        "10000000",
        "--minutes",
        "10",
    ]
    with (tmp_path / "log.txt").open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "inspectd", *args], stdout=log, stderr=subprocess.STDOUT, env=cli_env(), cwd=REPO
        )
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 90
        while "step 1/" not in (tmp_path / "log.txt").read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "log.txt").read_text()
            time.sleep(0.2)
        workers = _spawned_children(proc.pid)
        assert len(workers) == 2, (workers, (tmp_path / "log.txt").read_text())
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 15
        while any(_running(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_running(w) for w in workers), f"workers {workers} still training after the CLI was killed"
    finally:
        proc.kill()
        for w in workers:
            if _running(w):
                os.kill(w, signal.SIGKILL)


def test_refinement_changes_only_the_threshold_free_rules_not_the_calibrated_predicted_region():
    """The pixel threshold was calibrated on the checkers' own map: the predicted region (global IoU, the missed
    label's area) is cut from their mean map whatever --refine says; local and contrast read the refined map."""
    from inspectd.labelling.check import rule_maps
    from inspectd.labelling.rules import RuleConfig, refine_map
    from tests.labelling.conftest import blurred_disc_map

    gray, blurred, _ = blurred_disc_map()
    maps = [blurred, 0.8 * blurred]
    mean = np.mean(maps, axis=0)
    for refine in ("none", "guided"):
        cfg = RuleConfig(refine=refine)
        predicted, prob_map = rule_maps(gray, maps, [0.2, 0.4], cfg)
        assert np.array_equal(predicted > 0, mean > 0.3)
        np.testing.assert_array_equal(prob_map, refine_map(gray, mean, cfg))
    assert np.count_nonzero(refine_map(gray, mean, RuleConfig()) > 0.3) != np.count_nonzero(mean > 0.3)


def test_pretrained_checkers_share_one_encoder_cache_and_export_whole_networks(mvtec_dir, tmp_path):
    """The default checkers: frozen EfficientNet-Lite0 encoder + a decoder per fold, each exported whole (ONNX
    parity checked), fold-disjoint, with the encoder's weight sha256 in the manifest; `label check` runs them."""
    pytest.importorskip("efficientnet_lite_pytorch", reason="the pretrained backbone is in the train extra")
    from inspectd.core.manifest import load_manifest

    out = tmp_path / "ck"
    proc = run_cli(
        "label",
        "train-checker",
        "--data",
        str(mvtec_dir),
        "--out",
        str(out),
        "--folds",
        "2",
        "--size",
        "64",
        "--iterations",
        "3",
        "--batch-size",
        "4",
        "--threads",
        "1",
    )
    assert proc.returncode == 0, proc.stderr
    members = []
    for k in range(2):
        m = load_manifest(out / f"checker_{k}")
        t = m.training
        assert m.kind == "classifier" and m.input.shape == (None, 1, 64, 64)
        assert t["encoder"]["sha256"].startswith("579344248a93") and t["encoder"]["frozen"] is True
        assert (
            t["export"]["parity"]["max_abs_diff"] <= 1e-4 and t["checker"]["config"]["encoder"] == "efficientnet-lite0"
        )
        members.append(set(t["checker"]["members"]))
    assert not members[0] & members[1] and len(members[0] | members[1]) == 20
    check = run_cli(
        "label", "check", "--data", str(mvtec_dir), "--checkers", str(out), "--json", str(tmp_path / "c.json")
    )
    assert check.returncode in (0, 3), check.stderr
    assert json.loads((tmp_path / "c.json").read_text())["checked"] == 20
    bad = run_cli("label", "train-checker", "--data", str(mvtec_dir), "--out", str(tmp_path / "x"), "--size", "100")
    assert bad.returncode == 2 and "multiple of 32" in bad.stderr
