"""The certificate chain a TLS server presented, leaf first, as DER.

DANE-TA (RFC 7671 5.2) matches a trust anchor that the server must send in its chain, so the
leaf alone (`getpeercert(binary_form=True)`) is not enough. Python exposes the presented chain
publicly only from 3.13 (`SSLSocket.get_unverified_chain()`, a list of DER bytes). CPython
3.10 to 3.12 have the same call on the C-level object behind the socket
(`_ssl._SSLSocket.get_unverified_chain`, added with bpo-18233 and made public in 3.13),
returning `_ssl.Certificate` objects with `public_bytes()`. It is OpenSSL's
SSL_get_peer_cert_chain(): what the handshake already received, so asking costs no second
connection, no ctypes and no re-parsing, and it works whether or not the handshake verified.
The private path is confined to this function and checked by the tests on every version run.
"""

from __future__ import annotations

import collections
import datetime
import ipaddress
import os
import re
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Hashable

_DER = 2  # _ssl.ENCODING_DER, the value of ssl's Encoding: never imported from the C module


def presented_chain(tls: ssl.SSLSocket | ssl.SSLObject) -> tuple[bytes, ...]:
    """The certificates the peer sent, leaf first, in the order it sent them (not verified,
    not re-ordered); () before the handshake or when the server sent none.

    Cheap (no I/O): call it after the handshake, and only when the result will be used
    (a secure TLSA record set with DANE usages, see mailtls.dane.TlsaLookup.dane_applies)."""
    public = getattr(tls, "get_unverified_chain", None)
    if public is not None:  # Python 3.13+: DER bytes
        return tuple(bytes(der) for der in public() or ())
    native = getattr(tls, "_sslobj", None)
    if native is None:  # an SSLSocket before (or without) its handshake
        return ()
    certificates = native.get_unverified_chain()
    return tuple(certificate.public_bytes(_DER) for certificate in certificates or ())


# OpenSSL X509_V_ERR_* codes -> the engine's certificate reasons, for a handshake's verification
# (client.start_tls) and for a chain judged here alike.
VERIFY_REASONS = {
    9: "certificate_expired",  # not yet valid: outside its validity period all the same
    10: "certificate_expired",
    62: "certificate_hostname_mismatch",
    64: "certificate_hostname_mismatch",  # IP address mismatch
}
# What OpenSSL is asked to check, as a TLS client's verification asks it (SSL_CTX's default
# X509_VERIFY_PARAM "ssl_server": the purpose a sending MTA checks a server's chain for).
_VERIFY_COMMAND = ("openssl", "verify", "-purpose", "sslserver")
# Loading the system's CAs and building a path take milliseconds; a hung tool must not hold a
# session past any deadline it could have.
VERIFY_TIMEOUT_SECONDS = 10.0
# `openssl verify` prints each problem met as "error N at D depth lookup: words" (it goes on
# after some to report them all); the first is the one a handshake's verification stops at.
_ERROR_LINE = re.compile(r"^error (\d+) at (\d+) depth lookup: (.+)$", re.MULTILINE)


class PkixUnjudged(Exception):
    """The chain could not be judged (the openssl command is missing, failed or timed out):
    not a verdict on the server, so never cached."""


# A server presents the same chain at every probe: its verdict is worked out once an hour
# (so an expiry shows within the hour), not per session.
PKIX_VERDICT_SECONDS = 3600.0
PKIX_VERDICTS_KEPT = 4096  # (chain, name) pairs: two MX hosts of every domain of a large config

Problem = tuple[str, str] | None  # (reason, OpenSSL's words), or None: PKIX-valid


