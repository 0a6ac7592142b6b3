"""Logging: one line per event, to stderr (journald picks it up), logfmt or JSON.

    ts=2024-05-01T12:00:00.123Z level=warn msg="probe failed" target=mx.example.org:25 module=mx
    {"ts": "2024-05-01T12:00:00.123Z", "level": "warn", "msg": "probe failed", "target": ...}

Fields are passed as keyword arguments: `log.info("probe failed", target=..., module=...)`.
They travel in `extra={"fields": ...}` because `module` is a reserved LogRecord attribute.

When stderr is the journal's stream (systemd sets JOURNAL_STREAM to its device and inode),
each line starts with its syslog priority, `<4>` for a warning, which journald reads
(SyslogLevelPrefix=, on by default) and strips: `journalctl -p warning` then works.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from typing import Any, TextIO

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR}
_LEVEL_NAMES = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warn",
                logging.ERROR: "error", logging.CRITICAL: "error"}
FORMATS = ("logfmt", "json")
ROOT = "smtpmon"
# syslog(3) priorities, for the `<N>` prefix journald reads.
_SYSLOG_PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
                      logging.CRITICAL: 2}


def _value(value: Any) -> str:
    """A logfmt value: bare when safe, else double-quoted with escapes (never spans lines)."""
    text = str(value)
    if text and not any(ch in text for ch in ' ="\\') and text.isprintable():
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    escaped = "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in escaped)
    return f'"{escaped}"'


def _timestamp(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


class _Formatter(logging.Formatter):
    """A line's syslog priority prefix, when asked for (journald's stream)."""

    def __init__(self, syslog_prefix: bool = False):
        super().__init__()
        self._syslog_prefix = syslog_prefix

    def format(self, record: logging.LogRecord) -> str:
        line = self.line(record)
        if self._syslog_prefix:
            return f"<{_SYSLOG_PRIORITIES.get(record.levelno, 6)}>{line}"
        return line

    def line(self, record: logging.LogRecord) -> str:
        raise NotImplementedError


class LogfmtFormatter(_Formatter):
    def line(self, record: logging.LogRecord) -> str:
        parts = [
            f"ts={_timestamp(record)}",
            f"level={_LEVEL_NAMES.get(record.levelno, 'info')}",
            f"msg={_value(record.getMessage())}",
        ]
        for key, value in getattr(record, "fields", {}).items():
            if value is not None:  # an absent fact is left out, not written as ""
                parts.append(f"{key}={_value(value)}")
        if record.exc_info:
            # The traceback stays on one line: one event, one line.
            parts.append(f"exception={_value(self.formatException(record.exc_info))}")
        return " ".join(parts)


class JsonFormatter(_Formatter):
    """The same fields as logfmt, as one JSON object per line (numbers stay numbers)."""

    def line(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": _LEVEL_NAMES.get(record.levelno, "info"),
            "msg": record.getMessage(),
        }
        for key, value in getattr(record, "fields", {}).items():
            if value is not None:
                event[key] = value if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        return json.dumps(event, ensure_ascii=False)


class Logger:
    """A thin wrapper that turns keyword arguments into logfmt fields."""

    def __init__(self, name: str):
        self._logger = logging.getLogger(f"{ROOT}.{name}")

    def _log(self, level: int, msg: str, exc_info: bool, fields: dict[str, Any]) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(level, msg, exc_info=exc_info, extra={"fields": fields})

    def enabled(self, level: str) -> bool:
        """Whether a line at `level` (debug, info, warn, error) would be written."""
        return self._logger.isEnabledFor(LEVELS[level])

    def debug(self, msg: str, **fields: Any) -> None:
        self._log(logging.DEBUG, msg, False, fields)

    def info(self, msg: str, **fields: Any) -> None:
        self._log(logging.INFO, msg, False, fields)

    def warning(self, msg: str, **fields: Any) -> None:
        self._log(logging.WARNING, msg, False, fields)

    def error(self, msg: str, **fields: Any) -> None:
        self._log(logging.ERROR, msg, False, fields)

    def exception(self, msg: str, **fields: Any) -> None:
        """An error with the current exception's traceback (call from an except block)."""
        self._log(logging.ERROR, msg, True, fields)


class ThrottledWarning:
    """A warning logged at most once per interval, with how many were left out since: for
    events that can come hundreds of times a second (refused connections, failed thread
    starts), where one line a minute says all."""

    def __init__(self, logger: Logger, message: str, interval: float = 60.0):
        self._logger = logger
        self._message = message
        self._interval = interval
        self._next = 0.0
        self._left_out = 0
        self._lock = threading.Lock()

    def log(self, **fields: Any) -> None:
        with self._lock:
            now = time.monotonic()
            if now < self._next:
                self._left_out += 1
                return
            left_out, self._left_out, self._next = self._left_out, 0, now + self._interval
        self._logger.warning(self._message, **fields, left_out=left_out or None)


def get_logger(name: str) -> Logger:
    return Logger(name)


def is_journal_stream(stream: TextIO) -> bool:
    """Whether `stream` is the journal's: systemd sets JOURNAL_STREAM to "DEVICE:INODE" of the
    stream it connects (a child whose stderr was redirected elsewhere must not use it)."""
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        status = os.fstat(stream.fileno())
        return (status.st_dev, status.st_ino) == (int(device), int(inode))
    except (ValueError, OSError, AttributeError):  # unset, malformed, or not a real file
        return False


def setup_logging(level: str = "info", stream: TextIO | None = None, log_format: str = "logfmt") -> None:
    """Send smtpmon's events to `stream` (stderr) at `level` (debug, info, warn, error), as
    `log_format` lines (logfmt, json); with the syslog priority prefix on the journal's stream."""
    stream = stream if stream is not None else sys.stderr
    handler = logging.StreamHandler(stream)
    formatter = JsonFormatter if log_format == "json" else LogfmtFormatter
    handler.setFormatter(formatter(syslog_prefix=is_journal_stream(stream)))
    root = logging.getLogger(ROOT)
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(LEVELS[level])
    root.propagate = False
