"""The reply codes a person pastes from a mail log: every code on a line, for `smtpmon explain`.

Takes whatever text an admin copies: a Postfix smtpd reject line, an smtp `status=deferred
(host X said: 450 4.2.0 ... (in reply to RCPT TO command))` line, `dsn=5.1.1`, a line with a
syslog or RFC 3339 timestamp, a multi-line reply's first line (`250-2.0.0 ok`), or several
replies joined on one line. Numbers that are not replies are passed over: timestamps, pids,
ports, addresses, `size=281`, `delay=0.01`, queue ids.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from smtpmon.maillog.syslog import split_line
from smtpmon.smtp.replycodes import parse_enhanced

# A reply code: three digits standing alone (not inside a number, an address, a time or a
# `key=value`), optionally followed by its enhanced status.
_MENTION = re.compile(
    r"(?<![\w.:/=\[-])([2-5][0-9][0-9])(?:[ -]+([245]\.[0-9]{1,3}\.[0-9]{1,3}))?(?![\w.:\]/=])"
    r"|(?<![\w.:/\[-])(?:dsn=)?([245]\.[0-9]{1,3}\.[0-9]{1,3})(?![\w.:\]])"
)


class ReplyMention(NamedTuple):
    code: int | None  # None when only an enhanced status was given (dsn=5.1.1)
    enhanced: str | None


def mentions(text: str) -> list[ReplyMention]:
    """Every distinct reply code (with its enhanced status) and lone enhanced status in `text`,
    in the order they appear. A multi-line reply joined on one line (`550-5.7.1 ... 550 5.7.1`)
    is one mention; an enhanced status repeated alone after its code (`dsn=5.7.1` beside
    `550 5.7.1`) adds nothing."""
    parts = split_line(text.strip())
    body = parts[1] if parts is not None else text
    found: list[ReplyMention] = []
    for match in _MENTION.finditer(body):
        code, after_code, alone = match.groups()
        if code is not None:
            enhanced = parse_enhanced(after_code) if after_code else None
            if enhanced is not None and enhanced[0] != code[0]:
                enhanced = None  # "250 5.0.0": the status is not this reply's
            mention = ReplyMention(int(code), enhanced)
        else:
            mention = ReplyMention(None, parse_enhanced(alone))
        if mention not in found:
            found.append(mention)
    covered = {mention.enhanced for mention in found if mention.code is not None}
    return [mention for mention in found
            if mention.code is not None or mention.enhanced not in covered]
