"""The service behind TLS: what changes when clients reach it over HTTPS through a proxy.

`ATELIER_BEHIND_HTTPS` tells the service that it sits behind a TLS-terminating proxy (one hop):
the proxy's `X-Forwarded-Proto` and `X-Forwarded-For` are trusted (so the app knows requests
came over HTTPS, and rate limits count per client address rather than per proxy), and, unless
`ATELIER_SECURE_COOKIES` says otherwise, the admin session cookie is marked `Secure` (a browser
never sends it over plain HTTP) and every response carries `Strict-Transport-Security` (a
browser that once reached the service over HTTPS never tries plain HTTP again).
"""
from __future__ import annotations

from flask import Flask, Response
from werkzeug.middleware.proxy_fix import ProxyFix

from shared.config import Settings

HSTS = "max-age=31536000"  # a year; browsers honour it over HTTPS only


def secure_cookies(settings: Settings) -> bool:
    return settings.behind_https if settings.secure_cookies is None else settings.secure_cookies


def init_app(app: Flask, settings: Settings) -> None:
    if settings.behind_https:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1)
    if secure_cookies(settings):
        app.config["SESSION_COOKIE_SECURE"] = True

        @app.after_request
        def _hsts(response: Response) -> Response:
            response.headers.setdefault("Strict-Transport-Security", HSTS)
            return response
