"""The four camera types against real files: PNG/JPEG trees written with cv2, MJPG videos, the real dataset."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from inspectd.core.errors import CameraError, EndOfStream
from inspectd.core.types import Camera
from inspectd.daemon.cameras import CAMERA_TYPES, build_camera
from inspectd.daemon.cameras.folder import FolderCamera, FolderCameraConfig
from inspectd.daemon.cameras.opencv import OpenCVCamera, OpenCVCameraConfig, mask_secrets
from inspectd.daemon.cameras.synthetic import DEFECT_KINDS, SurfaceGenerator, SyntheticCamera, SyntheticCameraConfig
from inspectd.daemon.cameras.video import VideoCamera, VideoCameraConfig

# ------------------------------------------------------------------------------------------------ helpers


def write_png(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)
    return path


def gray(value: int, shape: tuple[int, int] = (24, 32)) -> np.ndarray:
    return np.full(shape, value, np.uint8)


def write_video(path: Path, n_frames: int, size: tuple[int, int] = (64, 48)) -> Path:
    """An MJPG .avi whose frame i is uniformly grey at level 10 + 5 * i (so the order can be checked)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, size)
    assert writer.isOpened(), "this OpenCV build cannot write MJPG .avi"
    for i in range(n_frames):
        writer.write(np.full((size[1], size[0], 3), 10 + 5 * i, np.uint8))
    writer.release()
    return path


def levels(caps) -> list[int]:
    return [round((float(c.image.mean()) - 10) / 5) for c in caps]


TINY = {"min_width": 1, "min_height": 1}  # these tests use 10x12 images; the daemon default refuses below 16x16


def read_all(cam, limit: int = 10_000) -> list:
    out = []
    for _ in range(limit):
        try:
            out.append(cam.read(1.0))
        except EndOfStream:
            return out
    raise AssertionError(f"no EndOfStream after {limit} reads")


# ------------------------------------------------------------------------------------------------ synthetic


def test_synthetic_frame_is_a_pure_function_of_seed_and_index():
    cfg = SyntheticCameraConfig(defect_rate=0.5)
    a, b = SurfaceGenerator(cfg), SurfaceGenerator(cfg)
    for n in (0, 7, 123):
        x, y = a.render(n), b.render(n)
        assert np.array_equal(x.image, y.image)
        assert np.array_equal(x.truth_mask, y.truth_mask)
        assert x.truth == y.truth and x.source == y.source == f"synthetic#{n}"
    # order of calls does not matter; another seed gives another frame
    assert np.array_equal(a.render(7).image, SurfaceGenerator(cfg).render(7).image)
    other = SurfaceGenerator(SyntheticCameraConfig(defect_rate=0.5, seed=99))
    assert not np.array_equal(a.render(7).image, other.render(7).image)


def test_synthetic_camera_reads_render_n_for_n_0_1_2():
    cfg = SyntheticCameraConfig()
    cam = SyntheticCamera(cfg)
    assert isinstance(cam, Camera) and cam.live is True
    with pytest.raises(CameraError, match="not open"):
        cam.read(1.0)
    cam.open()
    gen = SurfaceGenerator(cfg)
    for n in range(5):
        cap = cam.read(1.0)
        assert cap.source == f"synthetic#{n}"
        assert np.array_equal(cap.image, gen.render(n).image)
    assert cam.describe()["type"] == "synthetic"
    cam.close()
    cam.close()


def test_synthetic_defects_occur_at_about_the_configured_rate():
    gen = SurfaceGenerator(SyntheticCameraConfig(defect_rate=0.25, width=64, height=64))
    truths = [gen.render(n).truth for n in range(200)]
    assert 30 <= sum(truths) <= 72  # 50 expected; +-3.5 binomial sigma
    assert sum(SurfaceGenerator(SyntheticCameraConfig(defect_rate=0.0)).render(n).truth for n in range(20)) == 0
    assert all(SurfaceGenerator(SyntheticCameraConfig(defect_rate=1.0)).render(n).truth for n in range(20))


