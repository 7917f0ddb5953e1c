"""The Flask API: `create_app(settings)` wires the blueprints to one set of `Services`; `services()`
returns them inside a request."""
from __future__ import annotations

import logging

from flask import Flask, current_app

from shared.broker import create_celery
from shared.config import Settings
from shared.services import Services


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes
    app.json.sort_keys = False
    services = Services(settings)
    app.extensions["atelier"] = services
    app.extensions["celery"] = create_celery(settings)

    from api import admin, docs, errors, events, files, health, job_routes, metrics, transport, webhooks
    transport.init_app(app, settings)
    errors.register(app)
    metrics.init_app(app)
    for module in (health, docs, job_routes, files, events, webhooks):
        app.register_blueprint(module.bp)
    from api import limits
    limiter = limits.init_app(app, settings)
    admin.init_app(app, settings, limiter)
    if not app.debug:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return app


def services() -> Services:
    return current_app.extensions["atelier"]
