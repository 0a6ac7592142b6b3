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

import functools
import ipaddress
import os
import ssl
import time

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


# Words of cryptography's verifier -> the engine's certificate reasons (as OpenSSL's codes map
# in client._VERIFY_REASONS), so a session judged here reads like one OpenSSL judged.
_PROBLEM_REASONS = (("expired", "certificate_expired"), ("not yet valid", "certificate_expired"),
                    ("not valid at validation time", "certificate_expired"),
                    ("no matching subjectaltname", "certificate_hostname_mismatch"))


def pkix_problem(chain: tuple[bytes, ...], server_name: str,
                 ca_file: str | None) -> tuple[str, str] | None:
    """None when `chain` (leaf first, as presented) has a PKIX path to a trusted CA and the
    leaf names `server_name`; else (reason, OpenSSL-like words). Trusted: the system's CAs,
    or only `ca_file` when given (as client.make_tls_context trusts).

    Why not OpenSSL: a session that must read the presented chain (DANE) has to complete its
    handshake whatever PKIX says (DANE-EE certificates are often self-signed), so it handshakes
    without verification and PKIX (what MTA-STS asks) is judged here, from the same
    chain, by cryptography's X.509 verifier (RFC 5280 path building, RFC 6125 names), with its
    extension checks relaxed to what OpenSSL checks. A leaf without a subjectAltName fails
    here (no CN fallback), as it fails in current OpenSSL-based MTAs."""
    if not chain:
        return "certificate_untrusted", "the server presented no certificate"
    # A server presents the same chain at every probe: its verdict is worked out once an hour
    # (so an expiry shows within the hour), not per session.
    return _judged(chain, server_name, ca_file, ca_file_version(ca_file), int(time.time() // 3600))


@functools.lru_cache(maxsize=4096)
def _judged(chain: tuple[bytes, ...], server_name: str, ca_file: str | None,
            version: tuple[int, int] | None, hour: int) -> tuple[str, str] | None:
    from cryptography import x509
    from cryptography.x509 import verification

    try:
        certificates = [x509.load_der_x509_certificate(der) for der in chain]
    except ValueError:
        return "certificate_untrusted", "the server presented something that is not a certificate"
    try:
        builder = verification.PolicyBuilder().store(_trust_store(ca_file, ca_file_version(ca_file)))
        builder = builder.extension_policies(ca_policy=_ca_policy(), ee_policy=_leaf_policy())
        subject = _subject(server_name)
        verifier = builder.build_server_verifier(subject)
        verifier.verify(certificates[0], certificates[1:])
    except verification.VerificationError as error:
        words = str(error)
        lowered = words.lower()
        reason = next((reason for key, reason in _PROBLEM_REASONS if key in lowered),
                      "certificate_untrusted")
        return reason, words
    except (ValueError, OSError) as error:  # a CA file that does not load, a bad name
        return "certificate_untrusted", str(error)
    return None


# The verifier checks the CA/Browser Forum's profile by default (e.g. a critical SAN beside a
# subject is refused), which OpenSSL, and so every MTA, does not: only what path building and
# name matching need is required, as OpenSSL requires it.
@functools.lru_cache(maxsize=1)
def _leaf_policy():
    from cryptography import x509
    from cryptography.x509 import verification

    return verification.ExtensionPolicy.permit_all().require_present(
        x509.SubjectAlternativeName, verification.Criticality.AGNOSTIC, None)


@functools.lru_cache(maxsize=1)
def _ca_policy():
    from cryptography import x509
    from cryptography.x509 import verification

    return verification.ExtensionPolicy.permit_all().require_present(
        x509.BasicConstraints, verification.Criticality.AGNOSTIC, None)


def _subject(server_name: str):
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(server_name))
    except ValueError:
        return x509.DNSName(server_name.rstrip("."))


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


@functools.lru_cache(maxsize=8)
def _trust_store(ca_file: str | None, version: tuple[int, int] | None):
    """The CAs as a verifier's store, built once per CA file version (a few hundred system
    CAs take milliseconds to parse: not per session)."""
    from cryptography import x509
    from cryptography.x509 import verification

    context = ssl.create_default_context(cafile=ca_file) if ca_file else ssl.create_default_context()
    ders = context.get_ca_certs(binary_form=True)
    certificates = []
    for der in ders:
        try:
            certificates.append(x509.load_der_x509_certificate(der))
        except ValueError:
            continue
    if not certificates:
        raise ValueError(f"no CA certificates to trust (from {ca_file or 'the system'})")
    return verification.Store(certificates)
