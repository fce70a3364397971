"""The login and register bodies' documented constraints are the ones the server applies (issue 17, item 18).

The fuzzer found the schemas looser than the API: no lengths, patterns or enums. Now the document
states them; these tests derive a violation from each documented constraint and check that the
server refuses exactly those fields, all of them in one answer (the loose wire types still let the
field-error collector report every problem at once).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.adversarial.test_schemathesis import DOCUMENT
from tests.helpers import GOOD_PIN, STRONG_PASSWORD, new_phone


def properties(component: str) -> dict[str, dict[str, Any]]:
    props: dict[str, dict[str, Any]] = DOCUMENT["components"]["schemas"][component]["properties"]
    return props


def violation(rules: dict[str, Any]) -> Any:
    """A value that breaks the first constraint the document states for a field."""
    if "enum" in rules:
        return "x-not-in-the-enum"
    if "minLength" in rules and rules["minLength"] > 1:
        return "a" * (rules["minLength"] - 1)
    if "maxLength" in rules:
        return "7" * (rules["maxLength"] + 1)
    if "pattern" in rules:
        return "x"
    if rules.get("format") == "date":
        return "31/12/2000"
    raise AssertionError(f"no constraint documented: {rules}")


CONSTRAINED = {
    "RegisterRequest": ("name", "first_name", "phone_number", "password", "user_type", "pin", "email"),
    "LoginRequest": ("phone_number", "pin"),
}


@pytest.mark.parametrize("component", list(CONSTRAINED))
def test_the_document_states_the_constraints(component: str) -> None:
    props = properties(component)
    for field in CONSTRAINED[component]:
        rules = props[field]
        assert rules.get("description"), field
        assert {"minLength", "maxLength", "pattern", "enum"} & rules.keys(), (component, field, rules)


async def test_register_refuses_every_documented_violation_at_once(client: Any) -> None:
    props = properties("RegisterRequest")
    fields = ("name", "phone_number", "password", "user_type", "pin", "email", "date_of_birth")
    body = {field: violation(props[field]) for field in fields}
    response = await client.post("/api/auth/register", json=body)
    assert response.status_code == 400, response.text
    assert {error["field"] for error in response.json()["errors"]} == set(fields)


@pytest.mark.parametrize("field", ["name", "phone_number", "password", "user_type", "pin", "email", "date_of_birth"])
async def test_register_refuses_each_documented_violation(client: Any, field: str) -> None:
    body = {"name": "Aline Uwase", "phone_number": new_phone(), "password": STRONG_PASSWORD, "pin": GOOD_PIN}
    body[field] = violation(properties("RegisterRequest")[field])
    response = await client.post("/api/auth/register", json=body)
    assert response.status_code == 400, response.text
    assert [error["field"] for error in response.json()["errors"]] == [field]


async def test_login_refuses_documented_violations_as_field_errors(client: Any) -> None:
    """A PIN that breaks its pattern can never sign in, so it is a failed sign-in (401), not a field error."""
    props = properties("LoginRequest")
    body = {"phone_number": violation(props["phone_number"]), "password": STRONG_PASSWORD}
    response = await client.post("/api/auth/login", json=body)
    assert response.status_code == 400, response.text
    assert [error["field"] for error in response.json()["errors"]] == ["phone_number"]
    both = {"phone_number": new_phone(), "password": STRONG_PASSWORD, "pin": GOOD_PIN}  # "exactly one of"
    assert (await client.post("/api/auth/login", json=both)).status_code == 400
