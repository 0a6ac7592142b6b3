"""The HTTP server's listening sockets: bound here for each `--web.listen-address`, or taken
from systemd's socket activation (`--web.systemd-socket`, an `smtpmon.socket` unit).

The server (server.py) serves whatever sockets it is given, on one hub and under one set of
limits, whichever way they were made.
"""

from __future__ import annotations

import os
import socket
from collections.abc import MutableMapping

# How many connections the kernel queues before the accept loop takes them.
BACKLOG = 128
# sd_listen_fds(3): the first inherited descriptor; the others follow it.
SD_LISTEN_FDS_START = 3
# The variables of the protocol; sd_listen_fds(unset_environment=1) removes them after use,
# so that a child process never takes them for its own.
LISTEN_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


class ActivationError(Exception):
    """`--web.systemd-socket` without usable sockets from systemd; the message says why."""


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


def systemd_sockets(environ: MutableMapping[str, str] = os.environ) -> list[socket.socket]:
    """The listening sockets systemd passed (LISTEN_FDS of them from descriptor 3, for this
    process: LISTEN_PID), as sd_listen_fds(3) takes them: the variables are removed and the
    descriptors closed on exec. ActivationError says what is missing or wrong."""
    pid, count = environ.get("LISTEN_PID"), environ.get("LISTEN_FDS")
    for name in LISTEN_VARIABLES:
        environ.pop(name, None)
    if pid is None or count is None:
        raise ActivationError("no sockets from systemd (LISTEN_PID and LISTEN_FDS are not set): "
                              "start smtpmon through its socket unit, smtpmon.socket")
    if pid != str(os.getpid()):
        raise ActivationError(f"the sockets from systemd are not for this process "
                              f"(LISTEN_PID={pid}, this process is {os.getpid()})")
    if not count.isdigit() or int(count) < 1:
        raise ActivationError(f"no sockets from systemd (LISTEN_FDS={count})")
    sockets = []
    try:
        for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(count)):
            sockets.append(_listening_socket(fd))
    except BaseException:
        for sock in sockets:
            sock.detach()  # systemd's descriptors: left as they were
        raise
    return sockets


def _listening_socket(fd: int) -> socket.socket:
    try:
        os.set_inheritable(fd, False)
        sock = socket.socket(fileno=fd)
    except OSError as error:
        raise ActivationError(f"descriptor {fd} from systemd is not a socket: {error.strerror}") from None
    listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6) \
            or not listening:
        sock.detach()
        raise ActivationError(f"descriptor {fd} from systemd is not a listening TCP socket "
                              "(smtpmon.socket needs ListenStream= with a port or an address)")
    return sock


def describe(sock: socket.socket) -> str:
    """host:port of a listening socket, IPv6 in brackets, for log lines."""
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
