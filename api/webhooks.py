"""`/v1/webhooks/secret` (read, rotate), `/v1/jobs/{id}/deliveries` and
`/v1/deliveries/{id}/redeliver`: the caller's webhook secret and its own jobs' history."""
from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify
from flask.blueprints import BlueprintSetupState

from api.app import services
from api.auth import account_id, api_key_id, require_key
from api.errors import ProblemError
from api.lookup import load_job
from shared.webhooks import history, sender, signing, targets

bp = Blueprint("webhooks", __name__, url_prefix="/v1")
require_key(bp)


@bp.record_once
def check_settings(state: BlueprintSetupState) -> None:
    """A malformed webhook setting stops the API at start-up instead of failing submissions."""
    settings = state.app.extensions["atelier"].settings
    targets.parse_networks(settings.webhook_allow_networks)
    sender.retry_schedule(settings)


def secret_response(state: signing.WebhookSecretOut) -> Response:
    return jsonify(state.model_dump(mode="json"))


@bp.get("/webhooks/secret")
def get_secret() -> Response:
    with services().db.session() as session:
        return secret_response(signing.current(session, api_key_id()))


@bp.post("/webhooks/secret/rotate")
def rotate_secret() -> Response:
    svc = services()
    with svc.db.session() as session:
        return secret_response(signing.rotate(session, api_key_id(), svc.settings.webhook_secret_grace_seconds))


@bp.get("/jobs/<job_id>/deliveries")
def list_deliveries(job_id: str) -> Response:
    with services().db.session() as session:
        load_job(session, job_id)
        found = history.deliveries_for(session, job_id)
        return jsonify(history.DeliveryList(data=[history.delivery_out(d) for d in found]).model_dump(mode="json"))


@bp.post("/deliveries/<delivery_id>/redeliver")
def redeliver(delivery_id: str) -> Response:
    if not history.is_delivery_id(delivery_id):
        raise ProblemError(404, "Not Found", f"no delivery {delivery_id[:64]!r}")
    try:
        event = history.redeliver(services(), current_app.extensions["celery"], delivery_id, account_id())
    except history.InFlight:
        raise ProblemError(409, "Conflict", f"an attempt at delivery {delivery_id} is under way; try again shortly") from None
    if event is None:
        raise ProblemError(404, "Not Found", f"no delivery {delivery_id}")
    response = jsonify(history.delivery_out(event).model_dump(mode="json"))
    response.status_code = 202
    return response
