"""Bad images: corrupt, truncated, empty and random files, and frames of odd size, channel count and bit depth.
Through the real daemon each file gets exactly one verdict (an error verdict that says why, or a real pass/reject)
and the daemon exits 0; frames outside camera.frame_size (1x1, 2x3000, a 20000x20000 PNG of 389 KB) are error
verdicts, the huge one refused on its header before it is decoded; the Inspector itself answers odd arrays with a
result or a clear exception, never a crash."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from inspectd.inspection.inspector import Inspector
from tests.support.helpers import draw_item, make_blur_model, run_cli
from tests.support.reliability import config


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {
        "gray": make_blur_model(root / "gray", size=(64, 64), pixel_threshold=0.35),
        "bgr": make_blur_model(root / "bgr", size=(64, 64), color="bgr", pixel_threshold=0.35),
    }


def _png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


def _jpg(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    return buf.tobytes()


def _files(folder: Path) -> dict[str, str]:
    """name -> what its verdict must be: 'error' (with a reason) or 'ok' (pass or reject)."""
    folder.mkdir()
    good = draw_item((96, 96), defect=False)
    rng = np.random.default_rng(0)
    files = {
        "a_good.png": (_png(good), "ok"),
        "b_truncated.png": (_png(good)[:200], "error"),
        "c_truncated.jpg": (_jpg(good)[: len(_jpg(good)) // 2], "error"),
        "d_empty.png": (b"", "error"),
        "e_random.png": (rng.integers(0, 256, 4000, dtype=np.uint8).tobytes(), "error"),
        "f_text.jpg": (b"this is not an image\n" * 20, "error"),
        "g_png_header_only.png": (b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "error"),
        "h_16bit.png": (_png(good.astype(np.uint16) * 257), "ok"),
        "i_rgba.png": (_png(np.dstack([good, good, good, np.full_like(good, 255)])), "ok"),
        "j_1x1.png": (_png(np.full((1, 1), 128, np.uint8)), "size"),  # outside camera.frame_size (16x16 ..)
        "k_wide.png": (_png(np.full((2, 3000), 128, np.uint8)), "size"),
        "l_tall.png": (_png(np.full((3000, 3), 128, np.uint8)), "size"),
        "l_wide_enough.png": (_png(np.full((16, 3000), 128, np.uint8)), "ok"),
        "m_bgr.png": (_png(cv2.cvtColor(good, cv2.COLOR_GRAY2BGR)), "ok"),
        "n_big.png": (_png(np.full((2000, 2000), 128, np.uint8)), "ok"),
        "o_float.tif": (cv2.imencode(".tiff", good.astype(np.float32) / 255)[1].tobytes(), "ok"),
        "p_good_again.png": (_png(good), "ok"),
    }
    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    return {name: want for name, (_, want) in files.items()}


@pytest.mark.parametrize("color", ["gray", "bgr"])
def test_corrupt_truncated_and_odd_image_files_each_get_one_verdict_and_the_daemon_goes_on(tmp_path, models, color):
    folder = tmp_path / "images"
    want = _files(folder)
    cam = f"          type: folder\n          path: {folder}\n          rate_hz: 0"
    res = run_cli("run", "--config", str(config(tmp_path, models[color], cam)), timeout=180)
    assert res.returncode == 0, res.stderr[-2000:]
    events = [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]
    verdicts = [e for e in events if e.get("event") == "verdict"]
    assert [v["seq"] for v in verdicts] == list(range(1, len(want) + 1))
    got = {Path(v["source"]).name: v for v in verdicts}
    assert set(got) == set(want), "one verdict per file"
    for name, expect in want.items():
        v = got[name]
        if expect == "error":
            assert v["code"] == "error" and v.get("error"), (name, v)
            assert "decode" in v["error"] or "empty" in v["error"] or "truncated" in v["error"], (name, v["error"])
        elif expect == "size":
            assert v["code"] == "error" and "outside camera.frame_size" in v["error"], (name, v)
        else:
            assert v["code"] in ("pass", "reject"), (name, v)
    summary = events[-1]
    assert summary["event"] == "summary" and summary["error"] == sum(w != "ok" for w in want.values())
    assert "Traceback" not in res.stderr


def _huge_gray_png(side: int) -> bytes:
    """A valid side x side 8-bit gray PNG of zeros: 389 KB for 20000, 400 MB once decoded."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    z = zlib.compressobj(9)
    row = bytes(1 + side)
    idat = b"".join([z.compress(row) for _ in range(side)] + [z.flush()])
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_frames_outside_the_size_bounds_are_error_verdicts_and_a_huge_png_is_never_decoded(tmp_path, models):
    """Issue 24, item 11: a 1x1 frame passed, and a valid 389 KB PNG of 20000x20000 took 4.6 GB RSS and aborted
    the daemon, losing that verdict."""
    import subprocess
    import sys

    from tests.support.helpers import cli_env

    folder = tmp_path / "images"
    folder.mkdir()
    good = draw_item((96, 96), defect=False)
    (folder / "a_good.png").write_bytes(_png(good))
    (folder / "b_huge.png").write_bytes(_huge_gray_png(20000))
    (folder / "c_1x1.png").write_bytes(_png(np.full((1, 1), 128, np.uint8)))
    (folder / "d_good.png").write_bytes(_png(good))
    cfg = config(tmp_path, models["gray"], f"          type: folder\n          path: {folder}\n          rate_hz: 0")
    # a wrapper whose only child is the daemon: its children's peak RSS is the daemon's
    probe = (
        "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
        "sys.stdout.write(r.stdout); sys.stderr.write(r.stderr); "
        "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)"
    )
    res = subprocess.run(
        [sys.executable, "-c", probe, sys.executable, "-m", "inspectd", "run", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=180,
        env=cli_env(),
    )
    assert res.returncode == 0, res.stderr[-2000:]
    verdicts = {
        Path(e["source"]).name: e
        for e in map(json.loads, filter(lambda x: x.startswith("{"), res.stdout.splitlines()))
        if e.get("event") == "verdict"
    }
    assert sorted(verdicts) == ["a_good.png", "b_huge.png", "c_1x1.png", "d_good.png"], "one verdict per file"
    for name in ("b_huge.png", "c_1x1.png"):
        assert verdicts[name]["code"] == "error" and "outside camera.frame_size" in verdicts[name]["error"], name
    assert verdicts["a_good.png"]["code"] in ("pass", "reject") and verdicts["d_good.png"]["code"] in ("pass", "reject")
    peak_mb = int(res.stdout.rsplit("PEAK_RSS_KB", 1)[1].split()[0]) / 1024
    assert peak_mb < 1024, f"the daemon's peak RSS was {peak_mb:.0f} MB: the 20000x20000 PNG was decoded"


ODD_FRAMES = {
    "1x1 gray": np.zeros((1, 1), np.uint8),
    "2x3000": np.full((2, 3000), 200, np.uint8),
    "3000x2x3": np.full((3000, 2, 3), 50, np.uint8),
    "uint16": np.full((64, 64), 40000, np.uint16),
    "float32 0..1": np.full((64, 64), 0.5, np.float32),
    "float64 nan": np.full((64, 64), np.nan),
    "int8": np.full((64, 64), -5, np.int8),
    "bool": np.ones((64, 64), bool),
    "4 channels": np.zeros((64, 64, 4), np.uint8),
    "2 channels": np.zeros((64, 64, 2), np.uint8),
    "HxWx1": np.zeros((64, 64, 1), np.uint8),
    "empty": np.zeros((0, 0), np.uint8),
    "1-d": np.zeros(64, np.uint8),
    "4-d": np.zeros((1, 64, 64, 1), np.uint8),
    "non-contiguous": np.zeros((128, 128), np.uint8)[::2, ::2],
}


@pytest.mark.parametrize("color", ["gray", "bgr"])
def test_the_inspector_answers_odd_frames_with_a_result_or_a_clear_error(models, color):
    insp = Inspector.from_model_dir(models[color], providers=("CPUExecutionProvider",))
    outcomes = {}
    for name, frame in ODD_FRAMES.items():
        try:
            result = insp.inspect(frame)
        except (ValueError, TypeError, cv2.error) as exc:  # the pipeline turns these into an error verdict
            assert str(exc), name
            outcomes[name] = "error"
            continue
        assert result.score_map.shape == frame.shape[:2], name
        assert np.isfinite(result.decision.score), name
        outcomes[name] = result.decision.code.name.lower()
    assert outcomes["1x1 gray"] != "error" and outcomes["non-contiguous"] != "error"
    for name in ("empty", "1-d", "4-d", "2 channels", "uint16", "float32 0..1", "float64 nan", "int8", "bool"):
        assert outcomes[name] == "error", (name, outcomes[name])  # refused with 'expected uint8 HxW (gray) ...'
    for name in ("2x3000", "3000x2x3", "4 channels", "HxWx1"):
        assert outcomes[name] in ("pass", "reject"), (name, outcomes[name])
