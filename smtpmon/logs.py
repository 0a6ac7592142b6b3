"""Logging: one logfmt line per event, to stderr (journald picks it up).

    ts=2024-05-01T12:00:00.123Z level=warn msg="probe failed" target=mx.example.org:25 module=mx

Fields are passed as keyword arguments: `log.info("probe failed", target=..., module=...)`.
They travel in `extra={"fields": ...}` because `module` is a reserved LogRecord attribute.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any, TextIO

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR}
_LEVEL_NAMES = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warn",
                logging.ERROR: "error", logging.CRITICAL: "error"}
ROOT = "smtpmon"


def _value(value: Any) -> str:
    """A logfmt value: bare when safe, else double-quoted with escapes (never spans lines)."""
    text = str(value)
    if text and not any(ch in text for ch in ' ="\\') and text.isprintable():
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    escaped = "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in escaped)
    return f'"{escaped}"'


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        seconds = time.gmtime(record.created)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", seconds) + f".{int(record.msecs):03d}Z"
        parts = [
            f"ts={stamp}",
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


def setup_logging(level: str = "info", stream: TextIO | None = None) -> None:
    """Send smtpmon's events to `stream` (stderr) at `level` (debug, info, warn, error)."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    root = logging.getLogger(ROOT)
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(LEVELS[level])
    root.propagate = False
