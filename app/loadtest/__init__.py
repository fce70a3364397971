"""``ladys-essence loadtest``: attack a running server and say whether its limits held.

Three parts that do not depend on each other's traffic: ``scenarios.py`` (what to send, one table of
scenarios), ``verdict.py`` (the judgement, read from the audit trail), and two generators that send
the scenarios: ``runner.py`` (the built-in one-command driver) and ``locustfile.py`` (Locust, for a
web UI, reports, and many machines). docs/loadtest.md says how to run them.
"""

from pathlib import Path

from app.loadtest.scenarios import SCENARIOS as _SCENARIO_TABLE

SCENARIOS = tuple(_SCENARIO_TABLE)


def locustfile_path() -> Path:
    """The shipped locustfile, for ``locust -f``."""
    return Path(__file__).with_name("locustfile.py")
