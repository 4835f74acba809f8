"""The `inspectd` console script: one entry point, subcommands contributed by each package.

daemon/ contributes run, check-config and mark; collector/ contributes collect; export/ contributes train and
ensemble (torch is imported only when train runs).
This dispatcher lives outside daemon/ so that daemon/ never imports export/ or calibration/.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from inspectd import __version__

# packages that contribute subcommands through a `register(subparsers)` function in their cli module
COMMAND_MODULES = (
    "inspectd.daemon.cli",
    "inspectd.collector.cli",
    "inspectd.training.cli",
    "inspectd.evaluation.cli",
    "inspectd.labelling.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inspectd", description="edge inference daemon for visual inspection")
    parser.add_argument("--version", action="version", version=f"inspectd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a real import error inside the module: show it
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
