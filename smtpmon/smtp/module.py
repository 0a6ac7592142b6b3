"""A probe module: every option of one kind of SMTP session.

The CLI builds one from flags, the config loader from YAML; the probe engine only reads it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

TLS_MODES = ("none", "starttls", "opportunistic", "implicit")
TLS_VERSIONS = ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")
IP_PROTOCOLS = ("any", "ip4", "ip6")
AUTH_MECHANISMS = ("PLAIN", "LOGIN")
# AUTH only where TLS is certain: with "opportunistic" a server that stops offering STARTTLS
# would get the password in clear.
AUTH_TLS_MODES = ("starttls", "implicit")
# systemd's LoadCredential= directory, the one variable a password_file may name.
CREDENTIALS_VARIABLES = ("$CREDENTIALS_DIRECTORY", "${CREDENTIALS_DIRECTORY}")
# A password is a line; more than this is not a password file (and must not be read whole).
MAX_PASSWORD_FILE_BYTES = 64 * 1024


class PasswordUnavailable(Exception):
    """The AUTH password cannot be read now; the message says why, fit for a user."""


@dataclass(frozen=True, slots=True)
class Module:
    # none: plain SMTP only; starttls: STARTTLS required (not offered is a failure);
    # opportunistic: STARTTLS when offered; implicit: TLS from the first byte (port 465).
    tls: str = "opportunistic"
    tls_verify: bool = True
    tls_ca_file: str | None = None
    tls_server_name: str | None = None  # default: the target's host name
    tls_min_version: str | None = None  # one of TLS_VERSIONS
    ehlo_name: str | None = None  # default: this host's name
    helo_fallback: bool = True  # try HELO when EHLO is refused with 5xx
    auth_mechanism: str | None = None  # one of AUTH_MECHANISMS; None: no AUTH stage
    auth_username: str | None = None
    auth_password_file: str | None = None  # the password is read at probe time, never stored here
    auth_password_env: str | None = None
    mail_from: str | None = None  # None: the session ends after EHLO (and AUTH)
    rcpt_to: tuple[str, ...] = ()
    data: bool = False  # send a small test message after RCPT
    message_size: int | None = None  # bytes the test message is padded to (a size limit check)
    # Reply codes a stage must get to pass, e.g. {"rcpt": (550,)} for a recipient check.
    # A stage not named here passes on its success code (smtpmon.smtp.session.SUCCESS_CODES).
    expect: Mapping[str, tuple[int, ...]] = field(default_factory=lambda: MappingProxyType({}))
    timeout_seconds: float = 10.0
    # Each address's TCP connect gives up after this (the session's deadline at the latest)
    # and the next address is tried: a host with a dead address is still reached in time.
    connect_timeout_seconds: float = 3.0
    ip_protocol: str = "any"  # one of IP_PROTOCOLS

    def read_password(self) -> str | None:
        """The AUTH password from its file or environment variable; None without AUTH.

        Raises PasswordUnavailable: a secret is read when it is used, so one that is missing
        (a shell without $CREDENTIALS_DIRECTORY, a credential not given to the service) fails
        this module's probes at AUTH, not the whole configuration."""
        path = self.auth_password_file
        if path:
            if any(variable in path for variable in CREDENTIALS_VARIABLES):
                # Still unexpanded: the variable was not set when the configuration was loaded.
                raise PasswordUnavailable(
                    f"{path}: $CREDENTIALS_DIRECTORY is not set (systemd sets it for the "
                    "service's LoadCredential=)")
            return _read_password_file(path)
        if self.auth_password_env:
            try:
                return os.environ[self.auth_password_env]
            except KeyError:
                raise PasswordUnavailable(
                    f"environment variable {self.auth_password_env} is not set") from None
        return None


def _read_password_file(path: str) -> str:
    """The first line of a regular file. Opened without blocking and checked before reading, so
    a FIFO or a device named by mistake fails the module's AUTH instead of hanging its probe."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise PasswordUnavailable(f"file not found: {path}") from None
    except OSError as error:
        raise PasswordUnavailable(f"cannot read {path}: {error.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise PasswordUnavailable(f"is a directory, not a file: {path}")
        if not stat.S_ISREG(mode):
            raise PasswordUnavailable(f"not a regular file: {path}")
        data = os.read(fd, MAX_PASSWORD_FILE_BYTES + 1)
    except OSError as error:
        raise PasswordUnavailable(f"cannot read {path}: {error.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_PASSWORD_FILE_BYTES:
        raise PasswordUnavailable(f"larger than {MAX_PASSWORD_FILE_BYTES // 1024} KiB, not a password: {path}")
    try:
        return data.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise PasswordUnavailable(f"cannot read {path}: not UTF-8 text") from None
