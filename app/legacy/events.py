"""Where the import tells the rest of the platform that accounts arrived."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


async def accounts_imported(conn: Any, user_ids: Sequence[int]) -> None:
    """The call site of the ``account.imported`` events: one per id in ``user_ids``.

    Called on the target connection inside the transaction that inserted those accounts (only the
    newly inserted ones: a rerun calls it with none), so the account-events outbox, once it exists,
    writes its rows here and an event is stored exactly when its account is. Until the outbox is
    wired in here, no event is written.
    """
    del conn, user_ids
