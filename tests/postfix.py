"""A private, real Postfix on 127.0.0.1 for tests and benchmarks.

`start_postfix()` writes its own config directory (main.cf, master.cf), queue and data
directories and a trustme certificate, then runs `postfix -c DIR start`. The system's
/etc/postfix and its queue are never touched: Postfix accepts a non-default `-c` directory
without `alternate_config_directories` when the caller is root, and `postfix start` creates
the private queue's subdirectories itself (`post-install create-missing`).

The instance behaves like a small MX for `mx.smtpmon.test`: STARTTLS with the test
certificate, `550 5.1.1` for unknown local users, and no mail ever leaves it (accepted local
mail is discarded, everything else bounces with the `error` transport).

Needs root (Postfix drops to the `postfix` user itself).

    with start_postfix() as mx:
        run_probe_at(mx.target, Module(tls="starttls", tls_ca_file=mx.ca_file, ...))

Tests of the log reader give the instance more behaviour through `main_cf_extra` (lines
appended to main.cf, so they override the defaults above) and `config_files` (access maps,
transport maps: written into the config directory, where `{config_dir}` in main_cf_extra
points), and read what it logged from `maillog`.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme
from helpers import unavailable

HOSTNAME = "mx.smtpmon.test"
SIZE_LIMIT = 10_240_000  # message_size_limit, advertised as "SIZE 10240000"
START_ATTEMPTS = 3  # the free port can be taken between our probe bind and Postfix's bind
COMMAND_TIMEOUT_SECONDS = 20
STOP_TIMEOUT_SECONDS = 5

MAIN_CF = """\
compatibility_level = 3.6
config_directory = {config_dir}
queue_directory = {queue_dir}
data_directory = {data_dir}
maillog_file = {maillog}
maillog_file_prefixes = {root}

myhostname = {hostname}
mydestination = $myhostname, localhost
mynetworks =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
smtpd_banner = $myhostname ESMTP $mail_name
message_size_limit = {size_limit}

# RCPT to an unknown local user: 550 5.1.1 ... User unknown in local recipient table.
alias_maps =
alias_database =
local_recipient_maps = proxy:unix:passwd.byname $alias_maps

# Nothing leaves this instance and nothing reaches the system's mailboxes.
local_transport = discard:test instance
default_transport = error:test instance
relay_transport = error:test instance

