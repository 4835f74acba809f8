"""`inspectd evaluate --report DIR`: a page a quality engineer reads in ten seconds, then the images behind it.

DIR/index.html opens with the summary (docs/evaluation-report.md): what the calibrated thresholds do (a sentence,
the key numbers, the confusion matrix), then ROC and precision-recall curves and the score histograms of good vs
defective images (DIR/roc.png, pr.png, scores.png; matplotlib, the `report` extra), then the per-class table.
Below it the images, most anomalous first, 24 to a page, filterable by outcome (missed defects, false rejects)
and class, each a card of five captioned panels: input, reconstruction, heat map (the reject store's rendering:
JET, the pixel threshold at mid-scale), the predicted regions (red, boxed) and the ground truth (green). Panels are
small JPEGs (DIR/images/) that the browser loads only for the page shown; the rows are a JSON block in the page
(report.js renders them), so the page stays small whatever the number of images. Panels are written during the
run, so memory stays flat.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import jinja2
import numpy as np

from inspectd.evaluation.plots import draw_all, require_matplotlib
from inspectd.feedback.rejects import render_overlay
from inspectd.inspection.decide import find_regions

PANEL_HEIGHT = 240
PANELS = (
    ("input", "input"),
    ("recon", "reconstruction"),
    ("heat", "heat map"),
    ("pred", "predicted regions"),
    ("truth", "ground truth"),
)
ASSETS = Path(__file__).parent / "report_assets"


def _bgr(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image


def _tint(image: np.ndarray, mask: np.ndarray | None, colour: tuple[int, int, int]) -> np.ndarray:
    out = _bgr(image).copy()
    if mask is not None and mask.any():
        layer = np.zeros_like(out)
        layer[:] = colour
        blended = cv2.addWeighted(out, 0.45, layer, 0.55, 0.0)
        out[mask] = blended[mask]
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, colour, 1)
    return out


def outcome(defective: bool, rejected: bool) -> str:
    """missed (a defect passed), false_reject (a good image rejected), found, passed."""
    if defective:
        return "found" if rejected else "missed"
    return "false_reject" if rejected else "passed"


class ReportWriter:
    def __init__(self, out_dir: str | Path, *, pixel_threshold: float, min_region_area: int) -> None:
        require_matplotlib()
        self.dir = Path(out_dir)
        (self.dir / "images").mkdir(parents=True, exist_ok=True)
        self.pixel_threshold = float(pixel_threshold)
        self.min_region_area = int(min_region_area)
        self.rows: list[dict] = []

    def add(self, index: int, item, image, recon, score_map, decision, truth, record: dict) -> None:
        pred = find_regions(score_map, self.pixel_threshold, self.min_region_area).mask()
        predicted = _tint(image, pred, (0, 0, 255))
        for r in decision.regions:
            cv2.rectangle(predicted, (r.x, r.y), (r.x + r.w - 1, r.y + r.h - 1), (0, 255, 255), 1)
        pictures = {
            "input": _bgr(image),
            "recon": _bgr(recon) if recon is not None else np.zeros_like(_bgr(image)),
            "heat": render_overlay(image, score_map, self.pixel_threshold, decision.regions),
            "pred": predicted,
            "truth": _tint(image, truth, (0, 200, 0)) if truth is not None else _bgr(image),
        }
        h, w = image.shape[:2]
        scale = PANEL_HEIGHT / h
        size = (max(1, round(w * scale)), PANEL_HEIGHT)
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_NEAREST
        files = {}
        for key, picture in pictures.items():
            name = f"images/{index:05d}-{key}.jpg"
            cv2.imwrite(
                str(self.dir / name),
                cv2.resize(picture, size, interpolation=interpolation),
                [cv2.IMWRITE_JPEG_QUALITY, 85],
            )
            files[key] = name
        defective = record["class"] != "good"
        self.rows.append(
            {
                "file": Path(record["file"]).name,
                "class": record["class"],
                "score": round(float(record["score"]), 5),
                "reject": bool(record["reject"]),
                "area": int(record["defect_area"]),
                "truth_area": record.get("truth_area"),
                "outcome": outcome(defective, bool(record["reject"])),
                "ratio": round(w / h, 4),  # the panels' width / height, so the page lays them out before they load
                "panels": files,
            }
        )

    def _keep(self, rows: list[dict], limit: int | None) -> list[dict]:
        """At most `limit` rows: every miss and false reject first, then the most anomalous; the rest deleted."""
        if limit is None or len(rows) <= limit:
            return rows
        wrong = [r for r in rows if r["outcome"] in ("missed", "false_reject")]
        rest = [r for r in rows if r["outcome"] not in ("missed", "false_reject")]
        keep = {id(r) for r in (wrong + rest)[:limit]}
        for r in rows:
            if id(r) not in keep:
                for name in r["panels"].values():
                    (self.dir / name).unlink(missing_ok=True)
        return [r for r in rows if id(r) in keep]

    def finish(self, summary: dict, limit: int | None = None, *, pixels=None) -> Path:
        """Write the plots and DIR/index.html; `pixels` (a PixelHistogram) adds the pixel-level curves."""
        everything = sorted(self.rows, key=lambda r: -r["score"])
        scores = np.array([r["score"] for r in everything], dtype=np.float64)
        defective = np.array([r["class"] != "good" for r in everything], dtype=bool)
        rejected = np.array([r["reject"] for r in everything], dtype=bool)
        calibrated = summary.get("confusion") is not None
        plots = draw_all(self.dir, scores, defective, rejected if calibrated else None, pixels)
        rows = self._keep(everything, limit)
        for name in ("report.css", "report.js"):
            shutil.copyfile(ASSETS / name, self.dir / name)
        path = self.dir / "index.html"
        path.write_text(_page(summary, plots, rows, n_all=len(everything)), encoding="utf-8")
        return path


def _page(summary: dict, plots: dict, rows: list[dict], *, n_all: int) -> str:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(ASSETS)), autoescape=True, trim_blocks=True, lstrip_blocks=True
    )
    env.filters["num"] = lambda v, digits=3: f"{v:.{digits}f}" if isinstance(v, (int, float)) else "–"
    env.filters["pct"] = lambda n, d: "–" if not d else f"{100.0 * n / d:.1f} %"
    counts = {k: sum(r["outcome"] == k for r in rows) for k in ("missed", "false_reject", "found", "passed")}
    return env.get_template("index.html.j2").render(
        s=summary,
        c=summary.get("confusion"),
        plots=plots,
        rows=rows,
        n_all=n_all,
        counts=counts,
        classes=sorted({r["class"] for r in rows}),
        # raw text inside <script type="application/json">: no "<" at all, so nothing can close or open a tag
        rows_json=json.dumps(rows, separators=(",", ":")).replace("<", "\\u003c"),
    )
