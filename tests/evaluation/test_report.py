"""`inspectd evaluate --report` on a tree with found, missed and falsely rejected images: the summary says what the
calibrated thresholds do (and agrees with the JSON), the curves are real PNGs, and in a real headless chromium the
page has no console errors, its summary is above the fold and nothing overflows at 1400 and 1920 px; the filters
and pages show exactly the rows they should."""

from __future__ import annotations

import json
import os
import re
import shutil

import cv2
import numpy as np
import pytest

from tests.evaluation.conftest import flat, with_spot
from tests.evaluation.test_evaluate import run_cli
from tests.support.browser import chromium, console_errors, screenshot
from tests.support.helpers import REPO

SHOTS = os.environ.get("INSPECTD_DOC_SCREENSHOTS")


@pytest.fixture(scope="module")
def report(separable_model, separable_tree, tmp_path_factory):
    """The separable tree plus 20 faint defects (missed) and 2 'good' images carrying a spot (false rejects)."""
    pytest.importorskip("matplotlib", reason="the report extra (pip install -e '.[report]')")
    tree = tmp_path_factory.mktemp("mixed") / "tree"
    shutil.copytree(separable_tree, tree)
    rng = np.random.default_rng(7)
    (tree / "test" / "faint").mkdir()
    (tree / "ground_truth" / "faint").mkdir()
    for i in range(20):
        img = flat(rng)
        img[10:20, 10:20] += 1  # one grey level: no model sees that
        mask = np.zeros_like(img)
        mask[10:20, 10:20] = 255
        cv2.imwrite(str(tree / "test" / "faint" / f"{i:03d}.png"), img)
        cv2.imwrite(str(tree / "ground_truth" / "faint" / f"{i:03d}_mask.png"), mask)
    for i in range(2):
        img, _ = with_spot(flat(rng), rng)
        cv2.imwrite(str(tree / "test" / "good" / f"spotted{i}.png"), img)
    out = tmp_path_factory.mktemp("report")
    proc = run_cli(
        "evaluate",
        "--model",
        str(separable_model),
        "--data",
        str(tree),
        "--json",
        str(out / "r.json"),
        "--report",
        str(out / "report"),
        "--quiet",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads((out / "r.json").read_text()), out / "report"


def _rows(page: str) -> list[dict]:
    return json.loads(re.search(r'<script type="application/json" id="rows">(.*?)</script>', page, re.S).group(1))


def test_the_summary_states_the_confusion_matrix_and_agrees_with_the_json(report):
    result, out = report
    page = (out / "index.html").read_text()
    c = result["confusion"]
    assert c["defect_pass"] >= 1 and c["good_reject"] >= 2, c  # faint ones missed, the spotted goods rejected
    summary = page[page.index('<section id="summary"') : page.index('<section id="curves"')]
    n_def, n_good = c["defect_reject"] + c["defect_pass"], c["good_reject"] + c["good_pass"]
    assert f"{c['defect_reject']} of {n_def} defects are found" in summary
    assert f"{c['defect_pass']} missed" in summary and f"{c['good_reject']} of {n_good} good images" in summary
    assert f"<b>{result['image_auroc']:.3f}</b>" in summary and f"<b>{result['pixel_auroc']:.3f}</b>" in summary
    for name in ("roc.png", "pr.png", "scores.png"):
        data = (out / name).read_bytes()
        assert data.startswith(b"\x89PNG") and cv2.imdecode(np.frombuffer(data, np.uint8), 0).shape == (330, 440)
    rows = _rows(page)
    assert len(rows) == result["n_images"] == 34
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    assert sum(r["outcome"] == "missed" for r in rows) == c["defect_pass"]
    assert sum(r["outcome"] == "false_reject" for r in rows) == c["good_reject"]
    assert all((out / f).stat().st_size > 0 for r in rows for f in r["panels"].values())
    assert len(page) < 100_000, "the page itself stays small: the pictures are separate files"
    for cls in ("good", "spot", "faint"):
        assert f"<tr><td>{cls}</td><td>{result['per_class'][cls]['n']}</td>" in page


def test_report_max_keeps_every_miss_and_false_reject_first(report, separable_model, tmp_path):
    result, _ = report
    tree = tmp_path / "t"
    proc = run_cli(
        "evaluate",
        "--model",
        str(separable_model),
        "--data",
        result["data"],
        "--json",
        str(tmp_path / "r.json"),
        "--report",
        str(tmp_path / "rep"),
        "--report-max",
        "25",
        "--quiet",
    )
    assert proc.returncode == 0, proc.stderr
    rows = _rows((tmp_path / "rep" / "index.html").read_text())
    c = result["confusion"]
    assert len(rows) == 25
    assert sum(r["outcome"] in ("missed", "false_reject") for r in rows) == c["defect_pass"] + c["good_reject"]
    assert len(list((tmp_path / "rep" / "images").glob("*.jpg"))) == 25 * 5
    assert not tree.exists()


def test_in_a_browser_the_summary_is_above_the_fold_nothing_overflows_and_the_filters_work(report, tmp_path):
    result, out = report
    b = chromium(tmp_path / "profile", width=1400, height=900)
    try:
        b.get((out / "index.html").as_uri())
        assert b.execute_script("return document.readyState") == "complete"
        assert console_errors(b) == []
        rect = b.execute_script("return document.getElementById('summary').getBoundingClientRect().toJSON()")
        assert rect["bottom"] <= 900 and rect["top"] >= 0, rect
        for width in (1400, 1920):
            b.set_window_size(width + 20, 900)
            assert b.execute_script("return document.documentElement.scrollWidth <= window.innerWidth"), width
        b.set_window_size(1400, 900)
        if SHOTS:
            screenshot(b, REPO / SHOTS / "report-summary.png")
        cards = lambda: b.execute_script(  # noqa: E731
            "return [...document.querySelectorAll('#gallery .card')].map(c => [c.dataset.outcome, c.dataset.class])"
        )
        assert len(cards()) == 24 and "page 1 of 2" in b.find_element("id", "page").text  # 34 rows, 24 a page
        lazy = b.execute_script(
            "return [...document.querySelectorAll('#gallery img')].every(i => i.loading === 'lazy')"
        )
        assert lazy and b.execute_script("return document.querySelectorAll('#gallery img').length") == 24 * 5
        b.find_element("id", "next").click()
        assert len(cards()) == 10
        b.find_element("css selector", "[data-filter='missed']").click()
        assert [o for o, _ in cards()] == ["missed"] * result["confusion"]["defect_pass"]
        assert "filter=missed" in b.current_url
        b.find_element("css selector", "[data-filter='false_reject']").click()
        assert cards() == [["false_reject", "good"]] * result["confusion"]["good_reject"]
        b.find_element("css selector", "[data-filter='all']").click()
        from selenium.webdriver.support.ui import Select

        Select(b.find_element("id", "class-filter")).select_by_value("spot")
        assert cards() == [["found", "spot"]] * 6
        b.get((out / "index.html").as_uri() + "#filter=missed&class=faint")  # a linked view
        assert {o for o, _ in cards()} == {"missed"}
        b.find_element("css selector", "[data-filter='all']").click()
        b.execute_script("document.getElementById('images').scrollIntoView()")
        captions = b.execute_script("return [...document.querySelectorAll('#gallery .card')][0].innerText")
        for caption in ("input", "reconstruction", "heat map", "predicted regions", "ground truth"):
            assert caption in captions
        assert console_errors(b) == []
        if SHOTS:
            b.execute_script("document.querySelector('[data-filter=\"missed\"]').scrollIntoView()")
            screenshot(b, REPO / SHOTS / "report-gallery.png")
    finally:
        b.quit()
