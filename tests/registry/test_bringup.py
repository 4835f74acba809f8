"""`inspectd registry bringup` on real data: two subsets of magnetic tile (capture batches exp1 and exp2, images
scaled down to keep it fast) are two "products". The exp1 model is trained with labelled defects and registered;
bringing up exp2 matches it through the hierarchy, refuses while the sampling gate is not met, then fine-tunes it
(stopped by the sample-count loss table), evaluates and registers a model whose manifest names its parent."""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest

pytest.importorskip("torch", reason="bring-up fine-tunes: it needs the train extra (pip install -e '.[train]')")

from inspectd.core.manifest import load_manifest
from tests.support.helpers import make_blur_model, run_cli

pytestmark = pytest.mark.dataset

TILES = """\
categories:
  magnetic tile: []
  arc segment: [magnetic tile]
  plain tile: [magnetic tile]
  ferrite: [arc segment]
  batch exp1: [ferrite]
  batch exp2: [ferrite]
"""
TINY = ["--input-size", "32", "--mode", "resize", "--base-width", "8", "--max-width", "16", "--latent-channels", "8",
        "--batch-size", "8", "--threads", "1", "--log-every", "10"]  # fmt: skip
MAX_SIDE = 96


def _copy(src: Path, dst: Path, mask: bool = False) -> None:
    img = cv2.imread(str(src), cv2.IMREAD_GRAYSCALE)
    f = MAX_SIDE / max(img.shape)
    small = cv2.resize(
        img,
        (round(img.shape[1] * f), round(img.shape[0] * f)),
        interpolation=cv2.INTER_NEAREST if mask else cv2.INTER_AREA,
    )
    dst.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(dst.with_suffix(".png")), small)


def _tree(mt: Path, out: Path, batch: str, *, good: int, test_good: int, defects: dict[str, int]) -> Path:
    """A small MVTec tree of one capture batch of magnetic tile (copies in tmp, scaled down)."""
    goods = sorted(p for p in (mt / "train" / "good").iterdir() if p.name.startswith(batch + "_"))[:good]
    for p in goods:
        _copy(p, out / "train" / "good" / p.name)
    for p in sorted(p for p in (mt / "test" / "good").iterdir() if p.name.startswith(batch + "_"))[:test_good]:
        _copy(p, out / "test" / "good" / p.name)
    for cls, n in defects.items():
        for p in sorted(p for p in (mt / "test" / cls).iterdir() if p.name.startswith(batch + "_"))[:n]:
            _copy(p, out / "test" / cls / p.name)
            _copy(
                mt / "ground_truth" / cls / f"{p.stem}_mask.png",
                out / "ground_truth" / cls / f"{p.stem}_mask.png",
                mask=True,
            )
    return out


