"""The log reader's own thread: poll a source, count its lines, hand out snapshots.

The daemon's probes run on the hub's thread; this thread only polls its source (a file or the
journal) every `interval_seconds`, or again at once while there is a backlog, and never
touches the probes' state. Another thread reads the counts and the health through
`snapshot()`, which copies them under a lock held only for that copy and for merging one poll's counts.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from smtpmon.maillog.events import LogEvent, LogParser, Tally
from smtpmon.maillog.health import ReaderHealth


class LogSource(Protocol):
    """A followed log: FileFollower or JournalFollower."""

    def poll(self, parser: LogParser, tally: Tally) -> int: ...

    def health(self) -> ReaderHealth: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ReaderSnapshot:
    counts: Mapping[LogEvent, int]
    health: ReaderHealth


class LogReader:
    """Runs `source.poll` on a daemon thread until stop()."""

    def __init__(self, source: LogSource, parser: LogParser, *, interval_seconds: float = 1.0):
        self._source = source
        self._parser = parser
        self._interval = interval_seconds
        self._tally = Tally()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="smtpmon-maillog", daemon=True)
        self._health = source.health()

    def start(self) -> LogReader:
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
            return ReaderSnapshot(counts=dict(self._tally.counts), health=self._health)

    def _run(self) -> None:
        while not self._stop.is_set():
            batch = Tally()  # counted outside the lock, merged under it
            handled = self._source.poll(self._parser, batch)
            health = self._source.health()
            with self._lock:
                for event, count in batch.counts.items():
                    self._tally.add(event, count)
                self._health = health
            if handled == 0 or health.caught_up:
                self._stop.wait(self._interval)
