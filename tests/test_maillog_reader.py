"""The reader's thread in the daemon's hands: where reading starts is fixed when start()
returns, a poll that raises (a bug) is logged once, counted and retried without killing the
thread, and the daemon's condition log says each condition once."""

from __future__ import annotations

import logging
import time

from smtpmon.maillog.events import LogEvent
from smtpmon.maillog.follow import FileFollower
from smtpmon.maillog.health import ReaderHealth
from smtpmon.maillog.postfix import PostfixParser
from smtpmon.maillog.reader import LogReader
from smtpmon.runtime.maillog import REPEAT_LOG_SECONDS, ConditionLog

LINE = ("Dec  3 07:43:10 mx postfix/smtpd[5230]: NOQUEUE: reject: RCPT from unknown[192.0.2.7]: "
        "450 4.2.0 <x@example.org>: Recipient address rejected: Greylisted; from=<a@example.net> "
        "to=<x@example.org> proto=ESMTP helo=<client>\n")


class BrokenParser(PostfixParser):
    """A parser with a bug on lines containing BOOM (PostfixParser itself never raises)."""

    def parse_line(self, line: str) -> LogEvent:
        if "BOOM" in line:
            raise RuntimeError("parser bug")
        return super().parse_line(line)


def wait_until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.02)


def test_a_line_written_right_after_start_is_counted(tmp_path):
    log = tmp_path / "mail.log"
    log.write_text(LINE)  # before the start: not counted (reading begins at the end)
    reader = LogReader(FileFollower(str(log)), PostfixParser(), interval_seconds=0.05).start()
    try:
        with log.open("a") as handle:
            handle.write(LINE)
        wait_until(lambda: sum(reader.snapshot().counts.values()) == 1)
        assert reader.snapshot().polled_at is not None
    finally:
        reader.stop()


def test_a_poll_that_raises_is_counted_logged_once_and_retried(tmp_path, caplog):
    log = tmp_path / "mail.log"
    log.write_text("")
    follower = FileFollower(str(log))
    reader = LogReader(follower, BrokenParser(), interval_seconds=0.02).start()
    caplog.set_level(logging.ERROR)
    try:
        with log.open("a") as handle:
            handle.write("BOOM\n")
        wait_until(lambda: reader.snapshot().health.condition == "internal_error")
        polled_at = reader.snapshot().polled_at
        time.sleep(0.2)  # many more polls, while the condition lasts
        snapshot = reader.snapshot()
        assert snapshot.polled_at > polled_at  # the thread goes on polling
        assert snapshot.health.errors["internal_error"] == 1
        failures = [r for r in caplog.records if "mail log reader failed" in r.getMessage()]
        assert len(failures) == 1
    finally:
        reader.stop()


def test_condition_log_says_each_change_once_and_throttles_flapping(caplog):
    now = [0.0]
    conditions = ConditionLog(clock=lambda: now[0])
    caplog.set_level(logging.INFO)

    def health(condition):
        return ReaderHealth(source="/var/log/mail.log", condition=condition,
                            condition_detail="Permission denied" if condition else None)

    for _ in range(5):
        conditions(health("permission_denied"))
    conditions(health(None))
    now[0] = 10.0
    conditions(health("permission_denied"))  # back within REPEAT_LOG_SECONDS: not again
    conditions(health(None))
    now[0] = 10.0 + REPEAT_LOG_SECONDS
    conditions(health("permission_denied"))
    messages = [record.getMessage() for record in caplog.records]
    assert sum("cannot read the mail log" in m for m in messages) == 2
    assert sum("reading the mail log again" in m for m in messages) == 2