smtpd_tls_security_level = may
smtpd_tls_cert_file = {cert_file}
smtpd_tls_key_file = {key_file}
"""

# Debian's master.cf without chroot (the private queue has no chroot jail) and without the
# pipe(8) services; the smtpd listener is bound to loopback and the chosen port.
MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PostfixUnavailable(RuntimeError):
    """Postfix cannot run here (not installed, or not root)."""


@dataclass
class PostfixInstance:
    host: str
    port: int
    ca_file: str  # PEM of the CA that issued the server certificate: the probe's tls_ca_file
    workdir: str  # config in etc/, queue in spool/, data in lib/, the log in maillog
    hostname: str = HOSTNAME
    size_limit: int = SIZE_LIMIT
    startup_seconds: float = 0.0
    remove_workdir: bool = False  # start_postfix() made the directory, so stop() removes it
    _stopped: bool = field(default=False, repr=False)

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def config_dir(self) -> str:
        return str(Path(self.workdir, "etc"))

    @property
    def maillog(self) -> str:
        return str(Path(self.workdir, "maillog"))

    def stop(self) -> None:
        """Stop the master and its children (and remove an own workdir); idempotent."""
        if self._stopped:
            return
        self._stopped = True
        _stop_master(Path(self.workdir))
        if self.remove_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> PostfixInstance:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def unavailable_reason() -> str | None:
    """Why a private Postfix cannot run on this machine, or None when it can."""
    if shutil.which("postfix") is None and not os.path.exists("/usr/sbin/postfix"):
        return "postfix is not installed (Debian: apt-get install postfix)"
    if os.geteuid() != 0:
        return "a private postfix instance needs root (postfix drops privileges itself)"
    return None


def start_postfix(
    workdir: str | os.PathLike[str] | None = None,
    *,
    main_cf_extra: str = "",
    config_files: Mapping[str, str] | None = None,
) -> PostfixInstance:
    """Start a private Postfix on 127.0.0.1 and a free port; ready when this returns.

    `workdir` must not hold an earlier instance and must be reachable by the `postfix` user
    (every parent searchable by others, so not pytest's tmp_path); without one, a directory
    under the system temp dir is made and removed on stop(). `main_cf_extra` is appended to
    main.cf after `{config_dir}` is replaced by the config directory; `config_files` maps
    file names to contents written into that directory (e.g. `texthash:` maps).
    """
    reason = unavailable_reason()
    if reason is not None:
        raise PostfixUnavailable(reason)
    started = time.monotonic()
    owned = workdir is None
    root = Path(tempfile.mkdtemp(prefix="smtpmon-postfix-") if owned else workdir).resolve()
    try:
        config_dir, ca_file, maillog = _prepare(root, main_cf_extra, config_files or {})
        last_error = ""
        for _ in range(START_ATTEMPTS):
            port = _free_port()
            _write_config(config_dir / "master.cf", MASTER_CF.format(port=port))
            run = _postfix(config_dir, "start")
            if run.returncode == 0:
                _wait_for_banner(port)
                return PostfixInstance(
                    host="127.0.0.1",
                    port=port,
                    ca_file=str(ca_file),
                    workdir=str(root),
                    startup_seconds=time.monotonic() - started,
                    remove_workdir=owned,
                )
            _stop_master(root)
            last_error = run.stdout + run.stderr + _tail(maillog)
        raise RuntimeError(f"postfix -c {config_dir} start failed:\n{last_error}")
    except BaseException:
        if owned:
            shutil.rmtree(root, ignore_errors=True)
        raise


def _prepare(root: Path, main_cf_extra: str = "",
             config_files: Mapping[str, str] | None = None) -> tuple[Path, Path, Path]:
    """Write certificate, main.cf and directories; return (config dir, CA file, maillog)."""
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)  # the postfix user must reach the queue and data directories
    _require_searchable_parents(root)
    config_dir, queue_dir, data_dir = root / "etc", root / "spool", root / "lib"
    # data_dir is left for `post-install create-missing`, which makes it the postfix user's.
    for directory in (config_dir, queue_dir):
        directory.mkdir(mode=0o755)

    ca = trustme.CA()
    server_cert = ca.issue_cert(HOSTNAME, "127.0.0.1", common_name=HOSTNAME)
    ca_file, cert_file, key_file = (config_dir / name for name in ("ca.pem", "cert.pem", "key.pem"))
    ca.cert_pem.write_to_path(str(ca_file))
    with open(cert_file, "wb") as chain:  # the leaf first, then its issuers
        for pem in server_cert.cert_chain_pems:
            chain.write(pem.bytes())
    key_file.touch(mode=0o600)
    server_cert.private_key_pem.write_to_path(str(key_file))

    maillog = root / "maillog"
    _write_config(
        config_dir / "main.cf",
        MAIN_CF.format(
            config_dir=config_dir,
            queue_dir=queue_dir,
            data_dir=data_dir,
            maillog=maillog,
            root=root,
            hostname=HOSTNAME,
            size_limit=SIZE_LIMIT,
            cert_file=cert_file,
            key_file=key_file,
        )
        + main_cf_extra.replace("{config_dir}", str(config_dir)),
    )
    for name, text in (config_files or {}).items():
        _write_config(config_dir / name, text)
    return config_dir, ca_file, maillog


def _write_config(path: Path, text: str) -> None:
    # Postfix rereads a config file, a second at a time, until its mtime is in the past
    # (it could be mid-edit): a just-written main.cf costs every command ~2 s.
    path.write_text(text)
    an_hour_ago = time.time() - 3600
    os.utime(path, (an_hour_ago, an_hour_ago))


def _require_searchable_parents(root: Path) -> None:
    for parent in root.parents:
        if not parent.stat().st_mode & 0o001:
            raise RuntimeError(
                f"the postfix user cannot reach {root}: {parent} is not searchable by others "
                "(use a directory under /tmp, not pytest's tmp_path)"
            )


def _free_port() -> int:
    # Postfix cannot report a port 0 back, so pick one and accept the small race (retried).
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _postfix(config_dir: Path | str, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["postfix", "-c", str(config_dir), command],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_SECONDS,
        env=_command_env(),
    )


def _command_env() -> dict[str, str]:
    return {**os.environ, "PATH": f"/usr/sbin:/usr/bin:/sbin:/bin:{os.environ.get('PATH', '')}"}


def _wait_for_banner(port: int) -> None:
    # `postfix start` returns once master has bound its listeners (master -w); reading the
    # banner proves smtpd itself runs (certificate and maps loaded) before tests connect.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        banner = connection.makefile("rb").readline()
        connection.sendall(b"QUIT\r\n")
    if not banner.startswith(b"220 "):
        raise RuntimeError(f"postfix on 127.0.0.1:{port} greeted with {banner!r}")


def _stop_master(root: Path) -> None:
    """`postfix stop`, then wait until the master's process group is gone (SIGKILL after 5 s).

    The master is its own process group leader and takes its children along on SIGTERM;
    waiting for the whole group means no daemon still writes into the work directory.
    """
    try:
        pid = int((root / "spool" / "pid" / "master.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return  # never started
    if not _group_alive(pid):
        return
    _postfix(root / "etc", "stop")
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if not _group_alive(pid):
            return
        time.sleep(0.01)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group still runs (zombies do not count: here PID 1 reaps
    them late, and a zombie holds no socket or file)."""
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # exited while we looked
        state, process_group = fields[0], int(fields[2])
        if process_group == pgid and state not in ("Z", "X"):
            return True
    return False


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def require_postfix() -> None:
    """Skip the calling test with the reason Postfix cannot run here; under CI=true, fail."""
    reason = unavailable_reason()
    if reason is None:
        return
    unavailable(reason)


@pytest.fixture(scope="session")
def postfix() -> Iterator[PostfixInstance]:
    """A private Postfix shared by the whole session (about 0.3 s to start)."""
    require_postfix()
    with start_postfix() as instance:
        yield instance
