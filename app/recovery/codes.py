"""One-time recovery codes, kept in Redis as a keyed digest: one outstanding code per number.

Why Redis and not a table: a code lives ten minutes and dies by itself (the key's expiry), it is
checked on every completion next to the number's budgets (same store, same hash slot), and losing
Redis loses nothing the person cannot ask for again. What must last (every code sent, every code
checked) is the audit trail, in Postgres.

The record is one hash per number, in the number's shard: ``d`` the digest
(:meth:`~app.credentials.passwords.Hasher.digest_code`, an HMAC under the pepper), ``c`` the channel
that carried it (``sms`` or ``ussd``), ``t`` the wrong tries so far. Issuing replaces the hash, so
the previous code dies; the typed code is compared with the digest in constant time in Python, and
the record is then consumed (or its tries counted) by a script that acts only if the digest is still
the one compared: of concurrent completions with one code, exactly one consumes it.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Literal

from app.core.redis import RedisClient
from app.core.redis_keys import KeySpace
from app.credentials.passwords import Hasher

CODE_DIGITS = 6

# KEYS[1] the record; ARGV: the digest that was compared. Deletes the record if it still holds it.
_CONSUME = """
if redis.call('HGET', KEYS[1], 'd') == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""

# KEYS[1] the record; ARGV: the digest compared, the tries allowed. Counts a wrong try against that
# code; the last allowed try deletes it. Returns the tries left (0: dead), or -1 when the code had
# already changed or gone.
_MISS = """
if redis.call('HGET', KEYS[1], 'd') ~= ARGV[1] then
  return -1
end
local tries = redis.call('HINCRBY', KEYS[1], 't', 1)
if tries >= tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[1])
  return 0
end
return tonumber(ARGV[2]) - tries
"""

# KEYS[1] the record; ARGV: digest, channel, ttl_ms. Replaces whatever code the number had.
_ISSUE = """
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'd', ARGV[1], 'c', ARGV[2], 't', 0)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

Channel = Literal["sms", "ussd"]
CheckResult = Literal["ok", "wrong", "dead", "none"]


@dataclass(frozen=True)
class Checked:
    result: CheckResult
    channel: Channel | None  # the channel that carried the code checked against, when there was one


def new_code() -> str:
    return f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"


def clean_code(typed: str) -> str:
    """What a person types: spaces and dashes are ignored (``123 456``, ``123-456``)."""
    return "".join(ch for ch in typed if ch not in " -")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class CodeStore:
    def __init__(self, redis: RedisClient, keys: KeySpace, hasher: Hasher, ttl_seconds: int, max_tries: int) -> None:
        self._redis = redis
        self._keys = keys
        self._hasher = hasher
        self._ttl_ms = ttl_seconds * 1000
        self._max_tries = max_tries
        self._issue = redis.register_script(_ISSUE)
        self._consume = redis.register_script(_CONSUME)
        self._miss = redis.register_script(_MISS)

    def _key(self, phone_number: str) -> str:
        return self._keys.phone(phone_number, "rcode")

    async def issue(self, phone_number: str, channel: Channel) -> tuple[str, str]:
        """A new code for the number (the previous one dies): (code, its digest, to withdraw it)."""
        code = new_code()
        digest = self._hasher.digest_code(code)
        await self._issue(keys=[self._key(phone_number)], args=[digest, channel, self._ttl_ms])
        return code, digest

    async def withdraw(self, phone_number: str, digest: str) -> None:
        """Delete the code if it is still this one (the SMS carrying it never left)."""
        await self._consume(keys=[self._key(phone_number)], args=[digest])

    async def check(self, phone_number: str, typed: str) -> Checked:
        """Consume the code if ``typed`` is it; else count a wrong try (the last one kills it)."""
        key = self._key(phone_number)
        record = {_text(name): _text(value) for name, value in (await self._redis.hgetall(key)).items()}
        stored = record.get("d")
        channel_raw = record.get("c")
        channel: Channel | None = "sms" if channel_raw == "sms" else "ussd" if channel_raw == "ussd" else None
        # The comparison runs whether or not a code is outstanding, at the same cost.
        matches = self._hasher.code_matches(stored or "-", clean_code(typed))
        if stored is None:
            return Checked("none", None)
        if matches:
            consumed = await self._consume(keys=[key], args=[stored])
            return Checked("ok" if int(consumed) else "none", channel)
        left = int(await self._miss(keys=[key], args=[stored, self._max_tries]))
        if left == 0:
            return Checked("dead", channel)
        return Checked("wrong" if left > 0 else "none", channel)
