"""Command-line flags for the engine's parameters, derived from the table in `shared.params`.

Values are checked by `Params` alone, so a flag refuses exactly what the API refuses, in the
same words; argparse checks only that a number is a number.
"""
from __future__ import annotations

import argparse
from dataclasses import Field, fields

from shared.params import Params, kind, spec

PREFIX = "param_"


def add_param_flags(parser: argparse.ArgumentParser, service: bool = False) -> None:
    """One `--flag` per engine parameter; with `service`, only those a service client may set."""
    for f in fields(Params):
        if service and not spec(f).service:
            continue
        many = kind(f) in ("names", "numbers")
        parser.add_argument(
            "--" + f.name.replace("_", "-"), dest=PREFIX + f.name, default=argparse.SUPPRESS,
            type=float if kind(f) in ("float", "numbers") else int if kind(f) == "int" else str,
            nargs="+" if many else None, metavar=_metavar(f, service),
            help=f"{spec(f).help} (default: {_shown(f.default)})")


def given_params(args: argparse.Namespace) -> dict[str, object]:
    """The parameter flags given on the command line (only those), as `Params` keyword arguments."""
    return {name[len(PREFIX):]: tuple(value) if isinstance(value, list) else value
            for name, value in vars(args).items() if name.startswith(PREFIX)}


def _metavar(f: Field, service: bool) -> str | None:
    if f.name == "init" and not service:
        return "{content,noise,PATH}"  # a path means init `image` with that file
    choices = (service and spec(f).service_choices) or spec(f).choices
    if choices and kind(f) != "names":
        return "{" + ",".join(choices) + "}"
    return {"names": "LAYER", "numbers": "W"}.get(kind(f), f.name.upper())


def _shown(default: object) -> str:
    if default is None:
        return "auto"
    return " ".join(map(str, default)) if isinstance(default, tuple) else str(default)
