"""`inspectd label import` on LabelMe JSON written the way labelme writes it: images found through imagePath or taken
from imageData, size mismatches refused, labels mapped to classes, photos never read as masks, and every file that
is not imported listed with its reason."""

from __future__ import annotations

import json

import cv2
import numpy as np

from inspectd.labelling.importer import import_labels
from inspectd.labelling.labelme import LabelMapping
from tests.labelling.labelme_files import noise_image, shape, write_labelme_file
from tests.support.helpers import run_cli


def reviewed_folder(tmp_path):
    """images/ with four photos; labels/ with labelme JSON for three (all shape types among them) and one JSON
    whose image is nowhere but in its imageData."""
    images, labels = tmp_path / "images", tmp_path / "labels"
    a = noise_image(images / "a.png", seed=1)
    b = noise_image(images / "sub" / "b.png", seed=2)
    c = noise_image(images / "c.png", seed=3)
    noise_image(images / "d.png", seed=4)  # no label: not imported, not an error
    sub = np.zeros((3, 3), bool)
    sub[1, :] = True
    write_labelme_file(
        labels / "a.json",
        a,
        [
            shape("scratch", [[5, 5], [30, 5], [30, 20]], "linestrip"),
            shape("scratch", [[40, 40]], "point"),
            shape("__ignore__", [[60, 40], [70, 50]], "rectangle"),
        ],
    )
    write_labelme_file(
        labels / "b.json",
        b,
        [
            shape("hole", [[20, 20], [20, 25]], "circle"),
            shape("hole", [[50, 10], [60, 20]], "rectangle"),
            shape("hole", [[5, 50], [20, 50]], "line"),
            shape("hole", [[70, 50], [72, 52]], "mask", sub),
            shape("hole", [[30, 40], [40, 45], [35, 55]], "polygon"),
        ],
        embed=False,
    )
    write_labelme_file(labels / "c.json", c, [shape("__ignore__", [[5, 5], [9, 9]], "rectangle")])
    embedded = noise_image(tmp_path / "elsewhere" / "e.png", seed=5)
    write_labelme_file(labels / "e.json", embedded, [shape("hole", [[10, 10], [20, 20]], "rectangle")])
    embedded.unlink()
    return images, labels


def test_labelme_json_import_finds_images_maps_classes_and_draws_labelmes_pixels(tmp_path):
    images, labels = reviewed_folder(tmp_path)
    out = tmp_path / "mvtec"
    report = import_labels(labels, out, images=images, mapping=LabelMapping.parse(["scratch=crack"]))
    assert sorted(report.written) == ["crack/a", "good/c", "hole/b", "hole/e"] and report.skipped == []
    a = cv2.imread(str(out / "ground_truth" / "crack" / "a_mask.png"), cv2.IMREAD_GRAYSCALE)
    assert a[5, 20] == 255 and a[15, 20] == 0  # the linestrip is a 10-px line, not a filled triangle
    assert a[40, 40] == 255 and a[45, 65] == 0  # the point is a disc; __ignore__ draws nothing
    assert (out / "test" / "crack" / "a.png").resolve() == (images / "a.png").resolve()
    b = cv2.imread(str(out / "ground_truth" / "hole" / "b_mask.png"), cv2.IMREAD_GRAYSCALE)
    assert b[20, 24] == 255 and b[15, 55] == 255 and b[50, 12] == 255 and b[51, 71] == 255 and b[50, 71] == 0
    assert (out / "test" / "hole" / "b.png").resolve() == (images / "sub" / "b.png").resolve()
    assert not (out / "ground_truth" / "good").exists()
    e = cv2.imread(str(out / "test" / "hole" / "e.png"), cv2.IMREAD_GRAYSCALE)  # written from imageData
    assert e.shape == (60, 80) and not (out / "test" / "hole" / "e.png").is_symlink()
    notes = dict(report.notes)
    assert "excluded label" in notes[str(labels / "a.json")] and "imageData" in notes[str(labels / "e.json")]
    assert json.loads((out / "import.json").read_text())["written"] == report.written


def test_import_refuses_size_mismatches_and_lists_every_skipped_file_with_its_reason(tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    a = noise_image(images / "a.png")
    write_labelme_file(labels / "a.json", a, [shape("d", [[1, 1], [5, 5]], "rectangle")], hw=(30, 40))
    write_labelme_file(labels / "gone.json", a, [shape("d", [[1, 1], [5, 5]], "rectangle")], embed=False)
    doc = json.loads((labels / "gone.json").read_text())
    (labels / "gone.json").write_text(json.dumps({**doc, "imagePath": "nowhere/gone.png"}))
    (labels / "broken.json").write_text("{not json")
    write_labelme_file(labels / "bad_shape.json", a, [shape("d", [[1, 1], [5, 5]], "polygon")])
    b = noise_image(images / "b.png")
    cv2.imwrite(str(labels / "b_mask.png"), np.zeros((10, 10), np.uint8))
    noise_image(images / "c.png")
    noise_image(labels / "c.png", seed=9)  # a photo, not one of --images: by its grey levels no mask
    report = import_labels(labels, tmp_path / "out", images=images)
    why = {f.rsplit("/", 1)[-1]: r for f, r in report.skipped}
    assert set(why) == {"a.json", "gone.json", "broken.json", "bad_shape.json", "b_mask.png", "c.png"}
    assert "says the image is 40x30" in why["a.json"] and "80x60" in why["a.json"]
    assert "no image" in why["gone.json"] and "not readable JSON" in why["broken.json"]
    assert "more than 2 points" in why["bad_shape.json"] and "10x10" in why["b_mask.png"]
    assert "grey levels" in why["c.png"] and report.written == []
    assert b.is_file()


def test_labels_and_images_in_one_folder_never_read_photos_as_masks(tmp_path):
    folder = tmp_path / "shots"
    a = noise_image(folder / "a.png", seed=1)
    noise_image(folder / "b.png", seed=2)
    write_labelme_file(folder / "a.json", a, [shape("defect", [[5, 5], [15, 15]], "rectangle")], embed=False)
    proc = run_cli(
        "label",
        "import",
        "--labels",
        str(folder),
        "--images",
        str(folder),
        "--out",
        str(tmp_path / "o"),
        "--class",
        "dent",
    )
    assert proc.returncode == 0, proc.stderr
    assert "imported 1 labels" in proc.stdout and not (tmp_path / "o" / "test" / "good").exists()
    assert cv2.imread(str(tmp_path / "o" / "ground_truth" / "dent" / "a_mask.png"), 0)[10, 10] == 255


def test_import_cli_exits_3_and_names_what_it_skipped(tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    a = noise_image(images / "a.png")
    write_labelme_file(labels / "a.json", a, [shape("d", [[1, 1], [5, 5]], "rectangle")])
    write_labelme_file(labels / "z.json", a, [shape("d", [[1, 1], [5, 5]], "rectangle")], hw=(61, 80))
    proc = run_cli("label", "import", "--labels", str(labels), "--images", str(images), "--out", str(tmp_path / "o"))
    assert proc.returncode == 3, proc.stderr
    assert "SKIPPED 1 file" in proc.stdout and "z.json" in proc.stderr and "80x61" in proc.stderr
    proc = run_cli("label", "import", "--labels", str(labels), "--out", str(tmp_path / "p"), "--map", "nonsense")
    assert proc.returncode == 2 and "LABEL=CLASS" in proc.stderr
