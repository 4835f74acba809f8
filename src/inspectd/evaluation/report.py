"""`inspectd evaluate --report DIR`: one HTML page, most anomalous image first.

Per image one JPEG strip (DIR/images/<n>.jpg) of five panels: the input, the model's reconstruction (stitched
like the score map), the score map as a heat map over the input (the reject store's rendering: JET, the pixel
threshold at mid-scale), the predicted regions (pixels of the regions the decision keeps, red, with their boxes),
and the ground truth (mask in green; good images have none). DIR/index.html lists them by image score, with the
file, class, score, verdict and the run's metrics on top. Images are written during the run, so memory stays flat.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import cv2
import numpy as np

from inspectd.feedback.rejects import render_overlay
from inspectd.inspection.decide import find_regions

PANEL_HEIGHT = 200
PANELS = ("input", "reconstruction", "heat map", "predicted regions", "ground truth")


def _bgr(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image


def _tint(image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    out = _bgr(image).copy()
    if mask is not None and mask.any():
        layer = np.zeros_like(out)
        layer[:] = colour
        blended = cv2.addWeighted(out, 0.45, layer, 0.55, 0.0)
        out[mask] = blended[mask]
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, colour, 1)
    return out


class ReportWriter:
    def __init__(self, out_dir: str | Path, *, pixel_threshold: float, min_region_area: int) -> None:
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
        panels = [
            _bgr(image),
            _bgr(recon) if recon is not None else np.zeros_like(_bgr(image)),
            render_overlay(image, score_map, self.pixel_threshold, decision.regions),
            predicted,
            _tint(image, truth, (0, 200, 0)) if truth is not None else _bgr(image),
        ]
        h, w = image.shape[:2]
        scale = PANEL_HEIGHT / h
        size = (max(1, round(w * scale)), PANEL_HEIGHT)
        gap = np.full((PANEL_HEIGHT, 4, 3), 255, np.uint8)
        strip = []
        for p in panels:
            strip += [cv2.resize(p, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_NEAREST), gap]
        name = f"images/{index:05d}.jpg"
        cv2.imwrite(str(self.dir / name), np.hstack(strip[:-1]), [cv2.IMWRITE_JPEG_QUALITY, 85])
        self.rows.append({"img": name, **{k: record[k] for k in ("file", "class", "score", "reject", "defect_area")}})

    def finish(self, summary: dict, limit: int | None = None) -> Path:
        rows = sorted(self.rows, key=lambda r: -r["score"])
        if limit is not None:
            keep = {r["img"] for r in rows[:limit]}
            for r in rows[limit:]:
                (self.dir / r["img"]).unlink(missing_ok=True)
            rows = [r for r in rows if r["img"] in keep]
        head = {
            k: summary.get(k)
            for k in (
                "model_name",
                "model_sha256",
                "score",
                "image_auroc",
                "pixel_auroc",
                "f1",
                "precision",
                "recall",
                "thresholds",
            )
        }
        per_class = summary.get("per_class", {})
        e = html.escape
        lines = [
            "<!doctype html><html><head><meta charset='utf-8'><title>inspectd evaluation</title>",
            "<style>body{font-family:sans-serif;margin:1em}td,th{padding:2px 8px;text-align:left;vertical-align:top}"
            ".reject{color:#b00}.pass{color:#070}img{display:block}</style></head><body>",
            f"<h1>inspectd evaluate: {e(str(summary.get('model_name')))}</h1>",
            f"<pre>{e(json.dumps(head, indent=1))}</pre>",
            "<table><tr><th>class</th><th>n</th><th>image AUROC</th><th>pixel AUROC</th><th>rejected</th></tr>",
        ]
        for cls, c in per_class.items():
            lines.append(
                f"<tr><td>{e(cls)}</td><td>{c.get('n')}</td><td>{_fmt(c.get('image_auroc'))}</td>"
                f"<td>{_fmt(c.get('pixel_auroc'))}</td><td>{_fmt(c.get('reject_rate'))}</td></tr>"
            )
        lines.append("</table>")
        lines.append(
            f"<p>{len(rows)} images, most anomalous first. Panels: {', '.join(PANELS)} (heat map: the pixel threshold "
            "is mid-scale; predicted: the pixels of the regions the decision keeps, boxes around them; ground truth "
            "in green).</p><table>"
        )
        for rank, r in enumerate(rows, 1):
            verdict = "reject" if r["reject"] else "pass"
            lines.append(
                f"<tr><td>{rank}</td><td>{e(r['class'])}<br>{e(Path(r['file']).name)}<br>score {r['score']:.4f}<br>"
                f"<span class='{verdict}'>{verdict}</span> (area {r['defect_area']})</td>"
                f"<td><img src='{e(r['img'])}' loading='lazy' alt='{e(Path(r['file']).name)}'></td></tr>"
            )
        lines.append("</table></body></html>")
        path = self.dir / "index.html"
        path.write_text("\n".join(lines) + "\n")
        return path


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"
