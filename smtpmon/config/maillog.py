"""The `maillog:` section: which log smtpmon reads for the codes real mail gets, and how.

Absent (or `maillog: null`), nothing is read. Parsed by `load._Parser.parse_maillog` with the
same path-keyed validator as the rest of the file; the result is a frozen `MaillogSettings`
that the daemon compares across reloads (the reader restarts only when it changed).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from smtpmon.config.validation import describe, key_path
from smtpmon.maillog.journal import DEFAULT_IDENTIFIERS

SOURCES = ("file", "journal")
DEFAULT_PATH = "/var/log/mail.log"
STATE_FILE_NAME = "maillog.position"
MAILLOG_KEYS = ("source", "path", "journal_identifiers", "state_file", "from_start", "domains",
                "rbl_lists", "catch_up_max_lines", "catch_up_max_duration", "poll_interval")
# Each configured domain and list is a label value of its own: a cap keeps the series bounded.
MAX_DOMAINS = 100
MAX_RBL_LISTS = 50
# Upper bounds, as for every value of the file: past them a value is a typo, not a choice.
MAX_CATCH_UP_LINES = 1_000_000_000
MAX_CATCH_UP_SECONDS = 86400.0
MAX_POLL_INTERVAL_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class MaillogSettings:
    source: str = "file"
    path: str = DEFAULT_PATH
    journal_identifiers: tuple[str, ...] = DEFAULT_IDENTIFIERS
    state_file: str | None = None  # None: no saved position (each start begins at the end)
    from_start: bool = False
    domains: tuple[str, ...] = ()  # remote domains that are their own `domain` label
    rbl_lists: tuple[str, ...] = ()  # DNS lists that are their own `rbl` label
    catch_up_max_lines: int = 5_000_000
    catch_up_max_seconds: float = 120.0
    poll_interval_seconds: float = 1.0


def default_state_file(environ: dict[str, str] | os._Environ = os.environ) -> str | None:
    """The position file under systemd's `StateDirectory=` ($STATE_DIRECTORY, its first entry
    when several are listed), or None outside such a unit."""
    directory = environ.get("STATE_DIRECTORY", "").split(":")[0]
    return os.path.join(directory, STATE_FILE_NAME) if directory else None


def parse_maillog(parser: Any, node: Any, path: str = "maillog") -> MaillogSettings | None:
    """`parser` is the configuration's validator (load._Parser: error, section, string, ...).
    None when the section is absent or has errors (they are recorded in `parser`)."""
    if node is None:
        return None
    node = parser.section(node, path)
    if node is None:
        return None
    errors_before = len(parser.errors)
    parser.check_keys(node, path, MAILLOG_KEYS)
    at = lambda key: key_path(path, key)  # noqa: E731
    values: dict[str, Any] = {"state_file": default_state_file()}
    if "source" in node:
        values["source"] = parser.choice(node["source"], at("source"), SOURCES)
    if "path" in node:
        values["path"] = _absolute(parser, node["path"], at("path"))
    if "state_file" in node:
        values["state_file"] = _absolute(parser, node["state_file"], at("state_file"))
    if "from_start" in node:
        values["from_start"] = parser.boolean(node["from_start"], at("from_start"))
    if "journal_identifiers" in node:
        values["journal_identifiers"] = _names(parser, node["journal_identifiers"],
                                               at("journal_identifiers"), limit=64, hosts=False)
    if "domains" in node:
        values["domains"] = _names(parser, node["domains"], at("domains"), limit=MAX_DOMAINS)
    if "rbl_lists" in node:
        values["rbl_lists"] = _names(parser, node["rbl_lists"], at("rbl_lists"),
                                     limit=MAX_RBL_LISTS)
    if "catch_up_max_lines" in node:
        lines = node["catch_up_max_lines"]
        if (isinstance(lines, bool) or not isinstance(lines, int)
                or not 0 <= lines <= MAX_CATCH_UP_LINES):
            parser.error(at("catch_up_max_lines"), "must be a whole number of lines, 0 to "
                         f"{MAX_CATCH_UP_LINES:,}, got {describe(lines)}")
        else:
            values["catch_up_max_lines"] = lines
    if "catch_up_max_duration" in node:
        values["catch_up_max_seconds"] = parser.duration(node["catch_up_max_duration"],
                                                         at("catch_up_max_duration"),
                                                         MAX_CATCH_UP_SECONDS)
    if "poll_interval" in node:
        values["poll_interval_seconds"] = parser.duration(node["poll_interval"],
                                                          at("poll_interval"),
                                                          MAX_POLL_INTERVAL_SECONDS)
    if values.get("source", "file") == "journal" and "path" in node:
        parser.error(at("path"), "applies to source: file only (the journal has no path)")
    if len(parser.errors) > errors_before:
        return None
    return MaillogSettings(**values)


def _absolute(parser: Any, value: Any, path: str) -> str | None:
    name = parser.string(value, path)
    if name is not None and not os.path.isabs(name):
        parser.error(path, f"must be an absolute path, got {describe(name)}")
        return None
    return name


def _names(parser: Any, value: Any, path: str, *, limit: int, hosts: bool = True
           ) -> tuple[str, ...] | None:
    if not isinstance(value, list):
        parser.error(path, f"must be a list, got {describe(value)}")
        return None
    if len(value) > limit:
        parser.error(path, f"at most {limit} entries (each is a label value), got {len(value)}")
        return None
    names: list[str] = []
    for index, item in enumerate(value):
        where = f"{path}[{index}]"
        name = (parser.host_name(item, where, allow_ip=False) if hosts
                else parser.string(item, where))
        if name is None:
            continue
        name = name.lower().rstrip(".") if hosts else name
        if name in names:
            parser.error(where, f"duplicate of {path}[{names.index(name)}]")
            continue
        names.append(name)
    return tuple(names) if len(names) == len(value) else None
