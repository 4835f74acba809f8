"""inspectd.inspection.preprocess: manifest-driven resize/tile preprocessing and stitching score maps back to the "
"frame."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from inspectd.core.manifest import PreprocessSpec, TensorSpec
from inspectd.inspection.preprocess import Preprocessor, TileLayout, axis_starts


def make(color="gray", hw=(64, 64), **spec) -> Preprocessor:
    channels = 1 if color == "gray" else 3
    return Preprocessor(PreprocessSpec(color=color, **spec), TensorSpec(name="input", shape=(None, channels, *hw)))


def frame(h, w, c=None, seed=0) -> np.ndarray:
    shape = (h, w) if c is None else (h, w, c)
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def nearest_centre(length: int, starts: tuple[int, ...], tile: int) -> np.ndarray:
    """Brute force: for each pixel, the index of the tile whose centre is nearest (ties -> earlier tile)."""
    p = np.arange(length)[:, None]
    s = np.asarray(starts)[None, :]
    dist = np.abs(2 * p + 1 - 2 * s - tile)  # 2 * |pixel centre - tile centre|
    return np.argmin(dist, axis=1)


# --- resize mode ---------------------------------------------------------------------------------------------


def test_resize_mode_batch_is_float32_nchw_contiguous_and_scaled():
    pre = make(hw=(48, 64), mean=0.5, std=0.25)
    img = frame(120, 200)
    prep = pre.prepare(img)
    assert prep.batch.shape == (1, 1, 48, 64)
    assert prep.batch.dtype == np.float32 and prep.batch.flags.c_contiguous
    small = cv2.resize(img, (64, 48), interpolation=cv2.INTER_AREA).astype(np.float32)
    np.testing.assert_allclose(prep.batch[0, 0], (small / 255 - 0.5) / 0.25, rtol=0, atol=1e-6)
    assert prep.reference.shape == (1, 48, 64) and prep.reference.dtype == np.float32
    np.testing.assert_array_equal(prep.reference[0], small / np.float32(255))
    assert prep.layout == TileLayout((120, 200), (48, 64), ((0, 0),), (120, 200), "resize")


def test_resize_mode_uses_the_spec_interpolation():
    img = frame(90, 90)
    prep = make(hw=(30, 30), interpolation="nearest").prepare(img)
    expected = cv2.resize(img, (30, 30), interpolation=cv2.INTER_NEAREST) / np.float32(255)
    np.testing.assert_array_equal(prep.reference[0], expected)


def test_resize_mode_stitch_gives_one_score_per_frame_pixel():
    pre = make(hw=(32, 32))
    prep = pre.prepare(frame(100, 150))
    maps = np.full((1, 32, 32), 0.25, dtype=np.float32)
    out = pre.stitch(maps, prep.layout)
    assert out.shape == (100, 150) and out.dtype == np.float32
    np.testing.assert_allclose(out, 0.25)


@pytest.mark.parametrize(("h", "w"), [(1, 300), (300, 1), (1, 1)])
def test_resize_mode_handles_one_pixel_frames(h, w):
    pre = make(hw=(16, 16))
    prep = pre.prepare(frame(h, w))
    assert prep.batch.shape == (1, 1, 16, 16)
    assert pre.stitch(pre.to_unit(prep.batch), prep.layout).shape == (h, w)


def test_to_unit_inverts_the_scaling_and_clips():
    pre = make(hw=(32, 32), mean=0.4, std=0.2)
    prep = pre.prepare(frame(32, 32))
    np.testing.assert_allclose(pre.to_unit(prep.batch), prep.reference, atol=1e-6)
    wild = np.array([-10.0, 0.0, 10.0], dtype=np.float32).reshape(1, 1, 1, 3)
    unit = pre.to_unit(wild)
    assert unit.shape == (1, 1, 3) and unit.dtype == np.float32
    np.testing.assert_allclose(unit[0, 0], [0.0, 0.4, 1.0], atol=1e-6)
    assert wild[0, 0, 0, 0] == -10.0  # the caller's output buffer is not modified


@pytest.mark.parametrize("mode", ["resize", "tile"])
def test_to_unit_bgr_returns_nhwc_like_the_reference(mode):
    pre = make("bgr", hw=(16, 16), mode=mode, tile_overlap=4, mean=0.5, std=0.5)
    prep = pre.prepare(frame(40, 30, 3))
    unit = pre.to_unit(prep.batch)
    assert unit.shape == prep.reference.shape == (prep.layout.n_tiles, 16, 16, 3)
    assert unit.dtype == np.float32 and unit.flags.c_contiguous
    np.testing.assert_allclose(unit, prep.reference, atol=1e-6)


@pytest.mark.parametrize("color", ["gray", "bgr"])
@pytest.mark.parametrize(("mean", "std"), [(0.0, 1.0), (0.5, 0.25)])
def test_divide_below_255_clips_the_reference_but_not_the_batch(color, mean, std):
    pre = make(color, hw=(8, 8), divide=100.0, mean=mean, std=std)
    img = np.full((8, 8), 200, dtype=np.uint8)
    prep = pre.prepare(img)
    np.testing.assert_allclose(prep.batch, (2.0 - mean) / std, rtol=1e-6)
    np.testing.assert_allclose(prep.reference, 1.0)


# --- colour --------------------------------------------------------------------------------------------------


def test_gray_model_converts_bgr_and_bgra_with_cvtcolor():
    pre = make(hw=(20, 20))
    bgr = frame(20, 20, 3)
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    np.testing.assert_array_equal(pre.prepare(bgr).reference[0], gray / np.float32(255))
    bgra = np.dstack([bgr, np.full((20, 20), 7, np.uint8)])
    np.testing.assert_array_equal(pre.prepare(bgra).reference[0], gray / np.float32(255))
    np.testing.assert_array_equal(pre.prepare(gray[:, :, None]).reference[0], gray / np.float32(255))


def test_bgr_model_replicates_gray_and_drops_alpha():
    pre = make("bgr", hw=(20, 20))
    gray = frame(20, 20)
    prep = pre.prepare(gray)
    assert prep.batch.shape == (1, 3, 20, 20) and prep.reference.shape == (1, 20, 20, 3)
    for c in range(3):
        np.testing.assert_array_equal(prep.batch[0, c], gray / np.float32(255))
    bgr = frame(20, 20, 3, seed=1)
    bgra = np.dstack([bgr, np.full((20, 20), 99, np.uint8)])
    prep = pre.prepare(bgra)
    np.testing.assert_array_equal(prep.reference[0], bgr / np.float32(255))
    # the batch keeps OpenCV's B, G, R channel order
    np.testing.assert_array_equal(prep.batch[0, 0], bgr[:, :, 0] / np.float32(255))
    np.testing.assert_array_equal(prep.batch[0, 2], bgr[:, :, 2] / np.float32(255))


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (np.zeros((10, 10), np.float32), "dtype float32"),
        (np.zeros((10, 10, 3), np.uint16), "dtype uint16"),
        (np.zeros((2, 10, 10, 3), np.uint8), r"shape \(2, 10, 10, 3\)"),
        (np.zeros((10,), np.uint8), r"shape \(10,\)"),
        (np.zeros((10, 10, 2), np.uint8), r"shape \(10, 10, 2\)"),
        (np.zeros((0, 10), np.uint8), "zero size"),
        (np.zeros((10, 0, 3), np.uint8), "zero size"),
        ([[1, 2], [3, 4]], "list"),
    ],
)
def test_invalid_frames_raise_value_error_naming_the_problem(image, match):
    for mode in ("resize", "tile"):
        with pytest.raises(ValueError, match=match) as info:
            make(hw=(8, 8), mode=mode, tile_overlap=2).prepare(image)
        assert "expected uint8" in str(info.value)


def test_channel_mismatch_between_color_and_input_is_rejected():
    with pytest.raises(ValueError, match=r"3 channels but preprocess.color is 'gray'"):
        Preprocessor(PreprocessSpec(color="gray"), TensorSpec(name="x", shape=(1, 3, 8, 8)))


def test_overlap_not_smaller_than_tile_is_rejected():
    with pytest.raises(ValueError, match="tile_overlap 8"):
        make(hw=(8, 16), mode="tile", tile_overlap=8)


def test_wrong_number_of_maps_for_the_layout_is_rejected():
    pre = make(hw=(16, 16), mode="tile", tile_overlap=4)
    prep = pre.prepare(frame(40, 40))
    with pytest.raises(ValueError, match=f"expected {prep.layout.n_tiles} x h x w"):
        pre.stitch(np.zeros((1, 16, 16), np.float32), prep.layout)
    with pytest.raises(ValueError, match="x 16 x 16"):
        pre.stitch(np.zeros((prep.layout.n_tiles, 8, 8), np.float32), prep.layout)


def test_to_unit_rejects_output_with_the_wrong_layout():
    with pytest.raises(ValueError, match=r"expected N x 1 x H x W"):
        make(hw=(8, 8)).to_unit(np.zeros((1, 8, 8), np.float32))


# --- tile mode -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "tile", "overlap"),
    [(4096, 256, 32), (2448, 256, 32), (300, 64, 0), (64, 64, 8), (65, 64, 8), (10, 64, 8)],
)
def test_axis_starts_cover_the_axis_and_the_last_tile_is_flush(length, tile, overlap):
    starts = axis_starts(max(length, tile), tile, overlap)
    assert starts[0] == 0
    assert starts[-1] + tile == max(length, tile)  # flush with the far edge, never hanging over
    steps = np.diff(starts)
    assert np.all(steps[:-1] == tile - overlap) if len(steps) > 1 else True
    assert np.all(steps > 0) and np.all(steps <= tile - overlap)  # strictly increasing, no gaps


def test_tile_layout_covers_the_frame_in_row_major_order():
    pre = make(hw=(64, 64), mode="tile", tile_overlap=16)
    prep = pre.prepare(frame(150, 200))
    layout = prep.layout
    covered = np.zeros(layout.padded_hw, bool)
    for y, x in layout.origins:
        assert y + 64 <= layout.padded_hw[0] and x + 64 <= layout.padded_hw[1]
        covered[y : y + 64, x : x + 64] = True
    assert covered.all()
    assert layout.origins == tuple(sorted(layout.origins))
    assert max(y for y, _ in layout.origins) == 150 - 64 and max(x for _, x in layout.origins) == 200 - 64
    assert prep.batch.shape == (layout.n_tiles, 1, 64, 64)
    assert prep.batch.dtype == np.float32 and prep.batch.flags.c_contiguous


def test_tiles_hold_the_frame_pixels_at_their_origins():
    pre = make("bgr", hw=(32, 48), mode="tile", tile_overlap=5, mean=0.5, std=0.5)
    img = frame(70, 100, 3)
    prep = pre.prepare(img)
    for k, (y, x) in enumerate(prep.layout.origins):
        crop = img[y : y + 32, x : x + 48] / np.float32(255)
        np.testing.assert_array_equal(prep.reference[k], crop)
        np.testing.assert_allclose(prep.batch[k], (crop.transpose(2, 0, 1) - 0.5) / 0.5, atol=1e-6)


@pytest.mark.parametrize(("h", "w", "overlap"), [(150, 200, 16), (131, 97, 7), (64, 200, 0), (200, 40, 9)])
def test_stitch_takes_each_pixel_from_the_tile_with_the_nearest_centre(h, w, overlap):
    pre = make(hw=(64, 64), mode="tile", tile_overlap=overlap)
    layout = pre.prepare(frame(h, w)).layout
    maps = np.repeat(np.arange(layout.n_tiles, dtype=np.float32), 64 * 64).reshape(-1, 64, 64)
    out = pre.stitch(maps, layout)
    ys = tuple(sorted({y for y, _ in layout.origins}))
    xs = tuple(sorted({x for _, x in layout.origins}))
    row = nearest_centre(h, ys, 64)
    col = nearest_centre(w, xs, 64)
    expected = row[:, None] * len(xs) + col[None, :]
    np.testing.assert_array_equal(out, expected.astype(np.float32))


def test_stitch_never_uses_a_tile_border_band_where_a_neighbour_covers_it():
    overlap = 32
    pre = make(hw=(256, 256), mode="tile", tile_overlap=overlap)
    layout = pre.prepare(frame(700, 700)).layout
    # mark each tile's outer `overlap // 2` band with 1, interior with 0
    band = np.ones((256, 256), np.float32)
    band[overlap // 2 : -overlap // 2, overlap // 2 : -overlap // 2] = 0
    out = pre.stitch(np.broadcast_to(band, (layout.n_tiles, 256, 256)), layout)
    # only the frame's own outer band (no neighbour there) can come from a tile border
    inner = out[overlap // 2 : -overlap // 2, overlap // 2 : -overlap // 2]
    assert not inner.any()


@pytest.mark.parametrize(
    ("h", "w", "tile", "overlap"),
    [
        (4096, 256, 256, 32),  # line-scan fabric, 4096 lines of 256 px
        (256, 4096, 256, 32),  # the same, the other way round
        (4096, 256, 256, 0),  # overlap 0: 16 tiles exactly
        (2448, 2048, 256, 32),  # a typical megapixel camera
        (100, 70, 256, 32),  # smaller than one tile: reflection padding
        (256, 256, 256, 32),  # exactly one tile
        (300, 257, 256, 255),  # largest overlap allowed
    ],
)
def test_stitching_the_reference_reconstructs_the_frame_exactly(h, w, tile, overlap):
    pre = make(hw=(tile, tile), mode="tile", tile_overlap=overlap)
    img = frame(h, w, seed=h + w)
    prep = pre.prepare(img)
    assert prep.batch.shape[0] == prep.layout.n_tiles
    if (h, w, overlap) == (4096, 256, 0):
        assert prep.layout.n_tiles == 16
    out = pre.stitch(prep.reference, prep.layout)
    assert out.shape == (h, w) and out.dtype == np.float32
    np.testing.assert_array_equal(out, img.astype(np.float32) / 255)


def test_stitching_bgr_reference_channels_reconstructs_the_frame():
    pre = make("bgr", hw=(64, 64), mode="tile", tile_overlap=10)
    img = frame(150, 90, 3)
    prep = pre.prepare(img)
    for c in range(3):
        out = pre.stitch(prep.reference[..., c], prep.layout)
        np.testing.assert_array_equal(out, img[:, :, c].astype(np.float32) / 255)


@pytest.mark.parametrize(("h", "w"), [(1, 300), (300, 1), (1, 1), (1, 64), (2, 3)])
def test_one_pixel_frames_are_padded_and_do_not_crash(h, w):
    pre = make(hw=(64, 64), mode="tile", tile_overlap=8)
    img = frame(h, w)
    prep = pre.prepare(img)
    assert prep.layout.padded_hw == (max(h, 64), max(w, 64))
    out = pre.stitch(prep.reference, prep.layout)
    np.testing.assert_array_equal(out, img.astype(np.float32) / 255)
    # the padding is a reflection (repetition for a 1-pixel dimension) of the frame's own pixels
    assert set(np.unique(prep.reference)) <= set(np.unique(img.astype(np.float32) / 255))


def test_small_frame_padding_is_a_reflection():
    pre = make(hw=(8, 8), mode="tile", tile_overlap=2)
    img = np.arange(12, dtype=np.uint8).reshape(3, 4)
    ref = pre.prepare(img).reference[0] * 255
    np.testing.assert_allclose(ref[:3, :4], img)
    np.testing.assert_allclose(ref[3, :4], img[1])  # REFLECT_101: row 3 mirrors row 1
    np.testing.assert_allclose(ref[:3, 4], img[:, 2])


def test_layout_is_cached_per_frame_size():
    pre = make(hw=(32, 32), mode="tile", tile_overlap=4)
    a = pre.prepare(frame(100, 100)).layout
    b = pre.prepare(frame(100, 100, seed=3)).layout
    c = pre.prepare(frame(100, 90)).layout
    assert a is b
    assert c is not a and c.frame_hw == (100, 90)


# --- tile mode with preprocess.scale ---------------------------------------------------------------------------


@pytest.mark.parametrize("h, w, scale", [(300, 257, 0.5), (130, 640, 0.25), (40, 40, 0.5), (97, 101, 0.75)])
def test_scaled_tiles_cut_the_resized_frame_and_stitch_back_to_camera_pixels(h, w, scale):
    pre = make(hw=(32, 32), mode="tile", tile_overlap=8, scale=scale)
    img = cv2.GaussianBlur(frame(h, w, seed=h), (0, 0), 3)  # smooth, so resizing there and back stays close
    prep = pre.prepare(img)
    small = cv2.resize(img, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    assert prep.layout.frame_hw == small.shape and prep.layout.native_hw == (h, w)
    assert prep.layout.n_tiles == make(hw=(32, 32), mode="tile", tile_overlap=8).layout_for(small.shape).n_tiles
    y, x = prep.layout.origins[-1]
    padded = cv2.copyMakeBorder(
        small, 0, max(0, 32 - small.shape[0]), 0, max(0, 32 - small.shape[1]), cv2.BORDER_REFLECT_101
    )
    np.testing.assert_array_equal(prep.reference[-1], padded[y : y + 32, x : x + 32] / np.float32(255))
    out = pre.stitch(prep.reference, prep.layout)
    assert out.shape == (h, w) and out.dtype == np.float32  # scores in camera pixels, whatever the scale
    assert np.abs(out - img / np.float32(255)).mean() < 0.02


def test_a_constant_score_map_stays_constant_through_a_scaled_stitch():
    pre = make(hw=(32, 32), mode="tile", tile_overlap=8, scale=0.5)
    layout = pre.prepare(frame(201, 333)).layout
    out = pre.stitch(np.full((layout.n_tiles, 32, 32), 0.25, np.float32), layout)
    assert out.shape == (201, 333)
    np.testing.assert_allclose(out, 0.25, atol=1e-6)


def test_scale_in_resize_mode_is_a_manifest_error():
    with pytest.raises(ValueError, match=r"scale 0.5 needs mode 'tile'"):
        PreprocessSpec(color="gray", mode="resize", scale=0.5)
