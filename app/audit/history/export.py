"""Streamed export of login attempts as CSV or NDJSON, in constant memory at any size.

Postgres writes the file itself: one ``COPY (SELECT ...) TO STDOUT`` formats every row, so Python
only passes chunks along (hundreds of thousands of rows a second). asyncpg stops reading from the
socket while a chunk waits in the small queue below, so a slow client slows Postgres down instead
of filling memory. The COPY is one statement, so the file is one consistent snapshot.

CSV cells that a spreadsheet would run as a formula get a leading single quote: those starting with
``=``, ``+``, ``-``, ``@``, tab or carriage return (OWASP's list), with the fullwidth forms of the
first four (some spreadsheets read them as the ASCII ones), and with any of those formula characters
after leading whitespace (which spreadsheets skip). That includes E.164 phone numbers
(``'+250788123456``); a spreadsheet shows them as text, and the NDJSON export has them as they are.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

import asyncpg

from app.audit.history.filters import AttemptFilters, read_filters
from app.audit.history.params import Params
from app.audit.history.sql import SqlParams, filter_conditions, where
from app.core.errors import AppError
from app.core.postgres import row_count

ExportFormat = Literal["csv", "ndjson"]
EXPORT_FORMATS: tuple[ExportFormat, ...] = ("csv", "ndjson")
# Litestar adds "; charset=utf-8" to text/* itself (naming it here sent it twice).
MEDIA_TYPES: dict[ExportFormat, str] = {"csv": "text/csv", "ndjson": "application/x-ndjson"}
FORMULA_CHARACTERS = ("=", "+", "-", "@", "\uff1d", "\uff0b", "\uff0d", "\uff20")  # and the fullwidth four
FORMULA_PREFIXES = (*FORMULA_CHARACTERS, "\t", "\r")  # a cell starting with one of these is neutralised
# Skipped by spreadsheets before a formula: every character Python counts as whitespace (U+3000 is the last).
LEADING_WHITESPACE = "".join(ch for ch in map(chr, range(0x3001)) if ch.isspace())
# Chunks of asyncpg's socket reads (up to ~64 KiB each) waiting for the client.
QUEUE_CHUNKS = 8
# How long a COPY whose reader has gone may take to send its next chunk before it is cut off.
STOP_GRACE_SECONDS = 10.0

_ISO_UTC = """to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""
# Qualified: a bare ``created_at`` would name the formatted text column of the same name, and the
# planner would sort a million strings on disk instead of walking the (created_at, id) index.
NEWEST_FIRST_BY_COLUMNS = "ORDER BY login_attempts.created_at DESC, login_attempts.id DESC"


def neutralise_formula(text: str) -> str:
    """The Python twin of :func:`_neutralised_sql`, for cells written outside Postgres."""
    if text.startswith(FORMULA_PREFIXES) or text.lstrip(LEADING_WHITESPACE).startswith(FORMULA_CHARACTERS):
        return "'" + text
    return text


def _codes(characters: Iterable[str]) -> str:
    return ", ".join(str(ord(character)) for character in characters)


def _neutralised_sql(column: str) -> str:
    # The first character's code compared as an integer: cheaper than left(column, 1) IN (...). Only a
    # cell that starts with whitespace pays for ltrim.
    whitespace = "U&'" + "".join(f"\\{ord(character):04x}" for character in LEADING_WHITESPACE) + "'"
    return (
        f"CASE WHEN ascii({column}) IN ({_codes(FORMULA_PREFIXES)})"
        f" OR (ascii({column}) IN ({_codes(LEADING_WHITESPACE)})"
        f" AND ascii(ltrim({column}, {whitespace})) IN ({_codes(FORMULA_CHARACTERS)}))"
        f" THEN '''' || {column} ELSE {column} END"
    )


# The free-text columns (a client chose their text) are neutralised. reason and auth_method hold the
# writer's own vocabulary (app/audit/events.py refuses anything else); the other columns are numbers,
# a UUID, a timestamp, a boolean and an address, none of which can start a formula.
CSV_COLUMNS = (
    ("id", "id"),
    ("event_id", "event_id"),
    ("created_at", _ISO_UTC),
    ("phone_number", _neutralised_sql("phone_number")),
    ("user_id", "user_id"),
    ("success", "success::text"),
    ("auth_method", "auth_method"),
    ("reason", "reason"),
    ("ip_address", "host(ip_address)"),
    ("user_agent", _neutralised_sql("user_agent")),
    ("request_id", _neutralised_sql("request_id")),
    ("channel", "channel"),
    ("session_id", _neutralised_sql("session_id")),
    ("service_name", "service_name"),
)
# row_to_json of a row costs Postgres about half what json_build_object of its columns does.
NDJSON_COLUMNS = (
    f"id, event_id, {_ISO_UTC} AS created_at, phone_number, user_id, success, auth_method, reason, "
    "host(ip_address) AS ip_address, user_agent, request_id, channel, session_id, service_name"
)

