"""Hostile query parameters on the security team's API, formula cells in its CSV export, and what
the export says it sends.

Every parameter the OpenAPI document lists for an audit route is attacked, so a parameter added
later is covered without touching this file. A refusal is a 400 ``validation_error`` naming the
parameter, never a 500.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
from typing import Any

import pytest

from app.audit.history.export import neutralise_formula
from tests.audit.history.support import BASE_TIME, Row, insert_rows, staff_headers

ATTEMPTS = "/api/audit/login-attempts"
EXPORT = "/api/audit/login-attempts/export"
SUMMARY = "/api/audit/summary"
QUERIES = "/api/audit/queries"
AUDIT_ROUTES = (ATTEMPTS, EXPORT, SUMMARY, QUERIES)


def query_parameters(app: Any, path: str) -> list[str]:
    """The query parameters the OpenAPI document promises for ``path``'s GET."""
    operation = app.openapi_schema.paths[path].get
    return [parameter.name for parameter in operation.parameters or [] if parameter.param_in == "query"]


def fields_named(response: Any) -> set[str]:
    """The fields of the service's 400 for parameters that need attention."""
    assert response.status_code == 400, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert body["code"] == "validation_error", body
    assert isinstance(body["message"], str) and body["message"]
    assert all(isinstance(error["message"], str) and error["message"] for error in body["errors"])
    return {error["field"] for error in body["errors"]}


def field_error(response: Any, field: str) -> None:
    assert field in fields_named(response), response.text[:300]


def ok_or_field_error(response: Any, fields: set[str]) -> None:
    if response.status_code != 200:
        named = fields_named(response)
        assert named and named <= fields, response.text[:300]


@pytest.fixture
async def admin(client: Any, db: Any) -> dict[str, str]:
    return await staff_headers(client, db, "admin")


def test_every_audit_route_lists_its_parameters(app):
    # The attacks below walk these lists: a route listing nothing would pass them without a try.
    filters = {"phone_number", "ip", "success", "reason", "auth_method", "user_id", "since", "until"}
    assert filters | {"cursor", "limit"} <= set(query_parameters(app, ATTEMPTS))
    assert filters | {"format"} <= set(query_parameters(app, EXPORT))
    assert filters | {"bucket", "top"} <= set(query_parameters(app, SUMMARY))
    assert {"user_id", "cursor", "limit"} <= set(query_parameters(app, QUERIES))


# ---- item 7: one validator for every parameter ---------------------------------------------------


@pytest.mark.parametrize("value", ["\x00", "0788\x00123456", "\x00" * 3])
async def test_nul_bytes_in_any_audit_parameter_are_a_field_error(app, client, admin, subtests, value):
    for path in AUDIT_ROUTES:
        for name in query_parameters(app, path):
            with subtests.test(path=path, parameter=name):
                field_error(await client.get(path, params={name: value}, headers=admin), name)


@pytest.mark.parametrize("encoded", ["%ff", "%ed%a0%80", "abc%c3"])
async def test_bytes_that_are_not_utf8_are_never_a_500(app, client, admin, subtests, encoded):
    for path in AUDIT_ROUTES:
        for name in query_parameters(app, path):
            with subtests.test(path=path, parameter=name):
                response = await client.get(f"{path}?{name}={encoded}", headers=admin)
                assert response.status_code in (200, 400), (response.status_code, response.text[:300])
                if response.status_code == 400:
                    field_error(response, name)


async def test_an_absurdly_long_value_is_a_field_error(app, client, admin, subtests):
    for path in AUDIT_ROUTES:
        for name in query_parameters(app, path):
            with subtests.test(path=path, parameter=name):
                field_error(await client.get(path, params={name: "7" * 5000}, headers=admin), name)


WHOLE_NUMBER_PARAMETERS = {
    ATTEMPTS: ("user_id", "limit"),
    EXPORT: ("user_id",),
    SUMMARY: ("user_id",),  # top: 0 is valid (no top lists); test_top_outside_0_to_100_is_a_field_error
    QUERIES: ("user_id", "limit"),
}
NOT_A_BIGINT = [
    "99999999999999999999",
    str(2**63),
    str(-(2**63) - 1),
    "-1",
    "0",
    "²",  # str.isdigit() says yes, int() says no
    "٣",  # an Arabic-Indic three: int() takes it
    "1_0",  # int() takes it too
    "0x10",
    "1e3",
    "1.0",
]


@pytest.mark.parametrize("value", NOT_A_BIGINT)
async def test_whole_numbers_outside_their_range_or_not_plain_digits_are_field_errors(client, admin, subtests, value):
    for path, names in WHOLE_NUMBER_PARAMETERS.items():
        for name in names:
            with subtests.test(path=path, parameter=name):
                field_error(await client.get(path, params={name: value}, headers=admin), name)


@pytest.mark.parametrize("value", [value for value in NOT_A_BIGINT if value != "0"] + ["101"])
async def test_top_outside_0_to_100_is_a_field_error(client, admin, value):
    field_error(await client.get(SUMMARY, params={"top": value}, headers=admin), "top")


