"""The Atelier client: `Client` (submit, follow, fetch and manage jobs), its `Job` and `Event`, and
the exceptions it raises. Needs only httpx: no Flask, SQLAlchemy, Celery or torch."""
from api.client.client import Client
from api.client.errors import (APIError, AtelierError, BadRequest, ConfigurationError, Conflict, InvalidRequest,
                               JobDeleted, NetworkError, NotFound, PayloadTooLarge, RateLimited, ServerError,
                               ServiceUnavailable, Unauthorized, WaitTimeout)
from api.client.models import Event, Job

__all__ = ["APIError", "AtelierError", "BadRequest", "Client", "ConfigurationError", "Conflict", "Event",
           "InvalidRequest", "Job", "JobDeleted", "NetworkError", "NotFound", "PayloadTooLarge", "RateLimited",
           "ServerError", "ServiceUnavailable", "Unauthorized", "WaitTimeout"]
