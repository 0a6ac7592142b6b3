"""The syslog framing of a mail log line, independent of the MTA that wrote the message.

    Dec 03 07:43:10 host postfix/smtpd[5230]: message           (traditional, RFC 3164 style)
    Dec  3 07:43:10 host postfix/smtpd[5230]: message           (day padded with a space)
    2026-12-03T07:43:10.123456+00:00 host postfix/smtpd[5230]: message    (RFC 3339)

`split_line` is on the hot path: one precompiled regex, no timestamp conversion. The
timestamp of a line is converted only when asked (`line_timestamp`), e.g. for the reader's
"last line's timestamp".
"""

from __future__ import annotations

import re
import time
from datetime import datetime

_HEADER = re.compile(
    r"(?:(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [ 0-3][0-9] [0-2][0-9]:[0-5][0-9]:[0-6][0-9]"
    r"|[0-9]{4}-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-6][0-9](?:\.[0-9]{1,9})?"
    r"(?:Z|[+-][0-2][0-9]:?[0-5][0-9])?)"
    r" +[^ ]+ +([^ \[:]+)(?:\[[0-9]+\])?: "
)

_MONTHS = {name: number for number, name in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}
_TRADITIONAL = re.compile(r"([A-Z][a-z]{2}) ([ 0-3][0-9]) ([0-2][0-9]):([0-5][0-9]):([0-6][0-9]) ")
_RFC3339 = re.compile(
    r"([0-9]{4}-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-6][0-9](?:\.[0-9]{1,9})?)"
    r"(Z|[+-][0-2][0-9]:?[0-5][0-9])? ")


def split_line(line: str) -> tuple[str, str] | None:
    """(program, message) of a syslog line, or None when the line has no syslog header."""
    match = _HEADER.match(line)
    if match is None:
        return None
    return match.group(1), line[match.end():]


def line_timestamp(line: str, now: float | None = None) -> float | None:
    """The Unix time of a line's syslog timestamp, or None when it has none.

    A traditional timestamp has no year and no zone: it is read as local time in the year
    that puts it at most a day in the future of `now` (a log read in January still holds
    December's lines). RFC 3339 without a zone is read as UTC.
    """
    try:
        match = _RFC3339.match(line)
        if match is not None:
            stamp, zone = match.groups()
            if len(stamp) > 26:  # datetime takes microseconds at most
                stamp = stamp[:26]
            parsed = datetime.fromisoformat(stamp + _iso_zone(zone))
            return parsed.timestamp()
        match = _TRADITIONAL.match(line)
        if match is None:
            return None
        month = _MONTHS.get(match.group(1))
        if month is None:
            return None
        day, hour, minute, second = (int(group) for group in match.groups()[1:])
        now = time.time() if now is None else now
        year = time.localtime(now).tm_year
        for candidate in (year, year - 1):
            stamp = time.mktime((candidate, month, day, hour, minute, min(second, 59), 0, 0, -1))
            if stamp <= now + 86400:
                return stamp
        return None
    except (ValueError, OverflowError):
        return None  # "Feb 31", hour 29: a header-shaped line that is no real time


def _iso_zone(zone: str | None) -> str:
    if zone is None or zone == "Z":
        return "+00:00"
    return zone if ":" in zone else f"{zone[:3]}:{zone[3:]}"
