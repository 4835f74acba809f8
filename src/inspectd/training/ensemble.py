"""`inspectd ensemble`: trained model directories -> one ensemble model directory, calibrated (docs/model-directory.md).

Why: on magnetic tile no single autoencoder finds both kinds of defect. A native-resolution model (the default
recipe) sees 10-pixel blowholes and thin cracks but not *uneven* grinding or *fray*, which need a quarter-scale
tile's context (the hard-defect recipe), and that model in turn loses the small ones. The daemon runs both on every
frame and rejects on what either sees.

A supervised classifier (`inspectd train-supervised`, kind classifier) joins an ensemble like any member: the
daemon then rejects on what the anomaly map or the defect map sees, and each region records which map found it.
A classifier's divisor is always its own calibrated pixel threshold (its map is a probability: 1.0 after division
is "the classifier calls it defect"), whatever --normalize says for the autoencoders.

The output directory is a model directory of its own, so everything that takes one (the daemon, reload,
`inspectd evaluate`, calibration) takes it unchanged:

    OUT/model.onnx, OUT/manifest.json      the first --member's model (its preprocessing, reconstruction, name ...)
    OUT/members/1-<name>/                  each further --member, copied whole (model.onnx + manifest.json)

manifest.json is the first member's, with `ensemble` (combine rule; each model's divisor) and new thresholds for
the combined map. The divisor puts the models' maps on one scale: by default (`--normalize good-score`) the 90th
percentile of that model's image scores on the good images no member trained on, so 1.0 is "as high as a good part
goes" for each model (on magnetic tile this scored better than `--normalize threshold`, each model's own calibrated
pixel threshold: docs/results/magnetic-tile.md, "Both models as one ensemble"). The thresholds are calibrated here
through the daemon's Inspector on the good images that *no* member trained on: each member's held-out images are
recomputed from its manifest (training.seed, held_out_count and the data digest), and the calibration uses their
intersection. The members' hard-defect files are recorded as trained on, so
`inspectd evaluate` leaves out every image any member learnt from.

No torch: this only copies, checks and calibrates.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

import numpy as np

from inspectd.core.clock import utc_now
from inspectd.core.errors import ModelError
from inspectd.core.manifest import MANIFEST_NAME, MAP_KINDS, Manifest, load_manifest
from inspectd.evaluation import thresholds as calib
from inspectd.evaluation.evaluate import trained_files
from inspectd.training import data as D

STDERR = sys.stderr
# good-score normalisation: each model's map is divided by this quantile of its image scores on held-out good images
GOOD_SCORE_QUANTILE = 0.9


@dataclass
class EnsembleResult:
    model_dir: Path
    members: list[dict]
    calibration: calib.Calibration
    seconds: float

    def summary(self) -> str:
        c = self.calibration
        lines = [f"ensemble:     {self.model_dir} ({len(self.members)} models)"]
        for m in self.members:
            lines.append(f"  {m['dir']:<28} {m['name']} (sha256 {m['sha256'][:12]}, map / {m['divide_by']:.4f})")
        lines += [
            f"thresholds:   combined pixel {c.pixel:.4f}, min_region_area {c.min_region_area} px",
            f"calibration:  {c.n_good} good images no member trained on, {c.good_pass_rate:.1%} pass"
            + (
                f"; {c.n_defect} defective, {c.defect_reject_rate:.1%} rejected"
                if c.n_defect and c.defect_reject_rate is not None
                else ""
            ),
            f"total time:   {self.seconds:.0f} s",
        ]
        return "\n".join(lines)


def _member(path: Path) -> Manifest:
    try:
        m = load_manifest(path)
    except ModelError as exc:
        raise ValueError(f"--member {path}: {exc}") from exc
    if m.ensemble is not None:
        msg = f"--member {path} is itself an ensemble; give its models as members instead"
        raise ValueError(msg)
    if m.kind not in MAP_KINDS:
        msg = f"--member {path} is a {m.kind!r} model; an ensemble combines {' and '.join(MAP_KINDS)} maps"
        raise ValueError(msg)
    if m.thresholds.method == "uncalibrated":
        msg = f"--member {path} has uncalibrated thresholds; calibrate it (`inspectd train` does) before combining it"
        raise ValueError(msg)
    return m


def common_held_out(members: list[tuple[Path, Manifest]], data: Path) -> tuple[list[Path], dict]:
    """The good images of `data` that every member held out (never trained on), and the data's facts. Each
    member must have been trained on exactly these files (training.data_files digest)."""
    files = D.image_files(data)
    facts = D.data_facts(files, Path(data))
    common: set[int] | None = None
    for path, m in members:
        t = m.training or {}
        recorded = (t.get("data_files") or {}).get("sha256")
        if recorded != facts["sha256"]:
            msg = (
                f"--member {path} was not trained on the good images of {data} (its data digest "
                f"{str(recorded)[:12]}… vs {facts['sha256'][:12]}… here): the ensemble is calibrated on images "
                "its members held out, so they must share the training data given as --data"
            )
            raise ValueError(msg)
        n_hold, seed = t.get("held_out_count"), t.get("seed")
        if not isinstance(n_hold, int) or not isinstance(seed, int) or n_hold + t.get("sample_count", -1) != len(files):
            msg = (
                f"--member {path}: its manifest does not say which images it held out (training.seed, "
                f"held_out_count, sample_count for {len(files)} images); retrain it with `inspectd train`"
            )
            raise ValueError(msg)
        held = set(D.holdout_order(len(files), seed)[:n_hold])
        common = held if common is None else common & held
    chosen = sorted(common or ())
    if not chosen:
        msg = "the members held out no image in common (different seeds?): nothing is left to calibrate on"
        raise ValueError(msg)
    return [files[i] for i in chosen], facts


def few_common_warning(n_common: int, held_out: list[int]) -> str | None:
    """A warning when the images every member held out are fewer than half of what the smallest held-out set
    had (members trained with different --seed hold out different images): the calibration then rests on few
    images, and its thresholds are less certain. None when the set is large enough."""
    smallest = min(held_out)
    if n_common * 2 >= smallest:
        return None
    return (
        f"warning: only {n_common} good images are held out by every member (each member held out "
        f"{', '.join(map(str, held_out))}): members trained with different --seed hold out different images; "
        "train them with the same --seed for a larger calibration set"
    )


def _check_members(members: list[Path], out: Path, quantile: float) -> tuple[list[tuple[Path, Manifest]], str]:
    """The members' manifests and their one colour; ValueError naming what is wrong."""
    if len(members) < 2:
        msg = f"an ensemble needs at least two --member model directories, got {len(members)}"
        raise ValueError(msg)
    if out.exists():
        msg = f"--out {out} exists; an ensemble is written to a new directory (remove it or choose another)"
        raise ValueError(msg)
    loaded = [(Path(p), _member(Path(p))) for p in members]
    colors = {m.preprocess.color for _, m in loaded}
    if len(colors) != 1:
        msg = f"the members read frames in different colours {sorted(colors)}; an ensemble needs one"
        raise ValueError(msg)
    color = colors.pop()
    if not 0.0 < quantile <= 1.0:
        msg = f"--quantile must be within (0, 1], got {quantile}"
        raise ValueError(msg)
    return loaded, color


