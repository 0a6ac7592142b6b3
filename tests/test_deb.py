"""The Debian package (debian/, `make deb`).

Everywhere: what the package is made of agrees with the rest of the repository (one version in
smtpmon, debian/changelog and CHANGELOG.md; the packaged unit has the upstream unit's sandbox;
the packaged configuration is the embedded default; the man page names every command).

As root with Debian's build tools (CI; locally they skip with the reason): the package built by
`make deb` (or the one named by $SMTPMON_DEB, which .ci/run builds first) is installed with
`apt-get install ./smtpmon_*.deb`; the installed files, `smtpmon --version`, `check-config`,
the installed unit (`systemd-analyze verify` and `security`) are checked; the installed daemon
runs as the unit would run it (the unit's user, its ExecStart with $ARGS from
/etc/default/smtpmon, under tests/systemd_sandbox.py) and is scraped; then the package is
purged and nothing of it may be left but its system user, which Debian's packages keep.

The install tests change the machine and undo it: the module fixture purges the package at the
end whatever happened, stops the daemon, and deletes the smtpmon user if it created it. They
refuse to run where a smtpmon package is already installed (they would purge it).
"""

from __future__ import annotations

import gzip
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from daemon_process import free_port, probed
from helpers import sample_value, unavailable
from systemd_sandbox import service_settings

from smtpmon import __version__
from smtpmon.cli import SUBCOMMANDS
from smtpmon.config.load import DEFAULT_CONFIG_TEXT, parse_config

REPO = Path(__file__).resolve().parent.parent
DEBIAN = REPO / "debian"
UPSTREAM_UNIT = REPO / "systemd" / "smtpmon.service"
PACKAGED_UNIT = DEBIAN / "smtpmon.service"
SANDBOX = REPO / "tests" / "systemd_sandbox.py"
MAX_EXPOSURE = 1.5

INSTALLED_UNIT = Path("/lib/systemd/system/smtpmon.service")
INSTALLED_SOCKET = Path("/lib/systemd/system/smtpmon.socket")
UPSTREAM_SOCKET = REPO / "systemd" / "smtpmon.socket"
INSTALLED_CONFIG = Path("/etc/smtpmon/smtpmon.yml")
INSTALLED_DEFAULTS = Path("/etc/default/smtpmon")
STATE_DIRECTORY = Path("/var/lib/smtpmon")
EXEC_START = "/usr/bin/smtpmon run --config.file /etc/smtpmon/smtpmon.yml $ARGS"
# The unit settings the package changes, and why: its program's path and flags, and its own
# system user (files can be given to it alone; its home is the state directory).
PACKAGE_ONLY = {"ExecStart", "EnvironmentFile", "User", "Group"}
UPSTREAM_ONLY = {"ExecStart", "DynamicUser"}
# Where a package's files may be; scanned for anything named after smtpmon before and after.
SCANNED = ("/etc", "/usr", "/lib", "/var/lib", "/run")


# -- what the package is built from ----------------------------------------------------------------
def debian_changelog_version() -> str:
    first = (DEBIAN / "changelog").read_text(encoding="utf-8").splitlines()[0]
    match = re.match(r"smtpmon \(([^)]+)\) ", first)
    assert match, first
    return match.group(1)


def changelog_sections() -> list[str]:
    return re.findall(r"^## \[([^\]]+)\]", (REPO / "CHANGELOG.md").read_text(encoding="utf-8"), re.M)


def test_one_version_in_smtpmon_debian_changelog_and_changelog_md():
    assert debian_changelog_version() == __version__
    sections = changelog_sections()
    assert sections[0] == "Unreleased", sections
    assert sections[1] == __version__, f"CHANGELOG.md's latest release is {sections[1]}, not {__version__}"


def test_packaged_unit_keeps_the_upstream_sandbox():
    upstream, packaged = service_settings(str(UPSTREAM_UNIT)), service_settings(str(PACKAGED_UNIT))
    assert {key: values for key, values in packaged.items() if key not in PACKAGE_ONLY} == {
        key: values for key, values in upstream.items() if key not in UPSTREAM_ONLY}
    assert packaged["ExecStart"] == [EXEC_START]
    assert packaged["EnvironmentFile"] == ["-/etc/default/smtpmon"]
    assert (packaged["User"], packaged["Group"], packaged["StateDirectory"]) == (["smtpmon"],) * 3
    assert upstream["DynamicUser"] == ["yes"] and "DynamicUser" not in packaged


