"""The Postfix parser on lines as Postfix 3.7 writes them (copied from the real instance of
tests/postfix_traffic.py, and from Postfix's sources for what a loopback test cannot make:
DNS lists, postscreen, milters, header checks, expiry, TLS and DNS failures), and on any
input at all: it never raises."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtpmon.maillog.events import (
    CONNECT_FAILURE,
    INBOUND_REASONS,
    KINDS,
    LOG_STAGES,
    MALFORMED,
    MALFORMED_REASONS,
    NO_REPLY,
    OTHER,
    OUTBOUND_REASONS,
    REPLY,
    SESSION_END,
    SESSION_END_STATUSES,
    STATUSES,
    UNRELATED,
    LogEvent,
)
from smtpmon.maillog.postfix import MAX_ENHANCED_CODES, MAX_PROGRAMS, PostfixParser
from smtpmon.maillog.syslog import line_timestamp
from smtpmon.smtp.replycodes import CATEGORY_NAMES, CLASS_NAMES, PROTOCOL_ERROR

H = "Dec 03 08:13:59 mx postfix/"  # the header postlogd writes (maillog_file)
PARSER = PostfixParser(domains=["replies.remote.test", "Gmail.COM"], rbl_lists=["zen.spamhaus.org"])


def reply(direction, stage, status, code, enhanced, klass, category, reason, *, program,
          domain="", rbl="") -> LogEvent:
    return LogEvent(REPLY, program, direction, stage, status, code, enhanced, klass, category,
                    reason, domain, rbl)


def inbound(stage, code, enhanced, klass, category, reason, program="smtpd", rbl=""):
    return reply("inbound", stage, "reject", code, enhanced, klass, category, reason,
                 program=program, rbl=rbl)


def outbound(stage, status, code, enhanced, klass, category, reason, domain="other",
             program="smtp"):
    return reply("outbound", stage, status, code, enhanced, klass, category, reason,
                 program=program, domain=domain)


PERM, TEMP, OK = "permanent_negative", "transient_negative", "positive_completion"
MS = "mail_system"

INBOUND_LINES = [
    (H + "smtpd[18035]: NOQUEUE: reject: CONNECT from unknown[127.0.0.5]: 554 5.7.1 "
     "<unknown[127.0.0.5]>: Client host rejected: Access denied; proto=SMTP",
     inbound("connect", "554", "5.7.1", PERM, MS, "client_host")),
    (H + "smtpd[18035]: NOQUEUE: reject: EHLO from unknown[127.0.0.7]: 554 5.7.1 "
     "<bad.helo.test>: Helo command rejected: Go away; proto=SMTP helo=<bad.helo.test>",
     inbound("ehlo", "554", "5.7.1", PERM, MS, "helo")),
    (H + "smtpd[18035]: NOQUEUE: reject: MAIL from unknown[127.0.0.7]: 554 5.7.1 "
     "<spammer@bad.test>: Sender address rejected: Access denied; from=<spammer@bad.test> "
     "proto=ESMTP helo=<client.smtpmon.test>",
     inbound("mail", "554", "5.7.1", PERM, MS, "sender")),
    (H + "smtpd[18035]: NOQUEUE: reject: MAIL from unknown[127.0.0.7]: 552 5.3.4 Message size "
     "exceeds fixed limit; from=<ok@sender.test> proto=ESMTP helo=<client.smtpmon.test>",
     inbound("mail", "552", "5.3.4", PERM, MS, "size")),
    (H + "smtpd[18035]: NOQUEUE: reject: RCPT from unknown[127.0.0.7]: 550 5.1.1 "
     "<nosuchuser@mx.smtpmon.test>: Recipient address rejected: User unknown in local "
     "recipient table; from=<ok@sender.test> to=<nosuchuser@mx.smtpmon.test> proto=ESMTP "
     "helo=<client.smtpmon.test>",
     inbound("rcpt", "550", "5.1.1", PERM, MS, "recipient")),
    (H + "smtpd[18035]: NOQUEUE: reject: RCPT from unknown[127.0.0.7]: 554 5.7.1 "
     "<someone@elsewhere.test>: Relay access denied; from=<ok@sender.test> "
     "to=<someone@elsewhere.test> proto=ESMTP helo=<client.smtpmon.test>",
     inbound("rcpt", "554", "5.7.1", PERM, MS, "relay_access")),
    (H + "smtpd[18035]: NOQUEUE: reject: RCPT from unknown[127.0.0.7]: 450 4.2.0 "
     "<greylist@mx.smtpmon.test>: Recipient address rejected: Greylisted, try again later; "
     "from=<ok@sender.test> to=<greylist@mx.smtpmon.test> proto=ESMTP helo=<c.test>",
     inbound("rcpt", "450", "4.2.0", TEMP, MS, "recipient")),
    (H + "smtpd[18035]: NOQUEUE: reject: RCPT from unknown[127.0.0.7]: 530 5.7.1 Session "
     "encryption is required; from=<ok@sender.test> to=<tlsonly@mx.smtpmon.test> proto=ESMTP "
     "helo=<client.smtpmon.test>",
     inbound("rcpt", "530", "5.7.1", PERM, "unspecified", "tls_required")),
    # A queue id instead of NOQUEUE: an earlier recipient of the session was accepted.
    (H + "smtpd[9]: 5B658212400: reject: RCPT from unknown[127.0.0.7]: 550 5.1.1 <x@y.test>: "
     "Recipient address rejected: User unknown; from=<a@b.test> to=<x@y.test> proto=ESMTP "
     "helo=<c.test>",
     inbound("rcpt", "550", "5.1.1", PERM, MS, "recipient")),
    # DNS lists: the name is a label only when configured.
    (H + "smtpd[9]: NOQUEUE: reject: RCPT from unknown[192.0.2.1]: 554 5.7.1 Service "
     "unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org; "
     "https://www.spamhaus.org/query/ip/192.0.2.1; from=<a@b.test> to=<c@d.test> proto=ESMTP "
     "helo=<x>",
     inbound("rcpt", "554", "5.7.1", PERM, MS, "rbl", rbl="zen.spamhaus.org")),
    (H + "smtpd[9]: NOQUEUE: reject: RCPT from unknown[2001:db8::1]: 554 5.7.1 Service "
     "unavailable; Sender address [a@spam.test] blocked using dbl.example.net; "
     "from=<a@spam.test> to=<c@d.test> proto=ESMTP helo=<x>",
     inbound("rcpt", "554", "5.7.1", PERM, MS, "rbl", rbl="other")),
    # postscreen: comma-separated fields, the client as [address]:port.
    (H + "postscreen[77]: NOQUEUE: reject: RCPT from [192.0.2.9]:51234: 550 5.7.1 Service "
     "unavailable; client [192.0.2.9] blocked using zen.spamhaus.org; from=<a@b.test>, "
     "to=<c@d.test>, proto=ESMTP, helo=<x>",
     inbound("rcpt", "550", "5.7.1", PERM, MS, "rbl", program="postscreen",
             rbl="zen.spamhaus.org")),
    (H + "postscreen[77]: NOQUEUE: reject: RCPT from [192.0.2.9]:51234: 450 4.3.2 Service "
     "currently unavailable; from=<a@b.test>, to=<c@d.test>, proto=ESMTP, helo=<x>",
     inbound("rcpt", "450", "4.3.2", TEMP, MS, "postscreen", program="postscreen")),
    (H + "smtpd[9]: NOQUEUE: reject: RCPT from unknown[192.0.2.1]: 503 5.5.0 <c@d.test>: "
     "Data command rejected: Improper use of SMTP command pipelining; from=<a@b.test> "
     "to=<c@d.test> proto=SMTP helo=<x>",
     inbound("rcpt", "503", "5.5.0", PERM, "syntax", "protocol")),
    (H + "smtpd[9]: NOQUEUE: reject: CONNECT from unknown[192.0.2.1]: 421 4.7.0 x: Too many "
     "connections; proto=SMTP",
     inbound("connect", "421", "4.7.0", TEMP, "connections", "other")),
    # milter: smtpd logs the code before the message; cleanup logs only the DSN after it.
    (H + "smtpd[9]: NOQUEUE: milter-reject: RCPT from unknown[192.0.2.1]: 550 5.7.1 Command "
     "rejected; from=<a@b.test> to=<c@d.test> proto=ESMTP helo=<x>",
     inbound("rcpt", "550", "5.7.1", PERM, MS, "milter")),
    (H + "cleanup[9]: 4F1E2C1A2B: milter-reject: END-OF-MESSAGE from unknown[192.0.2.1]: "
     "4.7.1 Service unavailable - try again later; from=<a@b.test> to=<c@d.test> proto=ESMTP "
     "helo=<x>",
     inbound("end_of_data", "451", "4.7.1", TEMP, MS, "milter", program="cleanup")),
    (H + "cleanup[9]: 4F1E2C1A2B: reject: header Subject: buy now from unknown[192.0.2.1]; "
     "from=<a@b.test> to=<c@d.test> proto=ESMTP helo=<x>: 5.7.1 message content rejected",
     inbound("end_of_data", "550", "5.7.1", PERM, MS, "content", program="cleanup")),
]

SESSION_LINES = [
    (H + "smtpd[18035]: lost connection after CONNECT from unknown[127.0.0.5]",
     LogEvent(SESSION_END, "smtpd", "inbound", "connect", "lost_connection")),
    (H + "smtpd[18035]: lost connection after RCPT from unknown[127.0.0.7]",
     LogEvent(SESSION_END, "smtpd", "inbound", "rcpt", "lost_connection")),
    (H + "smtpd[18035]: timeout after EHLO from unknown[127.0.0.7]",
     LogEvent(SESSION_END, "smtpd", "inbound", "ehlo", "timeout")),
    (H + "smtpd[18035]: lost connection after DATA (0 bytes) from unknown[127.0.0.7]",
     LogEvent(SESSION_END, "smtpd", "inbound", "data", "lost_connection")),
    (H + "smtpd[18035]: timeout after END-OF-MESSAGE from unknown[127.0.0.7]",
     LogEvent(SESSION_END, "smtpd", "inbound", "end_of_data", "timeout")),
    (H + "smtpd[18035]: too many errors after RCPT from unknown[127.0.0.7]",
     LogEvent(SESSION_END, "smtpd", "inbound", "rcpt", "too_many_errors")),
]

NONE = "none"
OUTBOUND_LINES = [
    (H + "smtp[18081]: 5CDD12122E2: to=<ok@replies.remote.test>, relay=127.0.0.1[127.0.0.1]:40327, "
     "delay=0.01, delays=0/0.01/0/0, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as TEST1)",
     outbound("end_of_data", "sent", "250", "2.0.0", OK, MS, "delivered", "replies.remote.test")),
    (H + "smtp[18081]: 5E82C212401: to=<greylist@replies.remote.test>, relay=127.0.0.1[127.0.0.1]:40327,"
     " delay=0.02, delays=0/0.01/0/0.01, dsn=4.2.0, status=deferred (host 127.0.0.1[127.0.0.1] "
     "said: 450 4.2.0 Greylisted, please try again later (in reply to RCPT TO command))",
     outbound("rcpt", "deferred", "450", "4.2.0", TEMP, MS, "remote_reply", "replies.remote.test")),
    (H + "smtp[18083]: 6206B212406: to=<full@replies.remote.test>, relay=127.0.0.1[127.0.0.1]:40327, "
     "delay=0.01, delays=0/0/0/0, dsn=5.2.2, status=bounced (host 127.0.0.1[127.0.0.1] said: 552 "
     "5.2.2 Mailbox full (in reply to RCPT TO command))",
     outbound("rcpt", "bounced", "552", "5.2.2", PERM, MS, "remote_reply", "replies.remote.test")),
    (H + "smtp[18081]: 661682122E2: to=<user@content.remote.test>, relay=127.0.0.1[127.0.0.1]:33245,"
     " delay=0.01, delays=0.01/0/0/0, dsn=5.7.1, status=bounced (host 127.0.0.1[127.0.0.1] said: "
     "554 5.7.1 Message rejected as spam (in reply to end of DATA command))",
     outbound("end_of_data", "bounced", "554", "5.7.1", PERM, MS, "remote_reply")),
    (H + "smtp[18083]: 66EB0212409: to=<user@busy.remote.test>, relay=127.0.0.1[127.0.0.1]:42511, "
     "delay=0, delays=0/0/0/0, dsn=4.7.0, status=deferred (host 127.0.0.1[127.0.0.1] refused to "
     "talk to me: 421 4.7.0 Too many connections, slow down)",
     outbound("banner", "deferred", "421", "4.7.0", TEMP, "connections", "remote_reply")),
    (H + "smtp[18083]: 6939721240D: to=<user@sender.remote.test>, relay=127.0.0.1[127.0.0.1]:38185, "
     "delay=0, delays=0/0/0/0, dsn=5.7.1, status=bounced (host 127.0.0.1[127.0.0.1] said: 550 "
     "5.7.1 Service unavailable; client blocked using rbl.remote.test (in reply to MAIL FROM "
     "command))",
     outbound("mail", "bounced", "550", "5.7.1", PERM, MS, "remote_reply")),
    (H + "smtp[18081]: 69C6C21240F: to=<user@refused.remote.test>, relay=none, delay=0, "
     "delays=0/0/0/0, dsn=4.4.1, status=deferred (connect to 127.0.0.1[127.0.0.1]:40161: "
     "Connection refused)",
     outbound("connect", "deferred", "000", "4.4.1", NONE, NONE, "connection_refused")),
    (H + "smtp[18083]: 6A75A21240D: to=<user@silent.remote.test>, relay=127.0.0.1[127.0.0.1]:37161, "
     "delay=2, delays=0/0/2/0, dsn=4.4.2, status=deferred (conversation with 127.0.0.1[127.0.0.1] "
     "timed out while receiving the initial server greeting)",
     outbound("banner", "deferred", "000", "4.4.2", NONE, NONE, "timeout")),
    # A multi-line remote reply is joined into one line carrying every line's code.
    (H + "smtp[5]: 1A2B3C: to=<u@Gmail.com>, relay=mx.gmail.test[192.0.2.5]:25, delay=1, "
     "delays=0/0/0.5/0.5, dsn=5.7.1, status=bounced (host mx.gmail.test[192.0.2.5] said: "
     "550-5.7.1 [192.0.2.1] Our system has detected that this message is 550-5.7.1 likely "
     "unsolicited mail. 550 5.7.1 Please visit the help center. (in reply to end of DATA "
     "command))",
     outbound("end_of_data", "bounced", "550", "5.7.1", PERM, MS, "remote_reply", "gmail.com")),
    (H + "smtp[5]: 1A2B3C: to=<u@x.test>, relay=none, delay=30, delays=0/0/30/0, dsn=4.4.1, "
     "status=deferred (connect to mx.x.test[192.0.2.7]:25: Connection timed out)",
     outbound("connect", "deferred", "000", "4.4.1", NONE, NONE, "connect_timeout")),
    (H + "smtp[5]: 1A2B3C: to=<u@x.test>, relay=none, delay=0, delays=0/0/0/0, dsn=4.4.3, "
     "status=deferred (Host or domain name not found. Name service error for name=x.test "
     "type=MX: Host not found, try again)",
     outbound("resolve", "deferred", "000", "4.4.3", NONE, NONE, "dns_failure")),
    (H + "smtp[5]: 1A2B3C: to=<u@x.test>, relay=mx.x.test[192.0.2.7]:25, delay=1, "
     "delays=0/0/1/0, dsn=4.7.5, status=deferred (Cannot start TLS: handshake failure)",
     outbound("starttls", "deferred", "000", "4.7.5", NONE, NONE, "tls_failure")),
    (H + "smtp[5]: 1A2B3C: to=<u@x.test>, relay=mx.x.test[192.0.2.7]:25, delay=1, "
     "delays=0/0/1/0, dsn=4.4.2, status=deferred (lost connection with mx.x.test[192.0.2.7] "
     "while sending RCPT TO)",
     outbound("rcpt", "deferred", "000", "4.4.2", NONE, NONE, "lost_connection")),
    (H + "smtp[5]: 1A2B3C: to=<u@x.test>, relay=none, delay=0, delays=0/0/0/0, dsn=4.4.1, "
     "status=deferred (delivery temporarily suspended: connect to mx.x.test[192.0.2.7]:25: "
     "Connection refused)",
     outbound("none", "deferred", "000", "4.4.1", NONE, NONE, "suspended")),
    (H + "lmtp[5]: 1A2B3C: to=<u@replies.remote.test>, relay=mail.test[private/dovecot-lmtp], "
     "delay=0.1, delays=0/0/0/0.1, dsn=2.0.0, status=sent (250 2.0.0 <u@replies.remote.test> "
     "x Saved)",
     outbound("end_of_data", "sent", "250", "2.0.0", OK, MS, "delivered", "replies.remote.test",
              program="lmtp")),
    (H + "qmgr[5]: 1A2B3C: from=<a@b.test>, status=expired, returned to sender",
     reply("outbound", "none", "expired", "000", "", NONE, NONE, "expired", program="qmgr")),
    # A reply from one MX of several, before the delivery's final status.
    (H + "smtp[5]: 1A2B3C: host mx1.x.test[192.0.2.7] refused to talk to me: 421 4.7.0 Try "
     "again later",
     reply("outbound", "banner", "attempt", "421", "4.7.0", TEMP, "connections", "remote_reply",
           program="smtp")),
    (H + "smtp[18081]: connect to 127.0.0.1[127.0.0.1]:40161: Connection refused",
     LogEvent(CONNECT_FAILURE, "smtp", "outbound", "connect", reason="connection_refused")),
    (H + "smtp[18081]: connect to mx.x.test[2001:db8::5]:25: No route to host",
     LogEvent(CONNECT_FAILURE, "smtp", "outbound", "connect", reason="no_route")),
]

UNRELATED_LINES = [
    (H + "smtpd[18035]: connect from unknown[127.0.0.7]", "postfix/smtpd"),
    (H + "smtpd[18035]: disconnect from unknown[127.0.0.7] ehlo=1 mail=1/3 rcpt=0/5 commands=4/11",
     "postfix/smtpd"),
    (H + "qmgr[18033]: 5CDD12122E2: removed", "postfix/qmgr"),
    (H + "cleanup[18041]: 5CDD12122E2: message-id=<>", "postfix/cleanup"),
    (H + "discard[18087]: 639A5212409: to=<root@mx.smtpmon.test>, relay=none, delay=0.01, "
     "delays=0/0.01/0/0, dsn=2.0.0, status=sent (test instance)", "postfix/discard"),
    (H + "smtpd[9]: NOQUEUE: reject_warning: RCPT from unknown[192.0.2.1]: 450 4.7.1 x; "
     "from=<a@b.test> to=<c@d.test>", "postfix/smtpd"),
    ("Dec 03 08:13:59 mx dovecot: imap-login: Login: user=<u>", "dovecot"),
    ("Dec  3 08:13:59 mx opendkim[44]: 1A2B: DKIM-Signature field added", "opendkim"),
]


def assert_in_vocabulary(event: LogEvent) -> None:
    """Every label value of an event comes from the documented, bounded vocabularies."""
    assert event.kind in KINDS
    if event.kind == REPLY:
        assert event.direction in ("inbound", "outbound")
        assert event.stage in LOG_STAGES
        assert event.status in STATUSES
        assert event.reason in (INBOUND_REASONS if event.direction == "inbound" else OUTBOUND_REASONS)
        assert event.code == "000" or 200 <= int(event.code) <= 599
        assert event.reply_class in (*CLASS_NAMES.values(), PROTOCOL_ERROR, NO_REPLY)
        assert event.category in (*CATEGORY_NAMES.values(), PROTOCOL_ERROR, NO_REPLY)
    elif event.kind == SESSION_END:
        assert (event.stage, event.status) in {(stage, status) for stage in LOG_STAGES
                                               for status in SESSION_END_STATUSES}
    elif event.kind == CONNECT_FAILURE:
        assert event.reason in OUTBOUND_REASONS
    elif event.kind == MALFORMED:
        assert event.reason in MALFORMED_REASONS


@pytest.mark.parametrize("line, expected", INBOUND_LINES + SESSION_LINES + OUTBOUND_LINES)
def test_reply_lines(line, expected):
    event = PARSER.parse_line(line)
    assert event == expected
    assert_in_vocabulary(event)


@pytest.mark.parametrize("line, program", UNRELATED_LINES)
def test_lines_not_about_replies_are_counted_by_program(line, program):
    assert PARSER.parse_line(line) == LogEvent(UNRELATED, program=program)


def test_rfc3339_timestamps_parse_as_traditional_ones():
    traditional = INBOUND_LINES[4][0]
    message = traditional.split(" mx ", 1)[1]
    for stamp in ("2026-12-03T08:13:59.123456+00:00", "2026-12-03T08:13:59Z",
                  "2026-12-03T09:13:59.123+0100", "2026-12-03T08:13:59"):
        assert PARSER.parse_line(f"{stamp} mx {message}") == INBOUND_LINES[4][1]
    assert line_timestamp("2026-12-03T09:13:59.5+01:00 mx postfix/smtpd[1]: x") == 1796285639.5
    assert line_timestamp("2026-12-03T08:13:59Z mx x: y") == 1796285639.0


def test_traditional_timestamp_year_is_the_one_not_in_the_future():
    january_1st = 1798761600.0  # 2027-01-01T00:00:00Z
    stamp = line_timestamp("Dec 31 23:59:00 mx postfix/smtpd[1]: x", now=january_1st)
    assert january_1st - 2 * 86400 < stamp < january_1st + 86400


@pytest.mark.parametrize("line", [
    "", "hello", "Dec 03 08:13:59 mx", "Dex 03 08:13:59 mx postfix/smtpd[1]: x",
    "\x00\x01\x02 binary", "Dec 03 08:13:59 mx postfix/smtpd[1] no colon",
])
def test_lines_without_a_syslog_header_are_malformed(line):
    assert PARSER.parse_line(line) == LogEvent(MALFORMED, reason="no_header")


@pytest.mark.parametrize("line", [
    # cut mid-way: shaped like a reject or a delivery status, but incomplete
    H + "smtpd[18035]: NOQUEUE: reject: RCPT from unknown[127.0.0.7]: 55",
    H + "smtp[18081]: 5E82C212401: to=<greylist@replies.remote.test>, relay=127.0.0.1[127.0.0.1]:4, "
    "dsn=4.2.0, status=deferred (host 127.0.0.1[127.0.0.1] said: 450 4.2.0 Greyl",
])
def test_reply_lines_cut_short_are_malformed(line):
    assert PARSER.parse_line(line) == LogEvent(MALFORMED, reason="unrecognized")


def test_enhanced_code_of_another_class_than_the_code_is_dropped():
    line = (H + "smtpd[9]: NOQUEUE: reject: RCPT from x[192.0.2.1]: 554 4.7.1 <c@d.test>: "
            "Recipient address rejected: odd; from=<a@b.test> to=<c@d.test> proto=ESMTP helo=<x>")
    assert PARSER.parse_line(line) == inbound("rcpt", "554", "", PERM, MS, "recipient")


def test_journal_messages_parse_without_a_header():
    line, expected = INBOUND_LINES[5]
    message = line.split(": ", 1)[1]
    assert PARSER.parse_message("postfix/smtpd", message) == expected
    assert PARSER.parse_message("postfix-out/smtp", OUTBOUND_LINES[1][0].split(": ", 1)[1]) == \
        OUTBOUND_LINES[1][1]


def test_program_labels_are_capped():
    parser = PostfixParser()
    labels = {parser.parse_line(f"Dec 03 08:13:59 mx prog{n}[1]: x").program
              for n in range(MAX_PROGRAMS * 3)}
    assert len(labels) <= MAX_PROGRAMS + 1
    assert "other" in labels


def test_enhanced_code_labels_are_capped():
    parser = PostfixParser()
    template = OUTBOUND_LINES[2][0]  # 552 5.2.2 at RCPT
    labels = {parser.parse_line(template.replace("552 5.2.2", f"552 5.7.{n}")).enhanced
              for n in range(MAX_ENHANCED_CODES + 50)}
    assert len(labels) == MAX_ENHANCED_CODES + 1
    assert OTHER in labels
    assert parser.parse_line(template.replace("552 5.2.2", "552 5.7.3")).enhanced == "5.7.3"


def test_unrelated_lines_share_one_event_object():
    first = PARSER.parse_line(UNRELATED_LINES[2][0])
    assert PARSER.parse_line(UNRELATED_LINES[2][0]) is first


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_any_bytes_never_raise(data):
    assert_in_vocabulary(PARSER.parse_line(data.decode("utf-8", "replace")))


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=400), st.sampled_from([line for line, _ in INBOUND_LINES + OUTBOUND_LINES]))
def test_real_lines_with_any_text_spliced_in_never_raise(noise, line):
    cut = len(noise) % len(line)
    for candidate in (line[:cut] + noise, line[:cut] + noise + line[cut:], noise + line):
        assert_in_vocabulary(PARSER.parse_line(candidate))
    assert_in_vocabulary(PARSER.parse_message(noise, noise))


@pytest.mark.parametrize("line, text", [
    (INBOUND_LINES[4][0], "Recipient address rejected: User unknown in local recipient table"),
    (INBOUND_LINES[9][0], "Service unavailable; Client host [192.0.2.1] blocked using "
     "zen.spamhaus.org; https://www.spamhaus.org/query/ip/192.0.2.1"),
    (INBOUND_LINES[17][0], "message content rejected"),
    (OUTBOUND_LINES[1][0], "Greylisted, please try again later"),
    (OUTBOUND_LINES[4][0], "Too many connections, slow down"),
    (OUTBOUND_LINES[6][0], "connect to 127.0.0.1[127.0.0.1]:40161: Connection refused"),
    (UNRELATED_LINES[0][0], None),
    ("garbage", None),
])
def test_reply_text_for_people(line, text):
    assert PARSER.reply_text(line) == text