def _ensemble_manifest(first: Manifest, name: str, ensemble: dict, training: dict) -> dict:
    """The ensemble's manifest: the first member's, with the members, uncalibrated thresholds (calibration follows)
    and the ensemble's training facts."""
    raw = first.model_dump(mode="json")
    raw["name"] = name
    raw["ensemble"] = ensemble
    raw["thresholds"] = {
        **raw["thresholds"],
        "pixel": 2.0,
        "min_region_area": 1,
        "method": "uncalibrated",
        "calibrated_at": "",
    }
    raw["training"] = training
    return raw


def build_ensemble(
    members: list[Path],
    out: Path,
    *,
    data: Path,
    combine: Literal["max", "mean"] = "max",
    normalize: Literal["good-score", "threshold"] = "good-score",
    quantile: float = GOOD_SCORE_QUANTILE,
    name: str = "",
    calibrate_with_test: bool = False,
    command: str = "",
    log: IO[str] | None = STDERR,
) -> EnsembleResult:
    t0 = time.monotonic()

    def say(text: str) -> None:
        if log is not None:
            print(text, file=log, flush=True)

    out = Path(out)
    loaded, color = _check_members(members, out, quantile)
    goods_files, data_facts = common_held_out(loaded, data)
    say(f"calibration: {len(goods_files)} good images of {data} that none of the {len(loaded)} members trained on")
    warning = few_common_warning(len(goods_files), [int(m.training["held_out_count"]) for _, m in loaded])
    if warning:
        say(warning)
    goods = [D.read_image(f, color) for f in goods_files]
    divisors = [m.thresholds.pixel for _, m in loaded]
    if normalize == "good-score":  # a classifier's map is a calibrated probability: its own threshold scales it
        divisors = [
            good_score(path, goods, quantile) if m.kind != "classifier" else m.thresholds.pixel for path, m in loaded
        ]
    say(
        "divisors: "
        + ", ".join(f"{m.name} {d:.4f}" for (_, m), d in zip(loaded, divisors, strict=False))
        + (
            f" (q{quantile:g} of each autoencoder's image score on those images, a classifier's pixel threshold)"
            if normalize == "good-score"
            else " (each model's pixel threshold)"
        )
    )

    trained = {f["sha256"]: f for _, m in loaded for f in trained_files(m.training) if isinstance(f, dict)}
    first_path, first = loaded[0]
    specs, facts = [], []
    tmp = Path(tempfile.mkdtemp(dir=out.parent if out.parent.exists() else None, prefix=f".{out.name}.tmp-"))
    try:
        shutil.copy2(first_path / first.onnx.file, tmp / first.onnx.file)
        facts.append(_facts(".", first, divisors[0]))
        for i, (path, m) in enumerate(loaded[1:], start=1):
            rel = f"members/{i}-{_slug(m.name)}"
            (tmp / rel).mkdir(parents=True)
            shutil.copy2(path / m.onnx.file, tmp / rel / m.onnx.file)
            shutil.copy2(path / MANIFEST_NAME, tmp / rel / MANIFEST_NAME)
            specs.append({"dir": rel, "sha256": m.onnx.sha256, "divide_by": divisors[i]})
            facts.append(_facts(rel, m, divisors[i]))
        raw = _ensemble_manifest(
            first,
            name or out.resolve().name,
            {"combine": combine, "divide_by": divisors[0], "members": specs},
            {
                "ensemble": {
                    "combine": combine,
                    "normalize": normalize,
                    **({"quantile": quantile} if normalize == "good-score" else {}),
                    "models": facts,
                    "command": command,
                },
                "data_files": data_facts,
                "seed": first.training.get("seed"),
                **({"hard_defects": {"inherited_files": list(trained.values())}} if trained else {}),
            },
        )
        Manifest.model_validate(raw).write(tmp)
        load_manifest(tmp)  # the members as the daemon will check them

        images = D.CalibrationImages(goods, description=f"{len(goods)} good images of {data} held out by every member")
        if calibrate_with_test:
            images = images.with_test_set(Path(data), color, frozenset(trained), "images members trained on")
        say(f"calibrating the combined map ({combine} of each model's map / its divisor) ...")
        calibration = calib.calibrate(tmp, images.goods, images.defects, images.masks, data=images.description)
        calib.write_thresholds(tmp, calibration, calibrated_at=utc_now())
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return EnsembleResult(out, facts, calibration, time.monotonic() - t0)


def good_score(model_dir: Path, goods: list, quantile: float) -> float:
    """The `quantile` of one model's image scores (its own map, reduction and preprocessing, through the daemon's
    Inspector) over good images it never trained on: the scale on which that model's good parts lie."""
    insp = calib.open_inspector(model_dir)
    scores = np.array([insp.inspect(img).decision.score for img in goods], dtype=np.float64)
    value = float(np.quantile(scores, quantile))
    if not np.isfinite(value) or value <= 0:
        msg = (
            f"{model_dir}: its image scores on the good images are not positive (q{quantile:g} = {value}); "
            "an ensemble cannot scale its map"
        )
        raise ValueError(msg)
    return round(value, 6)


def _facts(rel: str, m: Manifest, divide_by: float) -> dict:
    t = m.training or {}
    return {
        "dir": rel,
        "name": m.name,
        "sha256": m.onnx.sha256,
        "divide_by": divide_by,
        "pixel_threshold": m.thresholds.pixel,
        "min_region_area": m.thresholds.min_region_area,
        "command": t.get("command", ""),
        "preprocess": {"mode": m.preprocess.mode, "scale": m.preprocess.scale},
    }


def _slug(name: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_." else "-" for c in name).strip("-.")
    return keep[:48] or "model"
