"""`inspectd train`: train an autoencoder, export it to ONNX, calibrate its thresholds, write the model directory;
`inspectd ensemble`: combine trained model directories into one (inspectd/training/ensemble.py, no torch);
`inspectd train-supervised`: the supervised defect-segmentation model, kind classifier (training/supervised.py).

Registered into the top-level CLI by `register(subparsers)`; torch is imported only when the command runs, so the
daemon's CLI stays importable without it. `python -m inspectd train ...` runs it without the console script.

Exit codes: 0 done; 2 bad arguments or data; 1 training/export failed.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from inspectd.core.errors import ModelError
from inspectd.core.manifest import ScoreSpec, SsimSpec

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
KINDS = ("features", "autoencoder")
# per-kind defaults of the options both kinds share (None on the command line = the kind's own)
KIND_DEFAULTS = {
    "features": {"input_size": (192, 192), "mode": "resize", "tile_overlap": 32},
    "autoencoder": {"input_size": (64, 64), "mode": "tile", "tile_overlap": 16},
}


def resolve_kind(args: argparse.Namespace) -> argparse.Namespace:
    """Fill in --kind and the shared options left at None with the kind's defaults (in place; returns args)."""
    if getattr(args, "kind", None) is None:  # fine-tuning (--init) continues an autoencoder
        args.kind = "autoencoder" if args.synthetic or getattr(args, "init", None) is not None else "features"
    for key, value in KIND_DEFAULTS[args.kind].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    return args