def test_packaged_unit_security_exposure_is_at_most_1_5():
    assert exposure(PACKAGED_UNIT) <= MAX_EXPOSURE


def test_packaged_configuration_is_the_embedded_default():
    packaged = (DEBIAN / "smtpmon.yml").read_text(encoding="utf-8")
    assert parse_config(packaged, "config") == parse_config(DEFAULT_CONFIG_TEXT, "config")


def test_default_flags_file_sets_no_flag():
    assert environment_file(DEBIAN / "smtpmon.default") == {"ARGS": ""}


def test_man_page_names_every_command():
    page = (DEBIAN / "smtpmon.1").read_text(encoding="utf-8")
    assert re.findall(r"^\.TP\n\.B (\S+)$", page, re.M) == list(SUBCOMMANDS)


def exposure(unit: Path) -> float:
    if shutil.which("systemd-analyze") is None:
        missing("systemd-analyze (Debian's systemd package)")
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
                            capture_output=True, text=True, timeout=30)
    match = re.search(r"Overall exposure level for smtpmon\.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    return float(match.group(1))


def environment_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as systemd's EnvironmentFile= reads them (quotes removed)."""
    variables = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";")):
            key, _, raw = line.partition("=")
            variables[key.strip()] = " ".join(shlex.split(raw))
    return variables


def missing(what: str) -> None:
    """Skip with the reason; in CI (CI=true), where .ci/run installs everything, fail."""
    unavailable(f"{what} is missing")


