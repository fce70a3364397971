"""The receiver of docs/account-events.md ("Receiving"), run as printed on real deliveries."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from app.core.settings import PROJECT_ROOT, Settings
from app.webhooks.deliverer import WebhookDeliverer
from tests.helpers import new_phone
from tests.webhooks.support import Receiver, add_endpoint, emit, new_user

DOC = PROJECT_ROOT / "docs" / "account-events.md"


def doc_receiver() -> Callable[..., int]:
    match = re.search(r"<!-- receiver -->\n```python\n(.*?)```", DOC.read_text(), re.S)
    assert match, "docs/account-events.md lost its receiver block"
    namespace: dict[str, Any] = {}
    exec(compile(match.group(1), str(DOC), "exec"), namespace)  # noqa: S102 - our own documentation
    receive: Callable[..., int] = namespace["receive"]
    return receive


async def test_the_documented_receiver_applies_each_event_once_and_refuses_a_forgery(
    hook_settings: Settings, receiver: Receiver, deliverer: WebhookDeliverer
) -> None:
    receive = doc_receiver()
    user = await new_user(hook_settings, new_phone())
    await add_endpoint(hook_settings, receiver)
    await emit(hook_settings, user, 3)
    await deliverer.run_once()
    assert receiver.secret and len(receiver.requests) == 3
    first, second, third = receiver.requests

    applied: list[int] = []
    gaps: list[tuple[int, int, int]] = []
    last_seq: dict[int, int] = {}

    def deliver(request: tuple[bytes, dict[str, str]]) -> int:
        body, headers = request
        return receive(
            receiver.secret, body, headers, last_seq, lambda e: applied.append(e["seq"]), lambda *gap: gaps.append(gap)
        )

    assert deliver(first) == 204
    assert deliver(first) == 204  # a retry of what was applied
    forged = (first[0].replace(b'"seq":1', b'"seq":2'), first[1])
    assert deliver(forged) == 400
    assert deliver(third) == 204  # seq 2 never arrived (say it was dead-lettered)
    assert deliver(second) == 204  # replayed late: below the last applied, skipped
    assert applied == [1, 3]
    assert last_seq == {user: 3}
    assert gaps == [(user, 2, 2)]
