"""A probe module: every option of one kind of SMTP session.

The CLI builds one from flags, the config loader from YAML; the probe engine only reads it.
"""

from __future__ import annotations

import os
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
    # Reply codes a stage must get to pass, e.g. {"rcpt": (550,)} for a recipient check.
    # A stage not named here passes on 2xx/3xx as the protocol expects.
    expect: Mapping[str, tuple[int, ...]] = field(default_factory=lambda: MappingProxyType({}))
    timeout_seconds: float = 10.0
    ip_protocol: str = "any"  # one of IP_PROTOCOLS

    def read_password(self) -> str | None:
        """The AUTH password from its file or environment variable (raises OSError/KeyError)."""
        if self.auth_password_file:
            with open(self.auth_password_file, encoding="utf-8") as handle:
                return handle.read().rstrip("\r\n")
        if self.auth_password_env:
            return os.environ[self.auth_password_env]
        return None

