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

import ssl

_DER = 2  # _ssl.ENCODING_DER, the value of ssl's Encoding: never imported from the C module


def presented_chain(tls: ssl.SSLSocket | ssl.SSLObject) -> tuple[bytes, ...]:
    """The certificates the peer sent, leaf first, in the order it sent them (not verified,
    not re-ordered); () before the handshake or when the server sent none.

    Cheap (no I/O): call it after the handshake, and only when the result will be used
    (a secure TLSA record set with DANE usages, see dane.TlsaLookup.dane_applies)."""
    public = getattr(tls, "get_unverified_chain", None)
    if public is not None:  # Python 3.13+: DER bytes
        return tuple(bytes(der) for der in public() or ())
    native = getattr(tls, "_sslobj", None)
    if native is None:  # an SSLSocket before (or without) its handshake
        return ()
    certificates = native.get_unverified_chain()
    return tuple(certificate.public_bytes(_DER) for certificate in certificates or ())
