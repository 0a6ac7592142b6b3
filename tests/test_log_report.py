"""`smtpmon log-report`: a real Postfix's log (tests/data/postfix-mail.log, written by the
Postfix of tests/postfix_traffic.py) summarized as tables and as JSON; unreadable input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE_LOG = REPO / "tests" / "data" / "postfix-mail.log"


def log_report(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "smtpmon", "log-report", *args], cwd=REPO,
                          capture_output=True, input=stdin, timeout=30)


def test_json_summary_counts_every_line_once():
    result = log_report("--json", "--domain", "replies.remote.test", str(SAMPLE_LOG))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    lines = len(SAMPLE_LOG.read_text().splitlines())
    assert report["lines"] == lines
    counted = (sum(row["count"] for row in report["replies"])
               + sum(row["count"] for row in report["session_ends"])
               + sum(row["count"] for row in report["connect_failures"])
               + sum(row["count"] for row in report["unrelated"])
               + sum(row["count"] for row in report["malformed"]))
    assert counted == lines
    relay = [row for row in report["replies"] if row["reason"] == "relay_access"]
    assert relay == [{"direction": "inbound", "stage": "rcpt", "status": "reject", "code": "554",
                      "enhanced_code": "5.7.1", "class": "permanent_negative",
                      "category": "mail_system", "reason": "relay_access", "count": 1,
                      "top_texts": [{"text": "Relay access denied", "count": 1}]}]
    assert {(row["stage"], row["code"]) for row in report["replies"]
            if row["direction"] == "outbound"} >= {("banner", "421"), ("rcpt", "450"),
                                                   ("mail", "550"), ("connect", "000")}


def test_tables_and_standard_input_agree():
    from_file = log_report(str(SAMPLE_LOG))
    from_stdin = log_report("-", stdin=SAMPLE_LOG.read_bytes())
    assert from_file.returncode == from_stdin.returncode == 0
    assert from_file.stdout == from_stdin.stdout
    text = from_file.stdout.decode()
    assert text.startswith(f"{len(SAMPLE_LOG.read_text().splitlines())} lines\n")
    assert "sessions ended without QUIT (stage, how):" in text
    assert "Recipient address rejected: User unknown in local recipient table" in text


def test_hostile_input_is_counted_as_malformed(tmp_path):
    hostile = tmp_path / "hostile.log"
    hostile.write_bytes(b"\x00\xff\xfe binary\n" + b"x" * 1_000_000 + b"\n"
                        + SAMPLE_LOG.read_bytes().splitlines()[0] + b"\n")
    result = log_report("--json", str(hostile))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["lines"] == 3
    assert {row["reason"] for row in report["malformed"]} == {"no_header", "too_long"}


def test_an_unreadable_file_exits_2_and_says_why(tmp_path):
    result = log_report(str(tmp_path / "missing.log"))
    assert result.returncode == 2
    assert result.stdout == b""
    assert result.stderr.decode() == (
        f"smtpmon log-report: cannot read {tmp_path / 'missing.log'}: No such file or directory\n")
    assert log_report(str(tmp_path)).returncode == 2  # a directory