def test_synthetic_mask_is_non_empty_exactly_when_truth_is_true_and_covers_enough_area():
    gen = SurfaceGenerator(SyntheticCameraConfig(defect_rate=0.5))
    kinds = set()
    for n in range(120):
        cap = gen.render(n)
        m = cap.truth_mask
        assert m.dtype == np.uint8 and m.shape == cap.image.shape[:2]
        assert set(np.unique(m)) <= {0, 255}
        assert bool(m.any()) is cap.truth
        assert bool(gen.defects(n)) is cap.truth
        if cap.truth:
            assert (m > 0).mean() >= 0.003, f"frame {n}: defect {gen.defects(n)} covers too little"
            kinds.update(gen.defects(n))
    assert kinds == set(DEFECT_KINDS)


def test_synthetic_defects_are_visible_and_local():
    gen = SurfaceGenerator(SyntheticCameraConfig(defect_rate=1.0))
    for n in range(30):
        bad, good = gen.render(n), gen.render_good(n)
        assert good.truth is False and not good.truth_mask.any()
        diff = np.abs(bad.image.astype(np.int16) - good.image.astype(np.int16))
        inside = bad.truth_mask > 0
        assert diff[inside].mean() > 25, f"frame {n}: {gen.defects(n)} barely changes the image"
        assert diff[inside].mean() > 10 * diff[~inside].mean()


def test_synthetic_render_good_equals_render_on_good_frames():
    gen = SurfaceGenerator(SyntheticCameraConfig(defect_rate=0.3))
    good = [n for n in range(20) if not gen.render(n).truth]
    assert good
    for n in good:
        assert np.array_equal(gen.render(n).image, gen.render_good(n).image)


def test_synthetic_frames_differ_from_each_other():
    gen = SurfaceGenerator(SyntheticCameraConfig(defect_rate=0.0))
    frames = [gen.render(n).image.astype(np.int16) for n in range(6)]
    for i in range(5):
        assert np.abs(frames[i] - frames[i + 1]).mean() > 5


def test_synthetic_texture_survives_resizing_to_half():
    img = SurfaceGenerator(SyntheticCameraConfig(defect_rate=0.0)).render(0).image
    half = cv2.resize(img, (128, 128), interpolation=cv2.INTER_AREA).astype(np.float32)
    detail = half - cv2.GaussianBlur(half, (0, 0), 3)
    assert detail.std() > 10, "the weave blurs away at half size"


@pytest.mark.parametrize(("color", "shape"), [("gray", (96, 160)), ("bgr", (96, 160, 3))], ids=["gray", "bgr"])
def test_synthetic_gray_and_bgr_shapes(color, shape):
    gen = SurfaceGenerator(SyntheticCameraConfig(color=color, width=160, height=96, defect_rate=1.0))
    cap = gen.render(3)
    assert cap.image.shape == shape and cap.image.dtype == np.uint8 and cap.image.flags["C_CONTIGUOUS"]
    assert cap.truth_mask.shape == (96, 160)
    assert 40 < cap.image.mean() < 220 and cap.image.std() > 15


def test_synthetic_renders_quickly():
    gen = SurfaceGenerator(SyntheticCameraConfig())
    gen.render(0)
    t0 = time.perf_counter()
    for n in range(20):
        gen.render(n)
    per_frame = (time.perf_counter() - t0) / 20
    assert per_frame < 0.05  # a sanity bound for a loaded CI machine; about 1 ms is typical


# ------------------------------------------------------------------------------------------------ folder


def test_folder_replays_in_natural_order_then_end_of_stream(tmp_path):
    for name, v in [("img10.png", 10), ("img2.png", 2), ("img1.png", 1), ("sub/a.png", 30), ("notes.txt", 0)]:
        if name.endswith(".png"):
            write_png(tmp_path / name, gray(v))
        else:
            (tmp_path / name).write_text("not an image")
    cam = FolderCamera(FolderCameraConfig(path=tmp_path))
    assert cam.live is False
    cam.open()
    caps = read_all(cam)
    assert [Path(c.source).relative_to(tmp_path).as_posix() for c in caps] == [
        "img1.png",
        "img2.png",
        "img10.png",
        "sub/a.png",
    ]
    assert [int(c.image[0, 0]) for c in caps] == [1, 2, 10, 30]
    assert all(c.truth is None and c.truth_mask is None and c.error is None for c in caps)
    with pytest.raises(EndOfStream):
        cam.read(1.0)
    assert cam.describe()["images"] == 4
    cam.close()


