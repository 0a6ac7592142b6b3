"""Where `smtpmon run` listens: several `--web.listen-address`es (IPv4 and IPv6), and the
sockets systemd passes with `--web.systemd-socket` (socket activation), on both transports
(the hub that serves plain `/probe`, and the threads that serve TLS and basic auth); and where
it serves the metrics (`--web.telemetry-path`).

The daemon runs as a real subprocess; systemd's part is played as systemd plays it: a listening
socket made here is inherited as descriptor 3, with LISTEN_FDS=1 and LISTEN_PID set to the
daemon's own process id by a wrapper that then exec()s it.
"""

from __future__ import annotations

import base64
import http.client
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import bcrypt
import pytest
import trustme
from daemon_process import REPO, stop_process
from helpers import sample_value, unavailable
from smtpservers import LOOPBACK

from smtpmon.web import listeners

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


# -- --web.systemd-socket -------------------------------------------------------------------------
def test_systemd_socket_serves_metrics_and_probe_on_the_inherited_socket(run_daemon, tmp_path, smtp_server):
    server = smtp_server()
    with listening_socket() as inherited:
        address = f"{LOOPBACK}:{inherited.getsockname()[1]}"
        # --web.listen-address is ignored with --web.systemd-socket, as exporter-toolkit does.
        daemon = run_daemon(["--web.systemd-socket", "--web.listen-address", f"{LOOPBACK}:0",
                             *probe_config(tmp_path, server.target)],
                            inherit=inherited, env={"LISTEN_FDS": "1"})
        assert daemon.listening() == [address]
    # Closed here: only the daemon's copy is left, so an answer can only come from the daemon.
    status, text = get(address, "/metrics")
    assert status == 200, text
    assert sample_value(text, "smtpmon_targets") == 1
    # /probe on a plain port is the hub's transport; its answer carries the probe's metrics.
    status, text = get(address, f"/probe?target={server.target}&module=plain")
    assert status == 200 and sample_value(text, "smtpmon_probe_success") == 1, text
    assert daemon.stop() == 0


@pytest.fixture(scope="module")
def tls_web_config(tmp_path_factory):
    directory = tmp_path_factory.mktemp("web")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(directory / "server.crt"))
    cert.private_key_pem.write_to_path(str(directory / "server.key"))
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    path = directory / "web.yml"
    path.write_text("tls_server_config: {cert_file: server.crt, key_file: server.key}\n"
                    f"basic_auth_users: {{prometheus: '{hashed}'}}\n")
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return path, context


def test_systemd_socket_with_tls_and_basic_auth(run_daemon, tls_web_config, tmp_path, smtp_server):
    path, context = tls_web_config
    server = smtp_server()
    with listening_socket() as inherited:
        address = f"{LOOPBACK}:{inherited.getsockname()[1]}"
        daemon = run_daemon(["--web.systemd-socket", "--web.config.file", str(path),
                             *probe_config(tmp_path, server.target)],
                            inherit=inherited, env={"LISTEN_FDS": "1"})
        assert daemon.listening() == [address]
    token = base64.b64encode(f"prometheus:{PASSWORD}".encode()).decode()
    assert get(address, "/metrics", context=context)[0] == 401
    status, text = get(address, "/metrics", context=context, headers={"Authorization": f"Basic {token}"})
    assert status == 200 and sample_value(text, "smtpmon_targets") == 1, text
    status, text = get(address, f"/probe?target={server.target}&module=plain", context=context,
                       headers={"Authorization": f"Basic {token}"})
    assert status == 200 and sample_value(text, "smtpmon_probe_success") == 1, text
    assert daemon.stop() == 0


def test_systemd_socket_for_another_process_is_refused(run_daemon):
    # LISTEN_PID names another process (as when the variables leak into a child): not ours.
    daemon = run_daemon(["--web.systemd-socket"], env={"LISTEN_FDS": "1", "LISTEN_PID": str(os.getpid())})
    assert daemon.process.wait(15) == 1
    assert ("smtpmon: --web.systemd-socket: the sockets from systemd are not for this process "
            f"(LISTEN_PID={os.getpid()}") in daemon.log()


def test_systemd_socket_without_systemd_is_exit_1_with_the_reason(run_daemon):
    daemon = run_daemon(["--web.systemd-socket"], env={})
    assert daemon.process.wait(15) == 1
    assert "smtpmon: --web.systemd-socket: no sockets from systemd (LISTEN_PID and LISTEN_FDS are not set)" in daemon.log()


