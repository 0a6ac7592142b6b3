"""The whole daemon (`smtpmon run`, a real subprocess) reads a real Postfix's log: the counts
on /metrics equal what the test made Postfix do (tests/postfix_traffic.py), across a restart
of the daemon (its position saved in the state file: nothing counted twice, nothing lost) and
a rotation of the log by Postfix's own `postfix logrotate`."""

from __future__ import annotations

import subprocess
import time
from collections import Counter

from daemon_process import start_daemon
from helpers import sample_value, samples
from postfix_traffic import (
    DOMAIN_REPLIES,
    drive_inbound,
    drive_outbound,
)

WAIT_SECONDS = 30  # the silent remote server costs Postfix its greeting timeout

CONFIG = """\
modules:
  m: {{}}
maillog:
  source: file
  path: {path}
  state_file: {state}
  domains: [{domain}]
  poll_interval: 100ms
"""


def replies(text: str, direction: str) -> Counter:
    found = Counter()
    for name, labels, value in samples(text):
        if name == "smtpmon_maillog_replies_total" and labels["direction"] == direction:
            key = (direction, labels["stage"], labels["code"], labels.get("enhanced_code", ""))
            if direction == "outbound":
                key = (direction, labels["status"], *key[1:])
            found[key] += int(value)
    return found


def session_ends(text: str) -> Counter:
    return Counter({(labels["stage"], labels["reason"]): int(value)
                    for name, labels, value in samples(text)
                    if name == "smtpmon_maillog_session_ends_total"})


def caught_up(text: str) -> bool:
    return sample_value(text, "smtpmon_maillog_reader_caught_up",
                        source=_source(text)) == 1


def _source(text: str) -> str:
    for name, labels, _ in samples(text):
        if name == "smtpmon_maillog_reader_up":
            return labels["source"]
    return ""


def test_daemon_counts_what_postfix_was_made_to_do(logging_postfix, tmp_path):
    config = CONFIG.format(path=logging_postfix.maillog, state=tmp_path / "position",
                           domain=DOMAIN_REPLIES)
    daemon = start_daemon(tmp_path, config)
    try:
        text = daemon.wait_for(caught_up)
        assert sample_value(text, "smtpmon_maillog_reader_up",
                            source=logging_postfix.maillog) == 1
        # First start without a saved position: the log's earlier lines are not counted.
        assert replies(text, "inbound") == Counter()

        inbound = drive_inbound(logging_postfix)
        text = daemon.wait_for(lambda t: replies(t, "inbound") == inbound.replies
                               and session_ends(t) == inbound.session_ends, WAIT_SECONDS)
        reasons = {(labels["stage"], labels["code"], labels["reason"])
                   for name, labels, _ in samples(text)
                   if name == "smtpmon_maillog_replies_total"}
        assert ("rcpt", "554", "relay_access") in reasons
        assert ("connect", "554", "client_host") in reasons
    finally:
        assert daemon.stop() == 0

    # Mail delivered while smtpmon is stopped is read at the next start, once.
    outbound = drive_outbound(logging_postfix)
    daemon = start_daemon(tmp_path, config, name="again")
    try:
        text = daemon.wait_for(lambda t: replies(t, "outbound") == outbound.replies, WAIT_SECONDS)
        assert replies(text, "inbound") == Counter()  # read before the restart: not again
        domains = Counter()
        for name, labels, value in samples(text):
            if name == "smtpmon_maillog_replies_total" and labels["direction"] == "outbound":
                domains[labels["domain"]] += int(value)
        assert domains == {DOMAIN_REPLIES: 4, "other": 6}
        assert sample_value(text, "smtpmon_maillog_connect_failures_total",
                            program="smtp", reason="connection_refused") == 1
        assert not [labels for name, labels, _ in samples(text)
                    if name == "smtpmon_maillog_lines_total" and labels["kind"] == "malformed"]

        # Postfix rotates its own log (rename, then it reopens a new file): lines after the
        # rotation are counted from the new file.
        rotated = subprocess.run(["postfix", "-c", logging_postfix.config_dir, "logrotate"],
                                 capture_output=True, text=True, timeout=30,
                                 env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        assert rotated.returncode == 0, rotated.stderr
        inbound = drive_inbound(logging_postfix)
        text = daemon.wait_for(lambda t: replies(t, "inbound") == inbound.replies
                               and session_ends(t) == inbound.session_ends, WAIT_SECONDS)
        assert sample_value(text, "smtpmon_maillog_reader_rotations_total",
                            source=logging_postfix.maillog) >= 1
        assert replies(text, "outbound") == outbound.replies  # nothing read twice
    finally:
        assert daemon.stop() == 0


REJECT = ("Dec  3 07:43:10 mx postfix/smtpd[5230]: NOQUEUE: reject: RCPT from unknown"
          "[192.0.2.7]: 450 4.2.0 <x@here.test>: Recipient address rejected: Greylisted; "
          "from=<a@b.test> to=<x@here.test> proto=ESMTP helo=<client>\n")


def rejects(text: str) -> int:
    return int(sample_value(text, "smtpmon_maillog_replies_total", code="450") or 0)


def test_a_missing_log_is_logged_once_and_read_when_it_appears_and_reload(tmp_path):
    log = tmp_path / "mail.log"
    config = f"modules:\n  m: {{}}\nmaillog:\n  path: {log}\n  from_start: true\n  poll_interval: 100ms\n"
    daemon = start_daemon(tmp_path, config)
    try:
        text = daemon.wait_for(lambda t: (sample_value(
            t, "smtpmon_maillog_reader_errors_total", source=str(log), kind="not_found") or 0) >= 1)
        assert sample_value(text, "smtpmon_maillog_reader_up", source=str(log)) == 0
        assert daemon.get("/-/ready")[0] == 200  # the probes do not wait for the log
        time.sleep(0.5)  # several retries
        log.write_text(REJECT * 3)
        text = daemon.wait_for(lambda t: rejects(t) == 3)
        assert sample_value(text, "smtpmon_maillog_reader_up", source=str(log)) == 1
        assert daemon.log().count("cannot read the mail log") == 1
        assert "reading the mail log again" in daemon.log()

        # A reload with the same maillog settings keeps the reader (and its counts) running.
        assert daemon.request("POST", "/-/reload")[0] == 200
        assert daemon.log().count("mail log reader started") == 1
        # Changed settings restart it from its saved position: nothing is counted again.
        (tmp_path / "daemon.yml").write_text(config + "  domains: [here.test]\n")
        assert daemon.request("POST", "/-/reload")[0] == 200
        assert daemon.log().count("mail log reader started") == 2
        with log.open("a") as handle:
            handle.write(REJECT)
        daemon.wait_for(lambda t: rejects(t) == 1)
        time.sleep(0.5)
        assert rejects(daemon.metrics()) == 1
        # Without the section, the reader stops and its families leave /metrics.
        (tmp_path / "daemon.yml").write_text("modules:\n  m: {}\n")
        assert daemon.request("POST", "/-/reload")[0] == 200
        assert "smtpmon_maillog_" not in daemon.metrics()
    finally:
        assert daemon.stop() == 0
