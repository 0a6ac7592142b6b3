"""Following a real log file: rotation by rename and by copy-and-truncate, a file that does
not exist yet, a restart in the middle (nothing counted twice, nothing lost), a backlog
larger than the catch-up bounds, reading errors as conditions, hostile bytes as malformed.

The lines are Postfix's own (tests/test_maillog_parser.py), written to files the way a
syslog daemon or postlogd appends them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

import pytest
from helpers import unavailable
from hypothesis import given, settings
from hypothesis import strategies as st
from test_maillog_parser import INBOUND_LINES, OUTBOUND_LINES

from smtpmon.maillog.events import MALFORMED, UNRELATED, LogEvent, Tally
from smtpmon.maillog.follow import FileFollower
from smtpmon.maillog.health import ERROR_KINDS
from smtpmon.maillog.postfix import PostfixParser
from smtpmon.maillog.reader import LogReader

REJECT_LINE, REJECT_EVENT = INBOUND_LINES[4]  # 550 5.1.1 at RCPT
DEFER_LINE, DEFER_EVENT = OUTBOUND_LINES[1]  # outbound 450 4.2.0 at RCPT
OTHER_LINE = "Dec 03 08:13:59 mx postfix/qmgr[18033]: 5CDD12122E2: removed"
OTHER_EVENT = LogEvent(UNRELATED, program="postfix/qmgr")
PARSER = PostfixParser(domains=["replies.remote.test"])


def append(path: Path, *lines: str | bytes) -> None:
    with open(path, "ab") as log:
        for line in lines:
            log.write(line if isinstance(line, bytes) else line.encode() + b"\n")


def poll(follower: FileFollower, tally: Tally, times: int = 1) -> int:
    return sum(follower.poll(PARSER, tally) for _ in range(times))


def test_first_start_begins_at_the_end_unless_told_otherwise(tmp_path):
    log = tmp_path / "mail.log"
    append(log, REJECT_LINE, REJECT_LINE)
    at_end, tally = FileFollower(str(log)), Tally()
    assert poll(at_end, tally) == 0
    append(log, DEFER_LINE)
    assert poll(at_end, tally) == 1
    assert tally.counts == {DEFER_EVENT: 1}

    from_start, tally = FileFollower(str(log), from_start=True), Tally()
    poll(from_start, tally)
    assert tally.counts == {REJECT_EVENT: 2, DEFER_EVENT: 1}


def test_file_that_does_not_exist_yet_is_read_from_its_start_when_it_appears(tmp_path):
    log = tmp_path / "mail.log"
    follower, tally = FileFollower(str(log)), Tally()
    poll(follower, tally, times=3)
    health = follower.health()
    assert (health.condition, health.errors) == ("not_found", {"not_found": 1})  # counted once
    append(log, REJECT_LINE, OTHER_LINE)
    poll(follower, tally)
    assert tally.counts == {REJECT_EVENT: 1, OTHER_EVENT: 1}
    assert follower.health().condition is None


def test_rotation_by_rename_reads_the_old_file_to_its_end_then_the_new_one(tmp_path):
    log = tmp_path / "mail.log"
    log.touch()
    follower, tally = FileFollower(str(log)), Tally()
    poll(follower, tally)  # opened at its end
    append(log, REJECT_LINE)
    poll(follower, tally)
    log.rename(tmp_path / "mail.log.1")
    append(tmp_path / "mail.log.1", REJECT_LINE)  # the writer had not reopened yet
    poll(follower, tally)  # the path is missing for a while: the old file stays open
    assert follower.health().condition == "not_found"
    append(log, DEFER_LINE, OTHER_LINE)  # the writer reopened: a new file
    poll(follower, tally)
    assert tally.counts == {REJECT_EVENT: 2, DEFER_EVENT: 1, OTHER_EVENT: 1}
    health = follower.health()
    assert (health.rotations, health.truncations, health.condition) == (1, 0, None)


def test_a_file_renamed_over_the_path_while_open_is_a_rotation(tmp_path):
    log = tmp_path / "mail.log"
    log.touch()
    follower, tally = FileFollower(str(log)), Tally()
    poll(follower, tally)  # opened at its end
    append(log, REJECT_LINE)
    replacement = tmp_path / "new"
    append(replacement, DEFER_LINE)
    os.replace(replacement, log)
    poll(follower, tally)
    assert tally.counts == {REJECT_EVENT: 1, DEFER_EVENT: 1}
    assert follower.health().rotations == 1


def test_copy_and_truncate_reads_again_from_the_start(tmp_path):
    log = tmp_path / "mail.log"
    log.touch()
    follower, tally = FileFollower(str(log)), Tally()
    poll(follower, tally)
    append(log, REJECT_LINE, REJECT_LINE, REJECT_LINE)
    poll(follower, tally)
    shutil.copyfile(log, tmp_path / "mail.log.1")
    os.truncate(log, 0)
    append(log, DEFER_LINE)  # shorter than before: the size shows the truncation
    poll(follower, tally)
    # Truncated, then written past the old offset before the next poll: the first bytes changed.
    os.truncate(log, 0)
    append(log, OTHER_LINE, OTHER_LINE, OTHER_LINE, OTHER_LINE, OTHER_LINE)
    poll(follower, tally)
    assert tally.counts == {REJECT_EVENT: 3, DEFER_EVENT: 1, OTHER_EVENT: 5}
    assert follower.health().truncations == 2


def test_restart_in_the_middle_counts_every_line_once(tmp_path):
    log, state = tmp_path / "mail.log", tmp_path / "state" / "position.json"
    state.parent.mkdir()
    log.touch()
    total = Tally()
    first = FileFollower(str(log), state_file=str(state))
    poll(first, total)
    append(log, REJECT_LINE, DEFER_LINE)
    poll(first, total)
    append(log, REJECT_LINE[:40].encode())  # a line being written when smtpmon stops
    poll(first, total)
    first.close()
    saved = json.loads(state.read_text())
    assert saved["offset"] == len(REJECT_LINE) + len(DEFER_LINE) + 2  # after the last whole line

    append(log, REJECT_LINE[40:], OTHER_LINE)  # written while smtpmon was stopped
    second = FileFollower(str(log), state_file=str(state))
    poll(second, total)
    append(log, DEFER_LINE)
    poll(second, total)
    second.close()
    assert total.counts == {REJECT_EVENT: 2, DEFER_EVENT: 2, OTHER_EVENT: 1}


def test_restart_after_a_rotation_while_stopped_reads_the_old_file_rest_then_the_new(tmp_path):
    log, state = tmp_path / "mail.log", tmp_path / "position.json"
    log.touch()
    total = Tally()
    first = FileFollower(str(log), state_file=str(state))
    poll(first, total)
    append(log, REJECT_LINE)
    poll(first, total)
    first.close()
    append(log, DEFER_LINE)  # before the rotation, while stopped
    log.rename(tmp_path / "mail.log.1")
    append(log, OTHER_LINE)  # the new file
    second = FileFollower(str(log), state_file=str(state))
    poll(second, total, times=2)
    assert total.counts == {REJECT_EVENT: 1, DEFER_EVENT: 1, OTHER_EVENT: 1}
    assert second.health().rotations == 1


def test_catch_up_is_bounded_and_says_what_it_skipped(tmp_path):
    log, state = tmp_path / "mail.log", tmp_path / "position.json"
    log.touch()
    first = FileFollower(str(log), state_file=str(state))
    poll(first, Tally())
    first.close()
    append(log, *[REJECT_LINE] * 5000)  # a backlog written while stopped
    tally = Tally()
    second = FileFollower(str(log), state_file=str(state), catch_up_max_lines=1000,
                          chunk_bytes=4096)
    poll(second, tally, times=3)
    health = second.health()
    assert 1000 <= tally.counts[REJECT_EVENT] < 5000
    assert health.skipped_catch_ups == 1
    assert health.skipped_bytes == (5000 - tally.counts[REJECT_EVENT]) * (len(REJECT_LINE) + 1)
    assert health.caught_up and health.bytes_behind == 0
    append(log, DEFER_LINE)  # reading goes on after the skip
    poll(second, tally)
    assert tally.counts[DEFER_EVENT] == 1


def test_catch_up_is_bounded_in_time(tmp_path):
    log = tmp_path / "mail.log"
    append(log, *[REJECT_LINE] * 3000)
    now = [0.0]

    def clock() -> float:
        now[0] += 1.0  # every look at the clock is a second later
        return now[0]

    follower, tally = FileFollower(str(log), from_start=True, chunk_bytes=4096,
                                   catch_up_max_seconds=10, clock=clock), Tally()
    poll(follower, tally)
    assert 0 < tally.counts[REJECT_EVENT] < 3000
    assert follower.health().skipped_catch_ups == 1


def test_hostile_input_is_counted_as_malformed_with_bounded_memory(tmp_path):
    log = tmp_path / "mail.log"
    log.touch()
    follower, tally = FileFollower(str(log), max_line_bytes=16 * 1024), Tally()
    poll(follower, tally)
    append(log,
           os.urandom(300).replace(b"\n", b"") + b"\n",  # binary garbage
           b"Dec 03 08:13:59 mx postfix/smtpd[1]: " + b"\xff\xfe\xc3(" * 10 + b"\n",  # bad UTF-8
           b"x" * 1_000_000 + b"\n",  # a 1 MB line
           REJECT_LINE)
    poll(follower, tally)
    tracemalloc.start()
    with open(log, "ab") as handle:  # a 20 MB line arriving while it is followed
        for _ in range(20):
            handle.write(b"y" * 1_000_000)
            handle.flush()
            poll(follower, tally)
        handle.write(b"\n")
    poll(follower, tally)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2 * 1024 * 1024
    append(log, REJECT_LINE[:60].encode())  # cut mid-way by a truncation
    poll(follower, tally)
    os.truncate(log, 0)
    append(log, DEFER_LINE)
    poll(follower, tally)
    assert tally.counts == {
        LogEvent(MALFORMED, reason="no_header"): 1,
        LogEvent(UNRELATED, program="postfix/smtpd"): 1,  # its header is intact
        LogEvent(MALFORMED, reason="too_long"): 2,
        LogEvent(MALFORMED, reason="incomplete"): 1,
        REJECT_EVENT: 1,
        DEFER_EVENT: 1,
    }


def test_a_directory_is_a_condition_and_retried(tmp_path):
    log = tmp_path / "mail.log"
    log.mkdir()
    follower, tally = FileFollower(str(log)), Tally()
    poll(follower, tally, times=2)
    health = follower.health()
    assert (health.condition, health.errors) == ("is_directory", {"is_directory": 1})
    assert health.condition in ERROR_KINDS
    log.rmdir()
    append(log, REJECT_LINE)
    poll(follower, tally)
    assert tally.counts == {REJECT_EVENT: 1}
    assert follower.health().condition is None


@pytest.mark.timeout(10)
def test_a_fifo_is_a_condition_and_never_blocks_the_reader(tmp_path):
    """A named pipe at the log's path (a syslog set-up, or a mistake) must not hang the
    reader's thread in open() waiting for a writer."""
    log = tmp_path / "mail.log"
    os.mkfifo(log)
    follower, tally = FileFollower(str(log)), Tally()
    poll(follower, tally)
    assert follower.health().condition == "not_a_file"
    assert tally.counts == {}


