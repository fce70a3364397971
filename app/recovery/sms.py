"""Sending a text message: Africa's Talking's REST API through httpx, or the log in development.

Africa's Talking's Python SDK is synchronous (``requests``) and has no setting for its base URL,
so its documented REST API is called directly: ``POST {base}/version1/messaging`` with the form
fields ``username``, ``to``, ``message`` and ``from`` (the sender id, when one is registered), the
key in the ``apiKey`` header; each recipient's ``statusCode`` 101 means sent. Anything else (no
answer, an error status, a recipient not sent) is :class:`SmsNotSent`: the caller withdraws the code.
"""

from __future__ import annotations

import logging
from typing import Protocol

import httpx

from app.core.settings import Settings

logger = logging.getLogger(__name__)

SENT = 101  # Africa's Talking: the recipient's message was accepted ("Sent")


class SmsNotSent(Exception):
    """The provider did not take the message; ``str()`` says why, for the logs only."""


class SmsSender(Protocol):
    async def send(self, to: str, message: str) -> None: ...

    async def close(self) -> None: ...


class LogSender:
    """Development: the message goes to the log (production refuses SMS_PROVIDER=log)."""

    async def send(self, to: str, message: str) -> None:
        logger.warning("SMS to %s (SMS_PROVIDER=log, not sent): %s", to, message)

    async def close(self) -> None:
        return None


class AfricasTalking:
    def __init__(self, settings: Settings, timeout_seconds: float = 10.0) -> None:
        self._url = settings.africastalking_api_url.rstrip("/") + "/version1/messaging"
        self._username = settings.africastalking_username or ""
        self._sender_id = settings.sms_sender_id
        self._client = httpx.AsyncClient(
            timeout=timeout_seconds,
            headers={"apiKey": settings.africastalking_api_key or "", "Accept": "application/json"},
        )

    async def send(self, to: str, message: str) -> None:
        form = {"username": self._username, "to": to, "message": message}
        if self._sender_id:
            form["from"] = self._sender_id
        try:
            response = await self._client.post(self._url, data=form)
        except httpx.HTTPError as exc:
            raise SmsNotSent(f"no answer from the SMS provider: {type(exc).__name__}") from exc
        if response.status_code >= 300:
            raise SmsNotSent(f"the SMS provider answered {response.status_code}")
        try:
            recipients = response.json()["SMSMessageData"]["Recipients"]
            codes = [int(recipient["statusCode"]) for recipient in recipients]
        except (ValueError, KeyError, TypeError) as exc:
            raise SmsNotSent("the SMS provider's answer could not be read") from exc
        if not codes or any(code != SENT for code in codes):
            raise SmsNotSent(f"the SMS provider did not send it: status codes {codes}")

    async def close(self) -> None:
        await self._client.aclose()


def sms_sender(settings: Settings) -> SmsSender | None:
    """The configured sender; None when SMS is off (recovery by USSD only)."""
    channel = settings.sms_channel
    if channel == "africastalking":
        return AfricasTalking(settings)
    if channel == "log":
        return LogSender()
    return None
