"""The README's five-minute tour, run as written on this machine: every command of its console
blocks, `make run` included, with only the mail servers swapped for loopback servers, and the
output it shows compared with what the commands print (times, addresses, ports and host names
aside). A README example that no longer matches smtpmon fails here.

`make run` serves on the documented port 9725 and probes the documented 127.0.0.1:25, so the
steps that need them take a lock (another worktree's test run on this machine waits) and say
so when something else holds the port. A checkout of its own (the Makefile, pyproject.toml,
config/ and a .venv that is this test run's) keeps `cp config/smtpmon.yml my.yml` out of the
repository.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from helpers import unavailable
from smtpservers import (
    BANNER,
    EHLO_OK,
    QUIT_OK,
    AiosmtpdServer,
    Expect,
    ScriptedHandler,
    ScriptedServer,
    Send,
    StartTls,
    password_authenticator,
)

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
VENV_BIN = Path(sys.executable).parent  # the smtpmon under test, as `make` installed it
WEB_PORT = 9725
LOCK = Path("/tmp/smtpmon-readme-tour.lock")


# -- the README's examples ------------------------------------------------------------------------
def console_blocks() -> list[tuple[list[str], list[str]]]:
    """Each ```console block of the README as (commands, output lines)."""
    blocks = []
    for body in re.findall(r"^```console\n(.*?)^```", README.read_text(encoding="utf-8"), flags=re.M | re.S):
        lines = body.splitlines()
        commands = [line[2:] for line in lines if line.startswith("$ ")]
        output = [line for line in lines if not line.startswith("$ ")]
        blocks.append((commands, output))
    return blocks


def block_running(command_start: str) -> tuple[list[str], list[str]]:
    (found,) = [block for block in console_blocks() if block[0][0].startswith(command_start)]
    return found


def log_example() -> list[str]:
    """The plain ``` block of step 2: the daemon's log."""
    text = README.read_text(encoding="utf-8")
    step = text.split("**2. Run the daemon.**", 1)[1].split("**3.", 1)[0]
    return re.search(r"^```\n(.*?)^```", step, flags=re.M | re.S)[1].splitlines()


