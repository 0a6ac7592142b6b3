"""The one grammar of host:port: configured targets, `/probe?target=`, `smtpmon probe HOST[:PORT]`
and `--web.listen-address` are all read here, and target labels written here.

A target is parsed once, where it enters (the configuration, the request, the command line),
into (host, port); the probe engine takes those as they are.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
import socket

from smtpmon.config.validation import describe

_HOST_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_PORT_PATTERN = re.compile(r"[0-9*?]+")
# Whitespace, angle brackets and control characters: never part of a host name or a port.
_UNSAFE_IN_PATTERN = re.compile(r"[\s<>\x00-\x1f\x7f]")


def parse_address(text: str, default_port: int | None = None) -> tuple[str, int]:
    """Split "host:port" (IPv6: "[2001:db8::1]:25") into (host, port); ValueError says why.

    With a `default_port` (the command line), the port may be left out ("mx.example.org",
    "[2001:db8::1]"), and an IPv6 address may go without brackets when it cannot also be read
    as an address and a port ("2001:db8::25:587" is refused: write the brackets)."""
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError(f'missing "]" after the IPv6 address in {describe(text)}')
        host, rest = text[1:close], text[close + 1 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"invalid IPv6 address {describe(host)}") from None
        if not rest and default_port is not None:
            return host, default_port
        if not rest.startswith(":"):
            raise ValueError(f"missing port; write [IPv6]:port, e.g. [{host}]:25")
        port_text = rest[1:]
    elif text.count(":") > 1:
        if default_port is not None and is_ipv6(text):
            return text, _unambiguous_port(text, default_port)
        host, _, port_text = text.rpartition(":")
        example = f"[{host}]:{port_text}" if is_ipv6(host) and port_text else "[2001:db8::1]:25"
        raise ValueError(f"an IPv6 address must be in brackets, e.g. {example}")
    else:
        host, colon, port_text = text.partition(":")
        problem = host_problem(host)
        if problem:
            raise ValueError(problem)
        if not colon:
            if default_port is not None:
                return host, default_port
            raise ValueError(f"missing port; write host:port, e.g. {host}:25")
    return host, _parse_port(port_text)


def _unambiguous_port(address: str, default_port: int) -> int:
    """The default port for a bare IPv6 address, unless the address could be read as an
    address and a port too: then ValueError, rather than reading it one way silently."""
    head, _, tail = address.rpartition(":")
    if is_ipv6(head) and tail.isascii() and tail.isdigit() and 1 <= int(tail) <= 65535:
        raise ValueError(f"{describe(address)} is ambiguous: write [{address}] for port "
                         f"{default_port}, or [{head}]:{tail}")
    return default_port


def format_address(host: str, port: int) -> str:
    """(host, port) written back as parse_address reads it: "[2001:db8::1]:25" for IPv6."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def normal_address(host: str, port: int) -> str:
    """One spelling of (host, port) for all the ways of writing it: a name in lower case
    without a trailing dot, an IPv6 address in its compressed form, the port without leading
    zeros ("LoCaLhOsT.:0025" and "localhost:25" are both "localhost:25")."""
    if ":" in host:
        return f"[{ipaddress.IPv6Address(host).compressed}]:{port}"
    return f"{host.rstrip('.').lower()}:{port}"


def host_problem(host: str) -> str | None:
    """Why `host` is neither a valid host name nor an IPv4 address; None when it is fine."""
    if not host:
        return "missing host name"
    try:
        ascii_host = host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError:
        return f"invalid host name {describe(host)}"
    labels = ascii_host[:-1].split(".") if ascii_host.endswith(".") else ascii_host.split(".")
    if len(ascii_host) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        return f"invalid host name {describe(host)}"
    return None


def _parse_port(text: str) -> int:
    if not text:
        raise ValueError("missing port after the colon")
    if not text.isascii() or not text.isdigit():
        raise ValueError(f"port must be a number 1-65535, got {describe(text)}")
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be 1-65535, got {port}")
    return port


def is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def is_bad_pattern(pattern: str) -> bool:
    """Is `pattern` not a `probe_allow` pattern: host:port with glob characters (* ? [...]),
    an IPv6 host in brackets ("*.example.org:25", "[2001:db8::*]:*")?"""
    host_pattern, colon, port_pattern = pattern.rpartition(":")
    bracketed = host_pattern.startswith("[") and host_pattern.endswith("]")
    return (
        not colon
        or not host_pattern
        or not _PORT_PATTERN.fullmatch(port_pattern)
        or _UNSAFE_IN_PATTERN.sub("", host_pattern.strip("[]")) != host_pattern.strip("[]")
        or (":" in host_pattern and not bracketed)
    )


def matches_pattern(host: str, port: int, pattern: str) -> bool:
    """Does host:port match a `probe_allow` pattern (host case-insensitively)?"""
    host_pattern, _, port_pattern = pattern.rpartition(":")
    if host_pattern.startswith("[") and host_pattern.endswith("]"):
        host_pattern = host_pattern[1:-1]
    return fnmatch.fnmatchcase(host.lower(), host_pattern.lower()) and fnmatch.fnmatchcase(
        str(port), port_pattern
    )


def parse_listen_address(text: str) -> tuple[str, int]:
    """`--web.listen-address`: ":9725" (every interface), "127.0.0.1:9725", "[::1]:9725"."""
    if text.startswith(":"):
        host, port_text = ("::" if socket.has_ipv6 else ""), text[1:]
    elif text.startswith("["):
        host, _, port_text = text[1:].partition("]:")
    else:
        host, _, port_text = text.rpartition(":")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"invalid listen address {text!r}: want host:port, e.g. :9725")
    return host, int(port_text)
