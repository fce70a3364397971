"""``ladys-essence loadtest``: attack a running server and say whether its limits held.

An asyncio driver on httpx rather than locust: the scenarios need exact bookkeeping per simulated
client and per phone number (which answers came back, which credentials were verified), a verdict
at the end, and no extra runtime; one process of asyncio drives thousands of concurrent requests
on loopback, which is as much as one 2-core machine can answer anyway.
"""

SCENARIOS = ("brute-force", "spray", "stuffing", "mixed", "ussd")