# -- the package on this machine ------------------------------------------------------------------
def run(*command: str, timeout: float = 60, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check:
        assert result.returncode == 0, f"{shlex.join(command)}: exit {result.returncode}\n{result.stdout}{result.stderr}"
    return result


def package_status() -> str:
    """dpkg's status of the smtpmon package ("" when dpkg has never heard of it)."""
    return run("dpkg-query", "-W", "-f=${db:Status-Abbrev}", "smtpmon", check=False).stdout.strip()


def smtpmon_paths() -> set[str]:
    """Paths named after smtpmon where packages install and keep files (this checkout aside)."""
    found = run("find", *SCANNED, "-xdev", "-name", "*smtpmon*", timeout=60, check=False)
    return {path for path in found.stdout.split() if not Path(path).is_relative_to(REPO)}


def user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def system_python_environment() -> dict[str, str]:
    """What a shell on the host would have: no virtualenv, no PYTHONPATH, system PATH."""
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


def purge() -> subprocess.CompletedProcess:
    return run("apt-get", "purge", "-y", "-q", "-o", "DPkg::Lock::Timeout=120", "smtpmon",
               timeout=240, check=False, env={**system_python_environment(), "DEBIAN_FRONTEND": "noninteractive"})


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The package, built and installed with apt-get; purged at the end whatever happened."""
    if os.geteuid() != 0:
        missing("root (the tests install a package)")
    for tool in ("dpkg-buildpackage", "lintian", "apt-get"):
        if shutil.which(tool) is None:
            missing(f"{tool} (.ci/run installs Debian's build tools)")
    if package_status() not in ("", "un", "pn"):
        missing(f"a machine without the smtpmon package (it is {package_status()!r} here; the test would purge it)")
    deb = os.environ.get("SMTPMON_DEB")
    if not deb:
        work = tmp_path_factory.mktemp("deb")
        run("make", "-C", str(REPO), "deb", f"DEB_BUILD={work / 'build'}", f"DIST={work / 'dist'}", timeout=240)
        (deb,) = (work / "dist").glob("smtpmon_*_all.deb")
    deb = (REPO / deb).resolve()
    assert deb.name == f"smtpmon_{__version__}_all.deb"

    before = smtpmon_paths()
    had_user = user_exists("smtpmon")
    try:
        run("apt-get", "install", "-y", "-q", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=120",
            str(deb), timeout=240, env={**system_python_environment(), "DEBIAN_FRONTEND": "noninteractive"})
        yield {"before": before, "had_user": had_user}
    finally:
        purge()
        if package_status() not in ("", "un", "pn"):
            run("dpkg", "--purge", "smtpmon", check=False)
        if not had_user and user_exists("smtpmon"):
            run("userdel", "smtpmon", check=False)
            run("groupdel", "smtpmon", check=False)


# Building (make deb runs lintian too) and installing come first, in the first test's time.
install_timeout = pytest.mark.timeout(360)


@install_timeout
def test_installed_files(installed):
    assert package_status() == "ii"
    assert os.access("/usr/bin/smtpmon", os.X_OK)
    assert Path("/usr/lib/python3/dist-packages/smtpmon/cli.py").is_file()
    conffiles = run("dpkg-query", "-W", "-f=${Conffiles}", "smtpmon").stdout
    assert {line.split()[0] for line in conffiles.strip().splitlines()} == {str(INSTALLED_CONFIG), str(INSTALLED_DEFAULTS)}
    assert INSTALLED_CONFIG.read_bytes() == (DEBIAN / "smtpmon.yml").read_bytes()
    assert INSTALLED_DEFAULTS.read_bytes() == (DEBIAN / "smtpmon.default").read_bytes()
    assert INSTALLED_UNIT.read_bytes() == PACKAGED_UNIT.read_bytes()
    # Enabled, not started (there is no systemd to start it here anyway: what counts is the link).
    wants = Path("/etc/systemd/system/multi-user.target.wants/smtpmon.service")
    assert wants.is_symlink() and wants.resolve() == INSTALLED_UNIT.resolve()
    # The socket unit (socket activation) is there, neither enabled nor started: it needs
    # ARGS="--web.systemd-socket", the administrator's choice.
    assert INSTALLED_SOCKET.read_bytes() == UPSTREAM_SOCKET.read_bytes()
    assert not Path("/etc/systemd/system/sockets.target.wants/smtpmon.socket").exists()
    for name in ("prometheus/smtpmon-alerts.yml", "prometheus/smtpmon-recording.yml",
                 "grafana/smtpmon-dashboard.json", "smtpmon.yml"):
        assert (Path("/usr/share/smtpmon") / name).read_bytes() == (REPO / "config" / name).read_bytes(), name
    assert not Path("/usr/share/smtpmon/systemd").exists(), "the pip install's unit is not the package's"
    doc = Path("/usr/share/doc/smtpmon")
    for name in ("README.md", "configuration.md", "metrics.md", "systemd.md", "versioning.md"):
        source = REPO / name if name == "README.md" else REPO / "docs" / name
        where = doc if name == "README.md" else doc / "docs"
        shipped = where / name if (where / name).exists() else where / f"{name}.gz"
        text = gzip.decompress(shipped.read_bytes()) if shipped.suffix == ".gz" else shipped.read_bytes()
        assert text == source.read_bytes(), name
    assert (doc / "copyright").is_file() and (doc / "changelog.gz").is_file()
    assert Path("/usr/share/man/man1/smtpmon.1.gz").is_file()
    user = pwd.getpwnam("smtpmon")
    assert user.pw_uid < 1000 and user.pw_dir == str(STATE_DIRECTORY)
    assert user.pw_shell in ("/usr/sbin/nologin", "/bin/false")


@install_timeout
def test_installed_command_is_the_packages_and_checks_the_packaged_configuration(installed):
    located = run("/usr/bin/python3", "-c", "import smtpmon; print(smtpmon.__file__)", cwd="/",
                  env=system_python_environment())
    assert located.stdout.strip() == "/usr/lib/python3/dist-packages/smtpmon/__init__.py"
    version = run("smtpmon", "--version", cwd="/", env=system_python_environment())
    assert version.stdout == f"smtpmon {__version__}\n"
    checked = run("smtpmon", "check-config", str(INSTALLED_CONFIG), cwd="/", env=system_python_environment())
    assert checked.stdout == f"{INSTALLED_CONFIG}: OK: 1 module, 1 target\n"


@install_timeout
def test_installed_unit_is_valid_and_hardened(installed):
    verified = run("systemd-analyze", "verify", str(INSTALLED_UNIT), check=False)
    assert (verified.returncode, verified.stdout + verified.stderr) == (0, "")
    assert exposure(INSTALLED_UNIT) <= MAX_EXPOSURE


def unit_command(port: int) -> list[str]:
    """The installed unit's ExecStart, $ARGS taken from its EnvironmentFile as systemd does
    (an unbraced $VAR is split at whitespace), after the test put a listen address there."""
    settings = service_settings(str(INSTALLED_UNIT))
    (environment_path,) = settings["EnvironmentFile"]
    environment_path = Path(environment_path.lstrip("-"))
    environment_path.write_text(f'ARGS="--web.listen-address 127.0.0.1:{port} --log.level debug"\n')
    variables = environment_file(environment_path)
    (exec_start,) = settings["ExecStart"]
    command = []
    for word in shlex.split(exec_start):
        command += variables.get(word[1:], "").split() if word.startswith("$") else [word]
    return command


@install_timeout
def test_installed_daemon_runs_as_the_unit_and_is_scraped(installed, tmp_path, smtp_server, tls_contexts):
    # The admin adds a target to the packaged configuration: a STARTTLS server, so that the probe
    # parses a certificate with Debian's python3-cryptography.
    server = smtp_server(starttls_context=tls_contexts["trusted"])
    with INSTALLED_CONFIG.open("a") as config:
        config.write(f'  - address: "{server.target}"\n    module: local_mta\n')
    port = free_port()
    command = unit_command(port)
    assert command == ["/usr/bin/smtpmon", "run", "--config.file", str(INSTALLED_CONFIG),
                       "--web.listen-address", f"127.0.0.1:{port}", "--log.level", "debug"]
    user = pwd.getpwnam(service_settings(str(INSTALLED_UNIT))["User"][0])

    # The sandbox script must be readable by the service's user: a checkout under /root is not.
    sandbox_dir = Path(tempfile.mkdtemp(prefix="smtpmon-sandbox-"))
    sandbox_dir.chmod(0o755)
    shutil.copy(SANDBOX, sandbox_dir / SANDBOX.name)
    (sandbox_dir / SANDBOX.name).chmod(0o644)
    log_path = tmp_path / "daemon.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", "--",
             "/usr/bin/python3", str(sandbox_dir / SANDBOX.name), str(INSTALLED_UNIT), "--", *command],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, cwd="/",
            env=system_python_environment())
    try:
        text = wait_for_metrics(port, process, log_path, probed(server.target))
        status = dict(line.split(":\t", 1) for line in Path(f"/proc/{process.pid}/status").read_text().splitlines()
                      if ":\t" in line)
        assert status["Uid"].split()[0] == str(user.pw_uid)
        assert status["CapEff"] == "0000000000000000" and status["NoNewPrivs"] == "1"
        assert f'smtpmon_build_info{{version="{__version__}",' in text
        # `make deb` records the commit of the checkout it packs (REPO's HEAD, else "unknown").
        assert sample_value(text, "smtpmon_build_info", revision=checkout_revision()) == 1
        assert sample_value(text, "smtpmon_probe_success", target=server.target) == 1, log_path.read_text()
        assert sample_value(text, "smtpmon_replies_total", target=server.target, stage="starttls", code="220") >= 1
        assert sample_value(text, "smtpmon_tls_certificate_not_after_timestamp_seconds", target=server.target) > time.time()
        # The packaged target: whatever listens on port 25 here, it has a verdict.
        assert sample_value(text, "smtpmon_probe_success", target="127.0.0.1:25", module="local_mta") in (0, 1)
        assert sample_value(text, "process_resident_memory_bytes") > 0
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        shutil.rmtree(sandbox_dir)
    log = log_path.read_text()
    assert f"config={INSTALLED_CONFIG}" in log and "msg=stopped" in log
    assert "Traceback" not in log and "Operation not permitted" not in log, log


def checkout_revision() -> str:
    if not (REPO / ".git").exists() or shutil.which("git") is None:
        return "unknown"
    return run("git", "rev-parse", "HEAD", cwd=REPO).stdout.strip()


def wait_for_metrics(port: int, process: subprocess.Popen, log_path: Path, condition, timeout: float = 30) -> str:
    import http.client

    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, f"the daemon exited ({process.returncode}):\n{log_path.read_text()}"
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/metrics")
            text = connection.getresponse().read().decode()
            connection.close()
            if condition(text):
                return text
        except OSError:
            pass
        assert time.monotonic() < deadline, f"no probe within {timeout} s:\n{log_path.read_text()}"
        time.sleep(0.2)


@install_timeout
def test_purge_leaves_only_the_system_user(installed):
    # What the service would have kept in its StateDirectory= (systemd creates it at start).
    STATE_DIRECTORY.mkdir(exist_ok=True)
    (STATE_DIRECTORY / "state").write_text("kept between starts\n")
    shutil.chown(STATE_DIRECTORY, "smtpmon", "smtpmon")
    purged = purge()
    assert purged.returncode == 0, purged.stdout + purged.stderr
    assert package_status() in ("", "un", "pn")
    left = smtpmon_paths() - installed["before"]
    assert left == set(), f"left behind: {sorted(left)}"
    assert not Path("/usr/bin/smtpmon").exists()
    # Debian's packages keep their system users: a file the user owns elsewhere must not pass to
    # a later user that gets the same id.
    assert user_exists("smtpmon")
