"""Reloading the running daemon with invalid configurations from tests/test_config.py's table.

Each one: POST /-/reload answers 400 with every error, the old targets keep being probed,
`smtpmon_config_last_reload_successful` drops to 0; the good file brings it back to 1.
"""

from __future__ import annotations

import signal

import pytest
from daemon_process import RunningDaemon, probed, start_daemon
from helpers import sample_value
from test_config import INVALID

# Representative rows: YAML that does not parse, a file with nothing in it, a dangling module
# reference, a value out of range, a misspelt choice, a security rule, several errors at once.
RELOADED = (
    "YAML syntax error names the line",
    "empty file",
    "unknown module",
    "port too large",
    "misspelt TLS mode",
    "AUTH over plain text",
    "three problems at once",
)
RELOAD_FAILED = 'level=error msg="configuration reload failed; keeping the running configuration"'
INVALID_BY_ID = {case[0]: case[1:] for case in INVALID}


@pytest.fixture(scope="module")
def running(tmp_path_factory, smtp_target):
    good = (
        "global: {interval: 500ms, timeout: 400ms}\n"
        "modules:\n  plain: {tls: none}\n"
        f'targets:\n  - {{address: "{smtp_target}", module: plain}}\n'
    )
    daemon = start_daemon(tmp_path_factory.mktemp("bad-reload"), good)
    daemon.good_config = good
    yield daemon
    daemon.stop()


@pytest.mark.parametrize("case", RELOADED)
def test_a_bad_reload_keeps_the_running_configuration(running, smtp_target, case):
    text, errors = INVALID_BY_ID[case]
    running.config_path.write_text(text)
    logged_before = running.log().count(RELOAD_FAILED)

    status, body = running.request("POST", "/-/reload")
    assert status == 400
    assert body == "reload failed; the previous configuration keeps running:\n" + "".join(f"  {e}\n" for e in errors)
    metrics = running.metrics()
    assert sample_value(metrics, "smtpmon_config_last_reload_successful") == 0
    assert sample_value(metrics, "smtpmon_targets") == 1
    before = sample_value(metrics, "smtpmon_probes_total", target=smtp_target)
    metrics = running.wait_for(probed(smtp_target, int(before) + 2), timeout=5)  # still probing
    assert sample_value(metrics, "smtpmon_probe_success", target=smtp_target) == 1
    assert running.log().count(RELOAD_FAILED) == logged_before + len(errors)  # a line per error

    running.config_path.write_text(running.good_config)
    assert running.request("POST", "/-/reload") == (200, "configuration reloaded\n")
    assert sample_value(running.metrics(), "smtpmon_config_last_reload_successful") == 1


def test_a_value_past_its_bound_is_refused_and_the_running_series_stay(running, smtp_target):
    """`interval: 99999999h` validates as a duration but no schedule can hold it: refused with
    its bound, by /-/reload and by SIGHUP, and nothing of the running configuration is lost
    (no counter reset, no series of the refused file)."""
    unholdable = (
        "global: {interval: 500ms, timeout: 400ms}\n"
        "modules:\n  plain: {tls: none}\n"
        "targets:\n"
        f'  - {{address: "{smtp_target}", module: plain, interval: 600ms}}\n'
        '  - {address: "127.0.0.1:9", module: plain, interval: 99999999h}\n'
    )
    counted = sample_value(running.wait_for(probed(smtp_target, 2)), "smtpmon_probes_total", target=smtp_target)
    running.config_path.write_text(unholdable)

    status, body = running.request("POST", "/-/reload")
    assert (status, body) == (400, "reload failed; the previous configuration keeps running:\n"
                                   '  targets[1].interval: must be at most 24h, got "99999999h"\n')
    metrics = running.wait_for(probed(smtp_target, int(counted) + 2), timeout=5)
    assert sample_value(metrics, "smtpmon_config_last_reload_successful") == 0
    assert "127.0.0.1:9" not in metrics

    running.config_path.write_text(running.good_config)
    assert running.request("POST", "/-/reload")[0] == 200
    running.config_path.write_text(unholdable)
    running.process.send_signal(signal.SIGHUP)
    metrics = running.wait_for(lambda text: sample_value(text, "smtpmon_config_last_reload_successful") == 0)
    assert running.process.poll() is None and "127.0.0.1:9" not in metrics
    assert sample_value(metrics, "smtpmon_probes_total", target=smtp_target) > counted
    running.config_path.write_text(running.good_config)
    assert running.request("POST", "/-/reload")[0] == 200


def test_a_value_past_its_bound_stops_the_start_with_exit_2_not_a_traceback(tmp_path):
    config = tmp_path / "unholdable.yml"
    config.write_text("global: {interval: 99999999h}\nmodules: {plain: {tls: none}}\n"
                      'targets: [{address: "127.0.0.1:9", module: plain}]\n')
    daemon = RunningDaemon(config, tmp_path / "daemon.log")
    try:
        assert daemon.process.wait(10) == 2
    finally:
        daemon.stop()
    log = daemon.log()
    assert 'global.interval: must be at most 24h, got "99999999h"' in log and "Traceback" not in log
