"""Webhooks: account events pushed to registered URLs as Standard Webhooks (docs/account-events.md).

``service.py`` registers endpoints, replays and lists dead letters (the CLI's side); ``deliverer.py``
fans committed events out to the endpoints that want them and delivers them, signed, retried with
backoff, in order per user and endpoint; ``sealing.py`` keeps the signing secrets encrypted at rest.
"""
