"""`--web.config.file`: TLS and basic auth for the HTTP server, in the exporter-toolkit format.

The file is the one every Prometheus exporter reads (prometheus/exporter-toolkit,
docs/web-configuration.md), so one file can serve node_exporter and smtpmon alike:

    tls_server_config: {cert_file: server.crt, key_file: server.key}
    basic_auth_users: {prometheus: $2y$10$...}

`load_web_config` validates everything at once (certificates load, hashes parse, keys are
known) and raises `WebConfigError` listing each problem as "path: reason". The HTTP server
then calls `wrap_connection(sock)` on each connection and `authorize(headers)` on each request,
and sends `headers` with every response.
Relative file names are relative to the web config file's directory, as in the toolkit.
"""

from __future__ import annotations

import base64
import binascii
import collections
import hashlib
import hmac
import os
import re
import secrets
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from smtpmon.config.validation import Validator, describe, key_path
from smtpmon.config.yamldoc import FileReadError, YamlSyntaxError, read_document, read_file
from smtpmon.logs import get_logger

log = get_logger("webconfig")

WWW_AUTHENTICATE = 'Basic realm="smtpmon"'

_TOP_KEYS = ("tls_server_config", "http_server_config", "basic_auth_users")
_TLS_KEYS = (
    "cert_file", "key_file", "client_auth_type", "client_ca_file", "client_ca", "min_version",
    "max_version", "cipher_suites", "prefer_server_cipher_suites",
)  # fmt: skip
_HTTP_KEYS = ("headers", "http2")

# Keys of the toolkit format that smtpmon does not implement: refused with the reason, because
# silently ignoring a rate limit or a client SAN allow-list would leave the endpoint more open
# than its operator believes.
_UNSUPPORTED = {
    "rate_limit": "not supported by smtpmon; put a reverse proxy in front to rate-limit",
    "tls_server_config.cert": "inline certificates are not supported by smtpmon; use cert_file",
    "tls_server_config.key": "inline keys are not supported by smtpmon; use key_file",
    "tls_server_config.client_allowed_sans": "not supported by smtpmon; give each client a "
    "certificate from a dedicated client CA instead",
    "tls_server_config.curve_preferences": "not supported by smtpmon (OpenSSL's defaults apply)",
}

# client_auth_type → verify_mode. Python's ssl module verifies every client certificate it
# accepts, so the two "any certificate" modes of Go are stricter here: the certificate must be
# signed by client_ca_file.
_CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_OPTIONAL,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "RequireClientCert": ssl.CERT_REQUIRED,  # the toolkit's old name for RequireAnyClientCert
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_CLIENT_AUTH_NAMES = tuple(name for name in _CLIENT_AUTH if name != "RequireClientCert")

_TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}

# Go's names (crypto/tls CipherSuites()) → OpenSSL's. The TLS 1.3 suites are accepted and
# ignored, as Go does: TLS 1.3 suites are not configurable.
_TLS13_CIPHER_SUITES = ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
                        "TLS_CHACHA20_POLY1305_SHA256")
_CIPHER_SUITES = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
}

# The toolkit allows exactly these response headers; None means any value.
_EXTRA_HEADERS: dict[str, tuple[str, ...] | None] = {
    "Strict-Transport-Security": None,
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": None,
    "Content-Security-Policy": None,
}

# $2y$, the cost, then a 22-character salt and a 31-character hash. The salt's last character
# carries two bits only, so it must be one of ".Oeu": bcrypt refuses any other as "Invalid salt",
# and it would do so at every request instead of at load.
_BCRYPT_HASH = re.compile(r"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{21}[.Oeu][./A-Za-z0-9]{31}")
# bcrypt only ever reads the first 72 bytes; Go and htpasswd truncate silently, bcrypt>=5 raises.
_BCRYPT_MAX_PASSWORD_BYTES = 72
# bcrypt's own lower bound; the upper one keeps a check (~0.25 s at 12, doubling each step)
# within a scrape's timeout: at 31 a single check would take days and hold its thread.
MIN_BCRYPT_COST = 4
MAX_BCRYPT_COST = 16
_BCRYPT_ALPHABET = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


class WebConfigError(ValueError):
    """The web config file is unusable. `errors` lists every problem, each "path: reason".

    A ValueError, so `smtpmon run` reports it like any other bad flag and exits 2.
    """

    def __init__(self, errors: list[str], source: str):
        super().__init__(f"invalid web config file {source}:\n" + "\n".join(f"  {e}" for e in errors))
        self.errors = errors
        self.source = source