def test_an_unwritable_state_file_is_a_condition_not_an_error(tmp_path):
    log = tmp_path / "mail.log"
    append(log, REJECT_LINE)
    follower = FileFollower(str(log), state_file=str(tmp_path / "missing-dir" / "state.json"),
                            from_start=True)
    tally = Tally()
    poll(follower, tally)
    assert tally.counts == {REJECT_EVENT: 1}
    assert follower.health().condition == "state_file"
    follower.close()


PERMISSION_CHILD = """
import json, sys
from smtpmon.maillog.events import Tally
from smtpmon.maillog.follow import FileFollower
from smtpmon.maillog.health import ERROR_KINDS
from smtpmon.maillog.postfix import PostfixParser
follower, tally, parser = FileFollower(sys.argv[1], from_start=True), Tally(), PostfixParser()
for _ in range(3):
    follower.poll(parser, tally)
health = follower.health()
print(json.dumps([health.condition, health.errors]), flush=True)
sys.stdin.readline()  # the parent gives read permission back
follower.poll(parser, tally)
print(json.dumps([follower.health().condition, sum(tally.counts.values())]), flush=True)
"""


def test_permission_denied_is_a_condition_and_retried(tmp_path):
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        unavailable("this test needs root and setpriv (util-linux): root without CAP_DAC_OVERRIDE "
                    "meets mode 000")
    log = tmp_path / "mail.log"
    append(log, REJECT_LINE, DEFER_LINE)
    log.chmod(0)
    # root without the capabilities that bypass file modes: a real EACCES on open(2)
    child = subprocess.Popen(
        [setpriv, "--bounding-set=-dac_override,-dac_read_search", sys.executable, "-c",
         PERMISSION_CHILD, str(log)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert json.loads(child.stdout.readline()) == [
            "permission_denied", {"permission_denied": 1}]
        log.chmod(0o644)
        child.stdin.write("\n")
        child.stdin.flush()
        assert json.loads(child.stdout.readline()) == [None, 2]
    finally:
        child.kill()
        child.wait()


def test_reader_thread_counts_in_the_background_and_saves_its_position(tmp_path):
    log, state = tmp_path / "mail.log", tmp_path / "position.json"
    log.touch()
    reader = LogReader(FileFollower(str(log), state_file=str(state)), PARSER,
                       interval_seconds=0.05).start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and reader.snapshot().health.bytes_behind is None:
            time.sleep(0.02)  # until the file is open, at its end
        append(log, REJECT_LINE, DEFER_LINE, DEFER_LINE)
        while time.monotonic() < deadline and sum(reader.snapshot().counts.values()) < 3:
            time.sleep(0.02)
        snapshot = reader.snapshot()
        assert snapshot.counts == {REJECT_EVENT: 1, DEFER_EVENT: 2}
        assert snapshot.health.lines_read == 3
        assert snapshot.health.last_line_timestamp is not None
    finally:
        reader.stop()
    assert json.loads(state.read_text())["offset"] == log.stat().st_size
    assert not any(thread.name == "smtpmon-maillog" for thread in threading.enumerate())


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=200), st.sampled_from([
    REJECT_LINE.encode() + b"\n", b"\n", b"\xff\xfe\n", b"x" * 150]),
), max_size=30))
def test_every_line_written_is_counted_exactly_once(chunks):
    """Whatever bytes arrive in whatever pieces: one event per newline, never an exception."""
    with tempfile.TemporaryDirectory() as directory:
        log = Path(directory, "mail.log")
        log.touch()
        follower, tally = FileFollower(str(log), max_line_bytes=64, chunk_bytes=37), Tally()
        poll(follower, tally)
        for chunk in chunks:
            append(log, chunk)
            poll(follower, tally)
        append(log, b"\n")
        poll(follower, tally)
        assert sum(tally.counts.values()) == b"".join(chunks).count(b"\n") + 1
        assert follower.health().condition is None


def test_health_says_how_far_behind_the_reader_is(tmp_path):
    log = tmp_path / "mail.log"
    append(log, *[REJECT_LINE] * 100)
    follower, tally = FileFollower(str(log), from_start=True, max_lines_per_poll=10,
                                   chunk_bytes=len(REJECT_LINE) + 1), Tally()
    poll(follower, tally)
    health = follower.health()
    assert health.lines_read == 10 and not health.caught_up
    assert health.bytes_behind == 90 * (len(REJECT_LINE) + 1)
    assert health.last_line_timestamp is not None and health.last_read_at is not None
    poll(follower, tally, times=10)
    assert follower.health().bytes_behind == 0 and follower.health().caught_up
