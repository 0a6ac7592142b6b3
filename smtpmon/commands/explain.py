"""`smtpmon explain`: what a reply code, an enhanced status code, a reply line, or a mail log
line with replies in it means."""

from __future__ import annotations

import sys

from smtpmon.maillog.events import REPLY, SESSION_END
from smtpmon.maillog.mentions import ReplyMention, mentions
from smtpmon.maillog.postfix import PostfixParser
from smtpmon.smtp.replycodes import explain

DESCRIPTION = (
    "Explain an SMTP reply: its class (first digit), category (second digit) and meaning, "
    "and the parts of an RFC 3463 enhanced status code. The class and category names are the "
    "values of the `class` and `category` metric labels.\n\n"
    "Also takes whatever is pasted from a mail log: a Postfix smtpd reject line, an smtp "
    "`status=deferred (host ... said: ...)` line, `dsn=5.1.1`, lines with syslog or ISO "
    "timestamps, a multi-line reply's first line (250-2.0.0 ok). Every reply code on the "
    "text is explained, and for a Postfix line, how smtpmon counts it (smtpmon_maillog_*)."
)

EPILOG = """examples:  (mail log lines may carry a syslog or ISO timestamp, as pasted)
  smtpmon explain 554
  smtpmon explain 5.7.1
  smtpmon explain "550 5.1.1 <bob@example.org>: Recipient address rejected"
  smtpmon explain "$(cat reply.txt)"     a multi-line reply, one line per line
  smtpmon explain dsn=5.1.1
  smtpmon explain 'Dec  3 07:43:10 mx postfix/smtpd[52]: NOQUEUE: reject: RCPT from x[192.0.2.7]: 554 5.7.1 <a@b>: Deny'
  smtpmon explain 'dsn=4.7.0, status=deferred (host mx[192.0.2.9] said: 421 4.7.0 Try later (in reply to DATA command))'

exit status: 0 explained, 3 no reply code, enhanced status code or reply line in the text
"""

USAGE_EXIT_CODE = 3


def add_arguments(parser) -> None:
    parser.add_argument(
        "text",
        metavar="TEXT",
        nargs="+",
        help="a reply code (554), an enhanced status code (5.7.1), a reply line, or a line "
        "from a mail log; several words are joined with spaces",
    )


def run(args) -> int:
    text = " ".join(args.text)
    try:
        lines = explain(text)
    except ValueError as error:
        lines = _explain_log_text(text)
        if lines is None:
            print(f"smtpmon explain: {error}", file=sys.stderr)
            return USAGE_EXIT_CODE
    print("\n".join(lines))
    return 0


def _explain_log_text(text: str) -> list[str] | None:
    """Every reply mentioned in pasted log text, explained in turn; None when there is none."""
    found = mentions(text)
    if not found:
        return None
    lines: list[str] = []
    for line in text.splitlines():
        counted = _how_counted(line)
        if counted:
            lines.append(counted)
    for mention in found:
        if lines:
            lines.append("")
        lines.append(f"-- {_spelled(mention)}")
        lines += explain(_spelled(mention))
    return lines


def _spelled(mention: ReplyMention) -> str:
    if mention.code is None:
        return mention.enhanced or ""
    return f"{mention.code} {mention.enhanced}" if mention.enhanced else str(mention.code)


def _how_counted(line: str) -> str | None:
    """How the daemon's log reader counts a Postfix line, in the metrics' label values."""
    event = PostfixParser().parse_line(line.strip())
    if event.kind == REPLY:
        where = f"stage {event.stage}, status {event.status}, reason {event.reason}"
        return f"mail log: {event.direction} {event.program} reply, {where}"
    if event.kind == SESSION_END:
        return (f"mail log: {event.direction} session ended without QUIT at stage "
                f"{event.stage} ({event.status})")
    return None
