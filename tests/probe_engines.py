"""The probe engine run both ways it runs in smtpmon: blocking on the caller's thread (the
command line, /probe) and as a session parked on a hub (the daemon's scheduler).

`ENGINES` maps each way's name to a function called like helpers.run_probe_at (test_probe.py and
test_faults.py run every case both ways); `call_on_engine` runs any function either way.
"""

from __future__ import annotations

import time

from helpers import run_probe_at

from smtpmon.net.hub import Hub
from smtpmon.smtp.module import Module
from smtpmon.smtp.results import ProbeResult

# Past the probe's own deadline, how long the hub may take to hand its result back.
HUB_GRACE_SECONDS = 5.0


def run_probe_on_hub(target: str, module: Module, **options) -> ProbeResult:
    """run_probe_at as the only session of a fresh hub, driven on this thread to its end."""
    return call_on_engine("hub", lambda hub: run_probe_at(target, module, hub=hub, **options),
                          module.timeout_seconds + HUB_GRACE_SECONDS)


ENGINES = {"thread": run_probe_at, "hub": run_probe_on_hub}


def call_on_engine(engine: str, function, seconds: float = 10.0):
    """function(hub) on a fresh hub's session ("hub"), or function(None) on this thread
    ("thread"); its value, or the exception it raised."""
    if engine == "thread":
        return function(None)
    hub = Hub()
    outcome: list = []

    def session() -> None:
        try:
            outcome.append((True, function(hub)))
        except BaseException as error:  # handed back to the test, pytest's own included
            outcome.append((False, error))

    try:
        hub.spawn(session)
        limit = time.monotonic() + seconds
        while hub.sessions and time.monotonic() < limit:
            hub.run_once(0.5)
    finally:
        hub.close()
    assert outcome, "the session on the hub did not end in time"
    returned, value = outcome[0]
    if not returned:
        raise value
    return value
