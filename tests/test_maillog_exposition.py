"""The mail log's families on /metrics, rendered from a reader snapshot: label sets, the
reader's health, `promtool check metrics`, and the cost of a scrape with thousands of series."""

from __future__ import annotations

import subprocess
import time

from helpers import sample_value, samples
from prometheus_client.parser import text_string_to_metric_families
from prometheus_tools import require_tool

from smtpmon.exposition.maillog import render_maillog
from smtpmon.exposition.metrics import metrics_chunks
from smtpmon.exposition.state import ExporterState
from smtpmon.maillog.events import LogEvent, Tally
from smtpmon.maillog.health import ERROR_KINDS, ReaderHealth
from smtpmon.maillog.postfix import PostfixParser
from smtpmon.maillog.reader import ReaderSnapshot

LINES = [
    "Dec  3 07:43:10 mx postfix/smtpd[5230]: NOQUEUE: reject: RCPT from unknown[192.0.2.7]: "
    "554 5.7.1 <x@remote.test>: Relay access denied; from=<a@b.test> to=<x@remote.test> "
    "proto=ESMTP helo=<client>",
    "Dec  3 07:43:11 mx postfix/smtpd[5230]: lost connection after RCPT from unknown[192.0.2.7]",
    "Dec  3 07:43:12 mx postfix/smtp[5231]: 3F2A1C0: to=<u@gmail.com>, relay=mx.gmail.com"
    "[192.0.2.9]:25, delay=1, delays=0/0/0.5/0.5, dsn=5.7.1, status=bounced (host mx.gmail.com"
    "[192.0.2.9] said: 550 5.7.1 Our address is listed (in reply to MAIL FROM command))",
    "Dec  3 07:43:13 mx postfix/smtp[5232]: connect to mx.x.test[192.0.2.10]:25: "
    "Connection refused",
    "Dec  3 07:43:14 mx postfix/qmgr[99]: 3F2A1C0: removed",
    "not a log line \"with\" quotes\\",
]


def snapshot_of(lines: list[str], health: ReaderHealth | None = None) -> ReaderSnapshot:
    parser, tally = PostfixParser(domains=["gmail.com"]), Tally()
    for line in lines:
        tally.add(parser.parse_line(line))
    return ReaderSnapshot(tally.snapshot(), health or ReaderHealth(
        source="/var/log/mail.log", lines_read=len(lines), bytes_read=1000, bytes_behind=10,
        last_line_timestamp=1764747794.0, rotations=1, errors={"permission_denied": 2}))


def test_events_by_family_with_bounded_labels():
    text = render_maillog(snapshot_of(LINES)).decode()
    assert sample_value(
        text, "smtpmon_maillog_replies_total", direction="inbound", program="smtpd", stage="rcpt",
        status="reject", code="554", enhanced_code="5.7.1", **{"class": "permanent_negative"},
        category="mail_system", reason="relay_access") == 1
    assert sample_value(
        text, "smtpmon_maillog_replies_total", direction="outbound", program="smtp",
        stage="mail", status="bounced", code="550", enhanced_code="5.7.1",
        reason="remote_reply", domain="gmail.com") == 1
    assert sample_value(text, "smtpmon_maillog_session_ends_total", direction="inbound",
                        program="smtpd", stage="rcpt", reason="lost_connection") == 1
    assert sample_value(text, "smtpmon_maillog_connect_failures_total", program="smtp",
                        reason="connection_refused") == 1
    assert sample_value(text, "smtpmon_maillog_lines_total", kind="unrelated",
                        program="postfix/qmgr") == 1
    assert sample_value(text, "smtpmon_maillog_lines_total", kind="malformed",
                        reason="no_header") == 1
    lines = sum(value for name, _, value in samples(text) if name == "smtpmon_maillog_lines_total")
    assert lines == len(LINES)  # every line counted once, whatever it was
    # No reply text, address or host name ever becomes a label value.
    for _, labels, _ in samples(text):
        for value in labels.values():
            assert "@" not in value and "listed" not in value and "192.0.2" not in value


def test_reader_health():
    text = render_maillog(snapshot_of([])).decode()
    source = {"source": "/var/log/mail.log"}
    assert sample_value(text, "smtpmon_maillog_reader_up", **source) == 1
    assert sample_value(text, "smtpmon_maillog_reader_behind_bytes", **source) == 10
    assert sample_value(text, "smtpmon_maillog_reader_read_bytes_total", **source) == 1000
    assert sample_value(text, "smtpmon_maillog_reader_rotations_total", **source) == 1
    assert sample_value(text, "smtpmon_maillog_reader_last_line_timestamp_seconds",
                        **source) == 1764747794.0
    # Every error kind is there from the start (at zero), so rules can use increase().
    for kind in ERROR_KINDS:
        expected = 2 if kind == "permission_denied" else 0
        assert sample_value(text, "smtpmon_maillog_reader_errors_total", kind=kind,
                            **source) == expected
    failing = ReaderHealth(source="journal", condition="journal_failed",
                           errors={"journal_failed": 1})
    text = render_maillog(snapshot_of([], failing)).decode()
    assert sample_value(text, "smtpmon_maillog_reader_up", source="journal") == 0
    assert sample_value(text, "smtpmon_maillog_reader_condition", source="journal",
                        kind="journal_failed") == 1
    assert sample_value(text, "smtpmon_maillog_reader_behind_bytes", source="journal") is None


def test_promtool_accepts_the_page_with_maillog():
    promtool = require_tool("promtool")
    page = b"".join(metrics_chunks([], ExporterState(),
                                   maillog=render_maillog(snapshot_of(LINES))))
    list(text_string_to_metric_families(page.decode()))
    done = subprocess.run([promtool, "check", "metrics"], input=page, capture_output=True,
                          timeout=30)
    assert done.returncode == 0, (done.stdout + done.stderr).decode()


def many_series(count: int) -> ReaderSnapshot:
    """`count` distinct reply events (a busy host with many configured domains)."""
    counts: dict[LogEvent, int] = {}
    stages = ("connect", "ehlo", "mail", "rcpt", "data", "end_of_data")
    for number in range(count):
        code = ("421", "450", "451", "550", "554", "552")[number % 6]
        counts[LogEvent("reply", "smtp", "outbound", stages[number // 6 % 6], "deferred", code,
                        f"{code[0]}.{number % 8}.{number % 7}", "transient_negative",
                        "mail_system", "remote_reply", f"d{number // 36}.test", "")] = number
    return ReaderSnapshot(counts, ReaderHealth(source="/var/log/mail.log"))


def test_a_scrape_of_2000_series_stays_cheap():
    snapshot = many_series(2000)
    render_maillog(snapshot)  # the label text of each event is built once, then reused
    started = time.perf_counter()
    for _ in range(20):
        text = render_maillog(snapshot)
    per_scrape = (time.perf_counter() - started) / 20
    assert text.count(b"\nsmtpmon_maillog_replies_total{") == 2000
    assert per_scrape < 0.05, per_scrape  # figures: benchmarks/README.md
