"""The rules two places must agree on, each defined once in core/: the PLC's 16-bit seq, the MVTec paths, the
UTC timestamp formats."""

from __future__ import annotations

import re
import time
from pathlib import Path

from inspectd.core import mvtec
from inspectd.core.clock import compact_utc, iso_utc, utc_now
from inspectd.core.types import Code, Verdict, plc_seq
from inspectd.daemon.cameras.folder import mvtec_truth
from inspectd.plc.book import PlcResult


def test_plc_seq_wraps_from_65535_to_1_and_never_shows_0_for_a_result():
    assert [plc_seq(s) for s in (1, 2, 65535, 65536, 65537, 131070, 131071)] == [1, 2, 65535, 1, 2, 65535, 1]
    assert plc_seq(0) == 0  # no result yet


def test_the_plc_book_publishes_the_seq_the_reject_store_files_marks_under():
    # register 21 carries the PLC's seq back; the reject store looks rejects up by plc_seq: both must agree
    for seq in (1, 65535, 65536, 200_000):
        v = Verdict(seq=seq, item_id=7, wall_time=time.time(), code=Code.REJECT, score=0.5, defect_area=3)
        assert PlcResult.from_verdict(v).seq == plc_seq(seq)


def test_mvtec_mask_path_of_a_test_image_and_none_for_good_or_outside_test(tmp_path: Path):
    img = tmp_path / "test" / "crack" / "007.jpg"
    assert mvtec.mask_for_image(img) == tmp_path / "ground_truth" / "crack" / "007_mask.png"
    assert mvtec.mask_path(tmp_path, "crack", "007") == mvtec.mask_for_image(img)
    assert mvtec.mask_for_image(tmp_path / "test" / "good" / "001.png") is None
    assert mvtec.mask_for_image(tmp_path / "train" / "good" / "001.png") is None
    assert mvtec.mask_for_image(tmp_path / "elsewhere" / "x.png") is None


def test_the_folder_camera_reads_truth_through_the_same_mask_rule(tmp_path: Path):
    img = tmp_path / "test" / "crack" / "007.jpg"
    assert mvtec_truth(img) == (True, mvtec.mask_for_image(img))
    assert mvtec_truth(tmp_path / "test" / "good" / "001.png") == (False, None)
    assert mvtec_truth(tmp_path / "somewhere" / "x.png") == (None, None)


def test_utc_formats():
    t = 1_796_000_000.123
    assert iso_utc(t) == "2026-11-30T00:53:20.123Z"
    assert compact_utc(t) == "20261130T005320"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", utc_now())
