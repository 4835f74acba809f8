"""The HTML review page of `inspectd label check --report DIR`: one row per flagged image, worst first, with the
image, its label and the checkers' prediction drawn over it, their probability map, why it was flagged (reason,
what to do, the numbers), and a link to the LabelMe JSON to fix it in.

The LabelMe file linked is the one the label was imported from (the data folder's import.json, written by
`label import`) while it exists; otherwise the page writes one from the current mask to DIR/labelme/<class>/<stem>.json
(imagePath relative to the JSON, as LabelMe writes it; shapes labelled with the class), so that the fixed files go
back with `inspectd label import --labels DIR/labelme --out DATA`. Everything the page shows is written next to it
(DIR/img/*.png, at most `thumb` px on the long side), so the folder can be copied or served as it is. The loop ends
when a check flags nothing: the page then says so, and `label check` exits 0.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from inspectd.labelling.check import ImageCheck
from inspectd.labelling.dataset import read_gray, read_mask, write_png
from inspectd.labelling.labelme import to_labelme, write_labelme

EXPLAIN = {
    "wrong_label": "labelled defective, the checkers see no defect: delete the label if there is none",
    "missed_label": "labelled defect-free, the checkers see a defect (red): label it if it is one",
    "region_mismatch": "labelled region and predicted region disagree (too large, too small or elsewhere)",
}

CONTRAST_EXPLAIN = {  # region rule "contrast": what to do with the label
    "too_large": "the label's rim is not defect to the checkers: draw it tighter",
    "too_small": "the checkers see defect just outside the label: draw it larger",
    "inside": "the checkers see no defect inside the label: is there one?",
}

_STYLE = """body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:4px;vertical-align:top}img{width:224px;height:auto;image-rendering:pixelated}
.r{font-weight:bold;color:#b00}.ok{font-weight:bold;color:#070}"""


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


def heat(gray: np.ndarray, prob: np.ndarray | None) -> np.ndarray:
    """The checkers' probability (0..1) as a JET heat map over the image, half and half."""
    bgr = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    if prob is None:
        return bgr
    p = np.clip(np.nan_to_num(prob.astype(np.float32)), 0, 1)
    colour = cv2.applyColorMap((p * 255).astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.addWeighted(bgr, 0.5, colour, 0.5, 0)


def _thumb(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    scale = min(1.0, size / max(h, w))
    if scale >= 1.0:
        return img
    return cv2.resize(img, (max(1, int(w * scale)), max(1, int(h * scale))), interpolation=cv2.INTER_AREA)


def labelme_file(directory: Path, r: ImageCheck, label: np.ndarray, sources: dict[str, Path]) -> Path:
    """The LabelMe JSON to fix this image's label in: its import source, or one written here from the mask."""
    src = sources.get(r.item.id)
    if src is not None and src.suffix.lower() == ".json" and src.is_file():
        return src
    cls, stem = r.item.id.split("/", 1)
    path = directory / "labelme" / cls / f"{stem}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    rel = os.path.relpath(Path(r.item.image_path).resolve(), path.parent.resolve())
    return write_labelme(path, to_labelme(label, rel, label=cls if cls != "good" else "defect"))


def _why(r: ImageCheck) -> str:
    v = r.verdict
    why = EXPLAIN.get(v.reason or "", "")
    if v.reason == "region_mismatch" and r.config.region == "contrast" and v.contrast is not None:
        c = v.contrast
        why = "; ".join(CONTRAST_EXPLAIN[p] for p in c.problems(r.config)) + (
            f" (rim/core {c.rim_ratio:.2f}, band/inside {c.band_ratio:.2f}, inside {c.inside:.2f})"
        )
    return why


def _row(directory: Path, n: int, r: ImageCheck, thumb: int, sources: dict[str, Path]) -> str:
    gray = read_gray(r.item.image_path)
    label = read_mask(r.item, gray.shape)
    base = r.item.id.replace("/", "__")
    files = {
        "image": cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR),
        "label": overlay(gray, label, (0, 200, 0)),
        "prediction": overlay(gray, r.predicted, (0, 0, 230)),
        "probability": heat(gray, r.probability_map),
    }
    cells = []
    for kind, img in files.items():
        name = f"img/{base}_{kind}.png"
        write_png(directory / name, _thumb(img, thumb))
        cells.append(f'<td><img src="{html.escape(name)}" alt="{kind}" title="{kind}"></td>')
    fix = labelme_file(directory, r, label, sources)
    href = Path(os.path.relpath(fix.resolve(), directory.resolve())).as_posix()
    v = r.verdict
    facts = (
        f'<span class="r">{html.escape(v.reason or "")}</span><br>{html.escape(_why(r))}<br>'
        f"IoU {v.iou:.3f}<br>probability {v.probability:.3f}<br>label area {v.label_area} px<br>"
        f"predicted area {v.predicted_area} px<br>checkers: {html.escape(', '.join(r.checkers))}"
        + ("<br>(in-sample: every checker trained on it)" if r.in_sample else "")
        + f'<br><a class="fix" href="{html.escape(href)}">fix in LabelMe: {html.escape(fix.name)}</a>'
    )
    return f"<tr><td>{n}</td><td>{html.escape(r.item.id)}</td>{''.join(cells)}<td>{facts}</td></tr>"


def write_report(
    directory: str | Path,
    flagged: Sequence[ImageCheck],
    *,
    checked: int,
    title: str = "Label check",
    thumb: int = 256,
    data: str | Path | None = None,
) -> Path:
    """Write DIR/index.html, DIR/img/* (and DIR/labelme/* where needed); `flagged` in the order to show (worst
    first); `data` is the checked MVTec folder (its import.json names the LabelMe files). Returns the page."""
    from inspectd.labelling.importer import label_sources

    directory = Path(directory)
    (directory / "img").mkdir(parents=True, exist_ok=True)
    sources = label_sources(data) if data is not None else {}
    rows = [_row(directory, n, r, thumb, sources) for n, r in enumerate(flagged, 1)]
    if flagged:
        again = f" --out {html.escape(str(data))}" if data is not None else " --out DATA"
        intro = (
            f"<p>{len(flagged)} of {checked} labels flagged, worst first. Green: the label; red: the checkers' "
            "predicted region; the heat map: their defect probability. Fix each label in LabelMe (the link), "
            f"import (<code>inspectd label import --labels &lt;the LabelMe folder&gt;{again}</code>) and check "
            "again until nothing is flagged.</p>"
        )
    else:
        intro = f'<p class="ok">Nothing flagged: all {checked} labels are accepted.</p>'
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>{intro}"
        "<table><tr><th>#</th><th>image</th><th>image</th><th>label</th><th>prediction</th>"
        "<th>probability</th><th>why</th></tr>" + "\n".join(rows) + "</table></body></html>\n"
    )
    path = directory / "index.html"
    tmp = directory / ".index.html.tmp"
    tmp.write_text(page)
    tmp.replace(path)
    return path