@dataclass(frozen=True)
class TlsServerConfig:
    """`tls_server_config`, with file names already resolved against the file's directory."""

    cert_file: str
    key_file: str
    verify_mode: ssl.VerifyMode = ssl.CERT_NONE
    client_ca_file: str | None = None
    client_ca: str | None = None  # inline PEM
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    max_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3
    openssl_ciphers: tuple[str, ...] = ()  # empty: OpenSSL's defaults
    prefer_server_cipher_suites: bool = True

    def build_context(self) -> ssl.SSLContext:
        """A new server-side context, reading the files now; TlsSetupError names what failed."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = self.min_version
        context.maximum_version = self.max_version
        _require_pem(self.cert_file, "cert_file", "CERTIFICATE-----")
        _require_pem(self.key_file, "key_file", "PRIVATE KEY-----")
        try:
            context.load_cert_chain(self.cert_file, self.key_file, password=_refuse_encrypted_key)
        except ssl.SSLError as error:
            if error.reason == "KEY_VALUES_MISMATCH":
                raise TlsSetupError("key_file", f"does not match the certificate in cert_file: "
                                                f"{self.key_file}") from None
            raise TlsSetupError("cert_file", f"cannot load the certificate and key: {error}") from None
        except OSError as error:
            raise TlsSetupError("cert_file", f"cannot read: {error}") from None
        if self.openssl_ciphers:
            try:
                context.set_ciphers(":".join(self.openssl_ciphers))
            except ssl.SSLError as error:
                raise TlsSetupError("cipher_suites", f"rejected by OpenSSL: {error}") from None
        if self.prefer_server_cipher_suites:
            context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
        else:
            context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
        if self.verify_mode != ssl.CERT_NONE:
            key = "client_ca_file" if self.client_ca_file else "client_ca"
            try:
                context.load_verify_locations(cafile=self.client_ca_file, cadata=self.client_ca)
            except (ssl.SSLError, OSError) as error:
                raise TlsSetupError(key, f"no usable PEM CA certificate: {error}") from None
        context.verify_mode = self.verify_mode
        return context


class TlsSetupError(ValueError):
    """A TLS file that exists but cannot be used; `key` is its key in tls_server_config."""

    def __init__(self, key: str, reason: str):
        super().__init__(f"tls_server_config.{key}: {reason}")
        self.key = key


def _require_pem(path: str, key: str, marker: str) -> None:
    """A clear message for the usual mistakes (DER, an empty file, cert and key swapped)."""
    try:
        text = read_file(path).decode("ascii", errors="replace")
    except FileReadError as error:
        raise TlsSetupError(key, f"{path}: {error}") from None
    if marker not in text:
        what = "certificate" if key == "cert_file" else "private key"
        raise TlsSetupError(key, f"no PEM {what} in {path}")


def _refuse_encrypted_key() -> bytes:
    # Without this callback OpenSSL would prompt on the terminal and hang a daemon's start.
    raise TlsSetupError("key_file", "the private key is encrypted; smtpmon needs it unencrypted "
                                    "(readable only by the service user)")


@dataclass(frozen=True)
class WebConfig:
    source: str
    tls: TlsServerConfig | None = None
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    # user → bcrypt hash. Hashes are secrets too: kept out of repr (and so out of logs).
    basic_auth_users: Mapping[str, bytes] = field(
        default_factory=lambda: MappingProxyType({}), repr=False)
    # The context built (and so validated) at load time; every connection uses it.
    context: ssl.SSLContext | None = field(default=None, repr=False, compare=False)
    # user → SHA-256 of "user:password" last verified with bcrypt. A bcrypt check costs
    # 50-250 ms and Prometheus scrapes every 15 s; one entry per configured user keeps it bounded.
    _verified: dict[str, bytes] = field(default_factory=dict, repr=False, compare=False)
    # One bcrypt check at a time, so a flood of wrong passwords can take one core, never all;
    # waiting checks take turns by client address, so a flood from some clients cannot hold
    # up a correct login from another for more than a check per flooding client.
    _checks: FairGate = field(default_factory=lambda: FairGate(1), repr=False, compare=False)
    # What an unknown user is checked against: a hash at the highest cost configured.
    _decoy: bytes = field(default=b"", repr=False, compare=False)
    # How long a check at the highest cost takes (learnt from such checks): every failure
    # takes at least this long, so a wrong password for a user with a cheaper hash does not
    # tell that the user exists either.
    _failure_seconds: list[float] = field(default_factory=list, repr=False, compare=False)

    def wrap_connection(self, sock):
        """TLS on an accepted connection (the handshake runs under the socket's timeout)."""
        if self.context is None:
            return sock
        return self.context.wrap_socket(sock, server_side=True)

    def authorize(self, headers: Mapping[str, str], client: str = "") -> bool:
        """The HTTP server's hook: may this request (its headers, from `client`) pass?"""
        return self.check_authorization(headers.get("Authorization"), client)

    def check_authorization(self, authorization_header: str | None, client: str = "") -> bool:
        """Basic auth against `basic_auth_users`; always True when no user is configured.

        `client` (the peer's address) is whose turn a bcrypt check waits for."""
        if not self.basic_auth_users:
            return True
        credentials = _basic_credentials(authorization_header)
        if credentials is None:
            return False
        user, password = credentials
        digest = hashlib.sha256(f"{user}:{password}".encode()).digest()
        cached = self._verified.get(user)
        if cached is not None and hmac.compare_digest(cached, digest):
            return True
        hashed = self.basic_auth_users.get(user)
        # An unknown user costs a check at the highest cost, as a wrong password does.
        reference = hashed if hashed is not None else self._decoy
        matches, took = self._checks.run(client, _timed_check, password, reference)
        if _bcrypt_cost(reference) == _bcrypt_cost(self._decoy):
            self._failure_seconds[:] = [took]
        if hashed is not None and matches:
            self._verified[user] = digest
            return True
        if not self._failure_seconds:  # not learnt yet: a check at the highest cost, once
            self._failure_seconds[:] = [self._checks.run(client, _timed_check, password, self._decoy)[1]]
        time.sleep(max(0.0, self._failure_seconds[0] - took))  # outside the gate: no core held
        return False


def _timed_check(password: str, reference: bytes) -> tuple[bool, float]:
    import bcrypt  # at the first check: most daemons have no basic auth to check

    started = time.monotonic()
    matches = bcrypt.checkpw(password.encode("utf-8")[:_BCRYPT_MAX_PASSWORD_BYTES], reference)
    return matches, time.monotonic() - started


def _bcrypt_cost(hashed: bytes) -> int:
    return int(hashed[4:6])


def _decoy_hash(cost: int) -> bytes:
    """A well-formed bcrypt hash at `cost` that no password matches (its digest is random):
    checking against it takes as long as checking against a real hash of that cost."""
    salt = "".join(secrets.choice(_BCRYPT_ALPHABET) for _ in range(21)) + secrets.choice(".Oeu")
    digest = "".join(secrets.choice(_BCRYPT_ALPHABET) for _ in range(31))
    return f"$2b${cost:02d}${salt}{digest}".encode("ascii")


class FairGate:
    """Runs calls at most `slots` at a time; waiting calls take turns by key, one call per key
    in each round, so that many calls under one key (a client flooding wrong passwords)
    delay a call under another key by at most one call per waiting key."""

    def __init__(self, slots: int):
        self._slots = slots
        self._running = 0
        self._lock = threading.Lock()
        self._waiting: collections.OrderedDict[str, collections.deque[threading.Event]] = (
            collections.OrderedDict())

    def run(self, key: str, call: Callable, *args):
        with self._lock:
            turn = None
            if self._running < self._slots and not self._waiting:
                self._running += 1
            else:
                turn = threading.Event()
                self._waiting.setdefault(key, collections.deque()).append(turn)
        if turn is not None:
            turn.wait()  # a finishing call hands its slot over
        try:
            return call(*args)
        finally:
            self._hand_over()

    def _hand_over(self) -> None:
        with self._lock:
            if not self._waiting:
                self._running -= 1
                return
            key, queue = next(iter(self._waiting.items()))
            turn = queue.popleft()
            if queue:
                self._waiting.move_to_end(key)  # its next call waits for the other keys' turns
            else:
                del self._waiting[key]
            turn.set()


def _basic_credentials(header: str | None) -> tuple[str, str] | None:
    """(user, password) from "Basic base64(user:password)"; None if absent or malformed."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, colon, password = decoded.partition(":")
    return (user, password) if colon else None


def load_web_config(path: str) -> WebConfig:
    """Read and validate a web config file; raises WebConfigError listing every problem."""
    try:
        text = read_file(path).decode("utf-8")
    except FileReadError as error:
        raise WebConfigError([str(error)], path) from None
    except UnicodeDecodeError:
        raise WebConfigError(["the file is not UTF-8 text"], path) from None
    return _Parser(path).parse(text)


class WebConfigFile:
    """The web config file as it is now, for a server that runs for weeks: re-read when its
    modification time, size or inode changed (one stat(), at each request that needs it:
    basic auth, a TLS handshake), and on every reload (SIGHUP, /-/reload), as
    exporter-toolkit re-reads it. A user removed from the file loses access at once.

    A file that became invalid keeps the last good one in force (and is said so in the log,
    once per change). Turning TLS on or off needs a restart: the server was set up for one.
    """

    def __init__(self, path: str):
        self.path = path
        self._stamp = _file_stamp(path)
        self.current = load_web_config(path)  # raises WebConfigError: the start fails
        self._lock = threading.Lock()
        self.headers: Mapping[str, str] = _CurrentHeaders(self)

    def authorize(self, headers: Mapping[str, str], client: str = "") -> bool:
        self.refresh()
        return self.current.authorize(headers, client)

    def wrap_connection(self, sock):
        self.refresh()
        return self.current.wrap_connection(sock)

    def refresh(self) -> None:
        """Re-read the file if it changed since it was last read."""
        if _file_stamp(self.path) == self._stamp:
            return
        with self._lock:
            stamp = _file_stamp(self.path)
            if stamp == self._stamp:
                return  # another thread re-read it meanwhile
            self._stamp = stamp  # a bad file is reported once, not at every request
            try:
                self.current = self._checked(load_web_config(self.path))
            except WebConfigError as error:
                for message in error.errors:
                    log.error("web config re-read failed; keeping the previous one",
                              source=self.path, error=message)
                return
        log.info("web config re-read", source=self.path, users=len(self.current.basic_auth_users))

    def read(self) -> tuple[WebConfig, tuple | None]:
        """The file read and validated now, to be put in force with use() (a reload puts it
        in force only if the whole reload succeeds); raises WebConfigError."""
        stamp = _file_stamp(self.path)
        return self._checked(load_web_config(self.path)), stamp

    def use(self, read: tuple[WebConfig, tuple | None]) -> None:
        with self._lock:
            self.current, self._stamp = read

    def _checked(self, new: WebConfig) -> WebConfig:
        if (new.context is None) != (self.current.context is None):
            raise WebConfigError(["tls_server_config: turning TLS on or off needs a restart of "
                                  "smtpmon; the previous web config stays in force"], self.path)
        return new


class _CurrentHeaders(Mapping):
    """The response headers of the web config in force, whichever that is when asked."""

    def __init__(self, file: WebConfigFile):
        self._file = file

    def __getitem__(self, name: str) -> str:
        return self._file.current.headers[name]

    def __iter__(self):
        return iter(self._file.current.headers)

    def __len__(self) -> int:
        return len(self._file.current.headers)

    def items(self):
        return self._file.current.headers.items()


def _file_stamp(path: str) -> tuple | None:
    """What tells that a file changed: its modification time, size and inode (None if gone)."""
    try:
        facts = os.stat(path)
    except OSError:
        return None
    return facts.st_mtime_ns, facts.st_size, facts.st_ino, facts.st_dev


class _Parser(Validator):
    error_class = WebConfigError

    def __init__(self, source: str):
        super().__init__(source)
        self.directory = os.path.dirname(os.path.abspath(source))

    def parse(self, text: str) -> WebConfig:
        try:
            document, duplicates = read_document(text)
        except YamlSyntaxError as error:
            raise WebConfigError([str(error)], self.source) from None
        self.errors.extend(duplicates)
        document = self.mapping("", document if document is not None else {}, _TOP_KEYS)
        tls = self.tls_server_config(document.get("tls_server_config"))
        headers = self.http_server_config(document.get("http_server_config"))
        users = self.basic_auth_users(document.get("basic_auth_users"))
        context = self.context(tls) if tls is not None else None
        if self.errors:
            raise self.failure()
        highest_cost = max((_bcrypt_cost(hashed) for hashed in users.values()), default=MIN_BCRYPT_COST)
        return WebConfig(
            source=self.source, tls=tls, headers=MappingProxyType(headers),
            basic_auth_users=MappingProxyType(users), context=context,
            _decoy=_decoy_hash(highest_cost),
        )

    # -- helpers -----------------------------------------------------------------------------

    def mapping(self, path: str, value: Any, keys: tuple[str, ...]) -> dict:
        """`value` as a mapping with only `keys`; anything else is reported. {} if unusable."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error(path or "the file", "must be a mapping of keys to values")
            return {}
        known: dict = {}
        for key, item in value.items():
            at = key_path(path, key)
            if key in keys:
                known[key] = item
            elif at in _UNSUPPORTED:
                self.error(at, _UNSUPPORTED[at])
            else:
                self.error(at, f"unknown key; known: {', '.join(keys)}")
        return known

    def string(self, path: str, value: Any) -> str | None:
        """A string setting; None (and no error) when unset or blank, as the toolkit reads it."""
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            self.error(path, f"must be a string, got {describe(value)}")
            return None
        return value

    def existing_file(self, path: str, value: Any) -> str | None:
        name = self.string(path, value)
        if name is None:
            return None
        resolved = os.path.join(self.directory, name)
        if not os.path.exists(resolved):
            self.error(path, f"file not found: {resolved}")
            return None
        if not os.path.isfile(resolved):
            self.error(path, f"not a regular file: {resolved}")
            return None
        return resolved

    def choice(self, path: str, value: Any, choices: Mapping[str, Any], shown: tuple[str, ...]):
        name = self.string(path, value)
        if name is None:
            return None
        if name not in choices:
            self.error(path, f"unknown value {describe(name)}; one of: {', '.join(shown)}")
            return None
        return choices[name]

    # -- sections ----------------------------------------------------------------------------

    def tls_server_config(self, value: Any) -> TlsServerConfig | None:
        section = "tls_server_config"
        errors_at_start = len(self.errors)
        raw = self.mapping(section, value, _TLS_KEYS)
        if not any(raw.get(key) not in (None, "") for key in
                   ("cert_file", "key_file", "client_ca_file", "client_ca", "client_auth_type")):
            # Nothing that turns TLS on (the toolkit's rule): plain HTTP; versions and ciphers
            # alone mean nothing, but a typo in them is still worth reporting.
            self.tls_details(section, raw)
            return None
        cert_file = self.existing_file(f"{section}.cert_file", raw.get("cert_file"))
        key_file = self.existing_file(f"{section}.key_file", raw.get("key_file"))
        for key in ("cert_file", "key_file"):
            if raw.get(key) in (None, ""):
                self.error(f"{section}.{key}", "required when TLS is configured")
        client_ca_file = self.existing_file(f"{section}.client_ca_file", raw.get("client_ca_file"))
        client_ca = self.string(f"{section}.client_ca", raw.get("client_ca"))
        has_ca = raw.get("client_ca_file") not in (None, "") or client_ca is not None
        auth_type = raw.get("client_auth_type") or "NoClientCert"
        verify_mode = self.choice(f"{section}.client_auth_type", auth_type,
                                  _CLIENT_AUTH, _CLIENT_AUTH_NAMES)
        if verify_mode == ssl.CERT_NONE and has_ca:
            self.error(f"{section}.client_auth_type",
                       "a client CA is set but client certificates are not requested; "
                       "set client_auth_type: RequireAndVerifyClientCert")
        elif verify_mode in (ssl.CERT_OPTIONAL, ssl.CERT_REQUIRED) and not has_ca:
            self.error(f"{section}.client_ca_file",
                       f"required with client_auth_type {auth_type}: every client certificate "
                       "is verified against it")
        details = self.tls_details(section, raw)
        if len(self.errors) > errors_at_start:
            return None
        return TlsServerConfig(
            cert_file=cert_file, key_file=key_file, verify_mode=verify_mode,
            client_ca_file=client_ca_file, client_ca=client_ca, **details,
        )

    def tls_details(self, section: str, raw: dict) -> dict:
        """Versions and cipher suites: the keyword arguments they give TlsServerConfig."""
        details: dict[str, Any] = {}
        shown = tuple(_TLS_VERSIONS)
        for key in ("min_version", "max_version"):
            version = self.choice(f"{section}.{key}", raw.get(key), _TLS_VERSIONS, shown)
            if version is not None:
                details[key] = version
        low = details.get("min_version", ssl.TLSVersion.TLSv1_2)
        high = details.get("max_version", ssl.TLSVersion.TLSv1_3)
        if low > high:
            self.error(f"{section}.min_version",
                       f"{raw.get('min_version') or 'TLS12'} is above max_version "
                       f"{raw.get('max_version') or 'TLS13'}")
        suites = raw.get("cipher_suites")
        if suites is not None:
            if not isinstance(suites, list):
                self.error(f"{section}.cipher_suites", "must be a list of cipher suite names")
            else:
                ciphers = []
                for index, name in enumerate(suites):
                    if name in _CIPHER_SUITES:
                        ciphers.append(_CIPHER_SUITES[name])
                    elif name not in _TLS13_CIPHER_SUITES:
                        self.error(f"{section}.cipher_suites[{index}]",
                                   f"unknown cipher suite {describe(name)}; one of: "
                                   f"{', '.join((*_TLS13_CIPHER_SUITES, *_CIPHER_SUITES))}")
                details["openssl_ciphers"] = tuple(ciphers)
        prefer = raw.get("prefer_server_cipher_suites")
        if prefer is not None:
            if isinstance(prefer, bool):
                details["prefer_server_cipher_suites"] = prefer
            else:
                self.error(f"{section}.prefer_server_cipher_suites",
                           f"must be true or false, got {describe(prefer)}")
        return details

    def context(self, tls: TlsServerConfig) -> ssl.SSLContext | None:
        try:
            return tls.build_context()
        except TlsSetupError as error:
            self.error("", str(error))
            return None

    def http_server_config(self, value: Any) -> dict[str, str]:
        section = "http_server_config"
        raw = self.mapping(section, value, _HTTP_KEYS)
        http2 = raw.get("http2")
        if http2 is not None and not isinstance(http2, bool):
            # Accepted for compatibility and otherwise ignored: this server speaks HTTP/1.1.
            self.error(f"{section}.http2", f"must be true or false, got {describe(http2)}")
        headers_value = raw.get("headers")
        if headers_value is None:
            return {}
        if not isinstance(headers_value, dict):
            self.error(f"{section}.headers", "must be a mapping of header names to values")
            return {}
        headers: dict[str, str] = {}
        for name, header_value in headers_value.items():
            path = f"{section}.headers.{name}"
            if name not in _EXTRA_HEADERS:
                self.error(path, f"this header cannot be configured; one of: {', '.join(_EXTRA_HEADERS)}")
                continue
            text = self.string(path, header_value)
            if text is None:
                continue  # blank: unset, as in the toolkit
            allowed = _EXTRA_HEADERS[name]
            if allowed is not None and text not in allowed:
                self.error(path, f"must be one of: {', '.join(allowed)}; got {describe(text)}")
            elif not text.isprintable():
                self.error(path, "must not contain control characters (CR, LF, ...)")
            else:
                headers[name] = text
        return headers

    def basic_auth_users(self, value: Any) -> dict[str, bytes]:
        section = "basic_auth_users"
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error(section, "must be a mapping of user names to bcrypt hashes")
            return {}
        users: dict[str, bytes] = {}
        for user, hashed in value.items():
            path = f"{section}.{user}"
            if not isinstance(user, str) or not user:
                self.error(path, f"a user name must be a non-empty string, got {describe(user)} "
                                 "(quote it)")
                continue
            if ":" in user:
                self.error(path, "a user name cannot contain ':' (basic auth separates the "
                                 "password with it)")
                continue
            # The hash is never echoed: it is a secret too.
            match = _BCRYPT_HASH.fullmatch(hashed) if isinstance(hashed, str) else None
            if match is None:
                self.error(path, "not a bcrypt hash: want $2y$ (or $2a$, $2b$), a two-digit cost, "
                                 "$ and 53 characters; see docs/web-config.md")
                continue
            cost = int(match.group(1))
            if not MIN_BCRYPT_COST <= cost <= MAX_BCRYPT_COST:
                self.error(path, f"bcrypt cost must be {MIN_BCRYPT_COST}-{MAX_BCRYPT_COST}, got {cost}")
                continue
            users[user] = hashed.encode("ascii")
        return users
