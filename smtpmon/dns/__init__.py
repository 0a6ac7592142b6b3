"""Mail domains in DNS, as sending MTAs find them: MX records, every MX host's addresses, the
implicit MX, the null MX, and a TTL cache with a grace time (RFC 5321 5.1, RFC 7505).

Plain values in, frozen values out; no YAML, no metrics, no scheduler here.

    resolver = MxResolver(ResolverSettings(nameservers=(("127.0.0.1", 53),)), DnsCache())
    result = resolver.resolve("example.org", MxOptions(ip_protocol="both"))
    result.state, [(h.preference, h.name, h.state, h.addresses) for h in result.mx_hosts]
"""

from smtpmon.dns.cache import DnsCache, NotCached
from smtpmon.dns.mx import MxOptions, MxResolver
from smtpmon.dns.names import DomainName, parse_domain
from smtpmon.dns.resolver import Resolver, ResolverSettings
from smtpmon.dns.results import (
    DOMAIN_STATES,
    MX_HOST_STATES,
    Address,
    DomainResolution,
    Lookup,
    MxHost,
)

__all__ = [
    "DOMAIN_STATES", "MX_HOST_STATES", "Address", "DnsCache", "DomainName",
    "DomainResolution", "Lookup", "MxHost", "MxOptions", "MxResolver", "NotCached", "Resolver",
    "ResolverSettings", "parse_domain",
]
