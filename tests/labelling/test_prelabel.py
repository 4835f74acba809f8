"""Pre-labelling with an autoencoder (a real ONNX blur model), and importing reviewed labels back."""

from __future__ import annotations

import json

import cv2
import numpy as np

from inspectd.labelling.labelme import read_labelme_mask
from tests.support.helpers import draw_item, make_blur_model, run_cli


def test_prelabel_writes_masks_labelme_json_and_overlays_then_import_reads_them_back(tmp_path):
    model = make_blur_model(tmp_path / "model", size=(96, 96), pixel_threshold=0.5, min_region_area=4)
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "bad.png"), draw_item(defect=True, seed=1))
    cv2.imwrite(str(images / "ok.png"), draw_item(defect=False, seed=2))
    out = tmp_path / "pre"
    proc = run_cli("label", "prelabel", "--model", str(model), "--images", str(images), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    bad = cv2.imread(str(out / "masks" / "bad_mask.png"), cv2.IMREAD_GRAYSCALE)
    assert bad[32 + 4, 32 + 4] == 255 and bad[80, 80] == 0  # the dark square drawn at (32, 32)
    assert not cv2.imread(str(out / "masks" / "ok_mask.png"), cv2.IMREAD_GRAYSCALE).any()
    doc = json.loads((out / "labelme" / "bad.json").read_text())
    assert doc["shapes"] and (out / "labelme" / doc["imagePath"]).resolve() == (images / "bad.png").resolve()
    np.testing.assert_array_equal(read_labelme_mask(out / "labelme" / "bad.json"), bad)
    assert (out / "overlays" / "bad.png").is_file()

    mvtec = tmp_path / "mvtec"
    proc = run_cli(
        "label",
        "import",
        "--labels",
        str(out / "labelme"),
        "--images",
        str(images),
        "--out",
        str(mvtec),
        "--class",
        "spot",
    )
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(cv2.imread(str(mvtec / "ground_truth" / "spot" / "bad_mask.png"), 0), bad)
    assert (mvtec / "test" / "spot" / "bad.png").is_symlink() and (mvtec / "test" / "good" / "ok.png").exists()
    assert not (mvtec / "ground_truth" / "good").exists()
