"""Following a real journal file with journalctl.

The journal file is written for real by `systemd-journal-remote` (Debian package
systemd-journal-remote) from a stream in the journal export format, which is how entries get
into a journal file without a journald: this container has no systemd as PID 1, so neither a
private journald nor systemd-cat can be used. journalctl then reads the file with `--file`,
exactly as it reads the system journal.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import time

import pytest
from helpers import unavailable
from test_maillog_parser import INBOUND_LINES, OUTBOUND_LINES

from smtpmon.maillog.events import MALFORMED, REPLY, LogEvent, Tally
from smtpmon.maillog.journal import JournalFollower
from smtpmon.maillog.postfix import PostfixParser

JOURNAL_REMOTE = "/lib/systemd/systemd-journal-remote"
PARSER = PostfixParser(domains=["replies.remote.test"])
WAIT_SECONDS = 15
BOOT_ID = "0123456789abcdef0123456789abcdef"


def require_journal_tools() -> None:
    missing = [tool for tool in (JOURNAL_REMOTE, shutil.which("journalctl"))
               if tool is None or not os.path.exists(tool)]
    if not missing:
        return
    reason = "needs journalctl and systemd-journal-remote (apt-get install systemd-journal-remote)"
    unavailable(f"this test {reason}")


def entry(program: str, message: str | bytes, sequence: int) -> bytes:
    """One entry in the journal export format; a bytes MESSAGE is written as a binary field."""
    stamp = int(time.time() * 1e6) + sequence
    fields = [f"__REALTIME_TIMESTAMP={stamp}", f"__MONOTONIC_TIMESTAMP={stamp}",
              f"_BOOT_ID={BOOT_ID}", f"SYSLOG_IDENTIFIER={program}", "_PID=4242", "PRIORITY=6"]
    data = "".join(field + "\n" for field in fields).encode()
    if isinstance(message, bytes):
        data += b"MESSAGE\n" + struct.pack("<Q", len(message)) + message + b"\n"
    else:
        data += f"MESSAGE={message}\n".encode()
    return data + b"\n"


def write_journal(path, entries: list[tuple[str, str | bytes]], first: int = 0) -> None:
    """Append entries to the journal file at `path` (created on first use)."""
    stream = b"".join(entry(program, message, first + n) for n, (program, message) in enumerate(entries))
    subprocess.run([JOURNAL_REMOTE, f"--output={path}", "-"], input=stream, check=True,
                   capture_output=True, timeout=20)


def as_entry(line: str) -> tuple[str, str]:
    """A syslog line's program and message, as the journal keeps them."""
    header, message = line.split(": ", 1)
    return header.rsplit(" ", 1)[1].split("[", 1)[0], message


REJECT, REJECT_EVENT = as_entry(INBOUND_LINES[4][0]), INBOUND_LINES[4][1]
DEFER, DEFER_EVENT = as_entry(OUTBOUND_LINES[1][0]), OUTBOUND_LINES[1][1]


def poll_until(follower: JournalFollower, tally: Tally, total: int) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while sum(tally.counts.values()) < total and time.monotonic() < deadline:
        follower.poll(PARSER, tally)
        time.sleep(0.05)
    follower.poll(PARSER, tally)  # nothing more arrives


@pytest.fixture
def journal(tmp_path):
    require_journal_tools()
    return tmp_path / "postfix.journal"


def test_journal_entries_are_followed_and_resumed_by_cursor(journal, tmp_path):
    state = tmp_path / "position.json"
    write_journal(journal, [REJECT, DEFER, ("dovecot", "imap-login: Login: user=<u>")])
    total = Tally()
    first = JournalFollower(journal_file=str(journal), state_file=str(state), from_start=True)
    try:
        poll_until(first, total, 2)
        write_journal(journal, [DEFER, ("postfix/smtpd", b"NOQUEUE: \xff\xfe binary \x01")], 10)
        poll_until(first, total, 4)
    finally:
        first.close()
    assert json.loads(state.read_text())["cursor"].startswith("s=")

    write_journal(journal, [REJECT, REJECT], 20)  # while smtpmon was stopped
    second = JournalFollower(journal_file=str(journal), state_file=str(state))
    try:
        poll_until(second, total, 6)
        health = second.health()
    finally:
        second.close()
    assert total.counts == {
        REJECT_EVENT: 3,
        DEFER_EVENT: 2,
        # Not UTF-8: journalctl gives the bytes as an array; decoded with replacement, the
        # message is an ordinary smtpd line that is not about replies.
        LogEvent("unrelated", program="postfix/smtpd"): 1,
    }  # dovecot is not a Postfix identifier: journalctl never gave it
    assert health.lines_read == 2 and health.condition is None
    assert health.last_line_timestamp == pytest.approx(time.time(), abs=60)


def test_first_start_begins_at_the_end_of_the_journal(journal):
    write_journal(journal, [REJECT, REJECT])
    tally = Tally()
    follower = JournalFollower(journal_file=str(journal))
    try:
        follower.poll(PARSER, tally)
        time.sleep(0.5)
        follower.poll(PARSER, tally)  # journalctl is at the end and waiting
        write_journal(journal, [DEFER], 10)
        poll_until(follower, tally, 1)
    finally:
        follower.close()
    assert tally.counts == {DEFER_EVENT: 1}


def test_a_journal_that_cannot_be_read_is_a_condition_and_retried(journal, tmp_path):
    tally = Tally()
    follower = JournalFollower(journal_file=str(tmp_path / "missing.journal"))
    try:
        deadline = time.monotonic() + WAIT_SECONDS
        while follower.health().condition is None and time.monotonic() < deadline:
            follower.poll(PARSER, tally)
            time.sleep(0.05)
        health = follower.health()
    finally:
        follower.close()
    assert health.condition == "journal_failed"
    assert health.errors == {"journal_failed": 1}
    assert health.condition_detail
    assert not any(event.kind in (REPLY, MALFORMED) for event in tally.counts)


def test_a_backlog_beyond_the_catch_up_bound_is_skipped_and_said(journal, tmp_path):
    state = tmp_path / "position.json"
    write_journal(journal, [REJECT])
    first = JournalFollower(journal_file=str(journal), state_file=str(state), from_start=True)
    tally = Tally()
    try:
        poll_until(first, tally, 1)
    finally:
        first.close()
    write_journal(journal, [REJECT] * 50, 10)  # the backlog while stopped
    second = JournalFollower(journal_file=str(journal), state_file=str(state),
                             catch_up_max_lines=10)
    try:
        deadline = time.monotonic() + WAIT_SECONDS
        while second.health().skipped_catch_ups == 0 and time.monotonic() < deadline:
            second.poll(PARSER, tally)
            time.sleep(0.05)
        second.poll(PARSER, tally)  # started again at the end
        time.sleep(0.5)
        second.poll(PARSER, tally)
        write_journal(journal, [DEFER], 100)
        poll_until(second, tally, tally.counts[REJECT_EVENT] + 1)
        health = second.health()
    finally:
        second.close()
    assert health.skipped_catch_ups == 1
    assert 1 + 10 <= tally.counts[REJECT_EVENT] < 1 + 50
    assert tally.counts[DEFER_EVENT] == 1
