"""The HTTP server's listening sockets: bound here for each `--web.listen-address`.

The server (server.py) serves whatever sockets it is given, on one hub and under one set of
limits, whichever way they were made.
"""

from __future__ import annotations

import socket

# How many connections the kernel queues before the accept loop takes them.
BACKLOG = 128


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket listening on host:port ("::" is every address, IPv4 included, as Go's
    ":port" is for Prometheus exporters; "" every IPv4 address). Raises OSError."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


def describe(sock: socket.socket) -> str:
    """host:port of a listening socket, IPv6 in brackets, for log lines."""
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
