"""The SQL of a history read: WHERE conditions for the filters, and the keyset-paged page query.

Column names are constants and values always travel as bind parameters. Each index of
``login_attempts`` ends in ``(created_at, id)``, which makes a filtered page one backward index scan
that stops after ``limit`` rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from app.audit.history.filters import AttemptFilters, PageRequest


@dataclass
class SqlParams:
    """Bind parameters in order: ``params.add(value)`` returns its ``$n`` placeholder."""

    values: list[Any] = field(default_factory=list)

    def add(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


def filter_conditions(filters: AttemptFilters, params: SqlParams) -> list[str]:
    """WHERE conditions for ``filters``; column names are constants, values are parameters."""
    conditions: list[str] = []
    if filters.phone_number is not None:
        conditions.append(f"phone_number = {params.add(filters.phone_number)}")
    if filters.ip is not None:
        network = filters.ip
        if network.num_addresses == 1:
            # An equality: the (ip_address, created_at, id) index then gives the rows in page order.
            conditions.append(f"ip_address = {params.add(network.network_address)}::inet")
        else:
            # Postgres turns ``<<=`` with a known network into a range on the btree (custom plans).
            conditions.append(f"ip_address <<= {params.add(network)}::inet")
    if filters.success is not None:
        conditions.append("success" if filters.success else "NOT success")
    if filters.reasons is not None:
        if len(filters.reasons) == 1:
            conditions.append(f"reason = {params.add(filters.reasons[0])}")
        else:
            conditions.append(f"reason = ANY({params.add(list(filters.reasons))}::text[])")
    if filters.auth_method is not None:
        conditions.append(f"auth_method = {params.add(filters.auth_method)}")
    if filters.channel is not None:
        conditions.append(f"channel = {params.add(filters.channel)}")
    if filters.user_id is not None:
        conditions.append(f"user_id = {params.add(filters.user_id)}")
    if filters.since is not None:
        conditions.append(f"created_at >= {params.add(filters.since)}")
    if filters.until is not None:
        conditions.append(f"created_at < {params.add(filters.until)}")
    return conditions


def where(conditions: list[str]) -> str:
    return "WHERE " + "\n    AND ".join(conditions) if conditions else ""


NEWEST_FIRST = "ORDER BY created_at DESC, id DESC"
ATTEMPT_COLUMNS = (
    "id, event_id, created_at, phone_number, user_id, success, auth_method, reason, "
    "host(ip_address) AS ip_address, user_agent, request_id, channel, session_id, service_name"
)


def page_sql(request: PageRequest) -> tuple[str, list[Any]]:
    """One page plus one row, whose presence says whether there is a next page.

    The page's keys are chosen first and its rows read second (a deferred join): choosing needs only
    ``(created_at, id)`` and the filtered column, which an index holds, so a CIDR filter over tens of
    thousands of rows sorts index entries instead of reading every matching row from the table.
    """
    params = SqlParams()
    conditions = filter_conditions(request.filters, params)
    if request.cursor is not None:
        t, i = params.add(request.cursor.created_at), params.add(request.cursor.i)
        conditions.append(f"(created_at, id) < ({t}, {i})")
    # Joined back on (created_at, id), which the (created_at, id) index of every partition holds
    # (ids alone have no index on the partitioned table); created_at prunes each lookup to its partition.
    sql = f"""SELECT {ATTEMPT_COLUMNS}
FROM (
    SELECT created_at, id FROM login_attempts
    {where(conditions)}
    {NEWEST_FIRST}
    LIMIT {params.add(request.limit + 1)}) AS page
JOIN login_attempts USING (created_at, id)
{NEWEST_FIRST}"""  # noqa: S608 (column names are constants, values are parameters)
    return sql, params.values