def test_folder_without_recursion_ignores_subdirectories(tmp_path):
    write_png(tmp_path / "a.png", gray(1))
    write_png(tmp_path / "sub" / "b.png", gray(2))
    cam = FolderCamera(FolderCameraConfig(path=tmp_path, recursive=False))
    cam.open()
    assert [c.source for c in read_all(cam)] == [str(tmp_path / "a.png")]


def test_folder_loops_when_loop_is_true(tmp_path):
    for i in range(3):
        write_png(tmp_path / f"{i}.png", gray(i))
    cam = FolderCamera(FolderCameraConfig(path=tmp_path, loop=True))
    cam.open()
    assert [int(cam.read(1.0).image[0, 0]) for _ in range(7)] == [0, 1, 2, 0, 1, 2, 0]


def test_folder_reopen_lists_the_directory_again(tmp_path):
    write_png(tmp_path / "a.png", gray(1))
    cam = FolderCamera(FolderCameraConfig(path=tmp_path))
    cam.open()
    assert len(read_all(cam)) == 1
    write_png(tmp_path / "b.png", gray(2))
    cam.close()
    cam.open()
    assert len(read_all(cam)) == 2


def test_folder_derives_truth_and_masks_from_an_mvtec_tree(tmp_path):
    root = tmp_path / "bottle"
    write_png(root / "test" / "good" / "000.png", gray(100, (20, 30)))
    write_png(root / "test" / "crack" / "000.png", gray(120, (20, 30)))
    crack_mask = np.zeros((20, 30), np.uint8)
    crack_mask[5:9, 10:20] = 255
    write_png(root / "ground_truth" / "crack" / "000_mask.png", crack_mask)
    write_png(root / "test" / "hole" / "001.png", gray(130, (20, 30)))  # no mask file
    write_png(root / "test" / "hole" / "002.png", gray(140, (20, 30)))
    write_png(root / "ground_truth" / "hole" / "002_mask.png", (crack_mask > 0).astype(np.uint8))  # a 0/1 mask
    write_png(root / "train" / "good" / "000.png", gray(90, (20, 30)))
    write_png(root / "other" / "x.png", gray(90, (20, 30)))

    cam = FolderCamera(FolderCameraConfig(path=root / "test"))
    cam.open()
    by_name = {Path(c.source).relative_to(root / "test").as_posix(): c for c in read_all(cam)}
    assert list(by_name) == ["crack/000.png", "good/000.png", "hole/001.png", "hole/002.png"]
    good, crack = by_name["good/000.png"], by_name["crack/000.png"]
    assert good.truth is False and good.truth_mask.shape == (20, 30) and not good.truth_mask.any()
    assert crack.truth is True and np.array_equal(crack.truth_mask, crack_mask)
    assert by_name["hole/001.png"].truth is True and by_name["hole/001.png"].truth_mask is None
    assert np.array_equal(by_name["hole/002.png"].truth_mask, crack_mask)

    # the dataset root: train/good is good, a directory outside test/ has no truth
    cam = FolderCamera(FolderCameraConfig(path=root))
    cam.open()
    by_name = {Path(c.source).relative_to(root).as_posix(): c for c in read_all(cam)}
    assert by_name["train/good/000.png"].truth is False
    assert by_name["other/x.png"].truth is None and by_name["other/x.png"].truth_mask is None
    assert "ground_truth/crack/000_mask.png" in by_name  # masks are images too when you replay the root


