"""The one reader of the history's text parameters: the API's query parameters and the CLI's options.

Every value goes through :meth:`Params.text` first, which refuses what Postgres or the UTF-8 codec
would otherwise refuse later as a 500 (a NUL byte, a lone surrogate) and anything far longer than a
real value. The typed readers then hold each kind to the range its column can hold: whole numbers
of ASCII digits that fit a BIGINT, ``true``/``false``, ISO-8601 times, addresses and CIDR networks,
one of a fixed list. A problem becomes a field error; the caller raises them all at once.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from collections.abc import Collection, Mapping

from app.core.errors import FieldErrors

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

INT64_MAX = 2**63 - 1  # BIGINT, the type of every id
MAX_TEXT_LENGTH = 256
# ASCII digits only: int() also takes "1_000", " +7 " and digits of every script ("٣").
DIGITS = re.compile(r"[0-9]+")
UTC = datetime.UTC
# asyncpg sends datetime.min and datetime.max as -infinity and infinity; a day inside them, "24 hours
# before" and the like stay ordinary times (a summary's buckets from -infinity never end).
FIRST_TIME = datetime.datetime.min.replace(tzinfo=UTC) + datetime.timedelta(days=1)
LAST_TIME = datetime.datetime.max.replace(tzinfo=UTC) - datetime.timedelta(days=1)

TIME_MESSAGE = "Enter an ISO-8601 date or time, e.g. 2026-11-30 or 2026-11-30T14:00:00Z."
NETWORK_MESSAGE = "Enter an IP address or a network in CIDR form, e.g. 41.186.0.0/16."


def parse_timestamp(value: str) -> datetime.datetime:
    """ISO-8601 date or date-time; without an offset it is UTC. ValueError when it is neither
    (OverflowError when the offset moves it out of datetime's range)."""
    text = value.strip()
    if text.endswith(("z", "Z")):
        text = text[:-1] + "+00:00"
    moment = datetime.datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise ValueError(value)


class Params:
    """Text values by name (``None`` or blank is absent), read into typed values or field errors."""

    def __init__(self, values: Mapping[str, str | None], errors: FieldErrors | None = None) -> None:
        self.values = values
        self.errors = errors if errors is not None else FieldErrors()

    def raise_if_any(self) -> None:
        self.errors.raise_if_any()

    def text(self, name: str, *, max_length: int = MAX_TEXT_LENGTH, strip: bool = True) -> str | None:
        """The value, or ``None`` when it is absent, blank or refused (then with a field error)."""
        value = self.values.get(name)
        if value is None or not value.strip():
            return None
        if "\x00" in value:
            self.errors.add(name, "Remove the NUL character: no recorded value contains one.")
            return None
        if len(value) > max_length:
            self.errors.add(name, f"Enter at most {max_length:,} characters.")
            return None
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate
            self.errors.add(name, "This value is not valid text.")
            return None
        return value.strip() if strip else value

    def whole_number(
        self, name: str, *, minimum: int = 1, maximum: int = INT64_MAX, message: str | None = None
    ) -> int | None:
        if (text := self.text(name)) is None:
            return None
        number = int(text) if DIGITS.fullmatch(text) and len(text) <= len(str(INT64_MAX)) else None
        if number is None or not minimum <= number <= maximum:
            self.errors.add(name, message or f"Enter a whole number from {minimum:,} to {maximum:,}.")
            return None
        return number

    def boolean(self, name: str) -> bool | None:
        if (text := self.text(name)) is None:
            return None
        try:
            return parse_bool(text)
        except ValueError:
            self.errors.add(name, "Enter true or false.")
            return None

    def timestamp(self, name: str) -> datetime.datetime | None:
        if (text := self.text(name)) is None:
            return None
        try:
            moment = parse_timestamp(text)
        except (ValueError, OverflowError):
            self.errors.add(name, TIME_MESSAGE)
            return None
        if not FIRST_TIME <= moment <= LAST_TIME:
            self.errors.add(
                name, f"Enter a time from {FIRST_TIME.date().isoformat()} to {LAST_TIME.date().isoformat()}."
            )
            return None
        return moment

    def network(self, name: str) -> IPNetwork | None:
        """An address (a one-address network) or a CIDR network; host bits are dropped."""
        if (text := self.text(name)) is None:
            return None
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError:
            network = None
        if network is None or (isinstance(network, ipaddress.IPv6Network) and network.network_address.scope_id):
            self.errors.add(name, NETWORK_MESSAGE)  # a scoped address (fe80::1%eth0) is never recorded
            return None
        return network

    def choice(self, name: str, options: Collection[str], message: str) -> str | None:
        """One of ``options``, case-insensitive."""
        if (text := self.text(name)) is None:
            return None
        lowered = text.lower()
        if lowered not in options:
            self.errors.add(name, message)
            return None
        return lowered

    def choices(
        self, name: str, options: Collection[str], *, max_length: int = MAX_TEXT_LENGTH
    ) -> tuple[str, ...] | None:
        """Several of ``options``, separated by commas, each once, in the order given."""
        if (text := self.text(name, max_length=max_length)) is None:
            return None
        chosen = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
        unknown = [item for item in chosen if item not in options]
        if unknown or not chosen:
            shown = ", ".join(item if item.isprintable() else repr(item) for item in unknown)
            self.errors.add(name, f"Unknown {name} {shown}. Choose from: {', '.join(options)}.")
            return None
        return chosen
