"""The JSON Schema (draft 2020-12) of each account event type, one file per type, written by hand.

Each describes a whole stream entry's ``event`` (the envelope and the type's ``data``, also its form
after an erasure). ``GET /api/events/schemas/{type}`` serves them; docs/account-events.md points
consumers here. The tests validate every event the service emits against these files.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent


@functools.cache
def event_schemas() -> dict[str, dict[str, Any]]:
    """Event type -> its schema."""
    return {path.name.removesuffix(".json"): json.loads(path.read_text()) for path in sorted(HERE.glob("*.json"))}
