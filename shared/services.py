"""The per-process handles every component needs, built once from `Settings`."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from shared.config import Settings
from shared.db import Database
from shared.event_hub import EventHub
from shared.storage import Storage, open_storage

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings

    @cached_property
    def db(self) -> Database:
        return Database(self.settings.database_url)

    @cached_property
    def storage(self) -> Storage:
        return open_storage(self.settings)

    @cached_property
    def redis(self) -> redis.Redis:
        return self._redis_client()

    @cached_property
    def event_hub(self) -> EventHub:
        """This process's one subscription to live job events (see `shared.event_hub`). Its client
        never retries: a dropped connection must reach the hub, whose viewers may have missed events."""
        return EventHub(self._redis_client(retry=Retry(NoBackoff(), 0)))

    def _redis_client(self, **options: object) -> redis.Redis:
        if not self.settings.redis_url:
            raise RuntimeError("ATELIER_REDIS_URL is not set (`atelier run` starts an embedded Redis and sets it)")
        return redis.Redis.from_url(self.settings.redis_url, socket_connect_timeout=2, socket_timeout=5,
                                    health_check_interval=30, **options)

    def readiness(self) -> dict[str, str]:
        """`{"database": ..., "redis": ...}`, each "ok" or why it is unreachable."""
        ready = {}
        try:
            with self.db.session() as session:
                session.execute(text("SELECT 1"))
            ready["database"] = "ok"
        except SQLAlchemyError as exc:
            ready["database"] = f"unreachable: {type(exc).__name__}"
        try:
            self.redis.ping()
            ready["redis"] = "ok"
        except (redis.RedisError, OSError) as exc:
            ready["redis"] = f"unreachable: {type(exc).__name__}"
        for name, state in ready.items():
            if state != "ok":
                log.warning("readiness: %s %s", name, state)
        return ready