# NDJSON: COPY in CSV mode with a quote and delimiter that JSON text cannot contain (it escapes
# every control character), so each object comes out verbatim, one per line. (Text mode would
# double every backslash of the JSON escapes.)
NDJSON_COPY_OPTIONS = {"format": "csv", "quote": "\x01", "delimiter": "\x02"}


def export_sql(filters: AttemptFilters, fmt: ExportFormat) -> tuple[str, list[Any]]:
    params = SqlParams()
    conditions = filter_conditions(filters, params)
    if fmt == "csv":
        select = ",\n       ".join(name if sql == name else f"{sql} AS {name}" for name, sql in CSV_COLUMNS)
        return f"SELECT {select}\nFROM login_attempts\n{where(conditions)}\n{NEWEST_FIRST_BY_COLUMNS}", params.values
    rows = f"SELECT {NDJSON_COLUMNS}\n    FROM login_attempts\n    {where(conditions)}\n    {NEWEST_FIRST_BY_COLUMNS}"  # noqa: S608
    return f"SELECT row_to_json(attempt)\nFROM (\n    {rows}\n) AS attempt", params.values


@dataclass(frozen=True, slots=True)
class ExportRequest:
    filters: AttemptFilters
    format: ExportFormat = "csv"

    def describe(self) -> dict[str, Any]:
        return {**self.filters.describe(), "format": self.format}


def parse_export_request(values: Mapping[str, str | None], region: str) -> ExportRequest:
    """The filters and ``format`` (default csv), every problem reported together."""
    params = Params(values)
    filters = read_filters(params, region)
    chosen = params.choice("format", EXPORT_FORMATS, "Choose csv or ndjson.")
    params.raise_if_any()
    return ExportRequest(filters, "ndjson" if chosen == "ndjson" else "csv")


@dataclass
class ExportResult:
    """Filled in as the export runs; ``rows`` is final once ``finished``."""

    rows: int = 0
    finished: bool = False


Connect = Callable[[], AbstractAsyncContextManager[Any]]
Finish = Callable[[Any, int], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ExportLimits:
    """How long an export may run in all, and wait for its client to take the next chunk."""

    deadline_seconds: float
    idle_seconds: float


class ExportCut(Exception):
    """The export ran past its deadline or its client stopped reading: the transfer ends unfinished
    (no final chunk), so the client cannot take a cut file for a whole one."""

    def __init__(self, why: str) -> None:
        super().__init__(f"export cut: {why}")
        self.why = why


def _wake_with_end(queue: asyncio.Queue[bytes | None]) -> None:
    while not queue.empty():
        queue.get_nowait()
    queue.put_nowait(None)


class ExportStopped(Exception):
    """Raised in the COPY's output when the reader has gone: asyncpg then cancels the COPY cleanly."""


async def export_chunks(
    connect: Connect,
    filters: AttemptFilters,
    fmt: ExportFormat,
    result: ExportResult | None = None,
    finish: Finish | None = None,
    limits: ExportLimits | None = None,
) -> AsyncGenerator[bytes, None]:
    """The export as byte chunks.

    ``connect()`` gives an asyncpg connection; the COPY runs in a transaction of its own on it (a
    savepoint if one is open), and ``finish(conn, rows)`` in the same one after a complete COPY (to
    record the row count). The COPY runs in a task of its own, so that when the
    reader stops early (a client that hung up) the task still ends the COPY and releases its
    connection by itself, whatever cancellation the reader is under.

    ``limits``: the export is cut (:class:`ExportCut`, the transfer ends unfinished) once it has
    run ``deadline_seconds`` or its client has taken no chunk for ``idle_seconds``; the COPY's
    transaction has the same deadline as its statement timeout, should Python not get to cut it.
    """
    sql, args = export_sql(filters, fmt)
    options: dict[str, Any] = {"format": "csv", "header": True} if fmt == "csv" else dict(NDJSON_COPY_OPTIONS)
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=QUEUE_CHUNKS)
    reader_gone = False
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limits.deadline_seconds if limits is not None else None

    def past_deadline() -> bool:
        return deadline is not None and loop.time() > deadline

    async def put(chunk: bytes | bytearray) -> None:
        if past_deadline():
            raise ExportCut("deadline")
        if not reader_gone:
            wait = None
            if limits is not None and deadline is not None:
                wait = max(0.0, min(limits.idle_seconds, deadline - loop.time()))
            try:
                # asyncpg lends a bytearray; a full queue is a client not reading.
                await asyncio.wait_for(queue.put(bytes(chunk)), wait)
            except TimeoutError as exc:
                raise ExportCut("deadline" if past_deadline() else "idle") from exc
        if reader_gone:
            raise ExportStopped

    opened = connect()  # now, not in the task: a slot behind ``connect`` counts as claimed from here

    async def copy() -> None:
        try:
            async with opened as conn, conn.transaction():
                # JIT compiles the row formatting for a second or more and never earns it back here.
                await conn.execute("SET LOCAL jit = off")
                if limits is not None:
                    await conn.execute(f"SET LOCAL statement_timeout = {int(limits.deadline_seconds * 1000)}")
                    idle_ms = int(limits.idle_seconds * 1000)
                    await conn.execute(f"SET LOCAL idle_in_transaction_session_timeout = {idle_ms}")
                status: str = await conn.copy_from_query(sql, *args, output=put, **options)
                rows = row_count(status)
                if finish is not None:
                    await finish(conn, rows)
            if result is not None:
                result.rows, result.finished = rows, True
        except (asyncio.CancelledError, ExportStopped):
            raise  # the reader is gone: nobody to wake
        except ExportCut:
            _wake_with_end(queue)  # the chunks not sent are dropped: the reader ends at once
            raise
        except asyncpg.QueryCanceledError as exc:
            if limits is None:  # a statement timeout of the caller's own
                await queue.put(None)
                raise
            _wake_with_end(queue)  # ours: the deadline's backstop
            raise ExportCut("deadline") from exc
        except BaseException:
            await queue.put(None)  # wake the reader, which then awaits this task and re-raises
            raise
        await queue.put(None)

    task = asyncio.create_task(copy())
    task.add_done_callback(lambda done: done.cancelled() or done.exception())  # retrieved, not logged
    try:
        while (chunk := await queue.get()) is not None:
            if past_deadline():
                raise ExportCut("deadline")
            yield chunk
        await task  # raises what the COPY raised
    finally:
        if not task.done():
            # Stopped early. Cancelling the task mid-COPY would leave asyncpg's connection unusable,
            # so the COPY is stopped from its output instead (at its next chunk; a put waiting for
            # room is let through first). A COPY that sends nothing for a while is cut off, with
            # its connection, after STOP_GRACE_SECONDS.
            reader_gone = True
            while not queue.empty():
                queue.get_nowait()
            asyncio.get_running_loop().call_later(STOP_GRACE_SECONDS, task.cancel)


