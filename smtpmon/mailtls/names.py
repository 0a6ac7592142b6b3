"""Host names against certificate names and MTA-STS mx patterns."""

from __future__ import annotations


def name_matches(pattern: str, host: str) -> bool:
    """Equal (case and a final dot aside), or `*.` + the host's parent: the wildcard stands
    for exactly one whole left-most label (RFC 6125 6.4.3 as RFC 7672 3.2.3 and RFC 8461
    4.1 use it: `*.example.org` covers `mx.example.org`, not `a.mx.example.org` or
    `example.org`)."""
    pattern = pattern.rstrip(".").lower()
    host = host.rstrip(".").lower()
    if pattern.startswith("*."):
        head, _, parent = host.partition(".")
        return bool(head) and parent == pattern[2:]
    return pattern == host
