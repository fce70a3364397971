"""The import itself: decide, then write users and history in batches, each batch one transaction.

Idempotent by construction: users are inserted ``ON CONFLICT (id) DO NOTHING`` (an account this
import wrote before is never written again, whatever happened to it since), history rows carry an
``event_id`` derived from their source id (unique, so a second write of a row stores nothing).
Killed at any point, a rerun makes the same decisions from the same source and writes what is missing.
"""

from __future__ import annotations

import asyncio
import datetime
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import asyncpg
from argon2 import PasswordHasher, Type

from app.audit.history.query_log import Actor, record_query
from app.audit.pipeline.store import add_rows_to_rollups, is_event_key
from app.legacy.collisions import AccountKey, Existing, Plan, Policy, Resolution, plan_accounts
from app.legacy.events import accounts_imported
from app.legacy.report import FailedBatch, Report
from app.legacy.rules import (
    FAMILY_MANAGED,
    HISTORY_COLUMNS,
    HistoryStats,
    Note,
    UserRow,
    history_records,
    user_row,
)
from app.legacy.source import ATTEMPT_COLUMNS, USER_COLUMNS, Source, open_source, plain_dsn, redacted

Only = Literal["users", "attempts"]
# (phase, rows done, rows in all)
Progress = Callable[[str, int, int], None]

USER_INSERT_COLUMNS = (
    ("id", "int8"),
    ("name", "text"),
    ("phone_number", "text"),
    ("email", "text"),
    ("password_hash", "text"),
    ("user_type", "text"),
    ("role", "text"),
    ("is_active", "bool"),
    ("pin_hash", "text"),
    ("enable_pin_auth", "bool"),
    ("personal_cycle_length", "int4"),
    ("personal_period_length", "int4"),
    ("has_provided_cycle_info", "bool"),
    ("last_activity", "timestamptz"),
    ("current_session_data", "text"),
    ("session_timeout_minutes", "int4"),
    ("account_type", "text"),
    ("is_phone_verified", "bool"),
    ("allow_parent_access", "bool"),
    ("data_sharing_consent", "bool"),
    ("notification_preferences", "jsonb"),
    ("created_at", "timestamptz"),
    ("updated_at", "timestamptz"),
)
_names = ", ".join(name for name, _ in USER_INSERT_COLUMNS)
_arrays = ", ".join(
    f"${i}::{'text' if kind == 'jsonb' else kind}[]" for i, (_, kind) in enumerate(USER_INSERT_COLUMNS, 1)
)
_selected = ", ".join(f"{name}::jsonb" if kind == "jsonb" else name for name, kind in USER_INSERT_COLUMNS)
INSERT_USERS = f"""
INSERT INTO users ({_names}, source)
SELECT {_selected}, 'flask' FROM unnest({_arrays}) AS u({_names})
ON CONFLICT (id) DO NOTHING
RETURNING id
"""  # noqa: S608 (fixed column names)
LEGACY_CHANNEL = "http"  # login_attempts.channel's default, which the COPY leaves in place
assert "channel" not in HISTORY_COLUMNS, "count the rows' own channel into the rollups"

INSERT_HISTORY = f"""
INSERT INTO login_attempts ({", ".join(HISTORY_COLUMNS)})
SELECT * FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::bool[], $5::text[], $6::inet[],
    $7::text[], $8::text[], $9::text[])
ON CONFLICT (event_id, created_at) DO NOTHING
RETURNING created_at, success, reason, channel
"""  # noqa: S608 (fixed column names)


class ImportFailed(Exception):
    def __init__(self, batch: FailedBatch) -> None:
        super().__init__(f"{batch.table} batch with source ids {batch.first_id}..{batch.last_id} failed: {batch.error}")
        self.batch = batch
        self.report: Report | None = None  # filled in by run_import: what was done before the failure


