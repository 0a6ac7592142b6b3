"""Where `smtpmon run` listens: several `--web.listen-address`es (IPv4 and IPv6). The daemon
runs as a real subprocess."""

from __future__ import annotations

import http.client
import os
import re
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
from daemon_process import REPO, stop_process
from helpers import sample_value
from smtpservers import LOOPBACK

PASSWORD = "correct horse battery staple"
# Plays systemd's part between fork and exec: the socket passed as argv[1] becomes descriptor 3
# (SD_LISTEN_FDS_START), LISTEN_PID becomes this process's id, which exec() keeps.
ACTIVATE = """\
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


def ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


class Daemon:
    """`smtpmon run` with the embedded default configuration and these flags."""

    def __init__(self, tmp_path: Path, args: list[str], *, inherit: socket.socket | None = None,
                 env: dict[str, str] | None = None):
        tmp_path.mkdir()
        self.log_path = tmp_path / "daemon.log"
        command = [sys.executable, "-m", "smtpmon", "run", *args, "--log.level", "debug"]
        pass_fds: tuple[int, ...] = ()
        if inherit is not None:
            command = [sys.executable, "-c", ACTIVATE, str(inherit.fileno()), *command[1:]]
            pass_fds = (inherit.fileno(),)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(command, cwd=REPO, env={**os.environ, **(env or {})},
                                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                            stderr=log, pass_fds=pass_fds)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def listening(self, timeout: float = 15.0) -> list[str]:
        """The addresses of the "smtpmon started" log line (ports as bound)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(r"msg=\"smtpmon started\".* listen=(\S+)", self.log())
            if match:
                return match.group(1).split(",")
            assert self.process.poll() is None, f"the daemon exited ({self.process.returncode}):\n{self.log()}"
            time.sleep(0.05)
        raise AssertionError(f"not started within {timeout} s:\n{self.log()}")

    def stop(self) -> int:
        stop_process(self.process)
        return self.process.returncode


@pytest.fixture
def run_daemon(tmp_path):
    started: list[Daemon] = []

    def start(args: list[str], **kwargs) -> Daemon:
        started.append(Daemon(tmp_path / str(len(started)), args, **kwargs))
        return started[-1]

    yield start
    for daemon in started:
        daemon.stop()


def split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def get(address: str, path: str, *, context: ssl.SSLContext | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, str]:
    host, port = split(address)
    if context is None:
        connection = http.client.HTTPConnection(host, port, timeout=10)
    else:
        connection = http.client.HTTPSConnection(host, port, timeout=10, context=context)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def probe_config(tmp_path: Path, target: str) -> list[str]:
    """--config.file of a configuration with one target, which /probe may probe."""
    path = tmp_path / "smtpmon.yml"
    path.write_text(f'modules: {{plain: {{tls: none}}}}\ntargets: [{{address: "{target}", module: plain}}]\n')
    return ["--config.file", str(path)]


def listening_socket(host: str = LOOPBACK) -> socket.socket:
    """What systemd makes of `ListenStream=127.0.0.1:0`: bound and listening, inheritable."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, 0))
    sock.listen(16)
    return sock


# -- several --web.listen-address -----------------------------------------------------------------
@pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 loopback (::1) on this machine")
def test_every_listen_address_is_served_ipv4_and_ipv6(run_daemon):
    daemon = run_daemon(["--web.listen-address", f"{LOOPBACK}:0", "--web.listen-address", "[::1]:0"])
    addresses = daemon.listening()
    assert [split(address)[0] for address in addresses] == [LOOPBACK, "::1"]
    assert all(split(address)[1] > 0 for address in addresses)
    for address in addresses:
        status, text = get(address, "/metrics")
        assert status == 200, (address, text)
        assert sample_value(text, "smtpmon_targets") == 1
        assert get(address, "/-/healthy") == (200, "Healthy\n")


def test_one_address_that_cannot_be_bound_is_exit_1_naming_it(run_daemon):
    with listening_socket() as taken:
        busy = f"{LOOPBACK}:{taken.getsockname()[1]}"
        daemon = run_daemon(["--web.listen-address", f"{LOOPBACK}:0", "--web.listen-address", busy])
        assert daemon.process.wait(15) == 1
    assert f"smtpmon: cannot listen on {busy}: Address already in use" in daemon.log()


def test_a_bad_listen_address_among_several_is_exit_2(run_daemon):
    daemon = run_daemon(["--web.listen-address", f"{LOOPBACK}:0", "--web.listen-address", "nowhere"])
    assert daemon.process.wait(15) == 2
    assert "invalid listen address 'nowhere'" in daemon.log()
