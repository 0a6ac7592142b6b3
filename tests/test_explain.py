"""`smtpmon explain` as a person runs it: a real process, its output and its exit status."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def smtpmon_explain(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "smtpmon", "explain", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_explain_a_code_prints_class_category_and_meaning():
    result = smtpmon_explain("554")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "code 554: transaction failed, or no SMTP service here (when opening the session)",
        "class 5yz permanent_negative: the command was not accepted and nothing was done",
        "category x5z mail_system: the state of the receiving mail system with respect to the "
        "requested transfer or other mail-system action",
    ]
    assert result.stderr == ""


def test_explain_a_reply_line_given_as_one_argument_or_as_words():
    quoted = smtpmon_explain("550 5.1.1 <bob@example.org>: Recipient address rejected")
    words = smtpmon_explain(*"550 5.1.1 <bob@example.org>: Recipient address rejected".split())
    assert quoted.returncode == words.returncode == 0
    assert quoted.stdout == words.stdout
    lines = quoted.stdout.splitlines()
    assert lines[0].startswith("code 550: requested action not taken: mailbox unavailable")
    assert "enhanced 5.1.1: bad destination mailbox address" in lines
    assert "enhanced subject 1: addressing" in lines


def test_explain_an_enhanced_code():
    result = smtpmon_explain("5.7.1")
    assert result.returncode == 0, result.stderr
    first_line = result.stdout.splitlines()[0]
    assert first_line == "enhanced 5.7.1: delivery not authorized, message refused"


def test_explain_garbage_says_why_in_one_line_and_exits_3():
    result = smtpmon_explain("600")
    assert result.returncode == 3
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(
        "smtpmon explain: cannot explain '600': reply code 600 outside 100-599"
    )


def test_explain_without_text_is_a_usage_error_with_exit_3():
    result = smtpmon_explain()
    assert result.returncode == 3
    assert "the following arguments are required: TEXT" in result.stderr


# -- whatever a mail admin pastes from a log ------------------------------------------------------
SAMPLE_LOG = REPO / "tests" / "data" / "postfix-mail.log"  # a real Postfix's log


def explained(text: str, capsys) -> tuple[int, list[str]]:
    from smtpmon.cli import main

    code = main(["explain", text])
    return code, capsys.readouterr().out.splitlines()


def test_a_postfix_smtpd_reject_line_with_a_syslog_timestamp(capsys):
    code, lines = explained(
        "Dec  3 07:43:10 mx postfix/smtpd[5230]: NOQUEUE: reject: RCPT from unknown"
        "[192.0.2.7]:50622: 450 4.2.0 <x@example.org>: Recipient address rejected: Greylisted;"
        " from=<a@example.net> to=<x@example.org> proto=ESMTP helo=<client>", capsys)
    assert code == 0
    assert lines[0] == ("mail log: inbound smtpd reply, stage rcpt, status reject, "
                        "reason recipient")
    assert "-- 450 4.2.0" in lines
    assert lines.count("-- 450 4.2.0") == 1  # not the port, the pid or the time
    assert any(line.startswith("code 450:") for line in lines)
    assert any(line.startswith("enhanced 4.2.0:") for line in lines)


def test_an_outbound_deferral_with_an_iso_timestamp(capsys):
    code, lines = explained(
        "2026-12-03T07:43:12.123456+00:00 mx postfix/smtp[5231]: 3F2A1C0: to=<u@example.com>, "
        "relay=mx.example.com[192.0.2.9]:25, delay=1.2, delays=0.1/0/0.5/0.6, dsn=4.7.0, "
        "status=deferred (host mx.example.com[192.0.2.9] said: 421 4.7.0 Try again later "
        "(in reply to end of DATA command))", capsys)
    assert code == 0
    assert lines[0] == ("mail log: outbound smtp reply, stage end_of_data, status deferred, "
                        "reason remote_reply")
    assert [line for line in lines if line.startswith("-- ")] == ["-- 421 4.7.0"]


def test_dsn_alone_and_a_multiline_first_line(capsys):
    assert explained("dsn=5.1.1", capsys) == (0, [
        "-- 5.1.1",
        "enhanced 5.1.1: bad destination mailbox address",
        "enhanced class 5 permanent_failure: not likely to be resolved by sending the message "
        "again in the same form: the message or the destination must change",
        "enhanced subject 1: addressing"])
    code, lines = explained("250-2.0.0 ok", capsys)
    assert code == 0 and lines[0] == "-- 250 2.0.0"
    assert any(line.startswith("code 250:") for line in lines)


def test_several_codes_on_one_line_are_each_explained(capsys):
    code, lines = explained("host mx.example.com said: 550-5.7.1 listed at a.example 550 5.7.1 "
                            "see https://a.example/x; then 452 4.2.2 mailbox full, dsn=4.2.2",
                            capsys)
    assert code == 0
    assert [line for line in lines if line.startswith("-- ")] == ["-- 550 5.7.1", "-- 452 4.2.2"]


def test_every_reply_in_a_real_postfix_log_is_explained(capsys):
    """The README's promise: any code from a mail log can be explained."""
    from smtpmon.maillog.postfix import PostfixParser

    parser = PostfixParser()
    checked = 0
    for line in SAMPLE_LOG.read_text().splitlines():
        event = parser.parse_line(line)
        if event.kind != "reply" or event.code == "000":
            continue
        code, lines = explained(line, capsys)
        assert code == 0, line
        assert f"-- {event.code} {event.enhanced}" in lines, line
        checked += 1
    assert checked >= 15  # the sample has inbound rejects and outbound replies of many kinds


def test_text_without_any_code_still_exits_3(capsys):
    from smtpmon.cli import main

    assert main(["explain", "Dec  3 07:43:10 mx postfix/qmgr[99]: 3F2A1C0: removed"]) == 3
    assert "cannot explain" in capsys.readouterr().err
