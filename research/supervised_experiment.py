"""The supervised-stage measurement of issue #23: train the classifier on the labels of half the magnetic-tile test
defects (split by class with a fixed seed) plus the good training images, and evaluate on the other half (and all of
test/good): the anomaly map (`inspectd train`'s default model: the features kind, a pretrained memory bank; or the
autoencoder) alone, the classifier alone, and both as one ensemble (one decision,
a defect either map sees counts), each through `inspectd evaluate`.

    python -m research.supervised_experiment --data ../shared/datasets/magnetic-tile --work /tmp/supervised

Nothing is copied: the two halves under --work are symlinks to --data's images and masks. Every step is the
product's own command (a subprocess of the CLI), and is skipped when its output is already there (rerun after a
stop, or `--ae DIR` to reuse an autoencoder trained on --data with the same --seed and holdout). The labels used are
the data set's masks of the training half (the accepted labels of a clean set); the 4 uneven images whose masks
are empty have no defect pixels to learn and are left out by train-supervised. result.json holds the rows.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def split(data: Path, work: Path, seed: int) -> tuple[Path, Path, dict]:
    """work/train_half (test/<class>/ + ground_truth/ of half of each class) and work/eval_half (the other half +
    every test/good); returns both and the counts."""
    r = random.Random(seed)
    train, held = work / "train_half", work / "eval_half"
    counts = {}
    for cls_dir in sorted(p for p in (data / "test").iterdir() if p.is_dir()):
        files = sorted(p for p in cls_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if cls_dir.name == "good":
            picks: list[tuple[Path, Path]] = [(held, f) for f in files]
        else:
            shuffled = files[:]
            r.shuffle(shuffled)
            half = len(shuffled) // 2
            picks = [(train, f) for f in shuffled[:half]] + [(held, f) for f in shuffled[half:]]
            counts[cls_dir.name] = {"train": half, "eval": len(shuffled) - half}
        for root, f in picks:
            _link(f, root / "test" / cls_dir.name / f.name)
            mask = data / "ground_truth" / cls_dir.name / f"{f.stem}_mask.png"
            if mask.is_file():
                _link(mask, root / "ground_truth" / cls_dir.name / mask.name)
    return train, held, counts


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.is_symlink():
        dst.symlink_to(src.resolve())


def cli(*args: str) -> None:
    cmd = [sys.executable, "-m", "inspectd", *args]
    print("$ inspectd " + " ".join(args), flush=True)
    t0 = time.monotonic()
    proc = subprocess.run(cmd, check=False)
    if proc.returncode != 0:
        msg = f"`inspectd {' '.join(args)}` exited {proc.returncode}"
        raise SystemExit(msg)
    print(f"  ({time.monotonic() - t0:.0f} s)", flush=True)


def row(name: str, path: Path) -> dict:
    r = json.loads(path.read_text())
    keep = ("image_auroc", "pixel_auroc", "f1", "precision", "recall", "n_good", "n_defective")
    per_class = {
        c: {"image_auroc": v.get("image_auroc"), "pixel_auroc": v.get("pixel_auroc")}
        for c, v in (r.get("per_class") or {}).items()
    }
    return {
        "model": name,
        **{k: r.get(k) for k in keep},
        "per_class": per_class,
        "left_out": r["left_out_trained_on"]["count"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--work", type=Path, default=Path("/tmp/inspectd-supervised"))
    p.add_argument("--seed", type=int, default=0, help="the half split, and both models' training seed")
    p.add_argument("--ae", type=Path, default=None, help="reuse this anomaly model (trained on --data) instead")
    p.add_argument("--minutes", type=float, default=6.0, help="the classifier decoder's training budget")
    p.add_argument("--iterations", type=int, default=3000, help="the classifier decoder's steps at most")
    p.add_argument("--normalize", choices=("good-score", "threshold"), default="good-score")
    a = p.parse_args(argv)
    t0 = time.monotonic()
    a.work.mkdir(parents=True, exist_ok=True)
    train, held, counts = split(a.data, a.work, a.seed)
    print(f"split (seed {a.seed}): {counts}")
    ae = a.ae or a.work / "anomaly"
    if not (ae / "manifest.json").is_file():
        cli("train", "--data", str(a.data), "--out", str(ae), "--seed", str(a.seed))
    cls = a.work / "classifier"
    if not (cls / "manifest.json").is_file():
        cli(
            "train-supervised",
            "--data",
            str(a.data),
            "--defects",
            str(train),
            "--out",
            str(cls),
            "--minutes",
            f"{a.minutes:g}",
            "--iterations",
            str(a.iterations),
            "--seed",
            str(a.seed),
        )
    ens = a.work / f"ensemble-{a.normalize}"
    if not (ens / "manifest.json").is_file():
        cli(
            "ensemble",
            "--member",
            str(ae),
            "--member",
            str(cls),
            "--data",
            str(a.data),
            "--out",
            str(ens),
            "--normalize",
            a.normalize,
        )
    rows = []
    anomaly = f"anomaly map ({json.loads((ae / 'manifest.json').read_text())['kind']})"
    for name, model in ((anomaly, ae), ("classifier", cls), ("anomaly map + classifier", ens)):
        out = a.work / f"eval-{model.name}.json"
        if not out.is_file():
            cli("evaluate", "--model", str(model), "--data", str(held), "--json", str(out), "--quiet")
        rows.append(row(name, out))
    doc = {
        "rows": rows,
        "split": counts,
        "args": {k: str(v) for k, v in vars(a).items()},
        "total_seconds": round(time.monotonic() - t0),
    }
    (a.work / "result.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{'model':28s} image AUROC  pixel AUROC  F1")
    for r in rows:
        f1 = "n/a" if r["f1"] is None else f"{r['f1']:.3f}"
        print(f"{r['model']:28s} {r['image_auroc']:.4f}       {r['pixel_auroc']:.4f}       {f1}")
    print(f"wrote {a.work / 'result.json'} in {doc['total_seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
