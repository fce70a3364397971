"""The constraints the server applies to the login and register bodies, stated for the OpenAPI document.

The wire structs stay deliberately loose (``str | None``) so that a request with several bad fields
hears about every one of them at once from :mod:`app.accounts.forms`. The constraints therefore go
in ``msgspec.Meta(extra_json_schema={"extra": ...})``, which Litestar copies into the document and
msgspec never enforces: generated clients and fuzzers see the contract, and the field-error
collector still does the judging. Values come from the rules' own constants. Which fields are
required is each struct's ``required_fields`` (app/core/openapi.py writes it into the document).
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from app.accounts.names import NAME_MAX_LENGTH
from app.credentials.passwords import PASSWORD_MAX_LENGTH, PASSWORD_MIN_LENGTH

PHONE_MAX_LENGTH = 32  # app.core.phones refuses longer text before parsing
EMAIL_MAX_LENGTH = 254
USER_TYPES = ("parent", "adolescent")  # app.accounts.forms.SELF_REGISTERED_USER_TYPES


def documented(description: str, **schema: Any) -> msgspec.Meta:
    return msgspec.Meta(description=description, extra_json_schema={"extra": schema})


NAME_DOC = (
    f"The person's name, at most {NAME_MAX_LENGTH} characters once runs of whitespace are collapsed; "
    "control, format and private-use characters are refused (zero-width joiners and direction marks "
    "excepted). Older clients may send first_name (and last_name) instead."
)
PHONE_DOC = (
    "A phone number, with + and country code or in the national form of DEFAULT_PHONE_REGION "
    "(0788123456 → +250788123456). Registration needs a number valid for its region."
)

Name = Annotated[str | None, documented(NAME_DOC, max_length=NAME_MAX_LENGTH)]
NamePart = Annotated[
    str | None, documented("Joined with the other part into name; same rules.", max_length=NAME_MAX_LENGTH)
]
Phone = Annotated[
    str | None,
    documented(PHONE_DOC, min_length=1, max_length=PHONE_MAX_LENGTH, pattern=r"^\s*\+?[0-9][0-9 ().\-]*\s*$"),
]
NewPassword = Annotated[
    str | None,
    documented(
        f"{PASSWORD_MIN_LENGTH}-{PASSWORD_MAX_LENGTH} characters, not a common password, not built from "
        "the phone number or the name.",
        min_length=PASSWORD_MIN_LENGTH,
        max_length=PASSWORD_MAX_LENGTH,
    ),
]
Password = Annotated[str | None, documented("The account's password. Exactly one of password and pin.", min_length=1)]
_PIN_RULES = {"pattern": r"^[0-9]{4}$", "minimum": 1000, "maximum": 9999}  # an integer PIN has no leading zero
NewPin = Annotated[
    str | int | None,
    documented(
        "Optional PIN for PIN sign-in: exactly 4 digits, not one repeated digit, not a run such as 1234, "
        "not a common PIN.",
        **_PIN_RULES,
    ),
]
Pin = Annotated[
    str | int | None, documented("The account's 4-digit PIN. Exactly one of password and pin.", **_PIN_RULES)
]
UserType = Annotated[str | None, documented("Who signs up (default adolescent).", enum=[*USER_TYPES, None])]
Email = Annotated[str | None, documented("Optional email address.", max_length=EMAIL_MAX_LENGTH, format="email")]
DateOfBirth = Annotated[
    str | None, documented("Optional, YYYY-MM-DD, not in the future, not before 1900.", format="date")
]
