"""Mail domain names as users write them, checked and kept in both forms (IDNA).

A configured domain may be written in Unicode (`bücher.example`) or as its A-label
(`xn--bcher-kva.example`); DNS is asked with the A-label, people are shown the Unicode form.
IDNA 2008 with the UTS #46 mapping (what browsers and current MTAs do) turns `Bücher.Example`
into `xn--bcher-kva.example`; IDNA 2003 would map `ß` to `ss`, another domain.

A mail domain is a host name (RFC 5321 4.1.2 `Domain`: letters, digits and hyphens, no hyphen
at either end of a label), not any DNS name: `_dmarc.example`, `a b.example` and IP addresses
are refused here with a reason, so that no lookup is ever made for them.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass

import dns.exception
import dns.name

# RFC 5321 4.1.2: sub-domain = Let-dig [Ldh-str]
_LDH_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\Z")
MAX_NAME_LENGTH = 253  # characters without the final dot: 255 octets on the wire
# The same domains and MX host names come back at every probe: their text forms (IDNA, label
# escaping, all pure Python) are worked out once. Names are immutable, so caching is safe;
# the bound keeps a stream of /probe?domain= requests from growing it.
NAMES_CACHED = 16384


@dataclass(frozen=True, slots=True)
class DomainName:
    """A checked mail domain: `a_label` is what DNS is asked, `unicode` what people read.
    Both are lower case, without the final dot."""

    a_label: str
    unicode: str

    @property
    def dns_name(self) -> dns.name.Name:
        return dns.name.from_text(self.a_label)


def parse_domain(text: str) -> DomainName | str:
    """The domain written in `text` (Unicode or A-labels, a final dot allowed), or the reason
    it is not a mail domain, as a sentence."""
    if not isinstance(text, str):
        return f"a domain must be text, not {type(text).__name__}"
    return _parse_text(text)


@functools.lru_cache(maxsize=NAMES_CACHED)
def _parse_text(text: str) -> DomainName | str:
    written = text.strip()
    if not written or written == ".":
        return "the domain is empty"
    if written != text:
        return f"{text!r} has spaces around it"
    bare = written[:-1] if written.endswith(".") else written
    if _is_ip_address(bare):
        return f"{bare} is an IP address, not a domain"
    try:
        name = dns.name.from_text(bare.lower(), idna_codec=dns.name.IDNA_2008_Practical)
        a_label = name.to_text(omit_final_dot=True)
        unicode = name.to_unicode(omit_final_dot=True, idna_codec=dns.name.IDNA_2008_Practical)
    except dns.name.EmptyLabel:
        return f"{written!r} has an empty label (two dots in a row, or a leading dot)"
    except dns.name.LabelTooLong:
        return f"{written!r} has a label longer than 63 characters"
    except dns.name.NameTooLong:
        return f"{written!r} is longer than 253 characters"
    except (dns.exception.DNSException, UnicodeError, ValueError) as error:
        return f"{written!r} is not a valid internationalized domain name ({error})"
    if len(a_label) > MAX_NAME_LENGTH:
        return f"{written!r} is longer than {MAX_NAME_LENGTH} characters as an A-label"
    for label in a_label.split("."):
        if not _LDH_LABEL.match(label):
            return (f"{written!r}: the label {label!r} is not a host name label (letters, digits "
                    "and hyphens, no hyphen at either end)")
    return DomainName(a_label=a_label, unicode=unicode)


@functools.lru_cache(maxsize=NAMES_CACHED)
def _is_ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True


def name_text(name: dns.name.Name) -> str:
    """A DNS name as shown in results: lower case, without the final dot ('.' for the root)."""
    return _name_text(name.labels)


def name_unicode(name: dns.name.Name) -> str:
    """The Unicode form of a name from DNS data; the A-label form when it does not decode
    (DNS data is not checked like configured names are)."""
    return _name_unicode(name.labels)


# Keyed by the labels, not the Name: a Name's hash is worked out afresh (in Python, octet by
# octet) at every call.
@functools.lru_cache(maxsize=NAMES_CACHED)
def _name_text(labels: tuple[bytes, ...]) -> str:
    name = dns.name.Name(labels)
    if name == dns.name.root:
        return "."
    return name.to_text(omit_final_dot=True).lower()


@functools.lru_cache(maxsize=NAMES_CACHED)
def _name_unicode(labels: tuple[bytes, ...]) -> str:
    name = dns.name.Name(labels)
    try:
        return name.to_unicode(omit_final_dot=True,
                               idna_codec=dns.name.IDNA_2008_Practical).lower()
    except (dns.exception.DNSException, UnicodeError, ValueError):
        return _name_text(labels)


def is_ip_literal(name: dns.name.Name) -> bool:
    """Whether an MX target is an IP address written as a name (`MX 10 192.0.2.1.`)."""
    return _is_ip_address(name_text(name))


def name_matches(pattern: str, host: str) -> bool:
    """Whether a certificate name or an MTA-STS `mx` pattern covers `host`: equal (case and
    a final dot aside), or `*.` + the host's parent: the wildcard stands for exactly one whole
    left-most label (RFC 6125 6.4.3 as RFC 7672 3.2.3 and RFC 8461 4.1 use it:
    `*.example.org` covers `mx.example.org`, not `a.mx.example.org` or `example.org`)."""
    pattern = pattern.rstrip(".").lower()
    host = host.rstrip(".").lower()
    if pattern.startswith("*."):
        head, _, parent = host.partition(".")
        return bool(head) and parent == pattern[2:]
    return pattern == host
