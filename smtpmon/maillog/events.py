"""What a log line means, as a bounded label tuple, and the tally of them.

Every line read becomes exactly one `LogEvent` (nothing is dropped silently): a reply a
server gave (`reply`), a session that ended without QUIT (`session_end`), an outbound
connection that failed before any reply (`connect_failure`), a line that is not about
replies (`unrelated`, by program), or a line that is not a log line at all (`malformed`).

An event holds label values only, each from a bounded vocabulary, so events are the keys of
the tally and, later, the label sets of metrics. Reply texts, addresses and host names never
enter an event. Events are tuples: cheap to make, hash and compare, and immutable.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

# kind
REPLY = "reply"
SESSION_END = "session_end"
CONNECT_FAILURE = "connect_failure"
UNRELATED = "unrelated"
MALFORMED = "malformed"
KINDS = (REPLY, SESSION_END, CONNECT_FAILURE, UNRELATED, MALFORMED)

INBOUND = "inbound"  # a client talking to this mail host (smtpd, postscreen, cleanup)
OUTBOUND = "outbound"  # this mail host delivering to a remote server (smtp, lmtp, qmgr)

# Stages: the probe's names (smtpmon/results.py STAGES) where one exists, and three more the
# log knows and a probe does not run: `end_of_data` (the reply after the message's final
# dot; a probe counts it under `data`), `vrfy`, `etrn`, and `other` for the rest.
LOG_STAGES = ("resolve", "connect", "banner", "ehlo", "starttls", "auth", "mail", "rcpt",
              "data", "end_of_data", "vrfy", "etrn", "quit", "other", "none")

# status of a reply event: inbound `reject`; outbound the delivery status Postfix logged
# (`attempt`: a reply from one server of several, before the delivery's final status).
STATUSES = ("reject", "sent", "deferred", "bounced", "expired", "attempt")
# status of a session_end event
SESSION_END_STATUSES = ("lost_connection", "timeout", "too_many_errors")

# reason of an inbound reject: which restriction said no, from Postfix's fixed wording.
INBOUND_REASONS = ("client_host", "helo", "sender", "recipient", "relay_access", "rbl",
                   "postscreen", "size", "tls_required", "data", "content", "milter",
                   "protocol", "other")
# reason of an outbound event: `delivered`, `remote_reply` (a server answered with the code),
# or why no server answered.
OUTBOUND_REASONS = ("delivered", "remote_reply", "connection_refused", "connect_timeout",
                    "no_route", "dns_failure", "tls_failure", "tls_not_offered", "timeout",
                    "lost_connection", "suspended", "expired", "other")
# reason of a malformed event: no syslog header (or not a journal entry), longer than the
# reader's cap, cut off by a truncation or rotation, or shaped like a reply line (a reject,
# a delivery status) that does not parse.
MALFORMED_REASONS = ("no_header", "not_json", "too_long", "incomplete", "unrecognized")

# class and category of an outbound event where no server answered (code "000"): not a
# protocol error, there was no reply at all; the event's reason says why.
NO_REPLY = "none"

OTHER = "other"  # a domain, RBL list or program outside the configured (or capped) set


class LogEvent(NamedTuple):
    """One log line's meaning. Fields that do not apply to a kind are ""."""

    kind: str
    program: str = ""  # the service that logged it ("smtpd"); for `unrelated` the program
    direction: str = ""
    stage: str = ""
    status: str = ""
    code: str = ""  # "550", or "000" when no server answered
    enhanced: str = ""  # RFC 3463 status ("5.1.1"); "" when none; "other" past the parser's cap
    reply_class: str = ""  # smtpmon.smtp.replycodes.reply_class of the code, or NO_REPLY
    category: str = ""  # smtpmon.smtp.replycodes.reply_category of the code, or NO_REPLY
    reason: str = ""
    domain: str = ""  # outbound: the recipient's domain if configured, else "other"
    rbl: str = ""  # reason "rbl": the list's name if configured, else "other"


class LogParser(Protocol):
    """The seam for an MTA's log format. A parser never raises, on any input.

    `parse_message` takes what the journal gives directly (SYSLOG_IDENTIFIER and MESSAGE);
    `parse_line` takes a syslog line (traditional or RFC 3339 timestamp) and splits it first.
    """

    def parse_line(self, line: str) -> LogEvent: ...

    def parse_message(self, program: str, message: str) -> LogEvent: ...


class Tally:
    """Counts of events, keyed by the event itself. Owned by one thread (the reader's);
    `snapshot()` gives a copy another thread may keep."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: dict[LogEvent, int] = {}

    def add(self, event: LogEvent, count: int = 1) -> None:
        self.counts[event] = self.counts.get(event, 0) + count

    def snapshot(self) -> dict[LogEvent, int]:
        return dict(self.counts)
