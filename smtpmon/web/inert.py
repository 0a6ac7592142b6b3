"""What came from a server, the configuration or a request, made inert for where it is shown.

Reply text, failure details, target and module names: a hostile server chooses its replies.
`text` makes them HTML text; both functions also write out control characters (terminal escape
sequences: a page or a transcript read with curl in a terminal) and Unicode's bidirectional
overrides (which reorder what a person reads) as `\\x1b` or `\\u202e`.
"""

from __future__ import annotations

import html
import re

# Control characters (C0 but tab and newline, DEL, C1) and Unicode's bidirectional overrides
# and isolates: a terminal acts on the first, and the second reorder what a person reads.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def text(value: object) -> str:
    """`value` as HTML text, control characters and overrides written out."""
    escaped = html.escape(str(value), quote=True)
    return _UNSAFE.sub(_show_character, escaped)


def show_controls(value: str) -> str:
    """`value` with control characters and bidirectional overrides written out (`\\x1b`), for
    plain text a terminal may show."""
    return _UNSAFE.sub(_show_character, value)


def _show_character(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