@dataclass(frozen=True, slots=True)
class ImportOptions:
    source_url: str
    region: str
    dry_run: bool = False
    only: Only | None = None
    batch_size: int = 5000
    policy: Policy = "report"
    resolutions: Mapping[int, Resolution] = field(default_factory=dict)
    staff_roles: Mapping[str, str] = field(default_factory=dict)
    argon2_memory_kib: int = 19456
    argon2_time_cost: int = 2

    def described(self) -> dict[str, Any]:
        return {
            "source": redacted(self.source_url),
            "dry_run": self.dry_run,
            "only": self.only,
            "batch_size": self.batch_size,
            "on_collision": self.policy,
            "resolved_accounts": len(self.resolutions),
            "staff_roles": dict(self.staff_roles),
        }


def _unusable_password_hash(options: ImportOptions) -> str:
    """An argon2id hash of a secret nobody keeps: an account whose Flask-era hash is of an unknown
    form cannot sign in by password, and a wrong guess costs what it costs on any account."""
    hasher = PasswordHasher(time_cost=options.argon2_time_cost, memory_cost=options.argon2_memory_kib, type=Type.ID)
    return hasher.hash(secrets.token_urlsafe(32))


def _quiet(phase: str, done: int, total: int) -> None:
    del phase, done, total


async def run_import(target_url: str, options: ImportOptions, progress: Progress = _quiet) -> Report:
    """Import from ``options.source_url`` into ``target_url``; the report says what happened.

    Raises ImportFailed (the report, with the failed batch in it, is on the exception's ``report``).
    """
    report = Report(source=redacted(options.source_url), dry_run=options.dry_run, options=options.described())
    target = await asyncpg.connect(plain_dsn(target_url))
    try:
        async with open_source(options.source_url) as source:
            try:
                if options.only in (None, "users"):
                    await _import_users(source, target, options, report, progress)
                if options.only in (None, "attempts"):
                    await _import_history(source, target, options, report, progress)
            except ImportFailed as exc:
                report.failed_batches.append(exc.batch)
                exc.report = report
                await _record(target, options, report)
                raise
        report.finished_at = datetime.datetime.now(datetime.UTC)
        await _record(target, options, report)
        return report
    finally:
        await target.close()


async def _record(target: asyncpg.Connection, options: ImportOptions, report: Report) -> None:
    """One row in the security team's query log: who imported what, when, with which outcome."""
    if options.dry_run:
        return
    data = report.as_dict()
    summary = {
        **options.described(),
        "complete": data["complete"],
        "users": {k: data["users"][k] for k in ("read", "imported", "inserted", "not_imported")},
        "history": {k: data["history"][k] for k in ("read", "inserted")} if data["history"] else None,
    }
    written = report.users_inserted + report.history_inserted
    report.query_log_id = await record_query(target, Actor.from_shell(), "legacy_import", summary, written)


# ---- users --------------------------------------------------------------------------------------


async def _import_users(
    source: Source, target: asyncpg.Connection, options: ImportOptions, report: Report, progress: Progress
) -> None:
    total = await source.count("users")
    unusable = _unusable_password_hash(options)
    actor = Actor.from_shell()
    imported_at = report.started_at

    def row_of(record: Any) -> UserRow:
        return user_row(
            record,
            region=options.region,
            unusable_password_hash=unusable,
            staff_roles=options.staff_roles,
            imported_at=imported_at,
        )

    # Pass 1: every account's key, then the decisions.
    keys: list[AccountKey] = []
    async for rows in source.batches("users", USER_COLUMNS, options.batch_size):
        for record in rows:
            row = row_of(record)
            keys.append(
                AccountKey(
                    id=record["id"],
                    raw_phone=row.raw_phone,
                    phone=row.phone,
                    email_key=row.email_key,
                    created_at=row.values["created_at"] if record["created_at"] is not None else None,
                    last_activity=row.values["last_activity"],
                    has_pin=row.has_pin,
                )
            )
        progress("users: checking", len(keys), total)
    existing, ours = await _target_accounts(target)
    plan = plan_accounts(keys, existing, policy=options.policy, resolutions=options.resolutions)
    report.plan = plan
    max_source_id = max((key.id for key in keys), default=0)
    del keys
    if not options.dry_run:
        # First of all: registrations during and after the import get ids above every imported one.
        await _bump_user_ids(target, max_source_id)

    # Pass 2: the rows, with the decisions applied, written batch by batch.
    done = 0
    async for rows in source.batches("users", USER_COLUMNS, options.batch_size):
        batch: list[UserRow] = []
        for record in rows:
            row = row_of(record)
            report.users_read += 1
            user_id = record["id"]
            if user_id in plan.skipped:
                reason, detail = plan.skipped[user_id]
                report.not_imported_account(user_id, reason, detail)
                continue
            if row.refusal is not None:
                # Decided after the plan, which it took part in: a rerun that imports it decides the same.
                report.not_imported_account(user_id, *row.refusal)
                continue
            _apply_plan(row, plan, user_id)
            _note(report, row)
            if user_id in ours:
                report.users_already_imported += 1
            else:
                batch.append(row)
        if batch and not options.dry_run:
            await _write_users(target, batch, ours, report, actor)
        elif batch:
            report.users_inserted += len(batch)
        done += len(rows)
        progress("users", done, total)
    report.next_user_id = await _next_user_id(target, max_source_id, options.dry_run)


