"""Redis key names, laid out for Redis Cluster.

Every limiter key of one client (or one phone number) and the audit stream its events go to share
a hash tag ``{sN}``, with N = crc32(identity) mod ``REDIS_SHARDS``. So each script call touches keys
of one hash slot, and the audit events are spread over ``REDIS_SHARDS`` streams that the writer
reads together.
"""

from __future__ import annotations

import zlib

# The one field of an audit stream entry: the encoded login event (written by the limiter's scripts and
# the publisher, read by the audit writer).
STREAM_FIELD = "e"

# The bound on the audit streams (AUDIT_MAX_BACKLOG, see app/audit/pipeline/backlog.py): whatever
# appends an event checks its stream's length in the same call.
# KEYS[1] the stream; ARGV: its share of the bound, the field, the event. 1 if appended, 0 if full.
BOUNDED_APPEND = """
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('XADD', KEYS[1], '*', ARGV[2], ARGV[3])
return 1
"""


def stream_share(max_backlog: int, shards: int) -> int:
    """Entries one shard stream may hold: an equal share, so that all together stay within the bound."""
    return max(1, max_backlog // max(1, shards))


class KeySpace:
    def __init__(self, prefix: str, shards: int = 16) -> None:
        self.prefix = prefix
        self.shards = shards

    def shard_of(self, identity: str) -> int:
        return zlib.crc32(identity.encode()) % self.shards

    def _tagged(self, shard: int, rest: str) -> str:
        return f"{self.prefix}{{s{shard}}}:{rest}"

    # ---- audit -----------------------------------------------------------------------------------

    def audit_stream(self, shard: int) -> str:
        return self._tagged(shard, "audit")

    def audit_streams(self) -> list[str]:
        return [self.audit_stream(shard) for shard in range(self.shards)]

    @property
    def audit_dead_letter(self) -> str:
        return f"{self.prefix}audit:dead"

    # ---- account events ----------------------------------------------------------------------------

    @property
    def account_events(self) -> str:
        """The ``accounts`` stream the platform's consumer groups read (one key: one slot, in a cluster too)."""
        return f"{self.prefix}accounts"

    # ---- limiter ---------------------------------------------------------------------------------

    def client(self, client_key: str, budget: str) -> str:
        """Keys of one client's budget (``login``, ``register``), in the client's shard."""
        return self._tagged(self.shard_of(client_key), f"c:{budget}:{client_key}")

    def phone(self, phone_number: str, budget: str) -> str:
        """Keys of one phone number's budget (``password``, ``pin``), in the number's shard."""
        return self._tagged(self.shard_of(phone_number), f"p:{budget}:{phone_number}")
