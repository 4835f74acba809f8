"""camera.type genicam against a real GenTL producer: viky.cti, the software camera bundled in PyPI's genicam wheel
(three simulated devices, serial numbers 0, 1, 2; 400x400 RGBa8 or Mono8; AcquisitionFrameRate 1..200 Hz; no
trigger nodes), driven through harvesters exactly as a GigE or USB3 camera would be."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from inspectd.core.errors import CameraError, ConfigError
from inspectd.core.types import Code
from inspectd.daemon.cameras import genapi
from inspectd.daemon.cameras.genicam import GenICamCamera, GenICamCameraConfig
from inspectd.daemon.dispatch import Dispatcher
from inspectd.daemon.pipeline import Pipeline
from inspectd.inspection.inspector import Inspector
from tests.support.helpers import CollectSink, daemon_config, make_blur_model, parse_json_lines, run_cli

genicam = pytest.importorskip(
    "genicam", reason="the genicam extra (PyPI's genicam wheel, which bundles viky.cti) has no wheel for this platform"
)
pytest.importorskip("harvesters", reason="the genicam extra (harvesters) is not installed")
VIKY = Path(genicam.__file__).parent / "viky.cti"
if not VIKY.is_file():
    pytest.skip(f"this genicam wheel has no bundled viky.cti ({VIKY})", allow_module_level=True)


def viky(**kw) -> GenICamCameraConfig:
    return GenICamCameraConfig(cti=VIKY, serial_number=kw.pop("serial_number", "1"), **kw)


def frame_id(capture) -> int:
    return int(capture.source.rsplit("#", 1)[1])


@pytest.fixture
def camera():
    cams: list[GenICamCamera] = []

    def make(**kw) -> GenICamCamera:
        cam = GenICamCamera(viky(**kw))
        cams.append(cam)
        cam.open()
        return cam

    yield make
    for cam in cams:
        cam.close()


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return make_blur_model(tmp_path_factory.mktemp("m"), size=(64, 64), pixel_threshold=0.3, min_region_area=4)


# --------------------------------------------------------------------------------------------- frames and nodes


def test_free_run_frames_arrive_at_the_configured_rate(camera):
    cam = camera(rate_hz=50, pixel_format="Mono8")
    assert cam.describe()["device_frame_rate"] == 50.0
    first = cam.read(2.0)
    t0 = time.monotonic()
    caps = [cam.read(2.0) for _ in range(25)]
    elapsed = time.monotonic() - t0
    ids = [frame_id(c) for c in caps]
    assert ids == sorted(set(ids)) and ids[0] > frame_id(first)
    # the device's own clock: frame ids advance at 50 per second (a loose bound: CI machines are shared)
    rate = (ids[-1] - frame_id(first)) / elapsed
    assert 35 <= rate <= 65, rate


def test_node_settings_apply_and_are_read_back(camera):
    cam = camera(pixel_format="Mono8", nodes={"Width": 320, "Height": 240, "AcquisitionFrameRate": 40.0})
    d = cam.describe()
    assert d["nodes"] == {"Width": 320, "Height": 240, "AcquisitionFrameRate": 40.0}
    assert d["size"] == "320x240" and d["pixel_format"] == "Mono8"
    img = cam.read(2.0).image
    assert img.shape == (240, 320) and img.dtype == np.uint8


def test_colour_pixel_format_gives_bgr_and_color_gray_converts(camera):
    cam = camera(pixel_format="RGBa8")
    colour = cam.read(2.0).image
    assert colour.shape == (400, 400, 3)
    cam.close()  # one producer per process at a time (as in the daemon: one camera)
    gray = camera(serial_number="2", pixel_format="RGBa8", color="gray").read(2.0).image
    assert gray.shape == (400, 400)


@pytest.mark.parametrize(
    ("nodes", "named", "why"),
    [
        ({"ExposureTimeX": 5000}, "camera.nodes.ExposureTimeX", "has no node"),
        ({"Widht": 320}, "camera.nodes.Widht", "close: Width"),
        ({"PayloadSize": 5}, "camera.nodes.PayloadSize", "read-only"),
        ({"AcquisitionFrameRate": 5000.0}, "camera.nodes.AcquisitionFrameRate", "1.0..200.0"),
        ({"PixelFormat": "Mono12"}, "camera.nodes.PixelFormat", "'RGBa8', 'Mono8'"),
        ({"AcquisitionStart": 1}, "camera.nodes.AcquisitionStart", "is a command"),
    ],
)
def test_a_wrong_node_is_a_config_error_naming_it(nodes, named, why):
    cam = GenICamCamera(viky(nodes=nodes))
    with pytest.raises(ConfigError) as err:
        cam.open()
    assert named in str(err.value) and why in str(err.value)
    cam.close()


def test_a_wrong_node_stops_the_daemon_with_exit_2_naming_the_node(tmp_path, model):
    cfg = daemon_config(
        tmp_path,
        model,
        f"          type: genicam\n          cti: {VIKY}\n          serial_number: '0'\n"
        "          nodes:\n            ExposureTime: 5000",
    )
    res = run_cli("run", "--config", str(cfg), "--max-frames", "5", timeout=60)
    assert res.returncode == 2, res.stderr
    assert "camera.nodes.ExposureTime: the device has no node 'ExposureTime'" in res.stderr
    assert any(e.get("event") == "camera_refused" for e in parse_json_lines(res.stdout))


def test_device_selection_names_what_it_found():
    cam = GenICamCamera(viky(serial_number="7"))
    with pytest.raises(CameraError, match=r"no GenICam device matches serial_number '7'.*Viky serial 0"):
        cam.open()
    several = GenICamCamera(GenICamCameraConfig(cti=VIKY, model="Viky"))
    with pytest.raises(ConfigError, match="3 GenICam devices match"):
        several.open()


def test_a_missing_producer_file_is_a_config_error(tmp_path):
    cam = GenICamCamera(GenICamCameraConfig(cti=tmp_path / "vendor.cti"))
    with pytest.raises(ConfigError, match=r"camera.cti: GenTL producer .*vendor.cti does not exist"):
        cam.open()


def test_a_line_trigger_needs_a_triggered_mode():
    with pytest.raises(ValidationError, match="hardware trigger"):
        GenICamCameraConfig(cti=VIKY, trigger="free_run", trigger_source="Line1")
    # viky has no TriggerMode node: a line trigger cannot be set up there
    cam = GenICamCamera(viky(trigger="plc", trigger_source="Line1"))
    with pytest.raises(ConfigError, match="needs the device's TriggerMode"):
        cam.open()


# --------------------------------------------------------------------------------------------- triggers


def test_software_trigger_gives_one_new_frame_per_trigger(camera):
    cam = camera(trigger="software", pixel_format="Mono8", nodes={"AcquisitionFrameRate": 50.0})
    assert cam.describe()["trigger_mode"] == "emulated"  # viky has no TriggerSoftware: the first frame after
    last = frame_id(cam.read(2.0))
    for _ in range(4):
        time.sleep(0.2)  # the device makes ~10 frames meanwhile; none of them may be handed out
        t0 = time.monotonic()
        cap = cam.read(2.0)
        waited = time.monotonic() - t0
        fid = frame_id(cap)
        assert fid >= last + 8, (last, fid)  # not a frame queued before the trigger
        assert waited < 0.2  # the next frame, within about one period (20 ms) on a quiet machine
        last = fid


def test_software_trigger_through_the_daemon_answers_each_line_once(tmp_path, model):
    cfg = daemon_config(
        tmp_path,
        model,
        f"          type: genicam\n          cti: {VIKY}\n          serial_number: '1'\n"
        "          trigger: software\n          pixel_format: Mono8",
    )
    res = run_cli("run", "--config", str(cfg), "--max-frames", "6", input="11\n12\n13\n14\n15\n16\n", timeout=90)
    assert res.returncode == 0, res.stderr
    verdicts = [e for e in parse_json_lines(res.stdout) if e.get("event") == "verdict"]
    assert [v["item_id"] for v in verdicts] == [11, 12, 13, 14, 15, 16]
    assert all(v["code"] != "error" for v in verdicts), verdicts
    ids = [int(v["source"].rsplit("#", 1)[1]) for v in verdicts]
    assert ids == sorted(set(ids))


# --------------------------------------------------------------------------------------------- faults


def test_buffers_go_back_to_the_producer_when_conversion_fails(camera, monkeypatch):
    cam = camera(pixel_format="Mono8", rate_hz=0, num_buffers=2, nodes={"AcquisitionFrameRate": 200.0})

    def broken(*args, **kw):
        raise ValueError("injected conversion failure")

    monkeypatch.setattr(genapi, "to_image", broken)
    bad = [cam.read(2.0) for _ in range(20)]  # with a leaked buffer per read, the 3rd read would time out
    assert all(c.image is None and "injected" in c.error for c in bad)
    monkeypatch.undo()
    assert cam.read(2.0).image.shape == (400, 400)


def test_producer_closed_mid_run_gives_error_verdicts_then_recovery(tmp_path, model):

    cfg = viky(rate_hz=25, pixel_format="Mono8", timeout_s=0.5, reconnect={"initial_s": 0.1, "max_s": 0.2})
    cam = GenICamCamera(cfg)
    inspector = Inspector.from_model_dir(model, providers=("CPUExecutionProvider",))
    sink = CollectSink()
    pipe = Pipeline(cam, cfg, inspector, Dispatcher([sink]))
    pipe.start()
    try:
        deadline = time.monotonic() + 20
        while len(sink.verdicts) < 10 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(sink.verdicts) >= 10, "no frames from viky"
        # "unplug": the device goes away under the running stream (harvesters closes it; every call on it fails)
        threading.Thread(target=cam._ia.destroy).start()
        n_before = len(sink.verdicts)
        while time.monotonic() < deadline:
            after = sink.verdicts[n_before:]
            errors = [v for v in after if v.code is Code.ERROR]
            if errors and sum(v.code is not Code.ERROR for v in after[after.index(errors[-1]) :]) >= 10:
                break
            time.sleep(0.02)
    finally:
        pipe.stop()
        assert pipe.wait(10)
    after = sink.verdicts[n_before:]
    errors = [v for v in after if v.code is Code.ERROR]
    assert errors, "losing the device gave no error verdict"
    assert any(v.error.startswith("camera:") for v in errors)
    recovered = after[after.index(errors[-1]) + 1 :]
    assert sum(v.code is not Code.ERROR for v in recovered) >= 10, "the camera did not come back"
    assert [v.seq for v in sink.verdicts] == list(range(1, len(sink.verdicts) + 1))  # one verdict each


# --------------------------------------------------------------------------------------------- pixel formats


def test_bayer_rg8_demosaics_red_to_red():
    h, w = 8, 8
    mosaic = np.zeros((h, w), np.uint8)
    mosaic[0::2, 0::2] = 200  # BayerRG: R at even rows and columns; a pure red scene
    bgr = genapi.to_image("BayerRG8", mosaic.ravel(), h, w)
    b, g, r = (float(bgr[2:-2, 2:-2, c].mean()) for c in range(3))
    assert r > 150 and g < 30 and b < 30


@pytest.mark.parametrize(("fmt", "bits"), [("Mono12", 12), ("Mono10", 10), ("Mono16", 16)])
def test_wide_mono_formats_keep_their_top_eight_bits(fmt, bits):
    data = np.array([0, (1 << bits) - 1, 1 << (bits - 1), 3 << (bits - 2)], np.uint16)
    assert genapi.to_image(fmt, data, 2, 2).ravel().tolist() == [0, 255, 128, 192]


def test_rgb8_is_swapped_to_bgr_and_unknown_formats_are_refused():
    rgb = np.array([[[10, 20, 30]]], np.uint8)
    assert genapi.to_image("RGB8", rgb.ravel(), 1, 1).ravel().tolist() == [30, 20, 10]
    assert cv2.cvtColor(genapi.to_image("BGR8", rgb.ravel(), 1, 1), cv2.COLOR_BGR2RGB).ravel().tolist() == [30, 20, 10]
    with pytest.raises(ValueError, match=r"YUV422_8. is not supported"):
        genapi.to_image("YUV422_8", rgb.ravel(), 1, 1)
    with pytest.raises(ValueError, match="needs 4 values, got 3"):
        genapi.to_image("Mono8", rgb.ravel(), 2, 2)


# --------------------------------------------------------------------------------------------- hardware trigger
# viky.cti has no trigger nodes, so the line-trigger set-up is checked on a node map that answers as GenApi's does
# (has_node, get_node -> typed node with .node.get_access_mode(), .value, .symbolics, execute()).


class _Access:
    def __init__(self, mode: int) -> None:
        self.mode = mode

    def get_access_mode(self) -> int:
        return self.mode


class _Enum:
    def __init__(self, name: str, symbolics: tuple[str, ...], value: str, access: int = 4) -> None:
        self.node, self.symbolics, self.value, self.name = _Access(access), symbolics, value, name


IEnumeration = type("IEnumeration", (_Enum,), {})  # genapi.write_node dispatches on the node's type name


class _TriggerNodeMap:
    def __init__(self) -> None:
        self.nodes_by_name = {
            "PixelFormat": IEnumeration("PixelFormat", ("Mono8",), "Mono8"),
            "TriggerSelector": IEnumeration("TriggerSelector", ("AcquisitionStart", "FrameStart"), "AcquisitionStart"),
            "TriggerMode": IEnumeration("TriggerMode", ("Off", "On"), "Off"),
            "TriggerSource": IEnumeration("TriggerSource", ("Software", "Line1", "Line2"), "Software"),
            "TriggerActivation": IEnumeration("TriggerActivation", ("RisingEdge", "FallingEdge"), "RisingEdge"),
        }

    def has_node(self, name: str) -> bool:
        return name in self.nodes_by_name

    def get_node(self, name: str):
        return self.nodes_by_name[name]

    @property
    def nodes(self):
        return list(self.nodes_by_name.values())


def test_a_line_trigger_sets_frame_start_on_that_line_and_keeps_every_buffer():
    nm = _TriggerNodeMap()
    cam = GenICamCamera(viky(trigger="plc", trigger_source="Line2", trigger_activation="FallingEdge"))
    assert cam._configure_trigger(nm) == "line"
    values = {k: v.value for k, v in nm.nodes_by_name.items()}
    assert values["TriggerSelector"] == "FrameStart" and values["TriggerMode"] == "On"
    assert values["TriggerSource"] == "Line2" and values["TriggerActivation"] == "FallingEdge"
    with pytest.raises(ConfigError, match=r"camera.trigger_source: 'Line9' is not a value of 'TriggerSource'"):
        GenICamCamera(viky(trigger="plc", trigger_source="Line9"))._configure_trigger(_TriggerNodeMap())
    # a software trigger on a device with TriggerMode but no TriggerSoftware command is refused, not emulated
    with pytest.raises(ConfigError, match="TriggerSoftware"):
        GenICamCamera(viky(trigger="software"))._configure_trigger(_TriggerNodeMap())
    free = _TriggerNodeMap()
    free.nodes_by_name["TriggerMode"].value = "On"
    assert GenICamCamera(viky(trigger="free_run"))._configure_trigger(free) == "free_run"
    assert free.nodes_by_name["TriggerMode"].value == "Off"


def test_a_gap_in_line_triggered_frame_ids_is_a_camera_error():
    cam = GenICamCamera(viky(trigger="plc", trigger_source="Line1"))
    cam._mode = "line"
    cam._check_order(7)
    cam._check_order(8)
    with pytest.raises(CameraError, match="jumped from 8 to 11: 2 triggered frames were lost"):
        cam._check_order(11)
    cam._mode = "free_run"  # newest-frame mode skips frames on purpose
    cam._check_order(20)