class PkixVerdicts:
    """PKIX verdicts by chain, server name and CA file (its version too, so a replaced file is
    judged afresh), each kept for `kept_seconds` from when it was made: verdicts made in one
    burst (a daemon's first interval) are not all made again in the same second an hour later.
    Least recently used dropped past `max_entries`. Safe to share between threads."""

    def __init__(self, *, kept_seconds: float = PKIX_VERDICT_SECONDS,
                 max_entries: int = PKIX_VERDICTS_KEPT,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._kept_seconds = kept_seconds
        self._max_entries = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: collections.OrderedDict[Hashable, tuple[Problem, float]] = collections.OrderedDict()

    def known(self, key: Hashable) -> tuple[bool, Problem]:
        """(True, the verdict) when one was made within `kept_seconds`, else (False, None)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return False, None
            if self._clock() >= entry[1]:
                del self._entries[key]
                return False, None
            self._entries.move_to_end(key)
            return True, entry[0]

    def keep(self, key: Hashable, problem: Problem) -> None:
        with self._lock:
            self._entries[key] = (problem, self._clock() + self._kept_seconds)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)


VERDICTS = PkixVerdicts()


def known_pkix_problem(chain: tuple[bytes, ...], server_name: str, ca_file: str | None,
                       verdicts: PkixVerdicts = VERDICTS) -> tuple[bool, Problem]:
    """(True, what pkix_problem would answer) when that is known without running anything
    (no certificate presented, or a verdict made within the hour), else (False, None). No
    I/O but a stat of the CA file: a caller that must not block (a session on the hub's
    thread) asks this first and hands only the unknown chains to a thread."""
    if not chain:
        return True, _NO_CERTIFICATE
    return verdicts.known(_verdict_key(chain, server_name, ca_file))


def pkix_problem(chain: tuple[bytes, ...], server_name: str, ca_file: str | None,
                 verdicts: PkixVerdicts = VERDICTS) -> Problem:
    """None when `chain` (leaf first, as presented) has a PKIX path to a trusted CA and the
    leaf names `server_name`; else (reason, OpenSSL's words). Trusted: the system's CAs
    (ssl.get_default_verify_paths()), or only `ca_file` when given (as client.make_tls_context
    trusts). Raises PkixUnjudged when the judgement cannot be made. A verdict made within the
    hour is answered from `verdicts`.

    A session that must read the presented chain (DANE) has to complete its handshake whatever
    PKIX says (DANE-EE certificates are often self-signed), so it handshakes without
    verification and PKIX (what MTA-STS asks) is judged here, from the same chain, by
    OpenSSL's own verifier (X509_verify_cert, through the `openssl verify` command): the rules
    sending MTAs such as Postfix apply, whatever the Python libraries' versions. The command
    rather than X509_verify_cert through ctypes: libcrypto's structures and symbol versions
    stay OpenSSL's business, and a crash or hang stays in a child process with a timeout."""
    if not chain:
        return _NO_CERTIFICATE
    key = _verdict_key(chain, server_name, ca_file)
    known, problem = verdicts.known(key)
    if not known:
        problem = _judge(chain, server_name, ca_file)  # PkixUnjudged is not a verdict: not kept
        verdicts.keep(key, problem)
    return problem


_NO_CERTIFICATE = ("certificate_untrusted", "the server presented no certificate")


def _verdict_key(chain: tuple[bytes, ...], server_name: str, ca_file: str | None) -> Hashable:
    return chain, server_name, ca_file, ca_file_version(ca_file)


def _judge(chain: tuple[bytes, ...], server_name: str, ca_file: str | None) -> Problem:
    with tempfile.TemporaryDirectory(prefix="smtpmon-pkix-") as directory:  # mode 0700
        leaf = os.path.join(directory, "leaf.pem")
        untrusted = os.path.join(directory, "untrusted.pem")
        _write_pem(leaf, chain[:1])
        command = [*_VERIFY_COMMAND, *_trust_arguments(ca_file), *_name_arguments(server_name)]
        if len(chain) > 1:
            _write_pem(untrusted, chain[1:])
            command += ["-untrusted", untrusted]
        command.append(leaf)  # an absolute path: never read as an option
        try:
            done = subprocess.run(command, check=False, capture_output=True, timeout=VERIFY_TIMEOUT_SECONDS,
                                  stdin=subprocess.DEVNULL)
        except (OSError, subprocess.SubprocessError) as error:
            raise PkixUnjudged(f"cannot run openssl verify: {error}") from None
    output = done.stderr.decode("utf-8", "replace") + done.stdout.decode("utf-8", "replace")
    problem = _ERROR_LINE.search(output)
    if problem is not None:
        code, words = int(problem.group(1)), problem.group(3).strip()
        return VERIFY_REASONS.get(code, "certificate_untrusted"), words
    if done.returncode == 0:
        return None
    # No verdict line: openssl could not load something. The presented certificates come from
    # the handshake (OpenSSL parsed them already), so it is the CAs or the tool.
    last = next((line.strip() for line in reversed(output.splitlines()) if line.strip()), "")
    raise PkixUnjudged(f"openssl verify failed (exit {done.returncode}): {last or 'no output'}")


def _write_pem(path: str, ders: tuple[bytes, ...]) -> None:
    with open(path, "w", encoding="ascii") as file:
        file.writelines(ssl.DER_cert_to_PEM_cert(der) for der in ders)


def _trust_arguments(ca_file: str | None) -> list[str]:
    """Only `ca_file`, or only the system's CAs: without the -no-* options openssl verify adds
    its default file, directory and store to what it is given."""
    if ca_file:
        return ["-CAfile", ca_file, "-no-CApath", "-no-CAstore"]
    paths = ssl.get_default_verify_paths()
    if paths.cafile:
        return ["-CAfile", paths.cafile, "-no-CApath", "-no-CAstore"]
    if paths.capath:
        return ["-CApath", paths.capath, "-no-CAfile", "-no-CAstore"]
    raise PkixUnjudged("no system CA file or directory (ssl.get_default_verify_paths())")


def _name_arguments(server_name: str) -> list[str]:
    try:
        return ["-verify_ip", str(ipaddress.ip_address(server_name))]
    except ValueError:
        return ["-verify_hostname", server_name.rstrip(".")]


def certificate_validity(certificate) -> tuple[datetime.datetime, datetime.datetime]:
    """A cryptography certificate's validity period as aware UTC datetimes. cryptography has
    not_valid_*_utc from version 42 (and deprecates the naive ones); Debian 12 has 38."""
    if hasattr(certificate, "not_valid_before_utc"):
        return certificate.not_valid_before_utc, certificate.not_valid_after_utc
    utc = datetime.UTC
    return certificate.not_valid_before.replace(tzinfo=utc), certificate.not_valid_after.replace(tzinfo=utc)


def ca_file_version(path: str | None) -> tuple[int, int] | None:
    """A CA file's modification time and size (the system bundle's for None), for caches keyed
    on it: a replaced file is loaded afresh. None when it cannot be read (loading it fails
    then, and failures are not cached)."""
    if path is None:
        path = ssl.get_default_verify_paths().cafile
    try:
        status = os.stat(path) if path else None
    except OSError:
        return None
    return None if status is None else (status.st_mtime_ns, status.st_size)
