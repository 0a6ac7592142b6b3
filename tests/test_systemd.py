"""The service unit: systemd accepts it, its sandbox scores as hardened, and the daemon works
under it: probes (TLS included), /metrics, reload on SIGHUP, exit 0 on SIGTERM.

systemd is not PID 1 in CI, so the unit is never started: `systemd-analyze verify` and
`security --offline=true` read the file, and tests/systemd_sandbox.py applies to `smtpmon run`
what of the unit a process can apply to itself (its docstring lists what is and is not
reproduced).
"""

from __future__ import annotations

import ctypes.util
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from daemon_process import probed, start_daemon
from helpers import sample_value, unavailable
from smtpservers import Send
from systemd_sandbox import service_settings

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "smtpmon.service"
SANDBOX = REPO / "tests" / "systemd_sandbox.py"
INSTALLED_COMMAND = "/usr/local/bin/smtpmon"
MAX_EXPOSURE = 1.5


def require(found: bool, what: str) -> None:
    """Skip with a reason when a system tool is missing; in CI (CI=true) that is a failure."""
    if found:
        return
    unavailable(f"{what} is missing (Debian's systemd package)")


@pytest.fixture
def systemd_analyze() -> str:
    require(shutil.which("systemd-analyze") is not None, "systemd-analyze")
    return "systemd-analyze"


def unit_on_this_machine(tmp_path: Path, text: str | None = None) -> Path:
    """A copy of the unit whose ExecStart names a smtpmon that exists here (verify checks it).

    The venv's console script is the very adaptation docs/systemd.md describes for a
    virtualenv install; without one, `python -m smtpmon` takes its place.
    """
    text = UNIT.read_text(encoding="utf-8") if text is None else text
    venv_command = Path(sys.executable).with_name("smtpmon")
    local_command = str(venv_command) if venv_command.exists() else f"{sys.executable} -m smtpmon"
    assert f"ExecStart={INSTALLED_COMMAND} " in text
    copy = tmp_path / "smtpmon.service"
    copy.write_text(text.replace(f"ExecStart={INSTALLED_COMMAND} ", f"ExecStart={local_command} "),
                    encoding="utf-8")
    return copy


def verify(analyze: str, unit: Path) -> str:
    """Everything `systemd-analyze verify` says about the unit: empty when it is clean.

    Unknown keys and unparsable values are only warnings (exit 0), so the output is the verdict.
    """
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                            timeout=30)
    return (result.stdout + result.stderr).strip() + ("" if result.returncode == 0 else
                                                      f"\n(exit {result.returncode})")