async def test_the_largest_bigint_is_a_user_id_like_any_other(client, admin, subtests):
    for path in AUDIT_ROUTES:
        with subtests.test(path=path):
            response = await client.get(path, params={"user_id": str(2**63 - 1)}, headers=admin)
            assert response.status_code == 200, response.text[:300]


EDGE_TIMES = [
    "0001-01-01",
    "0001-01-01T00:00:00+01:00",
    "0001-01-01T12:00:00Z",
    "9999-12-31T23:59:59.999999",
    "9999-12-31T23:59:59-01:00",
    "2026-02-30",
    "2026-11-30T25:00",
    "+2026-11-30",
]


@pytest.mark.parametrize("value", EDGE_TIMES)
async def test_times_at_the_edges_of_the_calendar_are_answered_or_refused_by_field(client, admin, subtests, value):
    for path in (ATTEMPTS, EXPORT, SUMMARY):
        for name in ("since", "until"):
            with subtests.test(path=path, parameter=name):
                response = await client.get(path, params={name: value}, headers=admin)
                ok_or_field_error(response, {"since", "until", "bucket"})


@pytest.mark.parametrize("value", ["fe80::1%eth0", "1.2.3.4/33", "1.2.3.4/-1", "::/129", "1.2.3", "1.2.3.4 /8", "/8"])
async def test_malformed_networks_are_field_errors(client, admin, subtests, value):
    for path in (ATTEMPTS, EXPORT, SUMMARY):
        with subtests.test(path=path):
            ok_or_field_error(await client.get(path, params={"ip": value}, headers=admin), {"ip"})


@pytest.mark.parametrize("value", ["2", "truee", "on\x01", "ja"])
async def test_booleans_other_than_true_or_false_are_field_errors(client, admin, subtests, value):
    for path in (ATTEMPTS, EXPORT, SUMMARY):
        with subtests.test(path=path):
            field_error(await client.get(path, params={"success": value}, headers=admin), "success")


# ---- item 17: formula cells in the CSV export ------------------------------------------------------

FULLWIDTH = ("\uff1d", "\uff0b", "\uff0d", "\uff20")  # = + - @ as wide as a CJK character
FORMULA_STARTS = ("=", "+", "-", "@", *FULLWIDTH)
BLANKS = [" ", "  ", "\t", "\n", "\r\n", "\u00a0", "\u2003", "\u3000", " \u3000\t"]


def runs_as_formula(cell: str) -> bool:
    """What a spreadsheet may evaluate: a formula character after any leading whitespace; tab or CR first."""
    return cell.startswith(("\t", "\r")) or cell.lstrip().startswith(FORMULA_STARTS)


HOSTILE_CELLS = [
    *(blank + start + "1+2" for blank, start in itertools.product(["", *BLANKS], FORMULA_STARTS)),
    '\uff1dHYPERLINK("http://x")',
    " =cmd|' /C calc'!A0",
    # Harmless: left as they are.
    "okhttp/4.12.0",
    " plain",
    "a=1",
    "\u3000text",
    "'=already quoted",
]


async def test_csv_export_neutralises_formulas_behind_whitespace_and_in_fullwidth_forms(client, db):
    headers = await staff_headers(client, db, "security")
    rows = await insert_rows(
        db,
        [Row(user_agent=cell, request_id=cell, phone_number=cell[:20], created_at=BASE_TIME) for cell in HOSTILE_CELLS],
    )
    response = await client.get(EXPORT, headers=headers)
    assert response.status_code == 200, response.text
    by_id = {int(record["id"]): record for record in csv.DictReader(io.StringIO(response.text, newline=""))}
    assert len(by_id) == len(rows)
    for row in rows:
        for column in ("user_agent", "request_id", "phone_number"):
            original, cell = getattr(row, column), by_id[row.id][column]
            assert not runs_as_formula(cell), (column, original, cell)
            assert cell == ("'" + original if runs_as_formula(original) else original), (column, original)
            assert cell == neutralise_formula(original)  # the Python twin agrees with Postgres


# ---- item 18: the export's media types --------------------------------------------------------------


async def test_export_sends_one_charset(client, admin):
    response = await client.get(EXPORT, headers=admin)
    assert response.status_code == 200, response.text
    content_type = response.headers["content-type"]
    assert content_type.split(";")[0].strip() == "text/csv"
    assert content_type.lower().count("charset") == 1, content_type
    assert response.headers.get_list("content-type") == [content_type]
    ndjson = await client.get(EXPORT, params={"format": "ndjson"}, headers=admin)
    assert ndjson.headers["content-type"].split(";")[0].strip() == "application/x-ndjson"
    assert ndjson.headers["content-type"].lower().count("charset") <= 1


async def test_openapi_document_lists_the_export_media_types(client):
    response = await client.get("/schema/openapi.json")
    assert response.status_code == 200
    ok = json.loads(response.text)["paths"][EXPORT]["get"]["responses"]["200"]
    assert set(ok["content"]) == {"text/csv", "application/x-ndjson"}, ok
