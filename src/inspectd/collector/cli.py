"""`inspectd collect --bind ADDR --out DIR`: run the collector until SIGTERM/SIGINT.

Exit codes: 0 clean stop; 2 bad arguments (address cannot be bound, output directory unusable, a non-loopback
address without CURVE keys and without --insecure).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
from pathlib import Path

import structlog

from inspectd.core import logs
from inspectd.core.netaddr import endpoint_is_local
from inspectd.core.systemd import Notifier, install_signal_handlers

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "collect",
        help="collect false rejects and confirmed defects from the line PCs into an MVTec-style data set",
        description="A ZeroMQ ROUTER: every valid record is stored (fsync) before it is acknowledged, records are "
        "de-duplicated by id, malformed messages are refused and logged. Output: DIR/train/good/ (false "
        "rejects), DIR/test/confirmed_defect/ (confirmed defects), DIR/meta.jsonl.",
    )
    p.add_argument(
        "--bind",
        required=True,
        help="ZeroMQ endpoint to bind, e.g. tcp://192.168.10.5:5561 (needs CURVE keys) or tcp://127.0.0.1:5561",
    )
    p.add_argument("--out", required=True, help="output directory (created if missing)")
    p.add_argument("--max-image-mb", type=float, default=64.0, help="largest accepted PNG in MiB (default 64)")
    p.add_argument(
        "--max-megapixels", type=float, default=100.0, help="largest accepted image in megapixels (default 100)"
    )
    p.add_argument(
        "--curve-secret-key",
        metavar="FILE",
        help="require ZeroMQ CURVE: this collector's secret key file (zmq.auth format, e.g. from "
        "`inspectd keygen`); needs --curve-allowed-clients",
    )
    p.add_argument(
        "--curve-allowed-clients",
        metavar="DIR",
        help="directory of the line PCs' public key files, one LINE.key per line PC, named after its `line:`; only "
        "those clients are served, each only for its own line",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback --bind without CURVE: anyone who reaches the port can store forged records "
        "(logged as an error); without it such a bind is refused",
    )
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")
    p.add_argument("--log-format", choices=("auto", "json", "console"), default="auto")
    p.set_defaults(func=cmd_collect)

    k = sub.add_parser(
        "keygen",
        help="make a ZeroMQ CURVE key pair for the collector or a line PC (NAME.key public, NAME.key_secret secret)",
        description="Writes DIR/NAME.key (the public key: copy it to the other side) and DIR/NAME.key_secret (the "
        "secret key, mode 0600: it never leaves this machine). See docs/operations.md, 'Security'.",
    )
    k.add_argument("--out", required=True, help="directory for the two key files (created if missing)")
    k.add_argument("--name", required=True, help="file name stem, e.g. collector or line-1")
    k.set_defaults(func=cmd_keygen)


def cmd_collect(args: argparse.Namespace) -> int:
    import zmq

    from inspectd.collector.dataset import Dataset
    from inspectd.collector.server import Collector

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
        curve, auth, line_keys = _curve(args)
    except ValueError as exc:
        print(f"inspectd collect: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if curve is None and not endpoint_is_local(args.bind):
        if not args.insecure:
            print(
                f"inspectd collect: --bind {args.bind} reaches beyond this machine but no CURVE keys were given: "
                "anyone on the network could store forged training data. Give --curve-secret-key and "
                "--curve-allowed-clients (docs/operations.md, 'Security'), bind 127.0.0.1, or pass --insecure",
                file=sys.stderr,
            )
            return EXIT_USAGE
        log.error(
            "collector_insecure",
            bind=args.bind,
            detail="--insecure: no CURVE; anyone who reaches this port can store records in the training data",
        )
    try:
        collector = Collector(
            args.bind,
            dataset,
            max_image_bytes=int(args.max_image_mb * 1024 * 1024),
            max_pixels=int(args.max_megapixels * 1e6),
            curve_keypair=curve,
            line_keys=line_keys,
        )
    except zmq.ZMQError as exc:
        print(
            f"inspectd collect: --bind {args.bind}: {exc} (expected a free endpoint such as tcp://127.0.0.1:5561)",
            file=sys.stderr,
        )
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
        if auth is not None:
            auth.stop()
        notifier.close()
        print(json.dumps({"event": "collector_summary", **collector.stats()}), flush=True)
    return EXIT_OK


def _curve(args: argparse.Namespace):
    """(keypair, running authenticator, {client public key: line name}) for --curve-secret-key /
    --curve-allowed-clients, or (None, None, None). ValueError with a message when the files are missing or
    unusable."""
    if args.curve_secret_key is None and args.curve_allowed_clients is None:
        return None, None, None
    if args.curve_secret_key is None or args.curve_allowed_clients is None:
        raise ValueError("--curve-secret-key and --curve-allowed-clients go together (CURVE needs both)")
    import zmq
    import zmq.auth
    from zmq.auth.thread import ThreadAuthenticator

    try:
        public, secret = zmq.auth.load_certificate(args.curve_secret_key)
    except (OSError, ValueError) as exc:
        raise ValueError(f"--curve-secret-key {args.curve_secret_key}: {exc}") from exc
    if not secret:
        raise ValueError(f"--curve-secret-key {args.curve_secret_key} holds no secret key (give the .key_secret file)")
    clients = Path(args.curve_allowed_clients)
    if not clients.is_dir() or not list(clients.glob("*.key")):
        raise ValueError(f"--curve-allowed-clients {clients}: expected a directory with the line PCs' *.key files")
    if not zmq.has("curve"):
        raise ValueError("this libzmq was built without CURVE support")
    line_keys: dict[str, str] = {}
    for path in sorted(clients.glob("*.key")):
        try:
            client_public, _ = zmq.auth.load_certificate(path)
        except (OSError, ValueError) as exc:
            raise ValueError(f"--curve-allowed-clients: {path}: {exc}") from exc
        if client_public.decode() in line_keys:
            raise ValueError(
                f"--curve-allowed-clients: {path} holds the same key as {line_keys[client_public.decode()]}.key"
            )
        line_keys[client_public.decode()] = path.stem
    auth = ThreadAuthenticator(zmq.Context.instance(), log=_QuietLog())
    auth.start()
    auth.configure_curve(domain="*", location=str(clients))
    structlog.get_logger("inspectd.collect").info(
        "curve_enabled", allowed_clients=len(line_keys), lines=sorted(line_keys.values()), public_key=public.decode()
    )
    return (public, secret), auth, line_keys


class _QuietLog:
    """zmq.auth's logger: refused clients are logged once each by structlog, the chatter is dropped."""

    def __getattr__(self, name):

        log = structlog.get_logger("inspectd.collect")

        def emit(msg, *args, **_kw):
            text = msg % args if args else str(msg)
            if name in ("warning", "error") or "DENIED" in text.upper():
                log.warning("curve_client_refused", detail=text[:200])

        return emit


def cmd_keygen(args: argparse.Namespace) -> int:

    import zmq.auth

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", args.name):
        print("inspectd keygen: --name must be letters, digits, '.', '_' or '-' (a file name stem)", file=sys.stderr)
        return EXIT_USAGE
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True, mode=0o700)
        if (out / f"{args.name}.key_secret").exists():
            print(f"inspectd keygen: {out / args.name}.key_secret exists; not overwritten", file=sys.stderr)
            return EXIT_USAGE
        public, secret = zmq.auth.create_certificates(out, args.name)
        os.chmod(secret, 0o600)
        os.chmod(public, 0o644)
    except OSError as exc:
        print(f"inspectd keygen: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"public key: {public}\nsecret key: {secret} (mode 0600; keep it on this machine)")
    return EXIT_OK