def test_unit_runs_the_daemon_unprivileged_and_reloads_with_sighup():
    settings = service_settings(UNIT)
    assert settings["ExecStart"] == [f"{INSTALLED_COMMAND} run --config.file /etc/smtpmon/smtpmon.yml"]
    assert settings["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert settings["DynamicUser"] == ["yes"]
    assert settings["Restart"] == ["on-failure"]
    assert "User" not in settings, "DynamicUser= picks the user; a fixed User= would need sysusers"
    # stderr to the journal, which reads each line's <N> priority prefix (tests/test_logs.py).
    assert settings["StandardError"] == ["journal"]
    assert settings["SyslogLevelPrefix"] == ["yes"]


def test_unit_gives_the_mail_log_reader_read_access_and_a_state_directory():
    """Debian's /var/log/mail.log is root:adm 0640, the journal's files are readable by
    systemd-journal; the reader saves its position under $STATE_DIRECTORY (maillog.state_file's
    default)."""
    settings = service_settings(UNIT)
    assert settings["SupplementaryGroups"] == ["adm systemd-journal"]
    assert settings["StateDirectory"] == ["smtpmon"]
    assert settings["ProtectSystem"] == ["strict"]  # every other path stays read-only


def test_systemd_analyze_verify_accepts_the_unit(systemd_analyze, tmp_path):
    assert verify(systemd_analyze, unit_on_this_machine(tmp_path)) == ""


def test_verify_output_catches_a_misspelt_setting(systemd_analyze, tmp_path):
    # Guards the check above: a typo in a hardening key must not pass silently.
    broken = UNIT.read_text(encoding="utf-8").replace("ProtectClock=yes", "ProtectClok=yes")
    assert "Unknown key 'ProtectClok'" in verify(systemd_analyze, unit_on_this_machine(tmp_path, broken))


def test_security_exposure_is_at_most_1_5(systemd_analyze, tmp_path):
    result = subprocess.run(
        [systemd_analyze, "security", "--offline=true", "--no-pager", str(unit_on_this_machine(tmp_path))],
        capture_output=True, text=True, timeout=30)
    match = re.search(r"Overall exposure level for smtpmon\.service: (\d+\.\d+)", result.stdout)
    assert match, f"no exposure level in:\n{result.stdout}{result.stderr}"
    open_points = "\n".join(line for line in result.stdout.splitlines() if line.startswith("✗"))
    assert float(match.group(1)) <= MAX_EXPOSURE, f"exposure {match.group(1)}:\n{open_points}"


# The real daemon under the unit's sandbox (what tests/systemd_sandbox.py reproduces, and what it
# cannot, is in its docstring), probing real SMTP servers on loopback.

# What the unit's restrictions would put in the log if they got in the daemon's way.
REFUSALS = ("Operation not permitted", "EPERM", "PermissionError", "Address family not supported",
            "EAFNOSUPPORT", "Function not implemented", "ENOSYS", "Traceback")
SANDBOX_LINE = re.compile(r"^systemd_sandbox: (\d+) seccomp filters; refused as the unit requires: (.*)$",
                          re.MULTILINE)


@pytest.fixture
def seccomp(systemd_analyze) -> None:
    require(ctypes.util.find_library("seccomp") is not None, "libseccomp")


MAIL_LOG_REJECT = ("Dec  3 07:43:10 mx postfix/smtpd[5230]: NOQUEUE: reject: RCPT from unknown"
                   "[192.0.2.7]: 554 5.7.1 <x@example.org>: Relay access denied; "
                   "from=<a@example.net> to=<x@example.org> proto=ESMTP helo=<client>\n")


def daemon_config(ca_file: str, targets: list[tuple[str, str]], maillog: str = "") -> str:
    lines = [maillog, "global: {interval: 1s, timeout: 900ms}",
             "modules:",
             f'  mx: {{tls: starttls, tls_ca_file: "{ca_file}"}}',
             "  plain: {tls: none}",
             "targets:"]
    lines += [f'  - {{address: "{address}", module: {module}}}' for address, module in targets]
    return "\n".join(lines) + "\n"


def process_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def test_daemon_works_under_the_units_sandbox(seccomp, tmp_path, smtp_server, scripted_server,
                                              tls_contexts, ca_file):
    healthy = smtp_server(starttls_context=tls_contexts["trusted"])
    healthy_target = f"localhost:{healthy.port}"  # a name: resolution runs in the sandbox too
    busy = scripted_server([Send(b"421 4.3.2 mx.test.example busy, try later\r\n")])
    added = smtp_server()
    # The mail log reader too: it reads a file and saves its position under the sandbox.
    (tmp_path / "mail.log").write_text(MAIL_LOG_REJECT)
    maillog = (f"maillog: {{path: {tmp_path / 'mail.log'}, from_start: true, "
               f"state_file: {tmp_path / 'position'}, poll_interval: 100ms}}")
    running = start_daemon(tmp_path, daemon_config(ca_file, [(healthy_target, "mx"), (busy.target, "plain")],
                                                   maillog),
                           command_prefix=[sys.executable, str(SANDBOX), str(UNIT), "--"])
    try:
        # The sandbox is on the daemon itself: its own word, and what the kernel says.
        sandbox = SANDBOX_LINE.search(running.log())
        assert sandbox, running.log()
        assert sandbox.group(2).split() == ["MemoryDenyWriteExecute", "RestrictAddressFamilies",
                                            "SystemCallFilter", "RestrictNamespaces",
                                            "LockPersonality", "RestrictSUIDSGID"]
        status, inherited = process_status(running.process.pid), process_status(os.getpid())
        assert status["Seccomp"] == "2" and status["NoNewPrivs"] == "1"
        if "Seccomp_filters" in status:  # Linux 5.9 and later
            assert int(status["Seccomp_filters"]) == (int(inherited["Seccomp_filters"])
                                                      + int(sandbox.group(1)))
        assert status["Umask"] == "0077"
        assert status["CapEff"] == status["CapPrm"] == "0000000000000000"

        text = running.wait_for(lambda t: probed(healthy_target)(t) and probed(busy.target)(t))
        assert sample_value(text, "smtpmon_probe_success", target=healthy_target) == 1
        assert sample_value(text, "smtpmon_replies_total", target=healthy_target, stage="starttls", code="220") >= 1
        assert sample_value(text, "smtpmon_tls_certificate_verified", target=healthy_target) == 1
        assert sample_value(text, "smtpmon_tls_certificate_not_after_timestamp_seconds",
                     target=healthy_target) > time.time()
        assert sample_value(text, "smtpmon_probe_success", target=busy.target) == 0
        assert sample_value(text, "smtpmon_replies_total", target=busy.target, stage="banner", code="421",
                     **{"class": "transient_negative"}) >= 1
        assert sample_value(text, "smtpmon_maillog_replies_total", direction="inbound",
                            code="554", reason="relay_access") == 1
        assert sample_value(text, "smtpmon_maillog_reader_up", source=str(tmp_path / "mail.log")) == 1
        # prometheus_client reads /proc/self and /proc/stat for these.
        assert sample_value(text, "process_resident_memory_bytes") > 0
        assert sample_value(text, "process_open_fds") > 0
        assert time.time() - 60 < sample_value(text, "process_start_time_seconds") <= time.time()

        running.config_path.write_text(daemon_config(
            ca_file, [(healthy_target, "mx"), (busy.target, "plain"), (added.target, "plain")],
            maillog))
        running.process.send_signal(signal.SIGHUP)
        text = running.wait_for(probed(added.target), timeout=5)
        assert sample_value(text, "smtpmon_probe_success", target=added.target) == 1
        assert sample_value(text, "smtpmon_config_last_reload_successful") == 1

        begun = time.monotonic()
        running.process.send_signal(signal.SIGTERM)
        assert running.process.wait(5) == 0
        assert time.monotonic() - begun < 2.0
    finally:
        running.stop()
    log = running.log()
    assert "msg=stopped" in log
    assert (tmp_path / "position").exists()  # the reader saved where it stopped
    assert [line for line in log.splitlines() if any(word in line for word in REFUSALS)] == []
