"""The review page of `label check --report` as a person sees it, in a real headless Chromium: flagged images worst
first with the label, the prediction and the probability map rendered, a link to the LabelMe file to fix, and a
page that says the loop is done when nothing is flagged (exit 0)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.support.helpers import run_cli

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_browser = pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is absent (make test installs it)")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--allow-file-access-from-files",
]


def browser(page: Path, out_dir: Path, *args: str) -> subprocess.CompletedProcess:
    profile = out_dir / "profile"
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args, page.resolve().as_uri()],
        capture_output=True,
        text=True,
        timeout=60,
    )


def check(mvtec_dir: Path, checkers_dir: Path, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_cli(
        "label",
        "check",
        "--data",
        str(mvtec_dir),
        "--checkers",
        str(checkers_dir),
        "--json",
        str(tmp_path / "check.json"),
        "--report",
        str(tmp_path / "report"),
        *extra,
    )


@needs_browser
def test_review_page_renders_label_prediction_and_fix_links_in_chromium(checkers_dir, mvtec_dir, tmp_path):
    proc = check(mvtec_dir, checkers_dir, tmp_path, "--iou-threshold", "1.0")
    assert proc.returncode == 3, proc.stderr
    page = tmp_path / "report" / "index.html"
    shot = tmp_path / "shot.png"
    got = browser(page, tmp_path, f"--screenshot={shot}", "--window-size=1500,1200", "--hide-scrollbars")
    assert shot.is_file(), got.stderr
    img = cv2.imread(str(shot)).astype(int)
    b, g, r = img[..., 0], img[..., 1], img[..., 2]
    green = np.count_nonzero((g > 150) & (g > r + 60) & (g > b + 60))  # the label's outline, drawn in the browser
    red = np.count_nonzero((r > 150) & (r > g + 60) & (r > b + 60))  # the prediction's outline and "why" text
    assert green > 20 and red > 20
    dom = browser(page, tmp_path, "--dump-dom").stdout
    links = re.findall(r'<a class="fix" href="([^"]+)"', dom)
    rows = re.findall(r"<tr><td>(\d+)</td><td>([^<]+)</td>", dom)
    assert links and len(links) == len(rows) and [int(n) for n, _ in rows] == list(range(1, len(rows) + 1))
    assert all((page.parent / href).is_file() for href in links)


def test_review_loop_ends_with_exit_0_and_a_page_saying_nothing_is_flagged(checkers_dir, mvtec_dir, tmp_path):
    # rules no label can fail: IoU threshold 0, wrong label below 0, missed label above 1
    proc = check(
        mvtec_dir, checkers_dir, tmp_path, "--iou-threshold", "0", "--low-threshold", "0", "--high-threshold", "1.01"
    )
    assert proc.returncode == 0, proc.stderr
    page = (tmp_path / "report" / "index.html").read_text()
    assert "Nothing flagged: all 20 labels are accepted." in page and '<a class="fix"' not in page
