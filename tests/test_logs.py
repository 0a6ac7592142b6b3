"""What an operator reads: one line per event, logfmt or JSON with the same fields, and under
systemd each line's syslog priority for `journalctl -p`."""

from __future__ import annotations

import json
import os
import re

from daemon_process import free_port, start_daemon

from smtpmon.logs import get_logger, setup_logging

log = get_logger("test")


def write_events(path, *, log_format: str = "logfmt") -> list[str]:
    with open(path, "w", encoding="utf-8") as stream:
        setup_logging("debug", stream, log_format=log_format)
        try:
            log.info("smtpmon started", version="0.1.0", targets=2)
            log.warning("probe failed", target="mx.example.org:25", module="mx", stage="banner",
                        reason="banner_rejected", detail='the banner answered 554 "go away"')
            log.debug("probe succeeded", target="127.0.0.1:25", module="m", duration_seconds="0.004")
            log.error("configuration reload failed", error="global.x: unknown key", missing=None)
        finally:
            setup_logging("info")
    return path.read_text(encoding="utf-8").splitlines()


def test_logfmt_lines_without_a_journal(tmp_path, monkeypatch):
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    lines = [line.split(" ", 1)[1] for line in write_events(tmp_path / "log")]
    assert lines == [
        'level=info msg="smtpmon started" version=0.1.0 targets=2',
        'level=warn msg="probe failed" target=mx.example.org:25 module=mx stage=banner '
        r'reason=banner_rejected detail="the banner answered 554 \"go away\""',
        'level=debug msg="probe succeeded" target=127.0.0.1:25 module=m duration_seconds=0.004',
        'level=error msg="configuration reload failed" error="global.x: unknown key"',
    ]


def test_json_lines_carry_the_same_fields(tmp_path, monkeypatch):
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    events = [json.loads(line) for line in write_events(tmp_path / "log", log_format="json")]
    for event in events:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", event.pop("ts"))
    assert events == [
        {"level": "info", "msg": "smtpmon started", "version": "0.1.0", "targets": 2},
        {"level": "warn", "msg": "probe failed", "target": "mx.example.org:25", "module": "mx",
         "stage": "banner", "reason": "banner_rejected", "detail": 'the banner answered 554 "go away"'},
        {"level": "debug", "msg": "probe succeeded", "target": "127.0.0.1:25", "module": "m",
         "duration_seconds": "0.004"},
        {"level": "error", "msg": "configuration reload failed", "error": "global.x: unknown key"},
    ]


def journal_stream(path) -> str:
    status = os.stat(path)
    return f"{status.st_dev}:{status.st_ino}"


def test_lines_to_the_journal_carry_their_syslog_priority(tmp_path, monkeypatch):
    path = tmp_path / "log"
    path.touch()
    monkeypatch.setenv("JOURNAL_STREAM", journal_stream(path))
    assert [line[:3] for line in write_events(path)] == ["<6>", "<4>", "<7>", "<3>"]
    assert [line[:3] for line in write_events(path, log_format="json")] == ["<6>", "<4>", "<7>", "<3>"]
    assert json.loads(write_events(path, log_format="json")[1][3:])["level"] == "warn"


def test_another_stream_than_the_journals_gets_no_prefix(tmp_path, monkeypatch):
    """JOURNAL_STREAM is inherited: a child whose stderr goes to a file must not prefix."""
    journal = tmp_path / "journal"
    journal.touch()
    monkeypatch.setenv("JOURNAL_STREAM", journal_stream(journal))
    assert write_events(tmp_path / "elsewhere")[0].startswith("ts=")
    monkeypatch.setenv("JOURNAL_STREAM", "garbage")
    assert write_events(tmp_path / "elsewhere")[0].startswith("ts=")


def test_daemon_under_systemd_warns_about_a_failing_target_with_priority_4(tmp_path, smtp_target):
    """`smtpmon run --log.format json` with stderr as the journal's stream: a target that starts
    failing is a warning (journalctl -p warning shows it), the start an info line."""
    refused = f"127.0.0.1:{free_port()}"  # nothing listens there
    config = ("global: {interval: 1s, timeout: 800ms}\nmodules: {plain: {tls: none}}\ntargets:\n"
              f'  - {{address: "{smtp_target}", module: plain}}\n'
              f'  - {{address: "{refused}", module: plain}}\n')
    log_path = tmp_path / "daemon.log"
    log_path.touch()  # the daemon's stderr: its device and inode are the journal's stream
    running = start_daemon(tmp_path, config, args=["--log.format", "json"],
                           env={"JOURNAL_STREAM": journal_stream(log_path)})
    try:
        running.wait_for(lambda text: f'smtpmon_probes_total{{target="{refused}"' in text
                         and f'smtpmon_probes_total{{target="{refused}",module="plain"}} 0.0' not in text)
    finally:
        running.stop()
    lines = running.log().splitlines()
    assert all(re.match(r"<[3467]>\{", line) for line in lines), lines
    events = [(line[1], json.loads(line[3:])) for line in lines]
    started = [event for priority, event in events if event["msg"] == "smtpmon started"]
    assert started and all(priority == "6" for priority, event in events if event["msg"] == "smtpmon started")
    failed = [(priority, event) for priority, event in events if event["msg"] == "probe failed"]
    assert failed[0][0] == "4"
    assert {key: failed[0][1][key] for key in ("level", "target", "module", "stage", "reason")} == {
        "level": "warn", "target": refused, "module": "plain", "stage": "connect",
        "reason": "connect_refused"}
    assert not any(event.get("target") == smtp_target and event["level"] == "warn" for _, event in events)
