"""`inspectd collect --bind ADDR --out DIR`: run the collector until SIGTERM/SIGINT.

Exit codes: 0 clean stop; 2 bad arguments (address cannot be bound, output directory unusable).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "collect",
        help="collect false rejects and confirmed defects from the line PCs into an MVTec-style data set",
        description="A ZeroMQ ROUTER: every valid record is stored (fsync) before it is acknowledged, records are "
        "de-duplicated by id, malformed messages are refused and logged. Output: DIR/train/good/ (false "
        "rejects), DIR/test/confirmed_defect/ (confirmed defects), DIR/meta.jsonl.",
    )
    p.add_argument("--bind", required=True, help="ZeroMQ endpoint to bind, e.g. tcp://0.0.0.0:5561 or tcp://127.0.0.1:5561")
    p.add_argument("--out", required=True, help="output directory (created if missing)")
    p.add_argument("--max-image-mb", type=float, default=64.0, help="largest accepted PNG in MiB (default 64)")
    p.add_argument("--max-megapixels", type=float, default=100.0, help="largest accepted image in megapixels (default 100)")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")
    p.add_argument("--log-format", choices=("auto", "json", "console"), default="auto")
    p.set_defaults(func=cmd_collect)


def cmd_collect(args: argparse.Namespace) -> int:
    import structlog
    import zmq

    from collector.dataset import Dataset
    from collector.server import Collector
    from daemon import logs
    from daemon.service import Notifier, install_signal_handlers

    logs.configure(args.log_level, args.log_format)
    log = structlog.get_logger("inspectd.collect")
    if args.max_image_mb <= 0 or args.max_megapixels <= 0:
        print("inspectd collect: --max-image-mb and --max-megapixels must be > 0", file=sys.stderr)
        return EXIT_USAGE
    try:
        dataset = Dataset(args.out)
    except OSError as exc:
        print(f"inspectd collect: --out {args.out}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        collector = Collector(args.bind, dataset, max_image_bytes=int(args.max_image_mb * 1024 * 1024),
                              max_pixels=int(args.max_megapixels * 1e6))
    except zmq.ZMQError as exc:
        print(f"inspectd collect: --bind {args.bind}: {exc} (expected a free endpoint such as tcp://0.0.0.0:5561)",
              file=sys.stderr)
        return EXIT_USAGE
    stop = threading.Event()
    install_signal_handlers(lambda name: stop.set())
    notifier = Notifier()
    log.info("collector_listening", bind=collector.endpoint, out=str(dataset.out), records=len(dataset))
    notifier.ready(f"listening on {collector.endpoint}, {len(dataset)} records")
    try:
        collector.serve(stop)
    finally:
        notifier.stopping()
        collector.close()
        notifier.close()
        print(json.dumps({"event": "collector_summary", **collector.stats()}), flush=True)
    return EXIT_OK