def _apply_plan(row: UserRow, plan: Plan, user_id: int) -> None:
    if user_id in plan.unlinked:
        row.notes.append(Note(user_id, "phone_number", "phone_collision", row.raw_phone, None))
        row.values["phone_number"] = None
    if user_id in plan.email_cleared:
        row.notes.append(Note(user_id, "email", "email_collision", row.values["email"], None))
        row.values["email"] = None


def _note(report: Report, row: UserRow) -> None:
    report.notes.extend(row.notes)
    values = row.values
    if row.ussd_created:
        report.ussd_created.append(values["id"])
    if row.staff:
        report.staff.append(
            {
                "id": values["id"],
                "user_type": values["user_type"],
                "role": values["role"],
                "granted": row.granted,
                "phone_number": values["phone_number"],
                "credentials": "not_imported" if row.granted is not None else "imported",
            }
        )
    if values["phone_number"] is None and values["account_type"] == FAMILY_MANAGED and not row.raw_phone:
        report.family_managed_without_phone += 1


async def _target_accounts(target: asyncpg.Connection) -> tuple[list[Existing], set[int]]:
    """The target's accounts that this import did not write, and the ids of those it did."""
    existing: list[Existing] = []
    ours: set[int] = set()
    async with target.transaction(isolation="repeatable_read", readonly=True):
        cursor = target.cursor("SELECT id, phone_number, lower(email) AS email_key, source FROM users")
        async for record in cursor:
            if record["source"] == "flask":
                ours.add(record["id"])
            else:
                existing.append(Existing(record["id"], record["phone_number"], record["email_key"]))
    return existing, ours


async def _sequence(target: asyncpg.Connection) -> str:
    name: str = await target.fetchval("SELECT pg_get_serial_sequence('users', 'id')")
    return name


async def _bump_user_ids(target: asyncpg.Connection, floor: int) -> None:
    """Never lowers the sequence: it ends at the highest of its value, every id stored, and ``floor``."""
    sequence = await _sequence(target)
    await target.execute(
        f"SELECT setval($1::regclass, GREATEST($2::bigint, (SELECT COALESCE(max(id), 0) FROM users),"  # noqa: S608
        f" (SELECT last_value FROM {sequence})))",
        sequence,
        max(floor, 1),
    )


async def _next_user_id(target: asyncpg.Connection, floor: int, dry_run: bool) -> int:
    sequence = await _sequence(target)
    last: int = await target.fetchval(f"SELECT last_value FROM {sequence}")  # noqa: S608 (catalogue name)
    return max(last, floor) + 1 if dry_run else last + 1


