"""Webhooks: a job's events POSTed to its `webhook_url`, signed per Standard Webhooks.

- `targets`: which URLs and addresses a webhook may reach (SSRF protection);
- `signing`: the per-API-key signing secrets and their rotation;
- `outbox`: recording events in SQL and handing them to the broker;
- `sender`: one signed HTTP attempt, its log row and the retry it schedules;
- `history`: a job's deliveries as the API and the admin dashboard show them, and redelivery.
"""