def test_folder_returns_an_error_capture_for_an_undecodable_file_and_continues(tmp_path):
    write_png(tmp_path / "01.png", gray(1))
    (tmp_path / "02.png").write_bytes(b"")
    (tmp_path / "03.png").write_bytes(b"this is not a PNG at all" * 10)
    _ok, png = cv2.imencode(".png", np.random.default_rng(0).integers(0, 255, (40, 40), dtype=np.uint8))
    (tmp_path / "04.png").write_bytes(png.tobytes()[: len(png) // 2])
    _ok, jpg = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    (tmp_path / "05.jpg").write_bytes(jpg.tobytes()[:-2])  # only the end-of-image marker missing
    write_png(tmp_path / "06.png", gray(6))
    cam = FolderCamera(FolderCameraConfig(path=tmp_path))
    cam.open()
    caps = read_all(cam)
    assert [Path(c.source).name for c in caps] == ["01.png", "02.png", "03.png", "04.png", "05.jpg", "06.png"]
    assert caps[0].image is not None and caps[-1].image is not None and int(caps[-1].image[0, 0]) == 6
    for cap in caps[1:5]:
        assert cap.image is None
        assert cap.error.startswith(f"cannot decode {cap.source} as an image"), cap.error
    assert "expected PNG/JPEG/BMP/TIFF" in caps[2].error
    assert "empty" in caps[1].error and "truncated JPEG" in caps[4].error


def test_folder_scales_16_bit_drops_alpha_and_converts_color(tmp_path):
    write_png(tmp_path / "a16.png", np.full((10, 12), 0xABCD, np.uint16))
    write_png(
        tmp_path / "b_alpha.png",
        np.dstack([gray(10, (10, 12)), gray(20, (10, 12)), gray(30, (10, 12)), gray(255, (10, 12))]),
    )
    write_png(tmp_path / "c.bmp", gray(77, (10, 12)))
    cv2.imwrite(str(tmp_path / "d.tif"), np.full((10, 12, 3), 0x1234, np.uint16))
    cam = FolderCamera(FolderCameraConfig(path=tmp_path, frame_size=TINY))
    cam.open()
    a, b, c, d = read_all(cam)
    assert a.image.shape == (10, 12) and a.image.dtype == np.uint8 and int(a.image[0, 0]) == 0xAB
    assert b.image.shape == (10, 12, 3) and b.image[0, 0].tolist() == [10, 20, 30]
    assert c.image.shape == (10, 12) and int(c.image[0, 0]) == 77
    assert d.image.shape == (10, 12, 3) and int(d.image[0, 0, 0]) == 0x12

    cam = FolderCamera(FolderCameraConfig(path=tmp_path, color="bgr", frame_size=TINY))
    cam.open()
    assert all(cap.image.shape == (10, 12, 3) and cap.image.flags["C_CONTIGUOUS"] for cap in read_all(cam))
    cam = FolderCamera(FolderCameraConfig(path=tmp_path, color="gray", frame_size=TINY))
    cam.open()
    assert all(cap.image.shape == (10, 12) for cap in read_all(cam))


def test_folder_honours_the_configured_extensions_case_insensitively(tmp_path):
    write_png(tmp_path / "A.PNG", gray(1))
    write_png(tmp_path / "b.jpg", gray(2))
    cam = FolderCamera(FolderCameraConfig(path=tmp_path, extensions=[".png"]))
    cam.open()
    assert [Path(c.source).name for c in read_all(cam)] == ["A.PNG"]


def test_folder_missing_or_empty_directory_raises_camera_error_naming_it(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(CameraError, match=f"folder {missing} does not exist"):
        FolderCamera(FolderCameraConfig(path=missing)).open()
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(CameraError, match=r"folder .*empty has no images .*\.png/\.jpg"):
        FolderCamera(FolderCameraConfig(path=tmp_path / "empty")).open()
    cam = FolderCamera(FolderCameraConfig(path=tmp_path / "empty"))
    with pytest.raises(CameraError, match="not open"):
        cam.read(1.0)
    cam.close()


@pytest.mark.dataset
def test_folder_over_the_real_dataset_yields_every_image_once_with_truth_and_masks(magnetic_tile):
    test_dir = magnetic_tile / "test"
    expected = sorted(str(p) for p in test_dir.rglob("*") if p.suffix.lower() in (".jpg", ".png"))
    cam = FolderCamera(FolderCameraConfig(path=test_dir))
    cam.open()
    caps = read_all(cam)
    assert sorted(c.source for c in caps) == expected and len(caps) == len(set(c.source for c in caps))
    for cap in caps:
        cls = Path(cap.source).parent.name
        assert cap.error is None and cap.image is not None and cap.image.dtype == np.uint8
        assert cap.truth is (cls != "good")
        assert cap.truth_mask is not None and cap.truth_mask.shape == cap.image.shape[:2], cap.source
        assert set(np.unique(cap.truth_mask)) <= {0, 255}
        if cap.truth:  # the mask is the dataset's own (a few of them are empty in the dataset itself)
            stem = Path(cap.source).stem
            on_disk = cv2.imread(str(magnetic_tile / "ground_truth" / cls / f"{stem}_mask.png"), cv2.IMREAD_GRAYSCALE)
            assert np.array_equal(cap.truth_mask > 0, on_disk > 127), cap.source
        else:
            assert not cap.truth_mask.any()
    assert sum(c.truth_mask.any() for c in caps if c.truth) > 0.95 * sum(c.truth for c in caps)


# ------------------------------------------------------------------------------------------------ video


def test_video_yields_every_frame_in_order_then_end_of_stream(tmp_path):
    path = write_video(tmp_path / "line.avi", 12)
    cam = VideoCamera(VideoCameraConfig(path=path))
    assert cam.live is False
    cam.open()
    caps = read_all(cam)
    assert len(caps) == 12
    assert levels(caps) == list(range(12))
    assert [c.source for c in caps] == [f"{path}#{i}" for i in range(12)]
    assert caps[0].image.shape == (48, 64, 3) and caps[0].image.dtype == np.uint8
    with pytest.raises(EndOfStream):
        cam.read(1.0)
    assert cam.describe()["frames"] == 12
    cam.close()
    cam.close()


def test_video_loop_rewinds_to_the_first_frame(tmp_path):
    cam = VideoCamera(VideoCameraConfig(path=write_video(tmp_path / "v.avi", 4), loop=True))
    cam.open()
    caps = [cam.read(1.0) for _ in range(10)]
    assert levels(caps) == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    assert caps[4].source.endswith("#0")


def test_video_missing_or_unreadable_file_raises_camera_error(tmp_path):
    with pytest.raises(CameraError, match="does not exist"):
        VideoCamera(VideoCameraConfig(path=tmp_path / "none.avi")).open()
    (tmp_path / "junk.avi").write_bytes(b"not a video" * 100)
    cam = VideoCamera(VideoCameraConfig(path=tmp_path / "junk.avi"))
    with pytest.raises(CameraError, match="cannot open"):
        cam.open()
    cam.close()


def test_video_truncated_mid_file_raises_camera_error_not_end_of_stream(tmp_path):
    path = write_video(tmp_path / "v.avi", 40)
    data = path.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])
    cam = VideoCamera(VideoCameraConfig(path=cut))
    cam.open()
    with pytest.raises(CameraError, match="failed"):
        for _ in range(41):
            cam.read(1.0)


# ------------------------------------------------------------------------------------------------ opencv (live)


def test_opencv_camera_grabs_frames_from_a_file_then_reports_the_source_lost(tmp_path):
    path = write_video(tmp_path / "v.avi", 30)
    cam = OpenCVCamera(OpenCVCameraConfig(source=str(path)))
    assert cam.live is True
    cam.open()
    try:
        first = cam.read(2.0)
        assert first.image.shape == (48, 64, 3) and first.source.startswith(f"{path}#")
        seen = [first]
        t0 = time.monotonic()
        with pytest.raises(CameraError, match=f"lost {path}"):
            while True:
                seen.append(cam.read(2.0))
        assert time.monotonic() - t0 < 2.5
        numbers = [int(c.source.rsplit("#", 1)[1]) for c in seen]
        assert numbers == sorted(set(numbers)) and numbers[-1] <= 30  # newest-frame-wins, never repeated
        assert cam.describe()["size"] == "64x48"
    finally:
        cam.close()
    cam.close()


def test_opencv_camera_read_times_out_when_no_frame_arrives(monkeypatch):
    release = threading.Event()

    class SilentCapture:  # opens, then blocks in read() like a stalled camera
        def __init__(self, *args):
            pass

        def isOpened(self):  # noqa: N802  (cv2.VideoCapture names it)
            return True

        def set(self, *args):
            return True

        def get(self, prop):
            return 0.0

        def read(self):
            release.wait(5)
            return False, None

        def release(self):
            pass

    import inspectd.daemon.cameras.opencv as mod

    monkeypatch.setattr(mod.cv2, "VideoCapture", SilentCapture)
    cam = OpenCVCamera(OpenCVCameraConfig(source=0))
    cam.open()
    t0 = time.monotonic()
    with pytest.raises(CameraError, match=r"no frame from 0 within 0.2 s"):
        cam.read(0.2)
    assert time.monotonic() - t0 < 1.0

    # close() from another thread wakes a waiting read() at once
    errors = []

    def wait_for_read() -> None:
        with pytest.raises(CameraError) as info:
            cam.read(10.0)
        errors.append(info)

    waiter = threading.Thread(target=wait_for_read)
    t0 = time.monotonic()
    waiter.start()
    time.sleep(0.05)
    threading.Timer(0.3, release.set).start()  # the stalled driver read returns a little later
    cam.close()
    waiter.join(5)
    assert not waiter.is_alive() and time.monotonic() - t0 < 3
    assert errors and "closed while read() waited" in str(errors[0].value)


def test_opencv_camera_unopenable_source_raises_camera_error(tmp_path):
    cam = OpenCVCamera(OpenCVCameraConfig(source=str(tmp_path / "missing.avi")))
    with pytest.raises(CameraError, match="cannot open camera"):
        cam.open()
    cam.close()  # safe after a failed open
    with pytest.raises(CameraError, match="not open"):
        cam.read(0.1)


def test_opencv_camera_hides_passwords_in_describe_and_errors():
    url = "rtsp://admin:s3cret@127.0.0.1:1/stream"  # port 1: refused at once
    cam = OpenCVCamera(OpenCVCameraConfig(source=url))
    assert "s3cret" not in str(cam.describe()) and "admin:***@127.0.0.1" in cam.describe()["source"]
    with pytest.raises(CameraError) as info:
        cam.open()
    assert "s3cret" not in str(info.value) and "***" in str(info.value)
    assert mask_secrets("rtspsrc location=rtsp://u:p@h/x user-pw=hunter2 ! fakesink") == (
        "rtspsrc location=rtsp://u:***@h/x user-pw=*** ! fakesink"
    )
    assert mask_secrets("rtsp://cam.local/stream") == "rtsp://cam.local/stream"


def test_opencv_config_takes_a_device_index_or_a_string():
    assert OpenCVCameraConfig(source=0).source == 0
    assert OpenCVCameraConfig(source="2").source == 2
    assert OpenCVCameraConfig(source="/dev/video0").source == "/dev/video0"


# ------------------------------------------------------------------------------------------------ configs


def test_every_camera_type_is_registered_and_built_from_its_config(tmp_path):
    assert {"synthetic", "folder", "video", "opencv"} <= set(CAMERA_TYPES)
    assert isinstance(build_camera(SyntheticCameraConfig()), SyntheticCamera)
    assert isinstance(build_camera(FolderCameraConfig(path=tmp_path)), FolderCamera)
    assert isinstance(build_camera(VideoCameraConfig(path=tmp_path / "v.avi")), VideoCamera)
    assert isinstance(build_camera(OpenCVCameraConfig(source=0)), OpenCVCamera)


@pytest.mark.parametrize("cls", [SyntheticCameraConfig, FolderCameraConfig, VideoCameraConfig, OpenCVCameraConfig])
def test_every_camera_field_has_a_description(cls):
    own = set(cls.model_fields) - {"type", "rate_hz", "trigger", "timeout_s", "reconnect"}
    assert own
    for name in own:
        assert cls.model_fields[name].description, f"{cls.__name__}.{name} has no description"


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (SyntheticCameraConfig, {"colour": "gray"}),
        (SyntheticCameraConfig, {"width": 8}),
        (SyntheticCameraConfig, {"height": 9000}),
        (SyntheticCameraConfig, {"defect_rate": 1.5}),
        (SyntheticCameraConfig, {"thread_period_px": 2}),
        (SyntheticCameraConfig, {"noise": -1}),
        (SyntheticCameraConfig, {"color": "rgb"}),
        (FolderCameraConfig, {"path": "/x", "looping": True}),
        (FolderCameraConfig, {"path": "/x", "extensions": ["png"]}),
        (FolderCameraConfig, {"path": "/x", "extensions": []}),
        (FolderCameraConfig, {"path": "/x", "color": "rgb"}),
        (FolderCameraConfig, {}),
        (VideoCameraConfig, {"path": "/x.avi", "fps": 3}),
        (OpenCVCameraConfig, {"source": -1}),
        (OpenCVCameraConfig, {"source": ""}),
        (OpenCVCameraConfig, {"source": 0, "backend": "dshow"}),
        (OpenCVCameraConfig, {"source": 0, "buffer_size": 0}),
        (OpenCVCameraConfig, {"source": 0, "width": 0}),
        (OpenCVCameraConfig, {"source": 0, "fps": 0}),
    ],
)
def test_camera_configs_reject_unknown_keys_and_out_of_range_values(cls, kwargs):
    with pytest.raises(ValidationError):
        cls(**kwargs)