def test_an_inherited_socket_that_is_not_listening_is_refused(run_daemon):
    with socket.socket() as bound:
        bound.bind((LOOPBACK, 0))  # bound but not listening: systemd never passes such a one
        daemon = run_daemon(["--web.systemd-socket"], inherit=bound, env={"LISTEN_FDS": "1"})
        assert daemon.process.wait(15) == 1
    assert "descriptor 3 from systemd is not a listening TCP socket" in daemon.log()


def test_the_activation_variables_are_removed_after_use():
    # As sd_listen_fds(unset_environment=1): a child must never take them for its own.
    environ = {"LISTEN_PID": "1", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "smtpmon.socket", "PATH": "/bin"}
    with pytest.raises(listeners.ActivationError):
        listeners.systemd_sockets(environ)
    assert environ == {"PATH": "/bin"}


# -- --web.telemetry-path -------------------------------------------------------------------------
def test_telemetry_path_moves_the_metrics_and_the_landing_page_links_there(run_daemon):
    daemon = run_daemon(["--web.listen-address", f"{LOOPBACK}:0", "--web.telemetry-path", "/smtp/metrics"])
    (address,) = daemon.listening()
    status, text = get(address, "/smtp/metrics")
    assert status == 200 and sample_value(text, "smtpmon_targets") == 1, text
    assert get(address, "/metrics") == (404, "not found: /metrics\n")
    status, page = get(address, "/")
    assert status == 200
    assert '<a href="/smtp/metrics">metrics</a>' in page and 'href="/metrics"' not in page
    assert get(address, "/-/healthy") == (200, "Healthy\n")


def test_default_telemetry_path_is_metrics(run_daemon):
    daemon = run_daemon(["--web.listen-address", f"{LOOPBACK}:0"])
    (address,) = daemon.listening()
    assert get(address, "/metrics")[0] == 200
    assert '<a href="/metrics">metrics</a>' in get(address, "/")[1]


@pytest.mark.parametrize(("path", "reason"), [
    ("metrics", "want a path such as /metrics"),
    ("/metrics?x=1", "want a path such as /metrics"),
    ("/probe", "smtpmon serves something else there"),
    ("/", "smtpmon serves something else there"),
])
def test_a_telemetry_path_that_cannot_be_served_is_exit_2(run_daemon, path, reason):
    daemon = run_daemon(["--web.listen-address", f"{LOOPBACK}:0", "--web.telemetry-path", path])
    assert daemon.process.wait(15) == 2
    assert f"smtpmon: invalid --web.telemetry-path {path!r}: {reason}" in daemon.log()


# -- the socket unit ------------------------------------------------------------------------------
SOCKET_UNIT = REPO / "systemd" / "smtpmon.socket"


def unit_section(path: Path, section: str) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    current = None
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line.startswith("["):
            current = line
        elif current == section and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def test_socket_unit_listens_where_the_daemon_would_and_is_valid_with_the_service(tmp_path):
    socket_settings = unit_section(SOCKET_UNIT, "[Socket]")
    # The flag's default, :9725: every address, IPv4 and IPv6; one service for every connection.
    assert socket_settings["ListenStream"] == ["9725"]
    assert socket_settings["Accept"] == ["no"]
    assert unit_section(SOCKET_UNIT, "[Install]")["WantedBy"] == ["sockets.target"]
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        unavailable("systemd-analyze (Debian's systemd package) is missing")
    # verify checks the socket's service too: the unit, with a command that exists here.
    service = (REPO / "systemd" / "smtpmon.service").read_text(encoding="utf-8")
    script = Path(sys.executable).with_name("smtpmon")
    command = str(script) if script.exists() else f"{sys.executable} -m smtpmon"
    (tmp_path / "smtpmon.service").write_text(
        service.replace("ExecStart=/usr/local/bin/smtpmon ", f"ExecStart={command} "), encoding="utf-8")
    shutil.copy(SOCKET_UNIT, tmp_path / "smtpmon.socket")
    result = subprocess.run([analyze, "verify", str(tmp_path / "smtpmon.socket"), str(tmp_path / "smtpmon.service")],
                            capture_output=True, text=True, timeout=30)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
