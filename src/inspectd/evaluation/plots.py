"""The evaluation report's pictures (matplotlib, the `report` extra): ROC curves, precision-recall curves and the
image-score histograms of good vs defective images, each marked with the operating point of the calibrated
thresholds. matplotlib's object API with the Agg canvas: no pyplot, no display, safe in any thread."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from inspectd.evaluation import metrics

WIDTH_IN, HEIGHT_IN, DPI = 4.4, 3.3, 100  # 440 x 330 px: three side by side fit a 1400-px screen


def require_matplotlib() -> None:
    """ValueError (exit 2 from the CLI) before a long run when the report cannot be drawn."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        msg = "--report draws its curves with matplotlib: install the report extra (pip install 'inspectd[report]')"
        raise ValueError(msg) from exc


def _figure():
    from matplotlib.figure import Figure

    fig = Figure(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI, layout="constrained")
    return fig, fig.add_subplot()


def _save(fig, path: Path) -> str:
    fig.savefig(path, format="png")
    return path.name


def draw_all(
    out_dir: Path, scores: np.ndarray, defective: np.ndarray, rejected: np.ndarray | None, pixels=None
) -> dict:
    """Write roc.png, pr.png and scores.png into out_dir; {name: file} of those that could be drawn."""
    out = {}
    image_roc = metrics.roc_curve(scores, defective)
    image_pr = metrics.pr_curve(scores, defective)
    pixel = pixels.curves() if pixels is not None else None
    point = _operating_point(defective, rejected) if rejected is not None else None
    if image_roc is not None:
        fig, ax = _figure()
        ax.plot(*image_roc, label=f"image (AUROC {metrics.auroc(scores, defective):.3f})", color="#2b6cb0")
        if pixel is not None:
            ax.plot(pixel["fpr"], pixel["tpr"], label="pixel", color="#dd6b20")
        ax.plot([0, 1], [0, 1], color="#a0aec0", lw=0.8, ls=":")
        if point is not None:
            ax.plot(point["fpr"], point["tpr"], "o", color="#c53030", label="calibrated thresholds")
        ax.set(xlabel="false positive rate (good rejected)", ylabel="true positive rate (defects found)", title="ROC")
        ax.set(xlim=(0, 1), ylim=(0, 1.01))
        ax.legend(loc="lower right", fontsize=8)
        out["roc"] = _save(fig, out_dir / "roc.png")
    if image_pr is not None:
        fig, ax = _figure()
        ax.plot(*image_pr, label="image", color="#2b6cb0")
        if pixel is not None:
            ax.plot(pixel["recall"], pixel["precision"], label="pixel", color="#dd6b20")
        if point is not None and point["precision"] is not None:
            ax.plot(point["tpr"], point["precision"], "o", color="#c53030", label="calibrated thresholds")
        ax.set(
            xlabel="recall (defects found)", ylabel="precision", title="Precision-recall", xlim=(0, 1), ylim=(0, 1.01)
        )
        ax.legend(loc="lower left", fontsize=8)
        out["pr"] = _save(fig, out_dir / "pr.png")
    fig, ax = _figure()
    bins = np.histogram_bin_edges(scores, bins=min(40, max(10, scores.size // 8)))
    for sel, label, colour in ((~defective, "good", "#2f855a"), (defective, "defective", "#c53030")):
        if sel.any():
            ax.hist(scores[sel], bins=bins, alpha=0.55, color=colour, label=f"{label} ({int(sel.sum())})")
    ax.set(xlabel="image score", ylabel="images", title="Image scores")
    ax.legend(fontsize=8)
    out["scores"] = _save(fig, out_dir / "scores.png")
    return out


def _operating_point(defective: np.ndarray, rejected: np.ndarray) -> dict | None:
    n_def, n_good = int(defective.sum()), int((~defective).sum())
    if n_def == 0 or n_good == 0:
        return None
    tp = int((rejected & defective).sum())
    fp = int((rejected & ~defective).sum())
    return {"fpr": fp / n_good, "tpr": tp / n_def, "precision": tp / (tp + fp) if tp + fp else None}
