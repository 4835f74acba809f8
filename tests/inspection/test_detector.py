"""The detector refuses models that disagree with their manifest, reports the provider it got, and runs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from inspectd.core.errors import ModelError
from inspectd.core.types import Code
from inspectd.inspection.detector import Detector
from inspectd.inspection.inspector import Inspector
from tests.support.helpers import draw_item, make_blur_model


def _edit_manifest(model_dir, fn):
    path = model_dir / "manifest.json"
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def test_loads_a_valid_model_and_reports_the_provider_obtained(tmp_path):
    det = Detector(make_blur_model(tmp_path / "m"), providers=("CPUExecutionProvider",))
    assert det.info.obtained[0] == "CPUExecutionProvider"
    assert not det.info.on_gpu
    out = det.run(np.full((2, 1, 64, 64), 0.5, dtype=np.float32))
    assert out.shape == (2, 1, 64, 64)
    assert det.warmup() >= 0


def test_gpu_providers_requested_on_a_cpu_machine_fall_back_and_say_so(tmp_path):
    det = Detector(make_blur_model(tmp_path / "m"))  # default order: TensorRT, CUDA, CPU
    assert det.info.obtained == tuple(det.session.get_providers())
    if not det.info.on_gpu:
        assert det.info.obtained == ("CPUExecutionProvider",)


def test_require_gpu_refuses_to_start_on_the_cpu(tmp_path):
    with pytest.raises(ModelError, match="require_gpu"):
        Detector(make_blur_model(tmp_path / "m"), providers=("CPUExecutionProvider",), require_gpu=True)


def test_modified_onnx_file_is_refused_by_hash(tmp_path):
    model = make_blur_model(tmp_path / "m")
    data = (model / "model.onnx").read_bytes()
    (model / "model.onnx").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(ModelError, match="sha256"):
        Detector(model)


def test_missing_manifest_is_refused(tmp_path):
    model = make_blur_model(tmp_path / "m")
    (model / "manifest.json").unlink()
    with pytest.raises(ModelError, match=r"manifest.json is missing"):
        Detector(model)


def test_manifest_with_wrong_input_name_is_refused(tmp_path):
    model = make_blur_model(tmp_path / "m")
    _edit_manifest(model, lambda d: d["input"].update(name="pixels"))
    with pytest.raises(ModelError, match="input is named 'image' but the manifest says 'pixels'"):
        Detector(model)


def test_manifest_with_wrong_output_name_is_refused(tmp_path):
    model = make_blur_model(tmp_path / "m")
    _edit_manifest(model, lambda d: d["output"].update(name="recon"))
    with pytest.raises(ModelError, match="no output 'recon'"):
        Detector(model)


def test_manifest_with_wrong_input_shape_is_refused(tmp_path):
    model = make_blur_model(tmp_path / "m")

    def shape(d):
        d["input"]["shape"] = [None, 1, 32, 32]
        d["output"]["shape"] = [None, 1, 32, 32]

    _edit_manifest(model, shape)
    with pytest.raises(ModelError, match="shape"):
        Detector(model)


def test_thresholds_calibrated_for_another_model_are_refused(tmp_path):
    model = make_blur_model(tmp_path / "m")
    _edit_manifest(model, lambda d: d["thresholds"].update(model_sha256="0" * 64))
    with pytest.raises(ModelError, match="calibrated for another model"):
        Detector(model)


def test_manifest_that_is_not_json_is_refused(tmp_path):
    model = make_blur_model(tmp_path / "m")
    (model / "manifest.json").write_text("{not json")
    with pytest.raises(ModelError, match="not readable JSON"):
        Detector(model)


def test_unknown_manifest_keys_are_refused(tmp_path):
    model = make_blur_model(tmp_path / "m")
    _edit_manifest(model, lambda d: d.update(extra_field=1))
    with pytest.raises(ModelError, match="extra_field"):
        Detector(model)


def test_fixed_batch_model_runs_many_tiles_in_slices(tmp_path):
    model = make_blur_model(tmp_path / "m", size=(32, 32), mode="tile", tile_overlap=8, fixed_batch=1)
    insp = Inspector.from_model_dir(model, providers=("CPUExecutionProvider",))
    result = insp.inspect(draw_item((70, 90), defect=False))
    assert result.score_map.shape == (70, 90)


def test_inspector_rejects_a_defect_and_passes_a_clean_item(tmp_path):
    model = make_blur_model(tmp_path / "m", size=(96, 96), pixel_threshold=0.3, min_region_area=4)
    insp = Inspector.from_model_dir(model, providers=("CPUExecutionProvider",))
    good = insp.inspect(draw_item(defect=False))
    bad = insp.inspect(draw_item(defect=True))
    assert good.decision.code is Code.PASS
    assert bad.decision.code is Code.REJECT
    r = bad.decision.regions[0]
    assert r.x <= 32 + 8 and r.x + r.w >= 32 and r.y <= 32 + 8 and r.y + r.h >= 32
    assert set(bad.timings_ms) == {"preprocess", "inference", "ssim", "decide"}


def test_tile_mode_finds_a_defect_in_a_line_scan_frame(tmp_path):
    model = make_blur_model(tmp_path / "m", size=(64, 64), mode="tile", tile_overlap=16, pixel_threshold=0.3)
    insp = Inspector.from_model_dir(model, providers=("CPUExecutionProvider",))
    frame = np.full((64, 1024), 128, dtype=np.uint8)
    frame[20:28, 700:708] = 5
    result = insp.inspect(frame)
    assert result.score_map.shape == (64, 1024)
    assert result.decision.code is Code.REJECT
    r = result.decision.regions[0]
    assert 690 <= r.x <= 708 and r.y <= 28


@pytest.mark.parametrize(
    "hw, box", [((32, 32), (10, 20, 8, 18)), ((64, 64), (30, 42, 20, 32)), ((96, 130), (30, 42, 20, 32))]
)
def test_a_scaled_tile_model_maps_scores_and_regions_back_to_camera_pixels(tmp_path, hw, box):
    """preprocess.scale 0.5: a 32 x 32 frame becomes one padded 32 x 32 tile; the map and the region still come
    back at the camera frame's size and place (the one-tile shortcut must not hand back the padded half-size map)."""
    model = make_blur_model(tmp_path / "m", size=(32, 32), mode="tile", tile_overlap=8, scale=0.5, pixel_threshold=0.3)
    insp = Inspector.from_model_dir(model, providers=("CPUExecutionProvider",))
    frame = np.full(hw, 128, dtype=np.uint8)
    y0, y1, x0, x1 = box
    frame[y0:y1, x0:x1] = 5
    result = insp.inspect(frame)
    assert result.score_map.shape == hw
    assert result.decision.code is Code.REJECT
    r = max(result.decision.regions, key=lambda r: r.area)
    assert abs(r.x + r.w / 2 - (x0 + x1) / 2) <= 4 and abs(r.y + r.h / 2 - (y0 + y1) / 2) <= 4
