"""Alembic environment: the URL comes from the service settings unless the caller passed one
(`shared.migrate.upgrade` does, so tests and `atelier migrate` share this code path)."""
from __future__ import annotations

from logging.config import fileConfig

from alembic import context

from shared.config import Settings
from shared.db import make_engine
from shared.models import Base

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

url = config.get_main_option("sqlalchemy.url") or Settings.from_env().database_url


def run_migrations_offline() -> None:
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = make_engine(url)
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            # batch mode rebuilds a table by dropping it: with foreign keys on (`shared.db`), SQLite
            # first deletes its rows, and the rows of every table that references it go by ON DELETE
            # CASCADE (a downgrade emptied jobs, their inputs, even API keys). Off for this connection,
            # outside a transaction (SQLite ignores the pragma inside one); checked before committing.
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            connection.commit()
        context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
            if sqlite and (broken := connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()):
                raise RuntimeError(f"the migration left rows whose references are gone: {broken[:10]}")
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
