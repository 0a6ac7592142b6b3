"""The sender's side of a DANE check, for tests until the probe engine calls it: connect to an
MX address, EHLO, STARTTLS when offered, handshake without PKIX verification and with the MX
host name as SNI (as a DANE client does, RFC 7672 8.1), and read the presented chain."""

from __future__ import annotations

import socket
import ssl

from smtpmon.smtp.chain import presented_chain


def _reply(stream) -> list[str]:
    lines = []
    while True:
        line = stream.readline(4096).decode("ascii", errors="replace").rstrip("\r\n")
        if not line:
            raise ConnectionError("the server closed the connection")
        lines.append(line)
        if line[3:4] != "-":
            return lines


def starttls_chain(address: str, port: int, mx_host: str, timeout: float = 5.0) -> tuple[bool, tuple[bytes, ...]]:
    """(STARTTLS offered, the chain presented after it; () when not offered)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection((address, port), timeout=timeout) as sock:
        stream = sock.makefile("rb")
        _reply(stream)
        sock.sendall(b"EHLO sender.test\r\n")
        keywords = [line[4:].split(" ")[0].upper() for line in _reply(stream)]
        if "STARTTLS" not in keywords:
            sock.sendall(b"QUIT\r\n")
            return False, ()
        sock.sendall(b"STARTTLS\r\n")
        if not _reply(stream)[-1].startswith("220"):
            return False, ()
        with context.wrap_socket(sock, server_hostname=mx_host.rstrip(".")) as tls:
            chain = presented_chain(tls)
            tls.sendall(b"QUIT\r\n")
        return True, chain
