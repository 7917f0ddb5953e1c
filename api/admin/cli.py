"""`atelier admin create NAME --password-stdin`: an operator account for the dashboard."""
from __future__ import annotations

import argparse
import sys

from shared.config import Settings


def register(subparsers: argparse._SubParsersAction) -> None:
    admin = subparsers.add_parser("admin", help="manage admin dashboard operators").add_subparsers(
        dest="admin_command", required=True)
    create = admin.add_parser("create", help="create an operator who can sign in at /admin")
    create.add_argument("name")
    create.add_argument("--password-stdin", action="store_true", required=True,
                        help="read the password from the first line of standard input (never from the command line)")
    create.set_defaults(func=create_operator)


def create_operator(args: argparse.Namespace) -> int:
    from shared.db import Database
    from shared.migrate import upgrade
    from shared.operators import OperatorError, create_operator

    password = sys.stdin.readline().rstrip("\r\n")
    settings = Settings.from_env()
    upgrade(settings.database_url)
    db = Database(settings.database_url)
    try:
        with db.session() as session:
            create_operator(session, args.name, password)
    except OperatorError as exc:
        print(f"atelier admin create: {exc}", file=sys.stderr)
        return 1
    finally:
        db.dispose()
    print(f"operator {args.name!r} created; sign in at /admin")
    return 0