def test_bringup_of_a_second_tile_batch_registers_a_fine_tuned_child(magnetic_tile, sqlite_registry, tmp_path):
    reg = sqlite_registry
    a = _tree(magnetic_tile, tmp_path / "exp1", "exp1", good=12, test_good=3, defects={"blowhole": 3, "crack": 3})
    b = _tree(magnetic_tile, tmp_path / "exp2", "exp2", good=12, test_good=3, defects={"blowhole": 3, "crack": 3})
    short = _tree(magnetic_tile, tmp_path / "exp2-short", "exp2", good=12, test_good=3, defects={"blowhole": 3})
    base = tmp_path / "base"
    res = run_cli(
        "train", "--kind", "autoencoder", "--data", str(a), "--out", str(base),
        "--hard-defects", str(a), "--hard-fraction", "0.5",
        "--iterations", "30", "--checkpoint-dir", str(tmp_path / "ck"), *TINY, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    (tmp_path / "tiles.yaml").write_text(TILES)
    assert reg.cli("categories", str(tmp_path / "tiles.yaml")).returncode == 0
    res = reg.cli("add", str(base), "--name", "tile-exp1", "--data", str(a),
                  "--category", "magnetic tile,arc segment,ferrite,batch exp1")  # fmt: skip
    assert res.returncode == 0, res.stderr
    other = make_blur_model(tmp_path / "plain", size=(32, 32))
    assert reg.cli("add", str(other), "--name", "plain-tile", "--category", "plain tile").returncode == 0
    product = tmp_path / "tile-exp2.yaml"
    product.write_text(
        "product: tile-exp2\ncategories: [magnetic tile, arc segment, ferrite, batch exp2]\n"
        "gate: {min_good: 10, min_defect: 5, ratio_tolerance: 0.1}\n"
    )
    out = tmp_path / "child"
    bringup = ["bringup", "--product", str(product), "--out", str(out), "--iterations", "200", "--batch-size", "8",
               "--threads", "1", "--minutes", "3"]  # fmt: skip

    res = reg.cli(*bringup, "--data", str(short))  # 12 good : 3 defects, the base's 12 : 6 wanted
    assert res.returncode == 2, res.stdout + res.stderr
    assert "sampling gate of 'tile-exp2' is not met: 12/10 good, 3/5 defects, ratio 4.0 vs 2.0 wanted (±10%): " \
        "keep sampling (3 more defects)" in res.stderr  # fmt: skip
    api = reg.open()
    assert not out.exists() and len(api.models()) == 2
    res = reg.cli("gate", "--product", str(product), "--data", str(short))
    assert res.returncode == 3 and "keep sampling" in res.stdout

    capped = [a if a != str(out) else str(tmp_path / "capped") for a in bringup]
    res = reg.cli(*capped, "--data", str(b), "--iterations", "12", "--loss-threshold", "0.0001", "--name", "capped",
                  timeout=600)  # fmt: skip
    assert res.returncode == 1, res.stdout + res.stderr[-3000:]
    assert "not registered: the loss did not reach its threshold before the iterations cap" in res.stdout
    assert (tmp_path / "capped" / "model.onnx").is_file() and len(api.models()) == 2
    rule = load_manifest(tmp_path / "capped").training["stop_rule"]
    assert rule["threshold"] == 0.0001 and rule["chosen_by"] == "--loss-threshold"

    res = reg.cli(*bringup, "--data", str(b), timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    text = res.stdout
    assert "best: tile-exp1 (match degree 0.875" in text, text  # 3 exact, batch exp2 through its parent: 3.5 / 4
    assert "batch exp2 ~ ferrite (broader, 1 step, 0.5)" in text
    assert "plain-tile: degree 0.188, not a candidate: level 3 matched 0 of quota 1 (ferrite)" in text
    assert "gate: 12/10 good, 6/5 defects, ratio 2.0 vs 2.0 wanted (±10%): gate met" in text
    assert "stopped by loss" in text and "registered: tile-exp2" in text

    child, base_row = api.details("tile-exp2"), api.details("tile-exp1")
    api.close()
    assert child["parent_name"] == "tile-exp1" and child["lineage"] == ["tile-exp1"]
    assert child["categories"] == ["arc segment", "batch exp2", "ferrite", "magnetic tile"]
    assert (child["good_count"], child["defect_count"]) == (12, 6) and (
        base_row["good_count"],
        base_row["defect_count"],
    ) == (12, 6)
    assert len(child["evaluations"]) == 1 and child["evaluations"][0]["image_auroc"] is not None
    m = load_manifest(out)
    assert child["identity"] == m.onnx.sha256
    tr = m.training
    assert tr["parent"]["onnx_sha256"] == base_row["identity"] and tr["parent"]["import_parity_max_abs_diff"] <= 1e-4
    assert tr["registry"]["parent"] == {
        "name": "tile-exp1",
        "digest": base_row["digest"],
        "identity": base_row["identity"],
    }
    assert tr["registry"]["gate"]["met"] and tr["categories"] == [
        "magnetic tile",
        "arc segment",
        "ferrite",
        "batch exp2",
    ]
    assert tr["stopped_by"] == "loss" and tr["stop_rule"]["threshold"] == 0.3  # < 100 samples: the table's 0.3
    assert tr["hard_defects"]["images"] == 4 and len(tr["hard_defects"]["inherited_files"]) == 4  # 2 per class each
    assert child["evaluations"][0]["data"] == str(b)
