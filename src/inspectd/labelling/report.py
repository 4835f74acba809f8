"""The HTML review page of `inspectd label check --report DIR`: one row per flagged image, worst first, with the
image, its label and the checkers' prediction drawn over it, the reason and the numbers.

Everything the page shows is written next to it (DIR/img/*.png, at most `thumb` px on the long side), so the folder
can be copied or served as it is. A reviewer fixes the labels in LabelMe (the ids are "<class>/<stem>") and runs
the check again.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from inspectd.labelling.check import ImageCheck
from inspectd.labelling.dataset import read_gray, read_mask, write_png

EXPLAIN = {
    "wrong_label": "labelled defective, the checkers see no defect",
    "missed_label": "labelled defect-free, the checkers see a defect",
    "region_mismatch": "labelled region and predicted region disagree (too large, too small or elsewhere)",
}

CONTRAST_EXPLAIN = {  # region rule "contrast": what to do with the label
    "too_large": "the label's rim is not defect to the checkers: draw it tighter",
    "too_small": "the checkers see defect just outside the label: draw it larger",
    "inside": "the checkers see no defect inside the label: is there one?",
}

_STYLE = """body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:4px;vertical-align:top}img{max-width:256px}
.r{font-weight:bold;color:#b00}"""


def overlay(gray: np.ndarray, mask: np.ndarray | None, colour: tuple[int, int, int]) -> np.ndarray:
    """The image in BGR with the mask's outline (and a light fill) in `colour`."""
    bgr = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    if mask is None or not mask.any():
        return bgr
    binary = (mask > 0).astype(np.uint8)
    fill = bgr.copy()
    fill[binary > 0] = colour
    bgr = cv2.addWeighted(bgr, 0.7, fill, 0.3, 0)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(bgr, contours, -1, colour, 1)
    return bgr


def _thumb(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    scale = min(1.0, size / max(h, w))
    if scale >= 1.0:
        return img
    return cv2.resize(img, (max(1, int(w * scale)), max(1, int(h * scale))), interpolation=cv2.INTER_AREA)


def write_report(
    directory: str | Path, flagged: Sequence[ImageCheck], *, checked: int, title: str = "Label check", thumb: int = 256
) -> Path:
    """Write DIR/index.html and DIR/img/*; `flagged` in the order to show (worst first). Returns the page."""
    directory = Path(directory)
    (directory / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for n, r in enumerate(flagged, 1):
        gray = read_gray(r.item.image_path)
        label = read_mask(r.item, gray.shape)
        base = r.item.id.replace("/", "__")
        files = {
            "image": cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR),
            "label": overlay(gray, label, (0, 200, 0)),
            "prediction": overlay(gray, r.predicted, (0, 0, 230)),
        }
        cells = []
        for kind, img in files.items():
            name = f"img/{base}_{kind}.png"
            write_png(directory / name, _thumb(img, thumb))
            cells.append(f'<td><img src="{html.escape(name)}" alt="{kind}"></td>')
        v = r.verdict
        why = EXPLAIN.get(v.reason or "", "")
        if v.reason == "region_mismatch" and r.config.region == "contrast" and v.contrast is not None:
            c = v.contrast
            why = "; ".join(CONTRAST_EXPLAIN[p] for p in c.problems(r.config)) + (
                f" (rim/core {c.rim_ratio:.2f}, band/inside {c.band_ratio:.2f}, inside {c.inside:.2f})"
            )
        facts = (
            f'<span class="r">{html.escape(v.reason or "")}</span><br>{html.escape(why)}<br>'
            f"IoU {v.iou:.3f}<br>probability {v.probability:.3f}<br>label area {v.label_area} px<br>"
            f"predicted area {v.predicted_area} px<br>checkers: {html.escape(', '.join(r.checkers))}"
            + ("<br>(in-sample: every checker trained on it)" if r.in_sample else "")
        )
        rows.append(f"<tr><td>{n}</td><td>{html.escape(r.item.id)}</td>{''.join(cells)}<td>{facts}</td></tr>")
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<p>{len(flagged)} of {checked} labels flagged, worst first. Green: the label; red: the checkers' "
        "predicted region. Fix them in LabelMe, import, and check again until nothing is flagged.</p>"
        "<table><tr><th>#</th><th>image</th><th>image</th><th>label</th><th>prediction</th><th>why</th></tr>"
        + "\n".join(rows)
        + "</table></body></html>\n"
    )
    path = directory / "index.html"
    path.write_text(page)
    return path
