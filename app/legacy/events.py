"""Where the import tells the rest of the platform that accounts arrived."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from app.events.outbox import record_imported_batch


async def accounts_imported(conn: Any, user_ids: Sequence[int]) -> None:
    """One ``account.imported`` event per id in ``user_ids``, through the account-events outbox.

    Called on the target connection inside the transaction that inserted those accounts (only the
    newly inserted ones: a rerun calls it with none), so an event is stored exactly when its account is.
    """
    await record_imported_batch(conn, user_ids, source="flask")
