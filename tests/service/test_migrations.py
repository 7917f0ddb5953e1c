"""The migrations, down and up again: every revision keeps the rows it does not drop (SQLite
rebuilds a table to alter it, which with foreign keys on deleted the rows that referenced it)."""
from __future__ import annotations

from alembic import command
from sqlalchemy import func, select

from shared.migrate import alembic_config, upgrade
from shared.models import Account, ApiKey, Job, JobInput, LossPoint, Snapshot
from shared.services import Services
from tests.service.helpers import make_settings, submit

KEPT = (Account, ApiKey, Job, JobInput, Snapshot, LossPoint)  # tables of revision 0004 and after


def test_downgrading_and_upgrading_again_keeps_every_row(own_database, redis_server, tmp_path, client_for, images):
    settings = make_settings(own_database, redis_server.url(1), tmp_path / "storage")
    client, auth = client_for(settings)
    job_id = submit(client, auth, images, {"size": 32, "iterations": 2}).get_json()["id"]
    services = Services(settings)
    with services.db.session() as session:
        session.add_all([Snapshot(job_id=job_id, iteration=1, key="k", sha256="0" * 64, size_bytes=1),
                         LossPoint(job_id=job_id, iteration=1, losses={"total": 1.0})])
        session.commit()

    def counts() -> list[int]:
        with services.db.engine.connect() as connection:
            return [connection.scalar(select(func.count()).select_from(model.__table__)) for model in KEPT]
    before = counts()
    assert all(before), before
    services.db.dispose()  # no pooled connection in the way of the schema changes
    for revision in ("0008", "0005", "0004"):
        command.downgrade(alembic_config(own_database), revision)
        assert counts() == before, revision
        services.db.dispose()
    upgrade(own_database)
    assert counts() == before
    services.db.dispose()
