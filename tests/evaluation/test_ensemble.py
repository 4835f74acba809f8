"""`inspectd ensemble` (inspectd/training/ensemble.py): trained model directories -> one calibrated ensemble
directory that
`inspectd evaluate` and the daemon take like any model. Real CLI subprocesses and tiny models trained by export/
(the train extra)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.evaluation.conftest import tiny_train_argv, write_tree
from tests.support.helpers import run_cli

pytest.importorskip("torch", reason="training the member models needs the train extra (pip install -e '.[train]')")


@pytest.fixture(scope="module")
def members(separable_tree, separable_model, tmp_path_factory) -> tuple[Path, Path]:
    """The separable model (32 px native tiles) and a half-scale 16 px tile model trained on the same tree, the
    second with a third of the defects as the hard-defect set."""
    from inspectd.cli import main

    out = tmp_path_factory.mktemp("members") / "coarse"
    argv = tiny_train_argv(
        separable_tree,
        out,
        "--iterations",
        "30",
        "--batch-size",
        "8",
        "--smooth-sigma",
        "1",
        "--scale",
        "0.5",
        "--input-size",
        "16",
        "--tile-overlap",
        "4",
        "--hard-defects",
        str(separable_tree),
        "--hard-fraction",
        "0.34",
        "--hard-prob",
        "0.3",
    )
    assert main(argv) == 0
    return separable_model, out


@pytest.fixture(scope="module")
def ensemble(members, separable_tree, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ensemble") / "pair"
    res = run_cli(
        "ensemble",
        "--member",
        str(members[0]),
        "--member",
        str(members[1]),
        "--data",
        str(separable_tree),
        "--out",
        str(out),
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "2 models" in res.stdout and "combined pixel" in res.stdout
    return out


def test_the_ensemble_directory_holds_both_models_each_scaled_by_its_good_images_scores(
    ensemble, members, separable_tree
):
    from inspectd.core.manifest import load_manifest
    from inspectd.evaluation.thresholds import open_inspector
    from inspectd.training.data import read_image
    from inspectd.training.ensemble import common_held_out

    m = load_manifest(ensemble)
    first, second = (load_manifest(p) for p in members)
    assert m.onnx.sha256 == first.onnx.sha256 and m.preprocess == first.preprocess
    (spec,) = m.ensemble.members
    assert spec.sha256 == second.onnx.sha256
    assert (ensemble / spec.dir / "model.onnx").read_bytes() == (members[1] / "model.onnx").read_bytes()
    # the divisor: the 90th percentile of each model's own image scores on the good images no member trained on
    files, _ = common_held_out([(p, load_manifest(p)) for p in members], separable_tree)
    goods = [read_image(f, "gray") for f in files]
    for path, divisor in zip(members, (m.ensemble.divide_by, spec.divide_by), strict=False):
        insp = open_inspector(path)
        want = np.quantile([insp.inspect(g).decision.score for g in goods], 0.9)
        assert divisor == pytest.approx(want, rel=1e-5)
    assert m.thresholds.method.startswith("good-only") and "held out by every member" in m.thresholds.method
    assert m.thresholds.model_sha256 == m.onnx.sha256 and m.identity != m.onnx.sha256
    assert "inspectd ensemble --member" in m.training["ensemble"]["command"]
    assert m.training["ensemble"]["normalize"] == "good-score"


def test_normalize_threshold_divides_each_map_by_that_models_own_pixel_threshold(members, separable_tree, tmp_path):
    from inspectd.core.manifest import load_manifest

    out = tmp_path / "by-threshold"
    res = run_cli(
        "ensemble",
        "--member",
        str(members[0]),
        "--member",
        str(members[1]),
        "--data",
        str(separable_tree),
        "--out",
        str(out),
        "--normalize",
        "threshold",
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    m = load_manifest(out)
    assert m.ensemble.divide_by == load_manifest(members[0]).thresholds.pixel
    assert m.ensemble.members[0].divide_by == load_manifest(members[1]).thresholds.pixel


def test_calibration_uses_only_good_images_no_member_trained_on_and_passes_all_of_them(
    ensemble, members, separable_tree
):
    from inspectd.core.manifest import load_manifest
    from inspectd.core.types import Code
    from inspectd.evaluation.thresholds import open_inspector
    from inspectd.training.data import image_files, read_image
    from inspectd.training.ensemble import common_held_out

    loaded = [(p, load_manifest(p)) for p in members]
    files, _ = common_held_out(loaded, separable_tree)
    assert len(files) == load_manifest(ensemble).training["calibration"]["n_good"]
    insp = open_inspector(ensemble)
    assert all(insp.inspect(read_image(f, "gray")).decision.code == Code.PASS for f in files)
    # a member trained with another seed holds out other images: the calibration set is the intersection
    other = dict(loaded[1][1].training) | {"seed": 5}
    moved = loaded[1][1].model_copy(update={"training": other})
    both, _ = common_held_out([loaded[0], (members[1], moved)], separable_tree)
    n = len(image_files(separable_tree))
    from inspectd.training.data import holdout_order

    held = [set(holdout_order(n, s)[: loaded[0][1].training["held_out_count"]]) for s in (0, 5)]
    assert [image_files(separable_tree).index(f) for f in both] == sorted(held[0] & held[1])
    assert 0 < len(both) < len(files)


def test_ensemble_warns_when_its_members_held_out_fewer_than_half_as_many_good_images_in_common():
    from inspectd.training.ensemble import few_common_warning

    assert few_common_warning(20, [20, 20]) is None
    warning = few_common_warning(3, [20, 24])
    assert warning is not None and "only 3 good images" in warning and "same --seed" in warning
    assert few_common_warning(10, [20, 24]) is None and few_common_warning(9, [20, 24]) is not None


def test_evaluate_scores_the_combined_map_and_leaves_out_what_any_member_trained_on(
    ensemble, members, separable_tree, tmp_path
):
    from inspectd.core.manifest import load_manifest

    out = tmp_path / "eval.json"
    res = run_cli("evaluate", "--model", str(ensemble), "--data", str(separable_tree), "--json", str(out), timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["image_auroc"] == 1.0  # trivially separable images
    assert r["score"] == "ensemble-max"  # the combined map, not one member's SSIM
    trained = load_manifest(members[1]).training["hard_defects"]["files"]
    assert r["left_out_trained_on"]["count"] == len(trained) > 0
    assert sorted(r["left_out_trained_on"]["images"]) == sorted(f["image"] for f in trained)
    assert r["model_sha256"] == load_manifest(ensemble).identity
    assert [mm["sha256"] for mm in r["ensemble"]["models"]] == [load_manifest(p).onnx.sha256 for p in members]
    # each model's own image score on the same images: the member's own score over its divisor
    ens_stdout = res.stdout
    alone = tmp_path / "alone.json"
    res = run_cli(
        "evaluate", "--model", str(members[0]), "--data", str(separable_tree), "--json", str(alone), timeout=300
    )
    assert res.returncode == 0, res.stderr[-2000:]
    by_file = {i["file"]: i["score"] for i in json.loads(alone.read_text())["images"]}
    divisor = load_manifest(ensemble).ensemble.divide_by
    for i in r["images"]:
        assert len(i["model_scores"]) == 2 and max(i["model_scores"]) == pytest.approx(i["score"], rel=1e-5)
        assert i["model_scores"][0] * divisor == pytest.approx(by_file[i["file"]], rel=1e-4)
    assert len(r["model_image_auroc"]) == 2 and "models alone (image AUROC, same images)" in ens_stdout
    res = run_cli(
        "evaluate",
        "--model",
        str(ensemble),
        "--data",
        str(separable_tree),
        "--json",
        str(out),
        "--score",
        "uniform-ssim",
        timeout=300,
    )
    assert res.returncode == 2 and "is an ensemble" in res.stderr and "each member" in res.stderr


def test_the_combined_map_is_the_max_of_the_members_own_maps_over_their_divisors(ensemble, members, separable_tree):
    from inspectd.core.manifest import load_manifest
    from inspectd.evaluation.thresholds import open_inspector
    from inspectd.training.data import read_image

    img = read_image(next((separable_tree / "test" / "spot").iterdir()), "gray")
    m = load_manifest(ensemble)
    divisors = (m.ensemble.divide_by, m.ensemble.members[0].divide_by)
    maps = [open_inspector(p).score_map(img) / d for p, d in zip(members, divisors, strict=False)]
    np.testing.assert_allclose(open_inspector(ensemble).score_map(img), np.maximum(*maps), rtol=1e-5, atol=1e-6)


def test_bad_ensembles_are_refused_with_exit_2_and_the_reason(members, separable_tree, tmp_path):
    a, b = members
    other = write_tree(tmp_path / "other", n_train=20)
    (tmp_path / "taken").mkdir()
    pair = ["--member", str(a), "--member", str(b)]
    cases = [  # (members, --data, --out, what stderr must say)
        (["--member", str(a)], separable_tree, tmp_path / "o1", "at least two"),
        (["--member", str(a), "--member", str(tmp_path / "nope")], separable_tree, tmp_path / "o2", "does not exist"),
        (pair, other, tmp_path / "o3", "was not trained on the good images of"),
        (pair, separable_tree, tmp_path / "taken", "exists"),
    ]
    for args, data, out, words in cases:
        res = run_cli("ensemble", *args, "--data", str(data), "--out", str(out), timeout=300)
        assert res.returncode == 2 and words in res.stderr, (args, res.stderr[-1500:])
    assert not any((tmp_path / f"o{i}").exists() for i in (1, 2, 3))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no half-written directory is left"
    # a member whose manifest does not say what it held out (e.g. written by hand) cannot be calibrated against
    bare = tmp_path / "bare"
    shutil.copytree(b, bare)
    raw = json.loads((bare / "manifest.json").read_text())
    del raw["training"]["held_out_count"]
    (bare / "manifest.json").write_text(json.dumps(raw))
    res = run_cli(
        "ensemble",
        "--member",
        str(a),
        "--member",
        str(bare),
        "--data",
        str(separable_tree),
        "--out",
        str(tmp_path / "o"),
        timeout=300,
    )
    assert res.returncode == 2 and "does not say which images it held out" in res.stderr, res.stderr[-1500:]


def test_fine_tuning_an_ensemble_is_refused_with_what_to_do_instead(ensemble, separable_tree, tmp_path):
    res = run_cli(
        "train",
        "--init",
        str(ensemble),
        "--data",
        str(separable_tree),
        "--out",
        str(tmp_path / "ft"),
        "--iterations",
        "2",
        timeout=300,
    )
    assert res.returncode == 2 and "is an ensemble of 2 models" in res.stderr, res.stderr[-1500:]
    assert not (tmp_path / "ft").exists()
