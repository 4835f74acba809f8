"""The daemon's subcommands: `run`, `check-config`, and the two that talk to a running daemon over its control
socket, `mark` and `reload`.

Exit codes: 0 = clean stop / done; 2 = bad configuration or model, or the daemon refused (restarting will not help:
the systemd unit does not restart on 2); 1 = a runtime failure where a restart is the right answer.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from inspectd.core import logs
from inspectd.core.errors import ConfigError
from inspectd.daemon.config import check_runtime, load_config
from inspectd.feedback.control import ControlError, request

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the inspection daemon")
    p.add_argument("--config", default="config.yaml", help="YAML config file (default: ./config.yaml)")
    p.add_argument("--max-frames", type=int, default=0, help="stop after N verdicts (0 = run until stopped)")
    p.set_defaults(func=cmd_run)

    c = sub.add_parser("check-config", help="validate a config file and the model it names; exit 0 or 2")
    c.add_argument("--config", default="config.yaml", help="YAML config file (default: ./config.yaml)")
    c.set_defaults(func=cmd_check_config)

    register_control(sub)  # `inspectd mark SEQ --good|--bad`, `inspectd reload`: the running daemon's socket


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config)
        check_runtime(cfg)
    except ConfigError as exc:
        print(f"inspectd: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"{args.config}: OK (camera {cfg.camera.type}, model {cfg.model.path})")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"inspectd: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.max_frames < 0:
        print("inspectd: --max-frames must be >= 0", file=sys.stderr)
        return EXIT_CONFIG

    from inspectd.daemon import app  # the whole runtime (onnxruntime, numba, pymodbus): only for `run`

    logs.configure(cfg.logging.level, cfg.logging.format)
    return app.run(cfg, Path(args.config), args.max_frames)


def register_control(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "mark",
        help="mark a rejected item good (a false reject, sent for training) or bad (a confirmed defect)",
        description="Talks to the running daemon's control socket (control.socket in the config). SEQ is the "
        "verdict's seq from the daemon's log (or a reject id). The newest stored reject with that seq is marked; "
        "marking it again the same way changes nothing.",
    )
    p.add_argument("seq", metavar="SEQ", help="the reject's seq (as in the verdict log), or its reject id")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--good", dest="mark", action="store_const", const="good", help="a false reject: it was good")
    which.add_argument("--bad", dest="mark", action="store_const", const="bad", help="a confirmed defect")
    p.add_argument("--config", default="config.yaml", help="the daemon's YAML config (default: ./config.yaml)")
    p.set_defaults(func=cmd_mark)

    r = sub.add_parser(
        "reload",
        help="reload the running daemon's model: the config's model section is read again (validated first; the old "
        "model stays on failure)",
        description="Asks the running daemon, over its control socket, to read the config file's model: section "
        "again, load the model directory at model.path, check it (manifest, sha256, shapes, warm-up) and swap it in "
        "between frames if its path, sha256 or thresholds changed. Same as `systemctl reload "
        "inspectd` / SIGHUP, but waits for the answer. Exit 0 reloaded (or unchanged), 2 refused or no daemon.",
    )
    r.add_argument("--config", default="config.yaml", help="the daemon's YAML config (default: ./config.yaml)")
    r.set_defaults(func=cmd_reload)


def _ask_daemon(args: argparse.Namespace, command: str, payload: dict, no_control: str, timeout: float) -> dict | None:
    """Load the config, send one request to the daemon's control socket; the answer, or None after printing why."""
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"inspectd: {exc}", file=sys.stderr)
        return None
    control = getattr(cfg, "control", None)
    if control is None:
        print(f"inspectd {command}: {args.config} has no `control:` section{no_control}", file=sys.stderr)
        return None
    try:
        answer = request(control.socket, payload, timeout=timeout)
    except ControlError as exc:
        print(f"inspectd {command}: {exc}", file=sys.stderr)
        return None
    if not answer.get("ok"):
        print(f"inspectd {command}: {answer.get('error', answer)}", file=sys.stderr)
        return None
    return answer


def cmd_mark(args: argparse.Namespace) -> int:
    payload: dict = {"op": "mark", "mark": args.mark}
    if args.seq.isdigit():
        payload["seq"] = int(args.seq)
    else:
        payload["reject_id"] = args.seq
    no_control = ", so the daemon has no control socket (add control.socket, restart the daemon)"
    answer = _ask_daemon(args, "mark", payload, no_control, timeout=15.0)
    if answer is None:
        return EXIT_CONFIG
    state = "was already marked" if answer.get("already") else "marked"
    print(
        f"seq {answer['seq']} (PLC seq {answer['plc_seq']}, item {answer['item_id']}) {state} {answer['mark']}: "
        f"record {answer['record_id']}; {answer['spool_depth']} record(s) waiting for the collector"
    )
    return EXIT_OK


def cmd_reload(args: argparse.Namespace) -> int:
    no_control = (
        "; send SIGHUP instead (`systemctl reload inspectd`) and read the `model_reloaded` / "
        "`model_reload_failed` log event"
    )
    answer = _ask_daemon(args, "reload", {"op": "reload"}, no_control, timeout=300.0)
    if answer is None:
        return EXIT_CONFIG
    if answer.get("changed"):
        print(
            f"model reloaded ({', '.join(answer.get('what') or ['model'])} changed): {answer.get('name')} at "
            f"{answer.get('path')}, sha256 {answer.get('sha256')} (was {answer.get('previous_sha256')}), pixel "
            f"threshold {answer.get('pixel_threshold')}, min region area {answer.get('min_region_area')}"
        )
    else:
        print(f"model unchanged: sha256 {answer.get('sha256')}")
    return EXIT_OK
