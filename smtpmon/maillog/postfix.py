"""Postfix log lines as reply events: inbound rejects, outbound delivery replies, by stage.

Postfix's programs and what they say about replies:

- `smtpd` (inbound): `NOQUEUE: reject: RCPT from host[addr]: 550 5.1.1 <...>: Recipient
  address rejected: ...` (a queue id instead of NOQUEUE once a recipient of the session was
  accepted), `milter-reject:`, and `lost connection after RCPT`, `timeout after DATA`,
  `too many errors after RCPT` for sessions ending without QUIT.
- `postscreen` (inbound): the same reject shape, with comma-separated fields.
- `cleanup` (inbound, after the message): `reject: header ...` / `reject: body ...` from
  header and body checks, and milter rejects at END-OF-MESSAGE. It logs only the enhanced
  status; the code is the one smtpd then sends for it (5.x.x: 550; 4.x.x: 450; a milter's
  temporary failure: 451), so the event carries that code.
- `smtp`, `lmtp` (outbound): `to=<...>, relay=..., dsn=4.2.0, status=deferred (host X said:
  450 4.2.0 ... (in reply to RCPT TO command))`; `refused to talk to me:` for a greeting
  refusal; `connect to X: Connection refused` and timeouts when no server answered.
- `qmgr`: `status=expired, returned to sender`.

Stages Postfix names, mapped to the probe's stage names (smtpmon/results.py STAGES):
CONNECT -> connect; the greeting ("initial server greeting", "refused to talk to me") ->
banner; HELO and EHLO -> ehlo; STARTTLS -> starttls; AUTH -> auth; MAIL / MAIL FROM -> mail;
RCPT / RCPT TO -> rcpt; DATA, BDAT, "message body" -> data; END-OF-MESSAGE / "end of DATA"
-> end_of_data; VRFY -> vrfy; ETRN -> etrn; QUIT -> quit; anything else -> other. An
outbound failure before any connection (DNS) is `resolve`; a delivery with no stage at all
(expired, suspended) is `none`.

Not every reply Postfix gives is logged with its code (503 bad sequence, 530 must issue
STARTTLS first, 452 too many recipients, 221): those cannot be counted from the log.

Hot path: one regex for the syslog header, a dict dispatch on the program, substring tests
before any further regex, and one cached event per unrelated program, so the common lines
(connect, disconnect, qmgr, cleanup) allocate nothing new.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from smtpmon.maillog.events import (
    CONNECT_FAILURE,
    INBOUND,
    MALFORMED,
    NO_REPLY,
    OTHER,
    OUTBOUND,
    REPLY,
    SESSION_END,
    UNRELATED,
    LogEvent,
)
from smtpmon.maillog.syslog import split_line
from smtpmon.smtp.replycodes import parse_enhanced, reply_category, reply_class

# At most this many distinct program labels for `unrelated` lines; later ones are "other".
MAX_PROGRAMS = 64
# At most this many distinct enhanced codes; later ones are "other". Remote servers anywhere
# answer our outbound mail, and some use hundreds of their own (5.7.606 ...): the first ones
# seen keep their label, so a flood of odd codes cannot grow the label set without bound.
MAX_ENHANCED_CODES = 256
_CODE_CACHE_SIZE = 4096

_STAGES = {
    "CONNECT": "connect",
    "HELO": "ehlo",
    "EHLO": "ehlo",
    "STARTTLS": "starttls",
    "AUTH": "auth",
    "MAIL": "mail",
    "MAIL FROM": "mail",
    "RCPT": "rcpt",
    "RCPT TO": "rcpt",
    "DATA": "data",
    "BDAT": "data",
    "END-OF-MESSAGE": "end_of_data",
    "end of DATA": "end_of_data",
    "VRFY": "vrfy",
    "ETRN": "etrn",
    "QUIT": "quit",
}

# smtp(8)'s "while <doing X>" after a lost connection or a timeout.
_WHILE_STAGES = (
    ("initial server greeting", "banner"),
    ("EHLO", "ehlo"),
    ("HELO", "ehlo"),
    ("STARTTLS", "starttls"),
    ("TLS", "starttls"),
    ("AUTH", "auth"),
    ("MAIL FROM", "mail"),
    ("RCPT TO", "rcpt"),
    ("end of data", "end_of_data"),
    ("DATA", "data"),
    ("message body", "data"),
    ("protocol handshake", "ehlo"),
)

_REJECT = re.compile(
    r"[0-9A-Za-z]+: (reject|milter-reject): ([A-Z][A-Z -]*?) from [^ ]*?\[[^\]]*\](?::[0-9]+)?: "
    r"(?:([2-5][0-9][0-9]) )?(?:([2-5]\.[0-9]{1,3}\.[0-9]{1,3}) )?"
)
_REJECT_REASON = re.compile(
    r"(?P<relay_access>Relay access denied)"
    r"|blocked using (?P<rbl>[^ ;,]+)"
    r"|(?P<client_host>Client host rejected)"
    r"|(?P<helo>Helo command rejected)"
    r"|(?P<sender>Sender address rejected)"
    r"|(?P<recipient>Recipient address rejected)"
    r"|(?P<size>Message size exceeds)"
    r"|(?P<tls_required>Session encryption is required)"
    r"|(?P<protocol>(?:Data command rejected: )?Improper use of SMTP command pipelining"
    r"|Bad (?:sender|recipient) address syntax)"
    r"|(?P<data>Data command rejected|End-of-data rejected)"
)
_CLEANUP_REJECT = re.compile(
    r"[0-9A-Za-z]+: (reject|milter-reject|discard): (?:header|body|END-OF-MESSAGE|[a-z]+) .*?: "
    r"(?:([2-5][0-9][0-9]) )?([2-5]\.[0-9]{1,3}\.[0-9]{1,3}) "
)
_SESSION_END = re.compile(r"(lost connection|timeout|too many errors) after ([A-Za-z-]+)")

_STATUS = re.compile(
    r"[0-9A-Za-z]+: to=<[^>]*?(?:@([^>@]*))?>,.*? dsn=([245]\.[0-9]{1,3}\.[0-9]{1,3}), "
    r"status=([a-z]+) \((.*)\)$"
)
_REMOTE_REPLY = re.compile(
    r"host [^ ]+ (?:said|refused to talk to me): ([2-5][0-9][0-9])[ -]"
    r"(?:([245]\.[0-9]{1,3}\.[0-9]{1,3})[ ])?"
)
_IN_REPLY_TO = re.compile(r"\(in reply to (.+?) command\)$")
_ATTEMPT = re.compile(r"[0-9A-Za-z]+: host [^ ]+ (?:said|refused to talk to me): ")
_SENT_REPLY = re.compile(r"([2-5][0-9][0-9])[ -](?:([245]\.[0-9]{1,3}\.[0-9]{1,3}) )?")

# Where a reply's words end in a log line, and the address Postfix puts before them.
_TEXT_END = re.compile(r"; (?:from|to|proto)=| \(in reply to .+ command\)$")
_RECIPIENT_PREFIX = re.compile(r"^<[^>]*>: ")

_CONNECT_ERRORS = (
    ("Connection refused", "connection_refused"),
    ("Connection timed out", "connect_timeout"),
    ("No route to host", "no_route"),
    ("Network is unreachable", "no_route"),
)

# Postfix sends these codes where it logs only the enhanced status (see the module doc).
_CODE_FOR_CLASS = {"2": "250", "4": "450", "5": "550"}
_MILTER_CODE_FOR_CLASS = {"2": "250", "4": "451", "5": "550"}


class PostfixParser:
    """Postfix lines -> `LogEvent`. Never raises, whatever the input.

    `domains`: recipient domains that are their own `domain` label on outbound events
    (others are "other"); `rbl_lists`: DNS list names that are their own `rbl` label.
    Both are matched case-insensitively.
    """

    def __init__(self, domains: Iterable[str] = (), rbl_lists: Iterable[str] = ()) -> None:
        self.domains = frozenset(domain.lower().rstrip(".") for domain in domains)
        self.rbl_lists = frozenset(name.lower().rstrip(".") for name in rbl_lists)
        self._handlers: dict[str, Callable[[str, str], LogEvent | None]] = {
            "smtpd": self._inbound,
            "postscreen": self._inbound,
            "cleanup": self._cleanup,
            "smtp": self._outbound,
            "lmtp": self._outbound,
            "qmgr": self._qmgr,
        }
        self._unrelated: dict[str, LogEvent] = {}
        self._malformed = LogEvent(MALFORMED, reason="no_header")
        # A line shaped like a reject or a delivery status that does not parse.
        self._unrecognized = LogEvent(MALFORMED, reason="unrecognized")
        self._codes: dict[tuple[str, str], tuple[str, str, str, str]] = {}
        self._enhanced_seen: set[str] = set()

    # -- entry points -------------------------------------------------------------------------
    def parse_line(self, line: str) -> LogEvent:
        try:
            parts = split_line(line)
            if parts is None:
                return self._malformed
            return self._parse(parts[0], parts[1])
        except Exception:  # noqa: BLE001 - a log line must never stop the reader
            return self._malformed

    def parse_message(self, program: str, message: str) -> LogEvent:
        try:
            return self._parse(program, message)
        except Exception:  # noqa: BLE001
            return self._malformed

    def _parse(self, program: str, message: str) -> LogEvent:
        service = program.rpartition("/")[2] if program.startswith("postfix") else ""
        handler = self._handlers.get(service)
        if handler is not None:
            event = handler(service, message)
            if event is not None:
                return event
        return self.unrelated(program)

    def reply_text(self, line: str) -> str | None:
        """The words of the reply a line is about ("Recipient address rejected: User unknown
        in local recipient table", "Greylisted, please try again later"), for people: the
        log report and the status page, never a label. None for a line about no reply. Not on
        the hot path: it parses the line again."""
        parts = split_line(line)
        if parts is None:
            return None
        program, message = parts
        service = program.rpartition("/")[2] if program.startswith("postfix") else ""
        if service in ("smtpd", "postscreen"):
            match = _REJECT.match(message)
            text = message[match.end():] if match else None
        elif service == "cleanup":
            match = _CLEANUP_REJECT.match(message)
            text = message[match.end():] if match else None
        elif service in ("smtp", "lmtp"):
            status = _STATUS.match(message)
            text = status.group(4) if status else (
                message.partition(": ")[2] if _ATTEMPT.match(message) else None)
            if text is not None:
                reply = _REMOTE_REPLY.match(text) or _SENT_REPLY.match(text)
                text = text[reply.end():] if reply else text
        else:
            return None
        if text is None:
            return None
        text = _TEXT_END.split(text, 1)[0]
        return _RECIPIENT_PREFIX.sub("", text, 1).strip() or None

    def unrelated(self, program: str) -> LogEvent:
        """The (cached) event of a line of `program` that is not about replies."""
        event = self._unrelated.get(program)
        if event is None:
            label = program if len(self._unrelated) < MAX_PROGRAMS and len(program) <= 64 else OTHER
            event = self._unrelated.setdefault(label, LogEvent(UNRELATED, program=label))
            if len(self._unrelated) < MAX_PROGRAMS:
                self._unrelated[program] = event
        return event

    # -- inbound ------------------------------------------------------------------------------
    def _inbound(self, service: str, message: str) -> LogEvent | None:
        if "reject: " in message:
            match = _REJECT.match(message)
            if match is None:
                return self._unrecognized
            action, where, code, enhanced = match.groups()
            text = message[match.end():]
            if action == "milter-reject":
                reason, rbl = "milter", ""
            else:
                reason, rbl = self._reject_reason(text, service)
            if code is None:
                if enhanced is None:
                    return self._unrecognized
                code = (_MILTER_CODE_FOR_CLASS if action == "milter-reject"
                        else _CODE_FOR_CLASS)[enhanced[0]]
            return self._reply(service, INBOUND, _STAGES.get(where, OTHER), "reject", code,
                               enhanced, reason, "", rbl)
        if "after " in message:
            match = _SESSION_END.match(message)
            if match is not None:
                kind, where = match.groups()
                return LogEvent(SESSION_END, program=service, direction=INBOUND,
                                stage=_STAGES.get(where, OTHER), status=kind.replace(" ", "_"))
        return None

    def _reject_reason(self, text: str, service: str) -> tuple[str, str]:
        match = _REJECT_REASON.search(text)
        if match is None:
            return ("postscreen" if service == "postscreen" else OTHER), ""
        reason = match.lastgroup or OTHER
        if reason == "rbl":
            name = match.group("rbl").lower().rstrip(".")
            return "rbl", name if name in self.rbl_lists else OTHER
        return reason, ""

    def _cleanup(self, service: str, message: str) -> LogEvent | None:
        if "reject: " not in message:
            return None
        match = _CLEANUP_REJECT.match(message)
        if match is None:
            return self._unrecognized
        action, code, enhanced = match.groups()
        milter = action == "milter-reject"
        if code is None:
            code = (_MILTER_CODE_FOR_CLASS if milter else _CODE_FOR_CLASS)[enhanced[0]]
        return self._reply(service, INBOUND, "end_of_data", "reject", code, enhanced,
                           "milter" if milter else "content", "", "")

    # -- outbound -----------------------------------------------------------------------------
    def _outbound(self, service: str, message: str) -> LogEvent | None:
        if ", status=" in message:
            match = _STATUS.match(message)
            if match is None:
                return self._unrecognized
            domain, dsn, status, detail = match.groups()
            domain_label = self._domain_label(domain)
            if status == "sent":
                reply = _SENT_REPLY.match(detail)
                if reply is None:  # "delivered via X service", "250 ..." missing
                    return self._reply(service, OUTBOUND, "end_of_data", status, "000", dsn,
                                       "delivered", domain_label, "")
                return self._reply(service, OUTBOUND, "end_of_data", status, reply.group(1),
                                   reply.group(2) or dsn, "delivered", domain_label, "")
            return self._delivery_detail(service, status, dsn, detail, domain_label)
        if message.startswith("connect to "):
            return LogEvent(CONNECT_FAILURE, program=service, direction=OUTBOUND,
                            stage="connect", reason=_connect_reason(message))
        if " said: " in message or " refused to talk to me: " in message:
            if _ATTEMPT.match(message) is not None:
                # One server of several answered; the delivery's status line comes later.
                return self._delivery_detail(service, "attempt", "", message.partition(": ")[2],
                                             "")
        return None

    def _delivery_detail(self, service: str, status: str, dsn: str, detail: str,
                         domain_label: str) -> LogEvent:
        """The event of a non-`sent` delivery from the words in its parentheses."""
        match = _REMOTE_REPLY.match(detail)
        if match is not None:
            code, enhanced = match.groups()
            if " refused to talk to me: " in detail[:match.end()]:
                stage = "banner"
            else:
                at = detail.rfind("(in reply to ")
                where = _IN_REPLY_TO.match(detail, at) if at >= 0 else None
                stage = _STAGES.get(where.group(1), OTHER) if where else OTHER
            return self._reply(service, OUTBOUND, stage, status, code, enhanced or dsn,
                               "remote_reply", domain_label, "")
        stage, reason = _failure(detail)
        return self._reply(service, OUTBOUND, stage, status, "000", dsn, reason, domain_label, "")

    def _qmgr(self, service: str, message: str) -> LogEvent | None:
        if "status=expired" not in message:
            return None
        return self._reply(service, OUTBOUND, "none", "expired", "000", "", "expired", "", "")

    def _domain_label(self, domain: str | None) -> str:
        if not domain:
            return OTHER
        domain = domain.lower()
        return domain if domain in self.domains else OTHER

    # -- shared -------------------------------------------------------------------------------
    def _reply(self, service: str, direction: str, stage: str, status: str, code: str,
               enhanced: str | None, reason: str, domain: str, rbl: str) -> LogEvent:
        enhanced = enhanced or ""
        labels = self._codes.get((code, enhanced))
        if labels is None:
            labels = _code_labels(code, enhanced)
            label = labels[1]
            if label and label not in self._enhanced_seen:
                if len(self._enhanced_seen) < MAX_ENHANCED_CODES:
                    self._enhanced_seen.add(label)
                else:
                    labels = (labels[0], OTHER, labels[2], labels[3])
            if len(self._codes) < _CODE_CACHE_SIZE:
                self._codes[code, enhanced] = labels
        code, enhanced, klass, category = labels
        return LogEvent(REPLY, service, direction, stage, status, code, enhanced, klass, category,
                        reason, domain, rbl)


def _code_labels(code: str, enhanced: str) -> tuple[str, str, str, str]:
    """(code, enhanced, class, category) labels; an enhanced code whose class disagrees with
    the reply code is dropped, as the probe's reply parser does."""
    number = int(code)
    if enhanced:
        normalized = parse_enhanced(enhanced)
        enhanced = normalized if normalized and (number == 0 or normalized[0] == code[0]) else ""
    if number == 0:  # no server answered: no class to give (the reason says why)
        return "000", enhanced, NO_REPLY, NO_REPLY
    return code, enhanced, reply_class(number), reply_category(number)


def _connect_reason(text: str) -> str:
    for words, reason in _CONNECT_ERRORS:
        if words in text:
            return reason
    return OTHER


def _failure(detail: str) -> tuple[str, str]:
    """(stage, reason) of an outbound delivery that got no reply code."""
    if detail.startswith("connect to "):
        return "connect", _connect_reason(detail)
    if detail.startswith("delivery temporarily suspended"):
        return "none", "suspended"
    if detail.startswith("Host or domain name not found") or "Name service error" in detail:
        return "resolve", "dns_failure"
    if " timed out while " in detail:
        return _while_stage(detail), "timeout"
    if detail.startswith("lost connection with "):
        return _while_stage(detail), "lost_connection"
    if "TLS is required, but was not offered" in detail:
        return "starttls", "tls_not_offered"
    if "TLS" in detail or "certificate" in detail:
        return "starttls", "tls_failure"
    return "other", OTHER


def _while_stage(detail: str) -> str:
    after = detail.partition(" while ")[2]
    for words, stage in _WHILE_STAGES:
        if words in after:
            return stage
    return OTHER
