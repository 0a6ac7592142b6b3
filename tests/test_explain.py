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
