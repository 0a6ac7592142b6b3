"""Micro-benchmark: what a verified TLS client handshake costs with this machine's OpenSSL, and
how much of it is parsing the server's certificate.

Why: a STARTTLS `/probe` is mostly the client side of one TLS 1.3 handshake, and OpenSSL 3.0
parses a certificate's public key through its generic decoder framework, which newer releases
made far cheaper. This prints, for the OpenSSL that Python's `ssl` uses:

- the client thread's CPU per handshake (connect, verified TLS 1.3 handshake, close) against
  a TLS server on a loopback thread, with the same kind of certificate as the suite's
  (trustme: ECDSA P-256, signed by a test CA);
- the CPU of `d2i_X509` on that certificate, which the client does once per handshake;
- if the `cryptography` package is importable (it is not a dependency), the same parse through
  its bundled, newer OpenSSL, for comparison.

    .venv/bin/python benchmarks/tls_handshake.py [--handshakes N]
"""

from __future__ import annotations

import argparse
import ctypes
import socket
import ssl
import statistics
import tempfile
import threading
import time
from pathlib import Path

from harness import make_certificates


def loaded_libcrypto() -> str:
    """The path of the libcrypto this process loaded for `ssl` (not whichever one ld finds)."""
    with open("/proc/self/maps", encoding="utf-8") as maps:
        for line in maps:
            path = line.split()[-1]
            if "/libcrypto.so" in path:
                return path
    raise RuntimeError("no libcrypto mapped: is ssl linked statically?")


def serve_tls(listener: socket.socket, context: ssl.SSLContext, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            connection, _ = listener.accept()
        except OSError:
            return
        try:
            with context.wrap_socket(connection, server_side=True) as tls:
                tls.recv(1)  # until the client closes
        except (OSError, ssl.SSLError):
            pass


def handshake_cpu(ca_file: str, cert_file: str, key_file: str, count: int) -> list[float]:
    """Client-thread CPU seconds of each of `count` verified handshakes (after 50 warm-ups)."""
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert_file, key_file)
    client_context = ssl.create_default_context(cafile=ca_file)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()
    server = threading.Thread(target=serve_tls, args=(listener, server_context, stop), daemon=True)
    server.start()
    costs = []
    try:
        for index in range(count + 50):
            started = time.thread_time()
            with socket.create_connection(("127.0.0.1", port)) as raw:
                with client_context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                    assert tls.version() == "TLSv1.3", tls.version()
            if index >= 50:
                costs.append(time.thread_time() - started)
    finally:
        stop.set()
        listener.close()
    return costs


def system_parse_cpu(der: bytes, count: int) -> float:
    """CPU seconds of one d2i_X509 + X509_free through this process's libcrypto."""
    lib = ctypes.CDLL(loaded_libcrypto())
    lib.d2i_X509.restype = ctypes.c_void_p
    lib.d2i_X509.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_char_p), ctypes.c_long]
    lib.X509_free.argtypes = [ctypes.c_void_p]
    buffer = ctypes.create_string_buffer(der, len(der))

    def parse() -> None:
        cursor = ctypes.c_char_p(ctypes.addressof(buffer))  # d2i_X509 advances it
        certificate = lib.d2i_X509(None, ctypes.byref(cursor), len(der))
        if not certificate:
            raise RuntimeError("d2i_X509 failed")
        lib.X509_free(certificate)

    return per_call(parse, count)


def bundled_parse_cpu(der: bytes, count: int) -> tuple[str, float] | None:
    """The same parse through the `cryptography` package's own OpenSSL, when installed."""
    try:
        from cryptography.hazmat.bindings.openssl.binding import Binding
    except ImportError:
        return None
    lib, ffi = Binding.lib, Binding.ffi
    buffer = ffi.new("char[]", der)

    def parse() -> None:
        bio = lib.BIO_new_mem_buf(buffer, len(der))
        certificate = lib.d2i_X509_bio(bio, ffi.NULL)
        if certificate == ffi.NULL:
            raise RuntimeError("d2i_X509_bio failed")
        lib.X509_free(certificate)
        lib.BIO_free(bio)

    return ffi.string(lib.OpenSSL_version(0)).decode(), per_call(parse, count)


def per_call(function, count: int) -> float:
    """Median over five rounds of the thread's CPU per call (after a warm-up round)."""
    rounds = []
    for _ in range(6):
        started = time.thread_time()
        for _ in range(count):
            function()
        rounds.append((time.thread_time() - started) / count)
    return statistics.median(rounds[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--handshakes", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="smtpmon-bench-tls-") as workdir:
        certs = make_certificates(Path(workdir))
        der = ssl.PEM_cert_to_DER_cert(Path(certs.cert_file).read_text(encoding="ascii"))
        handshakes = handshake_cpu(certs.ca_file, certs.cert_file, certs.key_file, args.handshakes)
        parse = system_parse_cpu(der, 2000)
        bundled = bundled_parse_cpu(der, 2000)
    handshake = statistics.median(handshakes)
    print(f"{ssl.OPENSSL_VERSION} ({loaded_libcrypto()})")
    print(f"client CPU per verified TLS 1.3 handshake (connect to close), median of "
          f"{len(handshakes)}: {handshake * 1e6:.0f} µs")
    print(f"  d2i_X509 of the server certificate (ECDSA P-256): {parse * 1e6:.0f} µs "
          f"({parse / handshake:.0%} of the handshake)")
    if bundled is None:
        print("  (install `cryptography` in a scratch venv to compare its bundled OpenSSL)")
    else:
        version, bundled_parse = bundled
        print(f"  the same parse with {version} (cryptography's bundled copy): "
              f"{bundled_parse * 1e6:.0f} µs")


if __name__ == "__main__":
    main()
