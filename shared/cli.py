"""`atelier`: one command; its sub-commands come from the packages that own them.

Each entry point of the group `atelier.commands` (pyproject.toml) names a `register(subparsers)`
that adds sub-commands and sets `func` (taking the parsed args, returning an exit code) on each.
Registering imports nothing heavy: a command loads torch or Flask only when it runs.
"""
from __future__ import annotations

import argparse
import sys
from importlib.metadata import entry_points

GROUP = "atelier.commands"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atelier", description="Neural style transfer service and tools.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for entry in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        entry.load()(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
