"""The mail log reader as the daemon runs it: built from the `maillog:` settings, restarted
only when a reload changes them, and its conditions logged once each.

The reader polls on its own thread (smtpmon.maillog.reader); the probes' hub never waits for
it, and a scrape only copies its counts. A condition (file not found, permission denied, a
directory, journalctl failing) is logged when it begins and when it ends, not at every
retry; one that comes back within `REPEAT_LOG_SECONDS` of its last report (a flapping file)
is not logged again until that time has passed. Each beginning is still counted
(`smtpmon_maillog_reader_errors_total`).
"""

from __future__ import annotations

import threading
import time

from smtpmon.config.maillog import MaillogSettings
from smtpmon.exposition.maillog import render_maillog
from smtpmon.logs import get_logger
from smtpmon.maillog.follow import FileFollower
from smtpmon.maillog.health import ReaderHealth
from smtpmon.maillog.journal import JournalFollower
from smtpmon.maillog.postfix import PostfixParser
from smtpmon.maillog.reader import LogReader, LogSource, ReaderSnapshot

log = get_logger("maillog")

REPEAT_LOG_SECONDS = 300.0
READER_STOP_SECONDS = 5.0
# The reader shares the interpreter with the probes' hub: a poll holds it for as long as it
# parses, and every time the hub lets go of it for a system call the reader may keep it for
# a whole switch interval. Small polls with a pause between them keep the probes' schedule
# lag where it is without the reader (benchmarks/README.md, maillog_lag.py) and still catch
# up far faster than a mail host writes.
LINES_PER_POLL = 500
BACKLOG_PAUSE_SECONDS = 0.002


def build_source(settings: MaillogSettings, *, from_start: bool) -> LogSource:
    common = dict(state_file=settings.state_file, from_start=from_start,
                  max_lines_per_poll=LINES_PER_POLL,
                  catch_up_max_lines=settings.catch_up_max_lines,
                  catch_up_max_seconds=settings.catch_up_max_seconds)
    if settings.source == "journal":
        return JournalFollower(identifiers=settings.journal_identifiers, **common)
    return FileFollower(settings.path, **common)


class ConditionLog:
    """Logs a reader's condition changes and catch-up skips, once each (see the module)."""

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._condition: str | None = None
        self._last_logged: dict[str, float] = {}
        self._skipped_catch_ups = 0

    def __call__(self, health: ReaderHealth) -> None:
        if health.condition != self._condition:
            previous, self._condition = self._condition, health.condition
            now = self._clock()
            if health.condition is not None:
                last = self._last_logged.get(health.condition)
                if last is None or now - last >= REPEAT_LOG_SECONDS:
                    self._last_logged[health.condition] = now
                    log.warning("cannot read the mail log; retrying", source=health.source,
                                condition=health.condition, detail=health.condition_detail)
            elif previous is not None:
                log.info("reading the mail log again", source=health.source, after=previous)
        if health.skipped_catch_ups != self._skipped_catch_ups:
            self._skipped_catch_ups = health.skipped_catch_ups
            log.warning("catching up on the mail log hit its bound; skipped the rest",
                        source=health.source, skipped_bytes=health.skipped_bytes)


class MaillogService:
    """Owns the running LogReader (or none). Thread-safe: reloads and scrapes may overlap."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._settings: MaillogSettings | None = None
        self._reader: LogReader | None = None
        self._sources_read: set[tuple[str, str]] = set()  # (source, path) read in this process

    def apply(self, settings: MaillogSettings | None) -> None:
        """Start, stop or restart the reader for `settings`; nothing when they are unchanged
        (its counts go on). A restart saves the position first, so no line is counted twice."""
        with self._lock:
            if settings == self._settings:
                return
            old, self._reader = self._reader, None
            if old is not None:
                old.stop(READER_STOP_SECONDS)
            self._settings = settings
            if settings is None:
                if old is not None:
                    log.info("mail log reader stopped (no maillog section)")
                return
            parser = PostfixParser(settings.domains, settings.rbl_lists)
            # `from_start` is for the first start: a reader restarted by a reload goes on
            # from the saved position, or (without a state file) from the end, never again
            # from the log's beginning.
            source_key = (settings.source, settings.path)
            from_start = settings.from_start and source_key not in self._sources_read
            self._sources_read.add(source_key)
            self._reader = LogReader(build_source(settings, from_start=from_start), parser,
                                     interval_seconds=settings.poll_interval_seconds,
                                     backlog_pause_seconds=BACKLOG_PAUSE_SECONDS,
                                     on_health=ConditionLog()).start()
            log.info("mail log reader started", source=settings.source,
                     path=settings.path if settings.source == "file" else "journal",
                     state_file=settings.state_file or "", from_start=settings.from_start)

    def snapshot(self) -> ReaderSnapshot | None:
        reader = self._reader
        return reader.snapshot() if reader is not None else None

    def render(self) -> bytes:
        """The maillog families for /metrics; empty when no log is read."""
        snapshot = self.snapshot()
        return render_maillog(snapshot) if snapshot is not None else b""

    def stop(self) -> None:
        self.apply(None)
