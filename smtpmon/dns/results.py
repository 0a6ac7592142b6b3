"""What resolving a mail domain found: plain, frozen values with fixed vocabularies.

States are label values and words in the docs (docs/domains.md explains each and what
senders do with it); free text (what a server answered, why a name was refused) goes to
`notes` and `detail`, never into a state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

# The domain as a sender sees it, from the MX question (and, without MX records, the
# domain's own addresses).
DOMAIN_STATES: tuple[str, ...] = (
    "ok",             # MX records, every MX host found with addresses
    "implicit_mx",    # no MX records: the domain's own A/AAAA receive its mail (RFC 5321 5.1)
    "null_mx",        # `MX 0 .`: the domain accepts no mail (RFC 7505)
    "misconfigured",  # an MX host is a CNAME, missing, address-less, an IP literal, or `.`
    "no_address",     # no MX records and no addresses either: senders bounce
    "nxdomain",       # the domain does not exist: senders bounce
    "servfail",       # a DNS server reported failure (or gave no answer but a referral)
    "timeout",        # no answer before the deadline
    "bad_response",   # answers that could not be used (garbage, truncated over TCP too)
    "unreachable",    # no nameserver could be asked (none configured, connection refused)
    "invalid_name",   # the configured text is not a mail domain; nothing was asked
)

# One MX host (or the domain itself, for an implicit MX).
MX_HOST_STATES: tuple[str, ...] = (
    "ok",             # addresses found
    "cname",          # addresses found through a CNAME (RFC 2181 10.3: not allowed for MX)
    "ip_literal",     # the MX target is an IP address written as a name: not looked up
    "null_mx",        # a `.` target next to other MX records (RFC 7505 forbids the mix)
    "nxdomain",       # the MX target does not exist
    "no_address",     # the MX target exists but has no A/AAAA (in the families asked)
    "servfail",
    "timeout",
    "bad_response",
    "unreachable",
)

TEMPORARY_STATES: tuple[str, ...] = ("servfail", "timeout", "bad_response", "unreachable")
MISCONFIGURED_HOST_STATES: tuple[str, ...] = (
    "cname", "ip_literal", "null_mx", "nxdomain", "no_address")

FAMILIES: tuple[str, ...] = ("ipv4", "ipv6")
IP_PROTOCOLS: tuple[str, ...] = ("both", "ipv4", "ipv6")


class Address(NamedTuple):
    family: str  # "ipv4" | "ipv6"
    ip: str


@dataclass(frozen=True, slots=True)
class MxHost:
    """One MX host and the addresses a sender would connect to.

    `name` is the A-label form (lower case, no final dot) that certificates are checked
    against; `preference` is 0 for the implicit MX. `canonical_name` is set when the name is
    an alias (CNAME). `addresses` are sorted (IPv6 and IPv4 alternating, each family in address
    order) and cut at the cap: `capped` says they were, `address_count` how many DNS gave.
    """

    preference: int
    name: str
    unicode_name: str
    state: str
    addresses: tuple[Address, ...] = ()
    capped: bool = False
    address_count: int = 0
    implicit: bool = False
    canonical_name: str = ""

    @property
    def usable(self) -> bool:
        """Whether a sender has an address to try (a CNAME is followed by senders)."""
        return bool(self.addresses)


@dataclass(frozen=True, slots=True)
class Lookup:
    """One DNS question asked (or answered from the cache) for this resolution."""

    name: str
    rdtype: str
    state: str  # smtpmon.dns.resolver.LOOKUP_STATES
    duration_seconds: float
    from_cache: bool
    stale: bool
    ttl_seconds: float
    detail: str = ""


@dataclass(frozen=True, slots=True)
class DomainResolution:
    """A mail domain resolved as a sending MTA does it (RFC 5321 5.1, RFC 7505).

    `mx_hosts` are sorted by preference (then name); hosts of equal preference are all kept.
    `mx_record_count` is how many MX records DNS gave, `mx_hosts_capped` whether the cap on MX
    hosts cut some (the least preferred go). `ttl_seconds` is how long until the first of the
    answers used expires (0 when a question failed); `from_cache` is true when no question was
    sent, `stale` when a failed question was answered with its last good answer.
    """

    domain: str  # A-label form; for invalid_name the text as given
    domain_unicode: str
    state: str
    mx_hosts: tuple[MxHost, ...] = ()
    mx_record_count: int = 0
    mx_hosts_capped: bool = False
    ip_protocol: str = "both"
    notes: tuple[str, ...] = ()
    lookups: tuple[Lookup, ...] = ()
    duration_seconds: float = 0.0
    from_cache: bool = False
    stale: bool = False
    ttl_seconds: float = 0.0

    @property
    def addresses(self) -> tuple[tuple[MxHost, Address], ...]:
        """Every (MX host, address) a sender could connect to, most preferred first."""
        return tuple((host, address) for host in self.mx_hosts for address in host.addresses)
