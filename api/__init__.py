"""The HTTP API: the Flask server (`api.app.create_app`) and its client (`api.client`).

Importing this package loads nothing, so the client and the `atelier` commands start without Flask.
"""
