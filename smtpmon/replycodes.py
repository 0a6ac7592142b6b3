"""SMTP reply codes: parse a reply as the server framed it, then classify and explain it.

Pure functions, no I/O. Parsing follows RFC 5321 section 4.2 ("NNN-text" continues a reply,
"NNN text" or a bare "NNN" ends it) and never raises: bytes that are not a reply become a
`Reply` with `code=None` and an `error`, which counts as a protocol error (DESIGN.md rule 5).
"""

from __future__ import annotations

import re
from typing import NamedTuple, Sequence

from smtpmon.results import Reply

PROTOCOL_ERROR = "protocol_error"

# RFC 3463 section 2: class.subject.detail at the start of the reply text. ASCII digits only:
# `\d` would also accept other scripts' digits.
_ENHANCED = re.compile(r"\s*([245])\.([0-9]{1,3})\.([0-9]{1,3})(?![0-9A-Za-z_])")


class ReplyLine(NamedTuple):
    """One line of a reply. `final` is True on the line that ends the reply, and on any line
    that is not a reply line at all (it ends the reply as a protocol error)."""

    code: int | None
    final: bool
    text: str  # after the code and separator, without the line terminator
    bare_lf: bool  # ended in LF without CR
    error: str | None  # why the line is a protocol error, if it is


def parse_line(raw: bytes) -> ReplyLine:
    """Parse one line as read from the socket, terminator included (b"250-SIZE 1000\\r\\n").

    A line without a terminator (the last bytes before the connection closed, or a line typed
    by a person) is parsed as it is.
    """
    bare_lf = False
    if raw.endswith(b"\r\n"):
        body = raw[:-2]
    elif raw.endswith(b"\n"):
        body, bare_lf = raw[:-1], True
    else:
        body = raw
    text = body[4:].decode("utf-8", errors="replace")

    def broken(why: str) -> ReplyLine:
        return ReplyLine(None, True, body.decode("utf-8", errors="replace"), bare_lf, why)

    digits = body[:3]
    if len(digits) < 3 or not all(48 <= byte <= 57 for byte in digits):
        return broken(f"not a reply line: expected a three-digit code, got {_show(body[:12])}")
    code = int(digits)
    if not 100 <= code <= 599:
        return broken(f"reply code {digits.decode()} outside 100-599")
    separator = body[3:4]
    if separator not in (b"", b" ", b"-"):
        return broken(f"expected a space or '-' after the code {code}, got {_show(separator)}")
    if b"\n" in body:
        return broken("line break inside a reply line")
    if b"\x00" in body:
        return broken("NUL byte in a reply line")
    return ReplyLine(code, separator != b"-", text, bare_lf, None)


def make_reply(lines: Sequence[ReplyLine]) -> Reply:
    """Join the lines of one reply. Any line's protocol error makes the whole reply one."""
    texts = tuple(line.text for line in lines)
    bare_lf = any(line.bare_lf for line in lines)

    def broken(why: str) -> Reply:
        return Reply(code=None, lines=texts, bare_lf=bare_lf, error=why)

    if not lines:
        return broken("empty reply")
    for line in lines:
        if line.error is not None:
            return broken(line.error)
    first = lines[0].code
    for line in lines[1:]:
        if line.code != first:
            return broken(f"lines disagree on the code: {first} vs {line.code}")
    if any(line.final for line in lines[:-1]):
        return broken(f"more lines after the final line of reply {first}")
    if not lines[-1].final:
        return broken(f"reply {first} ended before its final line")
    enhanced = parse_enhanced(lines[0].text)
    if enhanced is not None and enhanced[0] != str(first)[0]:
        enhanced = None  # e.g. "250 5.0.0": a server bug, not a status to report
    return Reply(code=first, lines=texts, enhanced=enhanced, bare_lf=bare_lf)


def parse_reply(data: bytes) -> Reply:
    """Parse a whole reply blob (one or more lines). Any bytes give a Reply."""
    return make_reply([parse_line(raw) for raw in _split_lines(data)])


def _split_lines(data: bytes) -> list[bytes]:
    """Split after each LF, keeping terminators; a bare CR does not end a line."""
    return [line for line in re.split(rb"(?<=\n)", data) if line]


def _show(data: bytes) -> str:
    return repr(data.decode("utf-8", errors="replace")) if data else "end of line"


def parse_enhanced(text: str) -> str | None:
    """The RFC 3463 enhanced status code at the start of a reply text ("5.1.1"), or None."""
    match = _ENHANCED.match(text)
    if match is None:
        return None
    status_class, subject, detail = match.groups()
    return f"{status_class}.{int(subject)}.{int(detail)}"
