"""Follow the systemd journal's Postfix entries through `journalctl --output=json --follow`.

journalctl is the journal's own, well-kept reader (no C binding to build); it runs as a child
process whose output is read without blocking at each poll. Each entry's MESSAGE and
SYSLOG_IDENTIFIER go to the parser's `parse_message` (no syslog header to split), and its
`__CURSOR` is the position saved in the state file, so a restart resumes with
`--after-cursor`. With no saved cursor, reading starts at the end (`--lines=0`) unless
`from_start` (`--no-tail`). `journal_file` / `journal_directory` read a journal file or
directory instead of the system journal (`--file` / `--directory`).

Catching up (after a restart, or `from_start`) ends at the entry that was the newest when
journalctl started (asked once with `--lines=1`); it is bounded in entries and time like the
file's, and past the bound journalctl is started again at the journal's end.

If journalctl exits (a missing journal, no permission), the condition `journal_failed` is
set with its first line of complaint, and it is started again at a later poll.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import time
from collections.abc import Callable, Sequence

from smtpmon.maillog import position as saved_position
from smtpmon.maillog.events import MALFORMED, LogEvent, LogParser, Tally
from smtpmon.maillog.health import ReaderHealth

# The Postfix programs whose lines are about replies, and the master (start, stop, reload).
DEFAULT_IDENTIFIERS = ("postfix/smtpd", "postfix/postscreen", "postfix/cleanup", "postfix/smtp",
                       "postfix/lmtp", "postfix/qmgr", "postfix/master")

_TOO_LONG = LogEvent(MALFORMED, reason="too_long")
_NOT_JSON = LogEvent(MALFORMED, reason="not_json")
_RESTART_DELAY_SECONDS = 5.0
# journalctl still running this long after its start has opened the journal: a failure
# condition ends (it exits at once when it cannot).
_HEALTHY_AFTER_SECONDS = 2.0
_LAST_CURSOR_TIMEOUT_SECONDS = 10.0


class JournalFollower:
    def __init__(
        self,
        *,
        identifiers: Sequence[str] = DEFAULT_IDENTIFIERS,
        journal_file: str | None = None,
        journal_directory: str | None = None,
        state_file: str | None = None,
        from_start: bool = False,
        journalctl: str = "journalctl",
        max_line_bytes: int = 64 * 1024,
        max_lines_per_poll: int = 50_000,
        catch_up_max_lines: int = 5_000_000,
        catch_up_max_seconds: float = 120.0,
        save_interval_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._identifiers = tuple(identifiers)
        self._journal_file = journal_file
        self._journal_directory = journal_directory
        self.state_file = state_file
        self._from_start = from_start
        self._journalctl = journalctl
        self._max_line_bytes = max_line_bytes
        self._max_lines_per_poll = max_lines_per_poll
        self._catch_up_max_lines = catch_up_max_lines
        self._catch_up_max_seconds = catch_up_max_seconds
        self._save_interval = save_interval_seconds
        self._clock = clock

        self._process: subprocess.Popen[bytes] | None = None
        self._pending = b""
        self._discarding = False
        self._cursor: str | None = None
        self._saved_cursor: str | None = None
        self._last_save = float("-inf")
        self._next_start = float("-inf")
        self._started_once = False
        self._started_at = float("-inf")
        self._skip_to_end = False  # catch-up ran out: the next start begins at the end
        self._catching_up_until: float | None = None
        self._catch_up_lines = 0
        self._catch_up_target: str | None = None  # the newest entry's cursor when started

        self._lines = 0
        self._bytes = 0
        self._last_timestamp: float | None = None
        self._last_read_at: float | None = None
        self._skipped_catch_ups = 0
        self._errors: dict[str, int] = {}
        self._condition: str | None = None
        self._condition_detail: str | None = None
        self._caught_up = False

    # -- public -------------------------------------------------------------------------------
    def poll(self, parser: LogParser, tally: Tally) -> int:
        if self._process is None and not self._start():
            return 0
        assert self._process is not None and self._process.stdout is not None
        handled = 0
        fd = self._process.stdout.fileno()
        while handled < self._max_lines_per_poll:
            if self._catching_up_until is not None and (
                    self._catch_up_lines + handled >= self._catch_up_max_lines
                    or self._clock() >= self._catching_up_until):
                self._abandon_catch_up()
                break
            try:
                chunk = os.read(fd, 256 * 1024)
            except BlockingIOError:  # nothing more yet (the backlog's end is its last cursor)
                if self._catching_up_until is None:
                    self._caught_up = True
                if self._clock() - self._started_at > _HEALTHY_AFTER_SECONDS:
                    self._clear_failure()
                break
            except OSError as error:
                self._failed(error.strerror or str(error))
                break
            if not chunk:
                self._failed(self._complaint())
                break
            self._bytes += len(chunk)
            limit = (self._catch_up_max_lines - self._catch_up_lines - handled
                     if self._catching_up_until is not None else None)
            lines, within = self._lines_of(chunk, parser, tally, limit)
            handled += lines
            if not within:
                self._abandon_catch_up()
                break
        if self._catching_up_until is not None:
            self._catch_up_lines += handled
        self._lines += handled
        if handled:
            self._last_read_at = time.time()
            self._clear_failure()
        self._maybe_save()
        return handled

    def health(self) -> ReaderHealth:
        return ReaderHealth(
            source="journal" if self._journal_file is None and self._journal_directory is None
            else (self._journal_file or self._journal_directory or ""),
            lines_read=self._lines,
            bytes_read=self._bytes,
            bytes_behind=None,
            last_line_timestamp=self._last_timestamp,
            last_read_at=self._last_read_at,
            skipped_catch_ups=self._skipped_catch_ups,
            errors=dict(self._errors),
            condition=self._condition,
            condition_detail=self._condition_detail,
            caught_up=self._caught_up,
        )

    def close(self) -> None:
        self._maybe_save(force=True)
        self._stop_process()

    # -- the child ----------------------------------------------------------------------------
    def _source_arguments(self) -> list[str]:
        if self._journal_file is not None:
            return [f"--file={self._journal_file}"]
        if self._journal_directory is not None:
            return [f"--directory={self._journal_directory}"]
        return []

    def _matches(self) -> list[str]:
        return [f"SYSLOG_IDENTIFIER={identifier}" for identifier in self._identifiers]

    def _last_cursor(self) -> str | None:
        """The cursor of the newest matching entry now: where catching up ends."""
        try:
            run = subprocess.run(
                [self._journalctl, "--output=json", "--lines=1", "--no-pager",
                 "--output-fields=SYSLOG_IDENTIFIER", *self._source_arguments(), *self._matches()],
                stdin=subprocess.DEVNULL, capture_output=True, timeout=_LAST_CURSOR_TIMEOUT_SECONDS)
            lines = run.stdout.strip().splitlines()
            cursor = json.loads(lines[-1])["__CURSOR"] if lines else None
            return cursor if isinstance(cursor, str) else None
        except (OSError, subprocess.TimeoutExpired, ValueError, KeyError, TypeError):
            return None

    def _command(self) -> list[str]:
        command = [self._journalctl, "--output=json", "--follow", "--all", "--no-pager",
                   "--output-fields=MESSAGE,SYSLOG_IDENTIFIER", *self._source_arguments()]
        if self._cursor is not None and not self._skip_to_end:
            command.append(f"--after-cursor={self._cursor}")
            command.append("--no-tail")
        elif self._from_start and not self._started_once:
            command.append("--no-tail")
        else:
            command.append("--lines=0")
        return command + self._matches()

    def _start(self) -> bool:
        if self._clock() < self._next_start:
            return False
        if not self._started_once and self.state_file is not None:
            saved = saved_position.load(self.state_file)
            if isinstance(saved, saved_position.JournalPosition):
                self._cursor = self._saved_cursor = saved.cursor
        command = self._command()
        try:
            self._process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                close_fds=True)
        except OSError as error:
            self._condition_begins("journal_failed", error.strerror or str(error))
            self._next_start = self._clock() + _RESTART_DELAY_SECONDS
            return False
        assert self._process.stdout is not None
        fd = self._process.stdout.fileno()
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
        self._catch_up_target = None if "--lines=0" in command else self._last_cursor()
        if self._catch_up_target is not None and self._catch_up_target != self._cursor:
            self._catching_up_until = self._clock() + self._catch_up_max_seconds
            self._catch_up_lines = 0
            self._caught_up = False
        else:
            self._catching_up_until = None
            self._caught_up = True
        self._started_once = True
        self._started_at = self._clock()
        self._skip_to_end = False
        self._pending, self._discarding = b"", False
        return True

    def _clear_failure(self) -> None:
        if self._condition == "journal_failed":
            self._condition = self._condition_detail = None

    def _failed(self, detail: str) -> None:
        self._condition_begins("journal_failed", detail)
        self._stop_process()
        self._next_start = self._clock() + _RESTART_DELAY_SECONDS

    def _complaint(self) -> str:
        assert self._process is not None and self._process.stderr is not None
        try:
            self._process.wait(timeout=1)
            words = self._process.stderr.read(4096).decode("utf-8", "replace").strip()
        except (OSError, subprocess.TimeoutExpired):
            words = ""
        first = words.splitlines()[0] if words else ""
        return first or f"journalctl exited with status {self._process.returncode}"

    def _abandon_catch_up(self) -> None:
        """The backlog is larger than the bounds: skip it, start again at the journal's end."""
        self._skipped_catch_ups += 1
        self._skip_to_end = True
        self._catching_up_until = None
        self._caught_up = True
        self._stop_process()

    def _stop_process(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()

    # -- entries ------------------------------------------------------------------------------
    def _lines_of(self, chunk: bytes, parser: LogParser, tally: Tally,
                  limit: int | None) -> tuple[int, bool]:
        """Count the entries the chunk completes, at most `limit` of them; returns how many,
        and False when the limit stopped it (the rest is skipped with the backlog)."""
        data = self._pending + chunk if self._pending else chunk
        if self._discarding:
            newline = data.find(b"\n")
            data = b"" if newline < 0 else data[newline + 1:]
            self._discarding = newline < 0
        end = data.rfind(b"\n")
        handled = 0
        if end >= 0:
            for raw in data[:end].split(b"\n"):
                if limit is not None and handled >= limit:
                    return handled, False
                event = (_TOO_LONG if len(raw) > self._max_line_bytes
                         else self._entry_event(raw, parser))
                tally.add(event)
                handled += 1
            data = data[end + 1:]
        if len(data) > self._max_line_bytes:
            tally.add(_TOO_LONG)
            handled += 1
            data, self._discarding = b"", True
        self._pending = data
        return handled, True

    def _entry_event(self, raw: bytes, parser: LogParser) -> LogEvent:
        try:
            entry = json.loads(raw)
            cursor = entry["__CURSOR"]
            message = _text(entry.get("MESSAGE"))
            program = _text(entry.get("SYSLOG_IDENTIFIER"))
        except (ValueError, KeyError, TypeError, AttributeError):
            return _NOT_JSON
        if isinstance(cursor, str):
            self._cursor = cursor
            if cursor == self._catch_up_target:
                self._catching_up_until = None
                self._caught_up = True
        stamp = entry.get("__REALTIME_TIMESTAMP")
        if isinstance(stamp, str) and stamp.isdigit():
            self._last_timestamp = int(stamp) / 1e6
        if message is None:
            return _NOT_JSON
        return parser.parse_message(program or "", message)

    # -- state --------------------------------------------------------------------------------
    def _maybe_save(self, force: bool = False) -> None:
        if self.state_file is None or self._cursor is None or self._cursor == self._saved_cursor:
            return
        now = self._clock()
        if not force and now - self._last_save < self._save_interval:
            return
        self._last_save = now
        try:
            saved_position.save(self.state_file, saved_position.JournalPosition(self._cursor))
            self._saved_cursor = self._cursor
            if self._condition == "state_file":
                self._condition = self._condition_detail = None
        except OSError as error:
            self._condition_begins("state_file", error.strerror or str(error))

    def _condition_begins(self, kind: str, detail: str) -> None:
        if self._condition != kind:
            self._errors[kind] = self._errors.get(kind, 0) + 1
        self._condition, self._condition_detail = kind, detail


def _text(value: object) -> str | None:
    """A journal field as JSON gives it: a string, an array of bytes (not UTF-8, or with
    control characters), or null (not shown)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return bytes(value).decode("utf-8", "replace")
    return None
