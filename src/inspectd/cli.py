"""The `inspectd` console script: one entry point, subcommands contributed by each package.

daemon/ contributes run, check-config and mark; collector/ contributes collect; training/ contributes train and
ensemble (torch is imported only when train runs: without the `train` extra such a command says which extra to
install and exits 2).
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
    "inspectd.interop.cli",
    "inspectd.labelling.cli",
    "inspectd.registry.cli",
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


# optional dependencies -> the extra of pyproject.toml that brings them
EXTRAS = {"torch": "train", "onnx": "train"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ModuleNotFoundError as exc:
        top = (exc.name or "").split(".")[0]
        if top not in EXTRAS:
            raise
        extra = EXTRAS[top]
        command = " ".join([args.command, *[a for a in argv[argv.index(args.command) + 1 :][:1] if a[:1] != "-"]])
        print(
            f"inspectd {command}: needs {top}, which is not installed: it comes with the `{extra}` extra "
            f"(pip install 'inspectd[{extra}]', or in a checkout `.venv/bin/pip install -e '.[{extra}]'`; "
            "torch==2.13.0, a CPU build will do). The daemon itself never needs it.",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
