"""RFC 9457 problem details for every error the API returns, its own and Werkzeug's."""
from __future__ import annotations

import logging

from flask import Flask, Response, json, request
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException, InternalServerError

from shared.db import UNAVAILABLE, is_unavailable
from shared.schemas import FieldError, Problem
from shared.storage import StorageError

log = logging.getLogger(__name__)
PROBLEM_JSON = "application/problem+json"


class ProblemError(Exception):
    """Raise anywhere in a request to answer with a problem document."""

    def __init__(self, status: int, title: str, detail: str | None = None, *,
                 errors: list[FieldError] | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail or title)
        self.problem = Problem(title=title, status=status, detail=detail, errors=errors)
        self.headers = headers or {}


def invalid(field: str, message: str, status: int = 422) -> ProblemError:
    """A request field is wrong; the problem names it in `detail` and in `errors`."""
    return ProblemError(status, "Invalid request", f"{field}: {message}", errors=[FieldError(field=field, message=message)])


def from_validation_error(exc: ValidationError, prefix: str) -> ProblemError:
    errors = []
    for err in exc.errors():
        field = ".".join([prefix, *map(str, err["loc"])])
        message = "unknown parameter" if err["type"] == "extra_forbidden" else err["msg"]
        errors.append(FieldError(field=field, message=message))
    detail = "; ".join(f"{e.field}: {e.message}" for e in errors)
    return ProblemError(422, "Invalid request", detail, errors=errors)


def problem_response(problem: Problem, headers: dict[str, str] | None = None) -> Response:
    problem = problem.model_copy(update={"instance": problem.instance or request.path})
    body = json.dumps(problem.model_dump(exclude_none=True))
    return Response(body, status=problem.status, mimetype=PROBLEM_JSON, headers=headers)


def register(app: Flask) -> None:
    @app.errorhandler(ProblemError)
    def _problem(exc: ProblemError) -> Response:
        return problem_response(exc.problem, exc.headers)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        response = exc.get_response()
        headers = {k: v for k, v in response.headers.items() if k.lower() in ("allow", "retry-after", "www-authenticate")}
        detail = exc.description
        if exc.code == 413:  # Werkzeug's text names no limit
            detail = (f"the request is over the upload limit: at most {app.config['MAX_CONTENT_LENGTH']} bytes in all "
                      f"(ATELIER_MAX_UPLOAD_BYTES) and {app.config['MAX_FORM_MEMORY_SIZE']} bytes per non-file field")
        return problem_response(Problem(title=exc.name, status=exc.code or 500, detail=detail), headers)

    def _database_unavailable(exc: Exception) -> Response:
        if not is_unavailable(exc):  # e.g. SQLite's "no such table": a server fault, not an outage
            return _unexpected(exc)
        log.warning("database unavailable on %s %s: %s", request.method, request.path,
                    str(getattr(exc, "orig", None) or exc).splitlines()[0])
        return problem_response(Problem(title="Service Unavailable", status=503,
                                        detail="the database is unavailable; retry shortly"), {"Retry-After": "5"})

    for error in UNAVAILABLE:
        app.register_error_handler(error, _database_unavailable)

    @app.errorhandler(StorageError)
    def _storage_unavailable(exc: StorageError) -> Response:
        log.warning("storage unavailable on %s %s: %s", request.method, request.path, exc)
        return problem_response(Problem(title="Service Unavailable", status=503,
                                        detail="image storage is unavailable; retry shortly"), {"Retry-After": "5"})

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _http(InternalServerError())
