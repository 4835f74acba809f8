"""`inspectd import-anomalib`: wrap an anomalib ONNX export into an inspectd model directory (kind anomalib).

Exit codes: 0 done; 2 an export inspectd cannot run the same way, bad arguments or data (the message says why).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

from inspectd.core.errors import ModelError

EXIT_OK, EXIT_USAGE = 0, 2


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import-anomalib",
        help="wrap an anomalib (>= 2.0) ONNX export into a model directory the daemon runs (kind anomalib)",
        description="Reads anomalib's ONNX export (engine.export(export_type='onnx')), moves the thresholds it "
        "applies inside the graph (pred_label, pred_mask) into the manifest, stores the weights inside one "
        "model.onnx and writes manifest.json. With --calibrate, inspectd's own rule then sets the thresholds.",
    )
    p.add_argument("export", type=Path, help="the export root (with weights/onnx/model.onnx) or the .onnx file")
    p.add_argument("--out", type=Path, required=True, help="the model directory to write")
    p.add_argument("--name", default=None, help="the model's name in the manifest (default: the export's folder)")
    p.add_argument(
        "--input-size", type=int, nargs=2, metavar=("H", "W"), default=None, help="for an export with a dynamic size"
    )
    p.add_argument("--anomalib-version", default="", help="the anomalib version that exported it (recorded only)")
    p.add_argument(
        "--calibrate",
        type=Path,
        default=None,
        metavar="DIR",
        help="calibrate the thresholds the inspectd way on DIR: an MVTec tree (test/good, test/<defect> with "
        "ground_truth masks) or a folder of good images (ideally not the ones the model was trained on)",
    )
    p.set_defaults(func=cmd_import)


def cmd_import(args: argparse.Namespace) -> int:
    from inspectd.interop.anomalib import import_export

    try:
        import onnx  # noqa: F401  (the graph surgery; not part of the daemon's runtime)
    except ImportError:
        print("inspectd import-anomalib: needs the onnx package: pip install 'inspectd[train]'", file=sys.stderr)
        return EXIT_USAGE
    size = tuple(args.input_size) if args.input_size else None
    if size is not None and min(size) < 8:
        print(f"inspectd import-anomalib: --input-size {size} is too small (expected H W >= 8)", file=sys.stderr)
        return EXIT_USAGE
    try:
        done = import_export(
            args.export, args.out, name=args.name, input_size=size, anomalib_version=args.anomalib_version
        )
        result = {
            "model": str(done.model_dir),
            "sha256": done.manifest.onnx.sha256,
            "input": list(done.manifest.input.shape),
            "thresholds_from_graph": {
                "image": done.manifest.anomalib.graph_image_threshold if done.manifest.anomalib else None,
                "pixel": done.manifest.anomalib.graph_pixel_threshold if done.manifest.anomalib else None,
            },
            "graph_parity_max_abs": done.parity_max_abs,
        }
        if args.calibrate is not None:
            result["calibration"] = _calibrate(done.model_dir, args.calibrate)
    except (ModelError, ValueError, FileNotFoundError) as exc:
        print(f"inspectd import-anomalib: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(result))
    return EXIT_OK


def _calibrate(model_dir: Path, data: Path) -> dict:
    """inspectd's calibration rule on the imported model (through the daemon's Inspector); rewrites the manifest."""
    from inspectd.daemon.cameras.folder import DEFAULT_EXTENSIONS, list_images
    from inspectd.evaluation.evaluate import find_test_images, read_image, read_truth
    from inspectd.evaluation.thresholds import calibrate, write_thresholds

    if not data.is_dir():
        msg = f"--calibrate {data} is not a directory"
        raise FileNotFoundError(msg)
    good, defects, masks = [], [], []
    if (data / "test").is_dir():  # an MVTec tree: its test images, masks where they are (the one layout definition)
        for item in find_test_images(data):
            img = read_image(item.path, "keep")
            truth = read_truth(item, img.shape[:2])
            if not item.defective:
                good.append(img)
            elif truth is not None:
                defects.append(img)
                masks.append(truth)
    else:
        good = [read_image(p, "keep") for p in list_images(data, DEFAULT_EXTENSIONS, True)]
    if not good:
        msg = f"--calibrate {data}: no good images (expected test/good/ of an MVTec tree, or a folder of good images)"
        raise ValueError(msg)
    result = calibrate(model_dir, good, defects, masks, data=str(data))
    stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    write_thresholds(model_dir, result, calibrated_at=stamp)
    return {"pixel": result.pixel, "min_region_area": result.min_region_area, "method": result.method}