async def _write_users(
    target: asyncpg.Connection, batch: list[UserRow], ours: set[int], report: Report, actor: Actor
) -> None:
    ids = [row.values["id"] for row in batch]
    columns = [[row.values[name] for row in batch] for name, _ in USER_INSERT_COLUMNS]
    try:
        async with target.transaction():
            inserted = [record["id"] for record in await target.fetch(INSERT_USERS, *columns)]
            await accounts_imported(target, inserted)
            await _record_grants(target, [row for row in batch if row.granted], set(inserted), actor)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as exc:
        raise ImportFailed(FailedBatch("users", ids[0], ids[-1], ids, _describe(exc))) from exc
    report.users_inserted += len(inserted)
    missing = set(ids) - set(inserted)
    if missing:
        # Another run of this import got there first, or an account took the id since the check.
        for record in await target.fetch("SELECT id, source FROM users WHERE id = ANY($1::int8[])", list(missing)):
            if record["source"] == "flask":
                report.users_already_imported += 1
                ours.add(record["id"])
            else:
                report.not_imported_account(record["id"], "id_taken", "the id was taken during the import")


async def _record_grants(target: asyncpg.Connection, granted: list[UserRow], inserted: set[int], actor: Actor) -> None:
    """One ``grant_role`` entry per staff account written, as ``users create-admin --promote`` writes:
    the security team's record of who was given authority, and that no credential came with it."""
    for row in granted:
        if row.values["id"] not in inserted:
            continue
        filters = {
            "user_id": row.values["id"],
            "role": row.values["role"],
            "granted": row.granted,
            "user_type": row.values["user_type"],
            "previous_role": None,
            "sessions_revoked": 0,
            "password_set": False,
            "source": "legacy_import",
        }
        await record_query(target, actor, "grant_role", filters)


def _describe(exc: BaseException) -> str:
    detail = getattr(exc, "detail", None)
    return f"{type(exc).__name__}: {exc}" + (f" ({detail})" if detail else "")


# ---- history ------------------------------------------------------------------------------------


async def _import_history(
    source: Source, target: asyncpg.Connection, options: ImportOptions, report: Report, progress: Progress
) -> None:
    total = await source.count("login_attempts")
    stats = HistoryStats()
    report.history = stats
    # The next batch is read and converted while the previous one is written.
    queue: asyncio.Queue[tuple[list[int], list[tuple[Any, ...]]] | Exception | None] = asyncio.Queue(maxsize=2)

    async def produce() -> None:
        try:
            async for rows in source.batches("login_attempts", ATTEMPT_COLUMNS, options.batch_size):
                records = history_records(rows, options.region, stats)
                await queue.put(([row[0] for row in rows], records))
        except Exception as exc:  # reading failed: the writer raises it after the batches before it
            await queue.put(exc)
            return
        await queue.put(None)

    producer = asyncio.create_task(produce())
    try:
        done = 0
        while (item := await queue.get()) is not None:
            if isinstance(item, Exception):
                raise item
            ids, records = item
            if not options.dry_run:
                inserted = await _write_history(target, ids, records)
                report.history_inserted += inserted
                report.history_already_present += len(records) - inserted
            done += len(records)
            progress("history", done, total)
        await producer
    finally:
        if not producer.done():
            producer.cancel()


async def _write_history(target: asyncpg.Connection, ids: list[int], records: list[tuple[Any, ...]]) -> int:
    """One batch, atomically, counted into the hourly rollups in the same transaction: a plain COPY
    when none of it is stored yet (the common case), else the same rows through
    ``INSERT ... ON CONFLICT (event_id, created_at) DO NOTHING`` (a rerun or a resume)."""
    created, success, reason = (HISTORY_COLUMNS.index(name) for name in ("created_at", "success", "reason"))
    try:
        async with target.transaction():
            try:
                async with target.transaction():  # a savepoint: a redelivered batch falls back below
                    await target.copy_records_to_table("login_attempts", records=records, columns=HISTORY_COLUMNS)
                new = [(r[created], r[success], r[reason], LEGACY_CHANNEL) for r in records]
            except asyncpg.UniqueViolationError as exc:
                if not is_event_key(exc.constraint_name):
                    raise
                new = [tuple(row) for row in await target.fetch(INSERT_HISTORY, *zip(*records, strict=True))]
            await add_rows_to_rollups(target, new)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as exc:
        raise ImportFailed(FailedBatch("login_attempts", ids[0], ids[-1], ids, _describe(exc))) from exc
    return len(new)
