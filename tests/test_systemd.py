"""The service unit: systemd accepts it, its sandbox scores as hardened, and the daemon's
Python stack keeps working under the unit's seccomp restrictions.

systemd is not PID 1 in CI, so the unit is never started: `systemd-analyze verify` and
`security --offline=true` read the file, and tests/systemd_sandbox.py loads the unit's
seccomp filters on a child process by hand.
"""

from __future__ import annotations

import ctypes.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is missing and CI=true: install Debian's systemd package")
    pytest.skip(f"{what} is missing")


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


# What the daemon does, with the libraries it does it with; the first lines prove the sandbox
# is in force, so a sandbox that silently failed to load cannot pass.
WORKLOAD = r'''
import concurrent.futures, mmap, os, signal, socket, ssl, threading, urllib.request
import trustme, yaml
from cryptography import x509
from prometheus_client import Counter, start_http_server
from smtpmon.cli import build_parser

try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
except PermissionError:
    print("refused: writable+executable memory")
try:
    socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)
except OSError:
    print("refused: netlink socket")
try:
    os.setpriority(os.PRIO_PROCESS, 0, 5)
except PermissionError:
    print("refused: setpriority")

build_parser()
yaml.load("targets: [{host: mx.example.org}]", Loader=yaml.CSafeLoader)
socket.getaddrinfo("localhost", 25, type=socket.SOCK_STREAM)
hangups = []
signal.signal(signal.SIGHUP, lambda *_: hangups.append(1))
os.kill(os.getpid(), signal.SIGHUP)

ca = trustme.CA()
server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ca.issue_cert("mx.test").configure_cert(server_context)
listener = socket.create_server(("127.0.0.1", 0))
def serve():
    connection, _ = listener.accept()
    with server_context.wrap_socket(connection, server_side=True) as tls:
        tls.sendall(b"220 mx.test ESMTP\r\n")
        tls.recv(16)
threading.Thread(target=serve, daemon=True).start()
client_context = ssl.create_default_context()
ca.configure_trust(client_context)
def probe():
    plain = socket.create_connection(listener.getsockname(), timeout=5)
    with client_context.wrap_socket(plain, server_hostname="mx.test") as tls:
        banner = tls.recv(64)
        certificate = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
        tls.sendall(b"QUIT\r\n")
    return banner, certificate.serial_number
with concurrent.futures.ThreadPoolExecutor(2) as pool:
    banner, serial = pool.submit(probe).result(timeout=10)
print("tls:", banner.decode().strip(), serial > 0)

Counter("smtpmon_sandbox_probes", "probes").inc()
http_server, _ = start_http_server(0, addr="127.0.0.1")
page = urllib.request.urlopen(f"http://127.0.0.1:{http_server.server_port}/metrics", timeout=5).read().decode()
print("metrics:", "smtpmon_sandbox_probes_total 1.0" in page, "process_start_time_seconds" in page)
print("sighup:", hangups == [1])
'''


def test_daemon_stack_works_under_the_units_seccomp_filters(systemd_analyze, tmp_path):
    require(ctypes.util.find_library("seccomp") is not None, "libseccomp")
    workload = tmp_path / "workload.py"
    workload.write_text(WORKLOAD, encoding="utf-8")
    result = subprocess.run([sys.executable, str(SANDBOX), str(UNIT), "--", sys.executable, str(workload)],
                            capture_output=True, text=True, timeout=30, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "refused: writable+executable memory",
        "refused: netlink socket",
        "refused: setpriority",
        "tls: 220 mx.test ESMTP True",
        "metrics: True True",
        "sighup: True",
    ], result.stderr
