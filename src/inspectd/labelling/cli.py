"""`inspectd label ...`: the labelling assistant (prelabel, import, train-checker, check).

The loop: prelabel with the autoencoder -> review in LabelMe -> import into the MVTec layout -> train-checker ->
check -> fix the flagged labels (LabelMe or masks) -> import -> check again, until check flags nothing (exit 0);
`check --accepted DIR` writes the labels it accepts in MVTec ground_truth layout for hard-defect training.
torch is imported only by train-checker; check runs the exported checkers with onnxruntime.

Exit codes: 0 done (check: nothing flagged); 3 check flagged labels, or import skipped some files (listed);
2 bad arguments or data; 1 failure.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from inspectd.core.errors import ModelError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_FLAGGED = 0, 1, 2, 3


def _err(msg: str) -> int:
    print(f"inspectd label: {msg}", file=sys.stderr)
    return EXIT_USAGE


def _prelabel(a: argparse.Namespace) -> int:
    from inspectd.labelling.prelabel import prelabel

    try:
        done = prelabel(
            a.model, a.images, a.out, pixel_threshold=a.pixel_threshold, min_region_area=a.min_area, log=print
        )
    except (FileNotFoundError, ModelError, OSError) as exc:
        return _err(str(exc))
    labelled = sum(d["regions"] > 0 for d in done)
    print(f"pre-labelled {len(done)} images ({labelled} with regions) into {a.out}: masks/, labelme/, overlays/")
    return EXIT_OK


def _import(a: argparse.Namespace) -> int:
    from inspectd.labelling.importer import REPORT_FILE, import_labels
    from inspectd.labelling.labelme import LabelMapping

    try:
        mapping = LabelMapping.parse(a.map or (), a.exclude_label or ())
        report = import_labels(a.labels, a.out, images=a.images, default_class=a.defect_class, mapping=mapping)
    except (FileNotFoundError, ValueError, OSError) as exc:
        return _err(str(exc))
    ids = report.written
    good = sum(i.startswith("good/") for i in ids)
    for f, note in report.notes:
        print(f"note: {f}: {note}")
    for f, why in report.skipped:
        print(f"skipped: {f}: {why}", file=sys.stderr)
    print(
        f"imported {len(ids)} labels into {a.out} ({len(ids) - good} defective, {good} defect-free)"
        + (
            f"; SKIPPED {len(report.skipped)} file(s), listed above and in {a.out / REPORT_FILE}"
            if report.skipped
            else ""
        )
    )
    if not ids:
        return EXIT_USAGE
    return EXIT_FLAGGED if report.skipped else EXIT_OK


def _train(a: argparse.Namespace) -> int:
    from inspectd.labelling.check import flagged_ids
    from inspectd.labelling.checker import CheckerConfig
    from inspectd.labelling.dataset import scan, train_good
    from inspectd.labelling.training import TrainSettings, train_checkers
    from inspectd.training.backbone import BackboneError
    from inspectd.training.segmentation import SegConfig

    try:
        items = scan(a.data)
        config: CheckerConfig | SegConfig
        if a.encoder == "scratch":
            config = CheckerConfig(a.size or 128, a.size or 128, base_width=a.base_width, image_pool=a.image_pool)
        else:
            config = SegConfig(a.size or 256, a.size or 256, encoder=a.encoder)
        settings = TrainSettings(
            iterations=a.iterations,
            minutes=a.minutes,
            batch_size=a.batch_size,
            seed=a.seed,
            threads=a.threads,
            good_share=a.good_share,
            crop=a.crop or None,
            max_good=a.max_good or None,
        )
        extra = [] if a.no_train_good else train_good(a.data)
        exclude = [] if a.exclude is None else flagged_ids(a.exclude)
    except (FileNotFoundError, ValueError) as exc:
        return _err(str(exc))
    if a.folds > len(items):
        return _err(f"--folds {a.folds} exceeds the {len(items)} images")
    if a.jobs < 1:
        return _err(f"--jobs must be >= 1, got {a.jobs}")
    try:
        dirs = train_checkers(
            items,
            a.out,
            folds=a.folds,
            config=config,
            settings=settings,
            data_root=str(a.data),
            area_threshold=a.area_threshold,
            jobs=a.jobs,
            extra_good=extra,
            exclude=exclude,
        )
    except ValueError as exc:
        return _err(str(exc))
    except BackboneError as exc:
        return _err(str(exc))
    left = f", {len(exclude)} flagged image(s) left out of training" if exclude else ""
    print(f"wrote {len(dirs)} checker(s) to {a.out}{left}")
    return EXIT_OK


def _check(a: argparse.Namespace) -> int:
    from inspectd.labelling.check import load_checkers, run_check, summary, worst_first, write_json
    from inspectd.labelling.dataset import link_image, read_mask, scan, write_mask
    from inspectd.labelling.rules import RuleConfig

    try:
        config = RuleConfig(
            iou_threshold=a.iou_threshold,
            combine=a.combine,
            low_threshold=a.low_threshold,
            high_threshold=a.high_threshold,
            area_threshold=a.area_threshold,
            region=a.region,
            local_grow=a.local_grow,
            rim_min=a.rim_min,
            band_max=a.band_max,
            inside_min=a.inside_min,
            refine=a.refine,
            refine_radius=a.refine_radius,
            refine_eps=a.refine_eps,
        )
        items = scan(a.data)
        checkers = load_checkers(a.checkers)
    except (FileNotFoundError, ValueError, ModelError) as exc:
        return _err(str(exc))
    results = run_check(items, checkers, config, log=print)
    doc = summary(results, checkers, config)
    write_json(a.json, doc)
    if a.report:
        from inspectd.labelling.report import write_report

        page = write_report(a.report, worst_first(results), checked=len(results), data=a.data)
        print(f"review page: {page}")
    if a.accepted:
        for r in results:
            if not r.verdict.flagged:
                link_image(r.item.image_path, a.accepted, r.item.id)
                mask = read_mask(r.item)
                if mask.any():
                    write_mask(a.accepted, r.item.id, mask)
        print(f"accepted labels written to {a.accepted} (MVTec layout)")
    n = len(doc["flagged"])
    print(f"checked {doc['checked']} labels, flagged {n}: {doc['counts']} -> {a.json}")
    return EXIT_FLAGGED if n else EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "label",
        help="labelling assistant: pre-label, import, train checkers, check labels",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    lsub = p.add_subparsers(dest="label_command", metavar="STEP")
    lsub.required = True

    q = lsub.add_parser("prelabel", help="pre-label images with an autoencoder: masks, LabelMe JSON, overlays")
    q.add_argument("--model", type=Path, required=True, help="autoencoder model directory")
    q.add_argument("--images", type=Path, required=True, help="folder of images (searched recursively)")
    q.add_argument("--out", type=Path, required=True)
    q.add_argument("--pixel-threshold", type=float, default=None, help="default: the manifest's calibrated one")
    q.add_argument("--min-area", type=int, default=None, help="default: the manifest's min_region_area")
    q.set_defaults(func=_prelabel)

    q = lsub.add_parser(
        "import",
        help="reviewed LabelMe JSON or mask PNGs -> MVTec layout (exit 3 when some files were skipped)",
    )
    q.add_argument(
        "--labels", type=Path, required=True, help="LabelMe *.json and/or *_mask.png (class sub-folders kept)"
    )
    q.add_argument(
        "--images",
        type=Path,
        default=None,
        help="where the images are (matched by file stem) when a JSON's imagePath does not lead to its image",
    )
    q.add_argument("--out", type=Path, required=True, help="MVTec-layout folder to write (images are symlinked)")
    q.add_argument(
        "--class",
        dest="defect_class",
        default="defect",
        help='class of mask PNGs not in a class sub-folder and of LabelMe shapes labelled "defect" (the pre-label\'s)',
    )
    q.add_argument(
        "--map",
        action="append",
        metavar="LABEL=CLASS",
        help="LabelMe label -> defect class (repeatable); other labels are their own class",
    )
    q.add_argument(
        "--exclude-label",
        action="append",
        metavar="LABEL",
        help="LabelMe label that is no defect and draws nothing (repeatable; __ignore__ always is)",
    )
    q.set_defaults(func=_import)

    q = lsub.add_parser("train-checker", help="train N supervised checker models on disjoint folds, export to ONNX")
    q.add_argument("--data", type=Path, required=True, help="MVTec-layout folder (test/<class>/, ground_truth/)")
    q.add_argument(
        "--out", type=Path, required=True, help="writes checker_<k>/ (model.onnx, manifest.json), folds.json"
    )
    q.add_argument("--folds", type=int, default=2, help="number of checkers, one per disjoint fold (1 allowed)")
    q.add_argument(
        "--encoder",
        choices=("efficientnet-lite0", "scratch"),
        default="efficientnet-lite0",
        help="the checkers' network: the frozen pretrained EfficientNet-Lite0 encoder with a trained light decoder "
        "(default), or the small U-Net trained from scratch",
    )
    q.add_argument(
        "--size",
        type=int,
        default=0,
        help="checker input HxW (default 256 for the pretrained encoder, a multiple of 32; 128 for scratch, of 8)",
    )
    q.add_argument(
        "--max-good",
        type=int,
        default=300,
        help="pretrained encoder: use at most this many DATA/train/good images, evenly spaced (0 = all; 300)",
    )
    q.add_argument("--base-width", type=int, default=12, help="scratch: channels of the first level")
    q.add_argument(
        "--image-pool",
        choices=("mean", "max"),
        default="max",
        help="how the image-level head pools the bottleneck (max: same on crops and whole inputs)",
    )
    q.add_argument("--iterations", type=int, default=600, help="per checker")
    q.add_argument("--minutes", type=float, default=None, help="wall-clock budget per checker")
    q.add_argument("--batch-size", type=int, default=16)
    q.add_argument(
        "--crop",
        type=int,
        default=64,
        help="train on random crops of this many input px (a multiple of 8); 0 = whole inputs (64)",
    )
    q.add_argument("--area-threshold", type=int, default=15, help="recorded in the manifests (px)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument(
        "--threads", type=int, default=0, help="torch threads per checker (0: torch's default, 1 with --jobs > 1)"
    )
    q.add_argument(
        "--no-train-good",
        action="store_true",
        help="do not add DATA/train/good (known defect-free, never checked) to every checker's training",
    )
    q.add_argument(
        "--good-share",
        type=float,
        default=0.3,
        help="share of each batch drawn from DATA/train/good when it is used (0.3)",
    )
    q.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="train this many folds at once, one process each (2 on a 2-core PC: twice the training "
        "per minute of wall time)",
    )
    q.add_argument(
        "--exclude",
        type=Path,
        default=None,
        metavar="CHECK_JSON",
        help="leave the images a previous `label check` flagged (its --json) out of every checker's "
        "training; they are then checked by all checkers",
    )
    q.set_defaults(func=_train)

    q = lsub.add_parser("check", help="flag labelling anomalies with the checkers (exit 3 when any is flagged)")
    q.add_argument("--data", type=Path, required=True, help="MVTec-layout folder whose labels are checked")
    q.add_argument("--checkers", type=Path, required=True, help="folder written by train-checker")
    q.add_argument("--json", type=Path, required=True, help="result: {flagged: [...], checked: N, ...}")
    q.add_argument("--report", type=Path, default=None, help="write an HTML review page into this folder")
    q.add_argument("--accepted", type=Path, default=None, help="write the accepted labels here (MVTec layout)")
    q.add_argument("--iou-threshold", type=float, default=0.8, help="region rule: IoU below it is flagged (0.8)")
    q.add_argument(
        "--region",
        choices=("global", "local", "contrast"),
        default="global",
        help="region rule: IoU with the checkers' region over the whole image (global, the method's reading), "
        "with their region near the label (local: Otsu threshold within the grown label), or the "
        "label's probability contrast (contrast: rim vs core, band around vs inside, inside)",
    )
    q.add_argument(
        "--local-grow",
        type=float,
        default=0.6,
        help="region local: the neighbourhood is the label grown by this x its equivalent radius (0.6)",
    )
    q.add_argument(
        "--rim-min",
        type=float,
        default=0.5,
        help="region contrast: label's rim / core probability below it = label too large (0.5)",
    )
    q.add_argument(
        "--band-max",
        type=float,
        default=0.5,
        help="region contrast: band around / inside probability above it = label too small (0.5)",
    )
    q.add_argument(
        "--inside-min",
        type=float,
        default=0.1,
        help="region contrast: mean probability inside the label below it = nothing there (0.1)",
    )
    q.add_argument(
        "--refine",
        choices=("guided", "none"),
        default="guided",
        help="sharpen the checkers' map to the image's edges (guided filter) for the local and contrast "
        "rules (guided); the predicted region stays on their own map",
    )
    q.add_argument("--refine-radius", type=int, default=4, help="refine guided: window radius, image pixels (4)")
    q.add_argument("--refine-eps", type=float, default=1e-3, help="refine guided: regularisation (1e-3)")
    q.add_argument("--combine", choices=("mean", "sum"), default="mean", help="how checker probabilities combine")
    q.add_argument(
        "--low-threshold",
        type=float,
        default=None,
        help="wrong label below it (default 0.5 for mean, 0.5 x checkers for sum)",
    )
    q.add_argument(
        "--high-threshold",
        type=float,
        default=None,
        help="missed label above it (default 0.8 for mean, 0.8 x checkers for sum)",
    )
    q.add_argument("--area-threshold", type=int, default=15, help="missed label needs a predicted region > this (px)")
    q.set_defaults(func=_check)