def _size(text: str) -> tuple[int, int]:
    """'128' or '96x128' (height x width)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 8:
        msg = f"expected a size like 128 or 96x128 (height x width, >= 8), got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return parts[0], parts[1]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train, export and calibrate a model directory (features or autoencoder)",
        description="Train a model on good images, export model.onnx, check onnxruntime against PyTorch, "
        "calibrate thresholds on held-out good images through the daemon's own code path and write "
        "manifest.json. Kinds (--kind): features (the default with --data: a frozen ImageNet-pretrained "
        "EfficientNet-Lite and a memory bank of good patches, nearest-neighbour anomaly map; minutes on a CPU) "
        "or autoencoder (the default with --synthetic: a convolutional autoencoder trained to repair synthetic "
        "defects, scored by the Gaussian-SSIM map).",
    )
    p.add_argument(
        "--kind",
        choices=KINDS,
        default=None,
        help="features | autoencoder (default: features with --data, autoencoder with --synthetic or --init)",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", type=Path, help="training images: DIR/train/good/* (MVTec layout) or a folder of images")
    src.add_argument("--synthetic", action="store_true", help="train on the synthetic camera's good frames")
    p.add_argument("--out", type=Path, required=True, help="model directory to write (model.onnx + manifest.json)")
    p.add_argument("--name", default="", help="model name in the manifest (default: the --out directory's name)")
    _synthetic_args(p)
    _model_args(p)
    _features_args(p)
    _autoencoder_args(p)
    _training_args(p)
    _map_args(p)
    _finetune_args(p)
    _calibration_args(p)
    p.set_defaults(func=cmd_train)
    register_ensemble(sub)
    register_supervised(sub)


def _synthetic_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("synthetic source")
    g.add_argument("--synthetic-frames", type=int, default=800, help="good frames to render (default 800)")
    g.add_argument("--synthetic-width", type=int, default=256)
    g.add_argument("--synthetic-height", type=int, default=256)
    g.add_argument("--synthetic-seed", type=int, default=7, help="camera seed (default 7; 1234 is the demo stream)")
    g.add_argument(
        "--evaluate",
        type=int,
        default=0,
        metavar="N",
        help="after calibration, report pass/reject on N synthetic frames (seed 1234, defect rate 0.25)",
    )


def _model_args(p: argparse.ArgumentParser) -> None:
    m = p.add_argument_group("model (both kinds)")
    m.add_argument(
        "--input-size",
        type=_size,
        default=None,
        help="model input (the tile in tile mode), 64 or HxW (default: features 192, autoencoder 64)",
    )
    m.add_argument("--color", choices=("gray", "bgr"), default="gray")
    m.add_argument(
        "--mode",
        choices=("resize", "tile"),
        default=None,
        help="resize whole frames to the input (features' default), or cut native-resolution model-size tiles "
        "(the autoencoder's default; for frames much larger than the input, e.g. line-scan strips)",
    )
    m.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="tile mode: resize frames by this factor before tiling, so a tile sees 1/scale times more of "
        "the part (default 1 = native resolution); the daemon maps scores back to camera pixels",
    )
    m.add_argument(
        "--tile-overlap",
        type=int,
        default=None,
        help="tile mode: pixels shared by neighbouring tiles (default: features 32, autoencoder 16)",
    )
    m.add_argument(
        "--edge-crops",
        type=float,
        default=0.5,
        metavar="P",
        help="tile mode: share of training crops flush with a frame edge, as the daemon's edge tiles "
        "always are (default 0.5)",
    )
    m.add_argument(
        "--normalize",
        choices=("none", "median"),
        default="median",
        help="exposure normalisation: scale every frame so its median grey is --normalize-to (default median)",
    )
    m.add_argument("--normalize-to", type=float, default=100.0, help="target median grey level (default 100)")


def _features_args(p: argparse.ArgumentParser) -> None:
    fe = p.add_argument_group("features kind")
    fe.add_argument(
        "--backbone", choices=("lite0", "lite1", "lite2"), default="lite0", help="EfficientNet-Lite (default lite0)"
    )
    fe.add_argument(
        "--stages",
        default="2,4,6",
        help="backbone stages whose outputs are concatenated: 2 = stride 8, 3/4 = stride 16, 5/6 = stride 32 "
        "(default 2,4,6)",
    )
    fe.add_argument("--pool", type=int, default=3, help="local neighbourhood averaged per position (default 3x3)")
    fe.add_argument(
        "--bank", type=int, default=10000, help="memory-bank size (greedy coreset; the per-frame cost grows with it)"
    )
    fe.add_argument(
        "--max-vectors",
        type=int,
        default=400_000,
        help="training patch vectors the coreset is chosen from (a random share beyond; bounds memory)",
    )
    fe.add_argument("--k", type=int, default=1, help="nearest neighbours averaged per position (default 1)")


def _autoencoder_args(p: argparse.ArgumentParser) -> None:
    m = p.add_argument_group("autoencoder kind")
    m.add_argument("--base-width", type=int, default=32)
    m.add_argument("--max-width", type=int, default=128, help="cap of the channel doubling per stage")
    m.add_argument("--latent-channels", type=int, default=64)
    m.add_argument(
        "--depth", type=int, default=2, help="stride-2 stages (input must be a multiple of 2^depth; default 2)"
    )


def _training_args(p: argparse.ArgumentParser) -> None:
    t = p.add_argument_group("training")
    t.add_argument("--iterations", type=int, default=4000, help="optimiser steps (default 4000)")
    t.add_argument(
        "--minutes",
        type=float,
        default=25.0,
        help="wall-clock budget, stops at whichever comes first (default 25; 0 = none)",
    )
    t.add_argument("--batch-size", type=int, default=16)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--ssim-weight", type=float, default=0.5, help="share of the SSIM loss (0 = weighted L2 only)")
    t.add_argument("--defect-prob", type=float, default=0.5, help="probability of a synthetic defect per sample")
    t.add_argument("--defect-weight", type=float, default=5.0, help="loss weight inside synthetic defects")
    t.add_argument(
        "--texture-defects",
        type=float,
        default=0.0,
        metavar="P",
        help="share of synthetic defects that change the surface texture in a larger region (smoothed, "
        "rougher, brighter/darker) instead of the one-grey polygon fill (default 0)",
    )
    t.add_argument(
        "--band-defects",
        type=float,
        default=0.0,
        metavar="P",
        help="share of texture defects drawn as a band from one edge of the crop up to a line across it "
        "(a region ground differently, as magnetic tile's uneven; default 0)",
    )
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=0, help="torch threads (default 0 = all cores)")
    t.add_argument("--log-every", type=int, default=50)
    t.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=None,
        help="where checkpoints go (default ~/.cache/inspectd/checkpoints/<out name>)",
    )
    t.add_argument("--checkpoint-every", type=int, default=500)
    t.add_argument("--resume", type=Path, default=None, help="continue from a checkpoint.pt")
    t.add_argument(
        "--hard-defects",
        type=Path,
        default=None,
        metavar="DIR",
        help="the hard-defect set: labelled real defects in MVTec layout (DIR/test/<class>/*, "
        "DIR/ground_truth/<class>/<stem>_mask.png); their target is 0 inside the mask",
    )
    t.add_argument(
        "--hard-prob", type=float, default=0.1, help="share of samples from the hard-defect set (default 0.1)"
    )
    t.add_argument(
        "--hard-fraction",
        type=float,
        default=1.0,
        metavar="F",
        help="use this share of each defect class of --hard-defects (chosen by name hash; default 1). With "
        "--hard-defects = --data, the rest of DIR/test stays for `inspectd evaluate`, which leaves out "
        "every image the manifest lists as trained on",
    )


def _map_args(p: argparse.ArgumentParser) -> None:
    s = p.add_argument_group("difference map and image score (written to the manifest; the daemon applies them)")
    s.add_argument(
        "--ssim-size", type=int, default=11, help="SSIM window size, odd (default 11); the SSIM loss uses it too"
    )
    s.add_argument("--ssim-sigma", type=float, default=1.5, help="Gaussian SSIM window sigma (default 1.5)")
    s.add_argument(
        "--smooth-sigma",
        type=float,
        default=4.0,
        help="Gaussian blur of the difference map before regions and the image score (default 4; 0 = off)",
    )
    s.add_argument(
        "--reduction",
        choices=("max", "p99", "p999", "mean"),
        default="max",
        help="image score from the (smoothed) map (default max)",
    )


def _finetune_args(p: argparse.ArgumentParser) -> None:
    f = p.add_argument_group("fine-tuning")
    f.add_argument(
        "--init",
        type=Path,
        default=None,
        metavar="MODEL_DIR",
        help="continue from this model directory (e.g. on `inspectd collect` output); its architecture, "
        "colour and preprocessing are used (--input-size, --color, --mode ... are ignored) and training "
        "stops at the loss threshold chosen by the sample count or at --iterations",
    )
    f.add_argument(
        "--loss-table",
        default=None,
        metavar="N:LOSS,...",
        help="sample count -> loss threshold, interpolated (default: the standard table 100:0.3,500:0.1,5000:0.01,"
        "10000:0.001); also turns the stop rule on without --init",
    )
    f.add_argument("--loss-threshold", type=float, default=None, help="stop at this loss instead of the table's value")


def _calibration_args(p: argparse.ArgumentParser) -> None:
    c = p.add_argument_group("calibration")
    c.add_argument("--holdout", type=float, default=0.2, help="fraction of good images kept for calibration")
    c.add_argument(
        "--calibrate-with-test",
        action="store_true",
        help="--data only: also use DIR/test/* with DIR/ground_truth masks to choose thresholds",
    )


def register_supervised(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-supervised",
        help="train a supervised defect-segmentation model (kind classifier) from labelled defects",
        description="Train the supervised stage (inspectd/training/supervised.py): the frozen pretrained "
        "EfficientNet-Lite0 encoder with a light decoder, on DIR/train/good (defect-free) and the labelled defects "
        "of --defects (DIR/test/<class>/* with ground_truth masks: accepted labels, confirmed defects), exported "
        "as a classifier model directory the daemon runs alone or in an ensemble with an autoencoder.",
    )
    p.add_argument("--data", type=Path, required=True, help="MVTec tree whose train/good/* are defect-free")
    p.add_argument("--out", type=Path, required=True, help="the model directory to write (must not exist)")
    p.add_argument(
        "--defects",
        type=Path,
        default=None,
        help="MVTec tree of labelled defects (test/<class>/* + ground_truth/; its test/good/* join as defect-free); "
        "default --data",
    )
    p.add_argument("--init", type=Path, default=None, help="continue this classifier (written by train-supervised)")
    p.add_argument("--size", type=int, default=256, help="model input HxW, a multiple of 32 (256)")
    p.add_argument("--holdout", type=float, default=0.2, help="share of train/good held out for calibration (0.2)")
    p.add_argument("--good-share", type=float, default=0.3, help="share of each batch from defect-free images")
    p.add_argument("--max-good", type=int, default=0, help="use at most this many train/good images (0 = all)")
    p.add_argument("--iterations", type=int, default=1500)
    p.add_argument("--minutes", type=float, default=None, help="wall-clock budget for the decoder's training")
    p.add_argument("--batch-size", type=int, default=32, help="images per step (pixels are sampled from each)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument(
        "--hard-every",
        type=int,
        default=250,
        help="re-mine hard negatives on the defect-free images every this many steps (0 = never; 250)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--name", default="", help="model name in the manifest (default: the --out directory's name)")
    p.set_defaults(func=cmd_supervised)


def cmd_supervised(args: argparse.Namespace) -> int:
    from inspectd.training.backbone import BackboneError
    from inspectd.training.onnx_export import ParityError
    from inspectd.training.segtrain import DecoderSettings
    from inspectd.training.supervised import SupervisedJob, run_supervised

    try:
        job = SupervisedJob(
            data=args.data,
            out=args.out,
            defects=args.defects,
            size=args.size,
            holdout=args.holdout,
            good_share=args.good_share,
            max_good=args.max_good or None,
            init=args.init,
            name=args.name,
            command=shlex.join(["inspectd", *sys.argv[1:]]),
            decoder=DecoderSettings(
                iterations=args.iterations,
                minutes=args.minutes,
                batch_size=args.batch_size,
                lr=args.lr,
                seed=args.seed,
                threads=args.threads,
                hard_every=args.hard_every,
            ),
        )
        run_supervised(job)
    except (ValueError, FileNotFoundError, BackboneError, ModelError) as exc:
        print(f"inspectd train-supervised: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ParityError as exc:
        print(f"inspectd train-supervised: export failed: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def register_ensemble(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ensemble",
        help="combine trained model directories into one that the daemon runs as a whole",
        description="Copy two or more trained model directories into one ensemble model directory: every frame "
        "goes through each model, each difference map is divided by that model's scale (--normalize), "
        "the maps are combined (max or mean) and one decision is made at thresholds calibrated here on the good "
        "images that no member trained on. The first --member's model gives the directory its preprocessing and "
        "reconstruction.",
    )
    p.add_argument(
        "--member",
        type=Path,
        action="append",
        required=True,
        metavar="MODEL_DIR",
        help="a model directory written by `inspectd train` (repeat; the first is the primary)",
    )
    p.add_argument(
        "--data",
        type=Path,
        required=True,
        help="the members' training data (DIR/train/good/*): their held-out images calibrate the ensemble",
    )
    p.add_argument("--out", type=Path, required=True, help="the ensemble model directory to write (must not exist)")
    p.add_argument(
        "--combine",
        choices=("max", "mean"),
        default="max",
        help="per pixel: max (a defect any model sees counts; default) or mean of the normalised maps",
    )
    p.add_argument(
        "--normalize",
        choices=("good-score", "threshold"),
        default="good-score",
        help="what each model's map is divided by: a quantile of its image scores on the held-out good "
        "images (default), or its own calibrated pixel threshold",
    )
    p.add_argument("--quantile", type=float, default=0.9, help="good-score: the quantile (default 0.9)")
    p.add_argument("--name", default="", help="model name in the manifest (default: the --out directory's name)")
    p.add_argument(
        "--calibrate-with-test",
        action="store_true",
        help="also use DIR/test/* with masks (without the images any member trained on)",
    )
    p.set_defaults(func=cmd_ensemble)


def cmd_ensemble(args: argparse.Namespace) -> int:
    from inspectd.training.ensemble import build_ensemble

    parts = ["inspectd", "ensemble"]
    for m in args.member:
        parts += ["--member", str(m)]
    parts += [
        "--data",
        str(args.data),
        "--out",
        str(args.out),
        "--combine",
        args.combine,
        "--normalize",
        args.normalize,
        "--quantile",
        f"{args.quantile:g}",
    ]
    parts += ["--name", args.name] if args.name else []
    parts += ["--calibrate-with-test"] if args.calibrate_with_test else []
    try:
        result = build_ensemble(
            args.member,
            args.out,
            data=args.data,
            combine=args.combine,
            name=args.name,
            normalize=args.normalize,
            quantile=args.quantile,
            calibrate_with_test=args.calibrate_with_test,
            command=shlex.join(parts),
        )
    except (FileNotFoundError, ValueError) as exc:
        print(f"inspectd ensemble: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(result.summary())
    return EXIT_OK


def reproduce_command(args: argparse.Namespace) -> str:
    """The command line that reproduces this model, every option explicit (defaults may change later)."""
    parts = ["inspectd", "train"]
    if args.synthetic:
        parts += [
            "--synthetic",
            "--synthetic-frames",
            str(args.synthetic_frames),
            "--synthetic-width",
            str(args.synthetic_width),
            "--synthetic-height",
            str(args.synthetic_height),
            "--synthetic-seed",
            str(args.synthetic_seed),
        ]
    else:
        parts += ["--kind", "autoencoder", "--data", str(args.data)]  # --data alone trains the features kind
    parts += ["--out", str(args.out)]
    if args.init is not None:
        parts += ["--init", str(args.init)]
    if args.loss_table:
        parts += ["--loss-table", args.loss_table]
    if args.loss_threshold is not None:
        parts += ["--loss-threshold", f"{args.loss_threshold:g}"]
    if args.name:
        parts += ["--name", args.name]
    h, w = args.input_size
    parts += ["--input-size", f"{h}x{w}", "--color", args.color, "--mode", args.mode]
    parts += ["--tile-overlap", str(args.tile_overlap)]  # recorded in the manifest's preprocess in both modes
    if args.mode == "tile":
        parts += ["--edge-crops", f"{args.edge_crops:g}", "--scale", f"{args.scale:g}"]
    parts += ["--normalize", args.normalize]
    if args.normalize != "none":
        parts += ["--normalize-to", f"{args.normalize_to:g}"]
    parts += [
        "--base-width",
        str(args.base_width),
        "--max-width",
        str(args.max_width),
        "--latent-channels",
        str(args.latent_channels),
        "--depth",
        str(args.depth),
        "--iterations",
        str(args.iterations),
    ]
    parts += ["--minutes", f"{args.minutes or 0:g}"]
    parts += [
        "--batch-size",
        str(args.batch_size),
        "--lr",
        f"{args.lr:g}",
        "--ssim-weight",
        f"{args.ssim_weight:g}",
        "--defect-prob",
        f"{args.defect_prob:g}",
        "--defect-weight",
        f"{args.defect_weight:g}",
        "--texture-defects",
        f"{args.texture_defects:g}",
        "--band-defects",
        f"{args.band_defects:g}",
        "--seed",
        str(args.seed),
        "--holdout",
        f"{args.holdout:g}",
    ]
    if args.hard_defects is not None:
        parts += [
            "--hard-defects",
            str(args.hard_defects),
            "--hard-prob",
            f"{args.hard_prob:g}",
            "--hard-fraction",
            f"{args.hard_fraction:g}",
        ]
    parts += [
        "--ssim-size",
        str(args.ssim_size),
        "--ssim-sigma",
        f"{args.ssim_sigma:g}",
        "--smooth-sigma",
        f"{args.smooth_sigma:g}",
        "--reduction",
        args.reduction,
    ]
    if args.calibrate_with_test:
        parts.append("--calibrate-with-test")
    if args.evaluate:
        parts += ["--evaluate", str(args.evaluate)]
    return shlex.join(parts)


def build_job(args: argparse.Namespace):
    from inspectd.training.defects import DefectConfig
    from inspectd.training.finetune import parse_loss_table
    from inspectd.training.model import ModelConfig
    from inspectd.training.train import TrainConfig
    from inspectd.training.workflow import SyntheticSource, TrainJob

    h, w = args.input_size
    model = ModelConfig(
        height=h,
        width=w,
        channels=1 if args.color == "gray" else 3,
        base_width=args.base_width,
        max_width=args.max_width,
        latent_channels=args.latent_channels,
        depth=args.depth,
    )
    train_cfg = TrainConfig(
        iterations=args.iterations,
        minutes=args.minutes or None,
        batch_size=args.batch_size,
        lr=args.lr,
        ssim_weight=args.ssim_weight,
        seed=args.seed,
        threads=args.threads or None,
        log_every=args.log_every,
        checkpoint_every=args.checkpoint_every,
    )
    synthetic = None
    if args.synthetic:
        synthetic = SyntheticSource(
            frames=args.synthetic_frames,
            width=args.synthetic_width,
            height=args.synthetic_height,
            seed=args.synthetic_seed,
        )
    return TrainJob(
        out=args.out,
        command=reproduce_command(args),
        data=args.data,
        synthetic=synthetic,
        name=args.name,
        model=model,
        color=args.color,
        mode=args.mode,
        tile_overlap=args.tile_overlap,
        scale=args.scale,
        train=train_cfg,
        normalize=args.normalize,
        normalize_to=args.normalize_to,
        edge_prob=args.edge_crops,
        defect_prob=args.defect_prob,
        defect_weight=args.defect_weight,
        holdout=args.holdout,
        checkpoint_dir=args.checkpoint_dir,
        resume=args.resume,
        calibrate_with_test=args.calibrate_with_test,
        evaluate=args.evaluate if args.synthetic else 0,
        init=args.init,
        loss_table=parse_loss_table(args.loss_table) if args.loss_table else None,
        stop_loss=args.loss_threshold,
        hard_defects=args.hard_defects,
        hard_prob=args.hard_prob,
        hard_fraction=args.hard_fraction,
        defects=DefectConfig(texture_prob=args.texture_defects, band_prob=args.band_defects),
        ssim=SsimSpec(size=args.ssim_size, sigma=args.ssim_sigma),
        score=ScoreSpec(reduction=args.reduction, smooth_sigma=args.smooth_sigma),
    )


def build_features_job(args: argparse.Namespace):
    if args.hard_defects is not None or args.calibrate_with_test:
        what = "--hard-defects" if args.hard_defects is not None else "--calibrate-with-test"
        msg = f"{what} is an autoencoder option: add --kind autoencoder (the features kind uses good images only)"
        raise ValueError(msg)
    if args.data is None:
        msg = "--kind features needs --data DIR (good images; the synthetic camera trains autoencoders)"
        raise ValueError(msg)
    try:
        stages = tuple(int(v) for v in str(args.stages).split(","))
    except ValueError:
        msg = f"--stages expects comma-separated stage numbers like 2,4,6, got {args.stages!r}"
        raise ValueError(msg) from None
    for name in ("bank", "max_vectors", "k", "pool"):
        if getattr(args, name) < 1:
            msg = f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}"
            raise ValueError(msg)
    from inspectd.training.features import FeaturesConfig
    from inspectd.training.features_job import FeaturesJob

    cfg = FeaturesConfig(
        backbone=args.backbone,
        stages=stages,
        input_hw=tuple(args.input_size),
        channels=1 if args.color == "gray" else 3,
        pool=args.pool,
        bank=args.bank,
        max_vectors=max(args.max_vectors, args.bank),
        k=args.k,
        seed=args.seed,
    )
    return FeaturesJob(
        out=args.out,
        command=reproduce_features_command(args),
        data=args.data,
        name=args.name,
        config=cfg,
        color=args.color,
        mode=args.mode,
        tile_overlap=args.tile_overlap,
        scale=args.scale,
        normalize=args.normalize,
        normalize_to=args.normalize_to,
        score=ScoreSpec(reduction=args.reduction, smooth_sigma=args.smooth_sigma),
        holdout=args.holdout,
        threads=args.threads,
    )


def reproduce_features_command(args: argparse.Namespace) -> str:
    """The command line that reproduces a features model, every option explicit."""
    h, w = args.input_size
    parts = ["inspectd", "train", "--kind", "features", "--data", str(args.data), "--out", str(args.out)]
    if args.name:
        parts += ["--name", args.name]
    parts += ["--input-size", f"{h}x{w}", "--color", args.color, "--mode", args.mode]
    parts += ["--tile-overlap", str(args.tile_overlap)]
    if args.mode == "tile":
        parts += ["--scale", f"{args.scale:g}"]
    parts += ["--normalize", args.normalize]
    if args.normalize != "none":
        parts += ["--normalize-to", f"{args.normalize_to:g}"]
    parts += ["--backbone", args.backbone, "--stages", str(args.stages), "--pool", str(args.pool)]
    parts += ["--bank", str(args.bank), "--max-vectors", str(args.max_vectors), "--k", str(args.k)]
    parts += ["--seed", str(args.seed), "--holdout", f"{args.holdout:g}"]
    parts += ["--smooth-sigma", f"{args.smooth_sigma:g}", "--reduction", args.reduction]
    return shlex.join(parts)


def cmd_train_features(args: argparse.Namespace) -> int:
    # without torch this raises ModuleNotFoundError, which inspectd.cli turns into "needs torch ... inspectd[train]"
    # (exit 2); a missing backbone package is a BackboneError naming the extra, below
    from inspectd.training.features import BackboneError
    from inspectd.training.features_job import run_features_job
    from inspectd.training.onnx_export import ParityError

    try:
        job = build_features_job(args)
        result = run_features_job(job)
    except (BackboneError, FileNotFoundError, ValueError) as exc:  # missing weights, bad data or arguments
        print(f"inspectd train: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ParityError as exc:
        print(f"inspectd train: failed: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(result.summary())
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    resolve_kind(args)
    if args.kind == "features":
        return cmd_train_features(args)
    if args.evaluate and not args.synthetic:
        print(
            "inspectd train: --evaluate needs --synthetic (for folders use DIR/test with --calibrate-with-test)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        job = build_job(args)
    except ValueError as exc:
        print(f"inspectd train: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from inspectd.training.onnx_export import ParityError
    from inspectd.training.workflow import run_job

    try:
        result = run_job(job)
    except (FileNotFoundError, ValueError) as exc:  # bad data or arguments
        print(f"inspectd train: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (ParityError, FloatingPointError) as exc:  # the run itself failed; anything else shows its traceback
        print(f"inspectd train: failed: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(result.summary())
    return EXIT_OK
