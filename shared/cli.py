"""`atelier`: one command, sub-commands contributed by the feature packages.

Each module in COMMAND_MODULES has `register(subparsers)`, which adds its sub-commands
and sets `func` (taking the parsed args, returning an exit code) on each.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = ("worker.cli", "api.cli", "api.admin.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atelier", description="Neural style transfer service and tools.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