class ExportsBusy(AppError):
    status_code = 429
    code = "exports_busy"
    message = "Too many exports are running. Try again when one has finished."


class ExportSlots:
    """At most ``limit`` exports hold a slot at once in this process, and at most ``per_user`` of them
    one account's.

    An export holds a connection for as long as the file takes (minutes for millions of rows): without
    a cap, a few browser tabs of exports would take every connection the security team has, and one
    account could keep the others out. A slot is taken (:meth:`reserve`) before the response starts,
    so an export past the cap is refused with its 429 rather than cut after its first bytes.
    """

    def __init__(self, limit: int, per_user: int = 1) -> None:
        self.limit = max(1, limit)
        self.per_user = max(1, per_user)
        self.in_use = 0  # slots taken now: reserved, streaming, or finishing their COPY
        self._by_user: dict[int, int] = {}

    def reserve(self, user_id: int | None = None) -> ExportSlot:
        """Take a slot, or refuse (429 ``exports_busy``). Checked and taken with no await between, so
        two exports an account starts at the same instant cannot both pass."""
        own = self._by_user.get(user_id, 0) if user_id is not None else 0
        if self.in_use >= self.limit or own >= self.per_user:
            raise ExportsBusy(headers={"Retry-After": "30"})
        self.in_use += 1
        if user_id is not None:
            self._by_user[user_id] = own + 1
        return ExportSlot(self, user_id)

    def connection(self, connect: Connect, user_id: int | None = None) -> Connect:
        """``connect`` holding a slot reserved now (:meth:`ExportSlot.connection`)."""
        return self.reserve(user_id).connection(connect)

    def _give_back(self, user_id: int | None) -> None:
        self.in_use -= 1
        if user_id is not None:
            self._by_user[user_id] -= 1
            if not self._by_user[user_id]:
                del self._by_user[user_id]


class ExportSlot:
    """One export's place, from :meth:`ExportSlots.reserve` until :meth:`release` (idempotent).

    Its connection (:meth:`connection`) gives it back once the COPY has let the connection go, which
    may be a little after the reader has hung up. An export whose body never asked for the connection
    (the handler failed after reserving, the client left before the first chunk) gives it back with
    :meth:`release_unclaimed`.
    """

    __slots__ = ("_released", "_slots", "_user_id", "claimed")

    def __init__(self, slots: ExportSlots, user_id: int | None) -> None:
        self._slots, self._user_id = slots, user_id
        self._released = False
        self.claimed = False

    def connection(self, connect: Connect) -> Connect:
        @asynccontextmanager
        async def held() -> AsyncIterator[Any]:
            try:
                async with connect() as conn:
                    yield conn
            finally:
                self.release()

        def claim() -> AbstractAsyncContextManager[Any]:
            self.claimed = True  # from here on the context manager's exit gives the slot back
            return held()

        return claim

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._slots._give_back(self._user_id)

    def release_unclaimed(self) -> None:
        if not self.claimed:
            self.release()
