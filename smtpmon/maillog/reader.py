"""The log reader's own thread: poll a source, count its lines, hand out snapshots.

The daemon's probes run on the hub's thread; this thread only polls its source (a file or the
journal) every `interval_seconds`, or again at once while there is a backlog, and never
touches the probes' state. Another thread reads the counts and the health through
`snapshot()`, which copies them under a lock held only for that copy and for merging one poll's counts.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from smtpmon.logs import get_logger
from smtpmon.maillog.events import LogEvent, LogParser, Tally
from smtpmon.maillog.health import INTERNAL_ERROR, ReaderHealth

log = get_logger("maillog")


class LogSource(Protocol):
    """A followed log: FileFollower or JournalFollower."""

    def poll(self, parser: LogParser, tally: Tally) -> int: ...

    def health(self) -> ReaderHealth: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ReaderSnapshot:
    counts: Mapping[LogEvent, int]
    health: ReaderHealth
    polled_at: float | None = None  # Unix time the last poll ended: a stuck reader shows here


class LogReader:
    """Runs `source.poll` on a daemon thread until stop().

    `on_health` is called (on the reader's thread, and once in start()) with the health after every poll (the
    daemon logs condition changes from it). A poll that raises (a bug: sources and parsers
    never raise on bad input) is logged, counted as `internal_error` and retried at the next
    interval: the thread never dies while the daemon runs.
    """

    def __init__(self, source: LogSource, parser: LogParser, *, interval_seconds: float = 1.0,
                 backlog_pause_seconds: float = 0.0,
                 on_health: Callable[[ReaderHealth], None] | None = None):
        self._source = source
        self._parser = parser
        self._interval = interval_seconds
        self._backlog_pause = backlog_pause_seconds
        self._on_health = on_health
        self._internal_errors = 0
        self._failing = False
        self._backlog = False  # the last poll read lines and has not caught up: poll again
        self._polled_at: float | None = None
        self._tally = Tally()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="smtpmon-maillog", daemon=True)
        self._health = source.health()

    def start(self) -> LogReader:
        """Poll once on the caller's thread, then go on on the reader's own: when start()
        returns, where reading begins is fixed (the end of the file, or the saved position),
        so a line written after it is never missed."""
        self._poll_once()
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop polling, save the position and close the source."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._source.close()

    def snapshot(self) -> ReaderSnapshot:
        with self._lock:
            return ReaderSnapshot(counts=dict(self._tally.counts), health=self._health,
                                  polled_at=self._polled_at)

    def _run(self) -> None:
        # Again soon while there is a backlog (after `backlog_pause_seconds`, which lets other
        # threads take the interpreter between polls), else after the interval.
        while not self._stop.wait(self._backlog_pause if self._backlog else self._interval):
            self._poll_once()

    def _poll_once(self) -> None:
        batch = Tally()  # counted outside the lock, merged under it
        try:
            handled = self._source.poll(self._parser, batch)
            health = self._source.health()
            self._failing = False
        except Exception as error:  # noqa: BLE001 - see the class docstring
            handled = 0
            if not self._failing:
                self._internal_errors += 1
                log.exception("mail log reader failed; retrying", error=str(error))
            self._failing = True
            health = self._source.health()
        if self._internal_errors:
            errors = dict(health.errors)
            errors[INTERNAL_ERROR] = self._internal_errors
            health = dataclasses.replace(
                health, errors=errors,
                condition=INTERNAL_ERROR if self._failing else health.condition)
        with self._lock:
            for event, count in batch.counts.items():
                self._tally.add(event, count)
            self._health = health
            self._polled_at = time.time()
        self._backlog = handled > 0 and not health.caught_up
        if self._on_health is not None:
            self._on_health(health)
