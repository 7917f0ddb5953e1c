"""`atelier keys create`, `atelier admin create`, `atelier migrate`, `atelier serve` (the API alone,
as in a container) and `atelier run` (the whole stack on one machine)."""
from __future__ import annotations

import argparse
import sys

from shared.config import Settings


def register(subparsers: argparse._SubParsersAction) -> None:
    keys = subparsers.add_parser("keys", help="manage API keys").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help="create an API key for account NAME (printed once, last line, "
                                            "after its webhook signing secret)")
    create.add_argument("name", help="account name; a new key for an existing account sees the same jobs")
    create.set_defaults(func=create_key)
    admin = subparsers.add_parser("admin", help="manage admin dashboard operators").add_subparsers(
        dest="admin_command", required=True)
    operator = admin.add_parser("create", help="create an operator who can sign in at /admin")
    operator.add_argument("name")
    operator.add_argument("--password-stdin", action="store_true", required=True,
                          help="read the password from the first line of standard input (never from the command line)")
    operator.set_defaults(func=create_operator)
    subparsers.add_parser("migrate", help="bring the database schema up to date").set_defaults(func=migrate)
    serve = subparsers.add_parser("serve", help="run the API under gunicorn (what `atelier run` starts)")
    serve.add_argument("--bind", help="HOST:PORT to listen on (default: ATELIER_HOST:ATELIER_PORT, 127.0.0.1:8000)")
    serve.set_defaults(func=serve_api)
    subparsers.add_parser("run", help="run API, worker, sweep (and Redis if ATELIER_REDIS_URL is unset) until Ctrl-C"
                          ).set_defaults(func=run)


def create_key(args: argparse.Namespace) -> int:
    """A key in an already migrated database (`make run`, `atelier run` and `atelier migrate` migrate
    it): not loading Alembic keeps this command quick."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from shared import keys
    from shared.db import Database
    from shared.webhooks import signing

    try:
        name = keys.account_name(args.name)
    except keys.AccountNameError as exc:
        print(f"atelier keys create: error: {exc}", file=sys.stderr)
        return 2
    settings = Settings.from_env()
    db = Database(settings.database_url)
    try:
        with db.session() as session:
            token = keys.create_key(session, name)
            secret = signing.current(session, keys.live_key(session, token).id).secret
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        where = make_url(settings.database_url).render_as_string(hide_password=True)
        print(f"atelier keys create: error: {reason} in {where}; if its schema is missing or old, "
              "`atelier migrate` brings it up to date", file=sys.stderr)
        return 2
    finally:
        db.dispose()
    print(f"Webhook signing secret of this key (also at GET /v1/webhooks/secret):\n{secret}")
    print(f"API key for account {name!r}; it is shown only this once:")
    print(token)
    return 0


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


def migrate(args: argparse.Namespace) -> int:
    from shared.migrate import upgrade

    settings = Settings.from_env()
    upgrade(settings.database_url)
    print(f"database schema is up to date ({settings.database_url})")
    return 0


def serve_api(args: argparse.Namespace) -> int:
    import os

    from api.stack import gunicorn_command, host_port

    settings = Settings.from_env()
    command = gunicorn_command(args.bind or host_port(settings.host, settings.port))
    os.execv(command[0], command)


def run(args: argparse.Namespace) -> int:
    from api.stack import Stack

    return Stack(Settings.from_env()).run()