def shell(command: str, cwd: Path, env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(["/bin/bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def environment(ca_file: str) -> dict[str, str]:
    """A shell with the virtualenv activated (README: `. .venv/bin/activate`), whose system CAs
    are the test CA (OpenSSL reads SSL_CERT_FILE), as a real server's CA is a system one."""
    # Without what an outer make passes down: `make test ARGS=...` would reach the tour's `make run`.
    outside = ("CREDENTIALS_DIRECTORY", "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "ARGS")
    env = {name: value for name, value in os.environ.items() if name not in outside}
    env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}"
    env["SSL_CERT_FILE"] = ca_file
    return env


# -- comparing what the README shows with what smtpmon prints --------------------------------------
def normalized(line: str, names: dict[str, str]) -> str:
    """A line with what differs from machine to machine made a placeholder: `names` maps the
    test's own targets to the README's first (then they read the same), then times,
    addresses, ports, durations and host-specific values."""
    for actual, shown in names.items():
        line = line.replace(actual, shown)
    line = re.sub(r"^\[\s*\d+\.\d+\]", "[T]", line)
    line = re.sub(r"^ts=\S+", "ts=T", line)
    line = re.sub(r"\b(?:\d{1,3}\.){3}\d{1,3}\b", "ADDR", line)
    line = re.sub(r"port \d+", "port P", line)
    line = re.sub(r"EHLO \S+", "EHLO NAME", line)
    line = re.sub(r"certificate (names|subject|issuer|valid): .*", r"certificate \1: FACT", line)
    line = re.sub(r"\b\d+\.\d+s\b", "Ns", line)
    line = re.sub(r"expires in \d+ days", "expires in N days", line)
    line = re.sub(r"(duration_seconds|open_files_limit)=\S+", r"\1=N", line)
    line = re.sub(r"listen=\S+", "listen=L", line)
    line = re.sub(r"version=\S+", "version=V", line)
    return line


def assert_same(actual: list[str], shown: list[str], names: dict[str, str]) -> None:
    """Line for line; a README line ending in "..." is a prefix of the real one."""
    got = [normalized(line, names) for line in actual]
    want = [normalized(line, {}) for line in shown]
    assert len(got) == len(want), "\n".join(["README:", *want, "smtpmon:", *got])
    for real, documented in zip(got, want):
        if documented.endswith(" ..."):
            assert real.startswith(documented[:-3]), f"\nREADME:  {documented}\nsmtpmon: {real}"
        else:
            assert real == documented, f"\nREADME:  {documented}\nsmtpmon: {real}"


def test_the_normalizer_keeps_what_matters():
    names = {"localhost:4711": "mx1.example.org:25"}
    assert normalized("[  0.004] S: 250 8BITMIME", names) == "[T] S: 250 8BITMIME"
    assert normalized("SMTP OK - localhost:4711 [127.0.0.1]: success in 0.014s", names) == \
        "SMTP OK - mx1.example.org:25 [ADDR]: success in Ns"
    assert normalized("[  0.004] S: 250 8BITMIME", {}) != normalized("[  0.004] S: 250 SMTPUTF8", {})


# -- step 1: a probe by hand, and explain -----------------------------------------------------------
def server_playing(transcript: list[str], tls_context) -> ScriptedServer:
    """A server that answers exactly what the README's session shows the server answering:
    each C: line is expected (by its command word), each S: line sent, TLS after a 220 to
    STARTTLS."""
    script = []
    last_command = ""
    for line in transcript:
        kind, _, text = re.sub(r"^\[[^\]]*\]\s*", "", line).partition(": ")
        if kind == "C":
            last_command = text.split()[0].upper()
            script.append(Expect(re.escape(last_command) + r"\b"))
        elif kind == "S":
            script.append(Send(text.encode() + b"\r\n"))
            if last_command == "STARTTLS" and text.startswith("220 "):
                script.append(StartTls(tls_context))
    return ScriptedServer(script).start()


def test_step_1_the_probe_prints_the_session_the_readme_shows(tmp_path, ca_file, tls_contexts):
    (command,), output = block_running("smtpmon probe ")
    server = server_playing([line for line in output if line.startswith("[")], tls_contexts["trusted"])
    target = f"localhost:{server.port}"  # a name, as in the README: its address is shown too
    try:
        probed = shell(command.replace("mx1.example.org", target), tmp_path, environment(ca_file))
    finally:
        server.stop()

    assert probed.returncode == 0, probed.stdout + probed.stderr
    assert not server.mismatches, server.mismatches
    assert_same(probed.stdout.splitlines(), output, {target: "mx1.example.org:25"})


def test_step_1_explain_prints_what_the_readme_shows(tmp_path, ca_file):
    (command,), output = block_running("smtpmon explain ")
    explained = shell(command, tmp_path, environment(ca_file))
    assert explained.returncode == 0, explained.stderr
    assert explained.stdout.splitlines() == output


# -- steps 2 to 4: make run, the metrics, a configuration of one's own -----------------------------
@pytest.fixture
def checkout(tmp_path) -> Path:
    """What `make run` needs of a fresh clone, with this test run's virtualenv as its .venv
    (already installed: its bin/ and a fresh .installed stamp, so make installs nothing)."""
    root = tmp_path / "smtpmon"
    root.mkdir()
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy2(REPO / name, root / name)
    shutil.copytree(REPO / "config", root / "config")
    venv = root / ".venv"
    venv.mkdir()
    (venv / "bin").symlink_to(VENV_BIN)
    (venv / ".installed").touch()
    return root


@pytest.fixture
def web_port_9725():
    """The documented port, for one test at a time on this machine."""
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("", WEB_PORT))
            except OSError as error:
                pytest.fail(f"port {WEB_PORT}, which the README's `make run` serves on, is taken: {error}")
        yield WEB_PORT


class MakeRun:
    """`make run ARGS=...` as the README runs it, in its own process group (make and smtpmon)."""

    def __init__(self, command: str, cwd: Path, env: dict[str, str], log: Path):
        self._log = open(log, "wb")
        self.log_path = log
        self.process = subprocess.Popen(["/bin/bash", "-c", command], cwd=cwd, env=env, stdout=self._log,
                                        stderr=subprocess.STDOUT, start_new_session=True)

    def get(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{WEB_PORT}{path}", timeout=10) as answer:
            return answer.read().decode()

    def wait_for(self, condition, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"make run exited:\n{self.log()}"
            with contextlib.suppress(OSError):
                text = self.get("/metrics")
                if condition(text):
                    return text
            time.sleep(0.1)
        raise AssertionError(f"not within {timeout} s; log:\n{self.log()}\nmetrics:\n{text}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        self._log.close()


def smtpmon_lines(log: str) -> list[str]:
    """The daemon's own lines, without make's echo of the command it runs."""
    return [line for line in log.splitlines() if line.startswith("ts=")]


def nothing_listens_on_25() -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", 25)) != 0


def test_step_2_make_run_logs_what_the_readme_shows(checkout, ca_file, web_port_9725, tmp_path):
    """On a machine with no MTA, as the README says."""
    if not nothing_listens_on_25():
        pytest.fail("something listens on 127.0.0.1:25: step 2 shows a machine with no MTA there")
    shown = log_example()
    running = MakeRun("make run", checkout, environment(ca_file), tmp_path / "make.log")
    try:
        metrics = running.wait_for(lambda text: 'smtpmon_probes_total{target="127.0.0.1:25",module="local_mta"} 1.0' in text)
        time.sleep(0.2)  # the probe's log line follows its result
    finally:
        running.stop()

    assert_same(smtpmon_lines(running.log())[:len(shown)], shown, {})
    # "With no MTA on this machine you will see ..."
    assert 'smtpmon_probe_success{target="127.0.0.1:25",module="local_mta"} 0.0' in metrics
    assert ('smtpmon_probe_failure_info{target="127.0.0.1:25",module="local_mta",stage="connect",'
            'reason="connect_refused"} 1.0') in metrics


def test_step_3_the_metrics_and_probe_commands_show_what_the_readme_shows(checkout, ca_file, web_port_9725,
                                                                        tmp_path):
    """With an MTA on 127.0.0.1:25 (banner, EHLO, QUIT, as the README's output has it)."""
    try:
        mta = ScriptedServer([BANNER, EHLO_OK, QUIT_OK], port=25).start()
    except PermissionError as error:
        unavailable(f"binding 127.0.0.1:25 needs root: {error}")
    except OSError as error:
        pytest.fail(f"127.0.0.1:25 is taken, and step 3 needs a server of its own there: {error}")
    (metrics_command,), shown = block_running("curl -s localhost:9725/metrics")
    env = environment(ca_file)
    running = MakeRun("make run", checkout, env, tmp_path / "make.log")
    try:
        running.wait_for(lambda text: 'smtpmon_probes_total{target="127.0.0.1:25",module="local_mta"} 1.0' in text)
        grepped = shell(metrics_command, checkout, env)
        text = README.read_text(encoding="utf-8")
        probe_command = re.search(r"`(curl -s 'localhost:9725/probe\?[^`]+)`", text)[1]
        debug = shell(probe_command, checkout, env)
    finally:
        running.stop()
        mta.stop()

    assert grepped.stdout.splitlines() == shown
    assert "S: 220 mx.test.example ESMTP scripted" in debug.stdout
    assert 'smtpmon_probe_success{target="127.0.0.1:25",module="local_mta"} 1.0' in debug.stdout


@pytest.fixture
def loopback_mail_servers(tls_contexts):
    """A server for each address of config/smtpmon.yml: mx1 (also the recipient check: 550 for
    the user that does not exist), mx2, submission on 587 (STARTTLS and AUTH), SMTPS on 465."""
    trusted = tls_contexts["trusted"]
    servers = {
        "mx1.example.org:25": AiosmtpdServer(
            ScriptedHandler(rcpt_replies={"no-such-user@example.org": "550 5.1.1 User unknown"}),
            starttls_context=trusted),
        "mx2.example.org:25": AiosmtpdServer(starttls_context=trusted),
        "mail.example.org:587": AiosmtpdServer(starttls_context=trusted,
                                               authenticator=password_authenticator("monitor@example.org", "x")),
        "mail.example.org:465": AiosmtpdServer(implicit_tls_context=trusted),
    }
    for server in servers.values():
        server.start()
    yield {address: server.target for address, server in servers.items()}
    for server in servers.values():
        server.stop()


def test_step_4_your_own_configuration_runs_as_written(checkout, ca_file, web_port_9725, tmp_path,
                                                       loopback_mail_servers):
    """cp, check-config, then "edit the targets" (here: to the loopback servers), then make run:
    it starts although the submission password exists only under systemd, and that module
    fails at auth, saying why, while the others pass."""
    commands, shown = block_running("cp config/smtpmon.yml my.yml")
    copy, check, run = commands
    env = environment(ca_file)

    assert shell(copy, checkout, env).returncode == 0
    checked = shell(check, checkout, env)
    assert (checked.returncode, checked.stdout.splitlines(), checked.stderr) == (0, shown, "")

    config_path = checkout / "my.yml"
    text = config_path.read_text()
    for address, loopback in loopback_mail_servers.items():
        text = text.replace(f'"{address}"', f'"{loopback}"')
    config_path.write_text(text)
    targets = yaml.safe_load(text)["targets"]
    assert {target["address"] for target in targets} == set(loopback_mail_servers.values())

    running = MakeRun(run, checkout, env, tmp_path / "make.log")
    try:
        metrics = running.wait_for(lambda text: all(
            f'smtpmon_probes_total{{target="{target["address"]}",module="{target["module"]}"}} 1.0' in text
            for target in targets))
    finally:
        running.stop()

    for target in targets:
        labels = f'target="{target["address"]}",module="{target["module"]}"'
        expected = "0.0" if target["module"] == "submission" else "1.0"
        assert f"smtpmon_probe_success{{{labels}}} {expected}" in metrics, (target, running.log())
    submission = loopback_mail_servers["mail.example.org:587"]
    assert (f'smtpmon_probe_failure_info{{target="{submission}",module="submission",stage="auth",'
            'reason="auth_password_unavailable"} 1.0') in metrics
    assert ('level=warn msg="AUTH password not readable: this module\'s probes fail at auth '
            '(auth_password_unavailable) until it is"') in running.log()
