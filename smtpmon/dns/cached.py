"""One resolver behind the shared TTL cache: the questions other packages ask (DANE's TLSA
and DNSSEC-checked MX, MTA-STS and TLS-RPT TXT records, the policy host's addresses) go
through here, so every DNS question smtpmon asks is counted once (Resolver.queries_sent) and
kept once (DnsCache), whatever package asks it.
"""

from __future__ import annotations

import functools

import dns.exception
import dns.name

from smtpmon.dns.cache import DnsCache
from smtpmon.dns.resolver import Answer, Resolver

# A validating resolver's SERVFAIL (a bogus zone, most often) is kept this long.
SERVFAIL_KEPT_SECONDS = 30.0


class CachedResolver:
    """`resolver`'s answers through `cache` (which may be shared with an MxResolver: keys
    hold the nameserver set and the flags asked, so entries never mix). With `cached_only`,
    answers from the cache alone: a question it cannot answer fresh raises NotCached and
    nothing is sent (`cache_only` is that view of a resolver)."""

    def __init__(self, resolver: Resolver, cache: DnsCache, *, cached_only: bool = False) -> None:
        self.resolver = resolver
        self.cache = cache
        self.cached_only = cached_only
        self.cache_only = self if cached_only else CachedResolver(resolver, cache, cached_only=True)

    def ask(self, name: str, rdtype: str, *, deadline: float, dnssec: bool = False,
            checking_disabled: bool = False) -> Answer:
        """The answer for `name` (text; absolute or not), never an exception for anything
        the network does. DNSSEC questions are never answered stale: DANE's verdicts must
        follow the zone at once. ValueError for a name DNS cannot carry (names are the
        caller's to check); NotCached from a `cached_only` resolver."""
        # Keyed by the text as asked (DNS names ignore ASCII case): a cached answer needs no
        # parsing of the name, which is pure Python in dnspython; a miss parses it to ask.
        text = name if name.isascii() else absolute_name(name).to_text()
        key = (self.resolver.settings.nameservers, text.lower().rstrip(".") + ".", rdtype, dnssec,
               checking_disabled)
        return self.cache.get(
            key, lambda: self.resolver.query(absolute_name(name), rdtype, deadline, dnssec=dnssec,
                                             checking_disabled=checking_disabled),
            serve_stale=not dnssec, keep_servfail_seconds=SERVFAIL_KEPT_SECONDS if dnssec else 0.0,
            cached_only=self.cached_only)


# The names of the domains' policy questions (TLSA owner names, MTA-STS domains) come back at
# every probe: their parsing (pure Python in dnspython) is kept. Bounded: /probe?domain= brings
# names from outside.
NAMES_KEPT = 16384


@functools.lru_cache(maxsize=NAMES_KEPT)
def absolute_name(name: str) -> dns.name.Name:
    """`name` as an absolute DNS name (immutable: kept, see NAMES_KEPT). ValueError for text
    DNS cannot carry."""
    try:
        return dns.name.from_text(name)
    except (dns.exception.DNSException, UnicodeError) as error:
        raise ValueError(f"{name!r} is not a DNS name: {error}") from None
