"""The one-shot summary of a log file (what `smtpmon log-report FILE` will print)."""

from __future__ import annotations

from test_maillog_parser import INBOUND_LINES, OUTBOUND_LINES, UNRELATED_LINES

from smtpmon.maillog.postfix import PostfixParser
from smtpmon.maillog.report import ReportRow, format_summary, summarize_file

UNKNOWN_USER = INBOUND_LINES[4][0]
GREYLISTED_OUT = OUTBOUND_LINES[1][0]


def test_summary_of_a_log_file(tmp_path):
    log = tmp_path / "mail.log"
    lines = [
        UNKNOWN_USER,
        UNKNOWN_USER.replace("nosuchuser@", "someoneelse@"),  # another address, the same text
        UNKNOWN_USER.replace("User unknown in local recipient table", "Mailbox disabled"),
        GREYLISTED_OUT, GREYLISTED_OUT,
        UNRELATED_LINES[0][0], UNRELATED_LINES[2][0],
        "not a log line",
    ]
    log.write_bytes("\n".join(lines).encode() + b"\n\xff\xfe garbage\n")
    summary = summarize_file(str(log), PostfixParser())
    assert summary.lines == 9
    assert summary.replies == (
        ReportRow("inbound", "rcpt", "reject", "550", "5.1.1", "permanent_negative",
                  "mail_system", "recipient", 3,
                  (("Recipient address rejected: User unknown in local recipient table", 2),
                   ("Recipient address rejected: Mailbox disabled", 1))),
        ReportRow("outbound", "rcpt", "deferred", "450", "4.2.0", "transient_negative",
                  "mail_system", "remote_reply", 2, (("Greylisted, please try again later", 2),)),
    )
    assert summary.unrelated == (("postfix/smtpd", 1), ("postfix/qmgr", 1))
    assert summary.malformed == (("no_header", 2),)

    text = format_summary(summary)
    assert text.startswith("9 lines\n")
    assert "inbound    rcpt   reject    550   5.1.1" in text
    assert "2 × Recipient address rejected: User unknown in local recipient table" in text
    assert "malformed lines:\n         2  no_header\n" in text


def test_summary_of_an_empty_log(tmp_path):
    log = tmp_path / "mail.log"
    log.touch()
    assert format_summary(summarize_file(str(log), PostfixParser())) == "0 lines\n"
