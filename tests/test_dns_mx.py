"""Mail domains resolved as senders do, against a real knotd on loopback (tests/dns_server.py).

Every resolver here is given loopback nameservers explicitly: no test asks the system
resolver, and no question can leave the machine.
"""

from __future__ import annotations

import functools
import socket
import threading
import time

import pytest
from dns_server import (
    Zone,
    garbage_server,
    require_knot,
    selectively_silent_server,
    servfail_server,
    silent_server,
    start_knot,
    truncating_server,
)

from smtpmon.dns import (
    DOMAIN_STATES,
    MX_HOST_STATES,
    Address,
    DnsCache,
    MxOptions,
    MxResolver,
    NotCached,
    ResolverSettings,
    parse_domain,
)
from smtpmon.dns.resolver import LOOKUP_STATES
from smtpmon.net.lookups import LookupPool

ZONE = "smtpmon.test"
MANY = 100

RECORDS = """\
pref MX 10 mx1.pref
pref MX 20 mx2.pref
mx1.pref A 127.0.54.2
mx1.pref A 127.0.54.10
mx1.pref A 127.0.54.1
mx1.pref AAAA ::1
mx2.pref A 127.0.54.3

equal MX 10 b.equal
equal MX 10 a.equal
equal MX 20 c.equal
a.equal A 127.0.54.11
b.equal A 127.0.54.12
c.equal A 127.0.54.13

implicit A 127.0.54.20
implicit AAAA ::1

nodata TXT "exists, with neither MX nor addresses"

nullmx MX 0 .
nullmix MX 0 .
nullmix MX 10 mx2.pref

cname MX 10 alias.cname
alias.cname CNAME real.cname
real.cname A 127.0.54.30

missing MX 10 gone.missing
missing MX 20 mx2.pref

noaddr MX 10 host.noaddr
host.noaddr TXT "a name without addresses"

literal MX 10 127.0.54.40.

v6only MX 10 mx.v6only
mx.v6only AAAA ::1

lame NS ns.lame
ns.lame A 127.0.53.99

alias CNAME pref

xn--bcher-kva MX 10 mx2.pref

twice MX 20 mx2.pref
twice MX 10 mx2.pref

dangling CNAME nowhere
"""


def _many_records() -> str:
    lines = [f"many MX {i} mx{i:03}.many\nmx{i:03}.many A 127.0.55.{i + 1}\n" for i in range(MANY)]
    return "".join(lines)


def fqdn(label: str) -> str:
    return f"{label}.{ZONE}" if label else ZONE


@pytest.fixture(scope="module")
def knot_server():
    require_knot()
    with start_knot([Zone(ZONE, RECORDS + _many_records(), negative_ttl=60)]) as server:
        yield server


@pytest.fixture
def resolver(knot_server) -> MxResolver:
    return MxResolver(ResolverSettings(nameservers=(knot_server.nameserver,),
                                       timeout_seconds=2, lifetime_seconds=5))


def table(result) -> list[tuple]:
    """The MX table a user sees: (preference, host, state, addresses)."""
    return [(h.preference, h.name, h.state, [a.ip for a in h.addresses]) for h in result.mx_hosts]


# -- MX sets -------------------------------------------------------------------------------------
def test_mx_hosts_come_sorted_by_preference_with_every_address_of_both_families(resolver):
    result = resolver.resolve(fqdn("pref"))
    assert result.state == "ok"
    assert result.domain == result.domain_unicode == "pref.smtpmon.test"
    assert table(result) == [
        # IPv6 and IPv4 alternate; each family in address order (.2 before .10)
        (10, "mx1.pref.smtpmon.test", "ok", ["::1", "127.0.54.1", "127.0.54.2", "127.0.54.10"]),
        (20, "mx2.pref.smtpmon.test", "ok", ["127.0.54.3"]),
    ]
    assert result.mx_hosts[0].addresses[:2] == (Address("ipv6", "::1"), Address("ipv4", "127.0.54.1"))
    assert result.mx_record_count == 2 and not result.mx_hosts_capped
    assert [(a.rdtype, a.name, a.state) for a in result.lookups] == [
        ("MX", "pref.smtpmon.test", "ok"),
        ("AAAA", "mx1.pref.smtpmon.test", "ok"), ("A", "mx1.pref.smtpmon.test", "ok"),
        ("AAAA", "mx2.pref.smtpmon.test", "nodata"), ("A", "mx2.pref.smtpmon.test", "ok"),
    ]
    assert 0 < result.ttl_seconds <= 300 and not result.stale and not result.from_cache
    assert len(result.addresses) == 5


def test_equal_preferences_are_all_kept(resolver):
    result = resolver.resolve(fqdn("equal"))
    assert result.state == "ok"
    assert table(result) == [
        (10, "a.equal.smtpmon.test", "ok", ["127.0.54.11"]),
        (10, "b.equal.smtpmon.test", "ok", ["127.0.54.12"]),
        (20, "c.equal.smtpmon.test", "ok", ["127.0.54.13"]),
    ]


@pytest.mark.parametrize("ip_protocol, expected_state, expected", [
    ("ipv4", "ok", [["127.0.54.1", "127.0.54.2", "127.0.54.10"], ["127.0.54.3"]]),
    # mx2 has no AAAA: an IPv6-only sender cannot use it
    ("ipv6", "misconfigured", [["::1"], []]),
])
def test_ip_protocol_limits_the_families_asked(resolver, ip_protocol, expected_state, expected):
    result = resolver.resolve(fqdn("pref"), MxOptions(ip_protocol=ip_protocol))
    assert result.state == expected_state
    assert [[a.ip for a in h.addresses] for h in result.mx_hosts] == expected
    wanted = {"ipv4": "A", "ipv6": "AAAA"}[ip_protocol]
    assert {a.rdtype for a in result.lookups} == {"MX", wanted}
    if ip_protocol == "ipv6":
        assert result.mx_hosts[1].state == "no_address"
        assert "MX 20 mx2.pref.smtpmon.test: mx2.pref.smtpmon.test has no AAAA records" in result.notes


def test_the_address_cap_keeps_both_families_and_says_so(resolver):
    result = resolver.resolve(fqdn("pref"), MxOptions(max_addresses_per_host=2))
    first = result.mx_hosts[0]
    assert [a.ip for a in first.addresses] == ["::1", "127.0.54.1"]
    assert first.capped and first.address_count == 4
    assert "MX 10 mx1.pref.smtpmon.test: 4 addresses, probing 2 (max_addresses_per_host 2)" in result.notes
    assert not result.mx_hosts[1].capped


def test_a_hundred_mx_records_are_cut_to_the_most_preferred_with_a_note(resolver):
    started = time.monotonic()
    result = resolver.resolve(fqdn("many"), MxOptions(max_mx_hosts=10, ip_protocol="ipv4"))
    assert result.state == "ok"
    assert result.mx_record_count == MANY and result.mx_hosts_capped
    assert [h.preference for h in result.mx_hosts] == list(range(10))
    assert result.mx_hosts[9].name == "mx009.many.smtpmon.test"
    assert result.mx_hosts[9].addresses == (Address("ipv4", "127.0.55.10"),)
    assert ("100 MX hosts: resolving the 10 most preferred (max_mx_hosts 10); the others are "
            "not probed") in result.notes
    assert len(result.lookups) == 1 + 10  # no question about the 90 hosts cut
    assert time.monotonic() - started < 5


def test_a_domain_that_is_an_alias_uses_the_mx_records_of_its_target(resolver):
    result = resolver.resolve(fqdn("alias"))
    assert result.state == "ok"
    assert [h.name for h in result.mx_hosts] == ["mx1.pref.smtpmon.test", "mx2.pref.smtpmon.test"]
    assert ("alias.smtpmon.test is an alias of pref.smtpmon.test: its MX records are used "
            "(RFC 5321 5.1)") in result.notes


def test_a_host_named_twice_is_one_host_at_its_best_preference(resolver):
    result = resolver.resolve(fqdn("twice"))
    assert result.state == "ok" and result.mx_record_count == 2
    assert table(result) == [(10, "mx2.pref.smtpmon.test", "ok", ["127.0.54.3"])]
    assert "an MX host is named more than once; its lowest preference counts" in result.notes


# -- no MX, null MX, no domain -------------------------------------------------------------------
def test_no_mx_records_means_the_implicit_mx(resolver):
    result = resolver.resolve(fqdn("implicit"))
    assert result.state == "implicit_mx"
    assert table(result) == [(0, "implicit.smtpmon.test", "ok", ["::1", "127.0.54.20"])]
    assert result.mx_hosts[0].implicit
    assert result.lookups[0].state == "nodata"


def test_neither_mx_nor_addresses_is_no_address(resolver):
    result = resolver.resolve(fqdn("nodata"))
    assert result.state == "no_address"
    assert table(result) == [(0, "nodata.smtpmon.test", "no_address", [])]
    assert ("nodata.smtpmon.test has neither MX records nor addresses: senders cannot deliver "
            "(RFC 5321 5.1)") in result.notes


def test_null_mx_is_a_state_of_its_own(resolver):
    result = resolver.resolve(fqdn("nullmx"))
    assert result.state == "null_mx"
    assert result.mx_hosts == () and result.mx_record_count == 1
    assert "null MX (RFC 7505): the domain says it accepts no mail" in result.notes
    assert len(result.lookups) == 1  # no address asked for "."


def test_a_null_mx_next_to_other_mx_records_is_a_misconfiguration(resolver):
    result = resolver.resolve(fqdn("nullmix"))
    assert result.state == "misconfigured"
    assert table(result) == [(0, ".", "null_mx", []),
                             (10, "mx2.pref.smtpmon.test", "ok", ["127.0.54.3"])]


def test_nxdomain_is_its_own_failure_with_the_negative_ttl(resolver):
    result = resolver.resolve(fqdn("absent"))
    assert result.state == "nxdomain"
    assert result.mx_hosts == ()
    assert result.ttl_seconds == 60  # the SOA minimum
    assert "absent.smtpmon.test does not exist (NXDOMAIN)" in result.notes


def test_a_domain_that_is_an_alias_of_nothing_is_nxdomain_and_says_why(resolver):
    result = resolver.resolve(fqdn("dangling"))
    assert result.state == "nxdomain"
    assert result.notes == (
        "dangling.smtpmon.test is an alias of nowhere.smtpmon.test, which does not exist",)


# -- MX misconfigurations ------------------------------------------------------------------------
def test_an_mx_that_is_a_cname_is_named_but_still_usable(resolver):
    result = resolver.resolve(fqdn("cname"))
    assert result.state == "misconfigured"
    host = result.mx_hosts[0]
    assert (host.name, host.state, host.canonical_name) == (
        "alias.cname.smtpmon.test", "cname", "real.cname.smtpmon.test")
    assert [a.ip for a in host.addresses] == ["127.0.54.30"] and host.usable
    assert any("is an alias of real.cname.smtpmon.test (CNAME)" in note for note in result.notes)


def test_an_mx_to_a_missing_name_is_nxdomain_for_that_host_only(resolver):
    result = resolver.resolve(fqdn("missing"))
    assert result.state == "misconfigured"
    assert table(result) == [(10, "gone.missing.smtpmon.test", "nxdomain", []),
                             (20, "mx2.pref.smtpmon.test", "ok", ["127.0.54.3"])]
    assert "MX 10 gone.missing.smtpmon.test: gone.missing.smtpmon.test does not exist (NXDOMAIN)" in result.notes


def test_an_mx_host_without_addresses(resolver):
    result = resolver.resolve(fqdn("noaddr"))
    assert result.state == "misconfigured"
    assert table(result) == [(10, "host.noaddr.smtpmon.test", "no_address", [])]
    assert not result.mx_hosts[0].usable


def test_an_mx_that_is_an_ip_literal_is_not_looked_up(resolver):
    result = resolver.resolve(fqdn("literal"))
    assert result.state == "misconfigured"
    assert table(result) == [(10, "127.0.54.40", "ip_literal", [])]
    assert [a.rdtype for a in result.lookups] == ["MX"]


def test_an_mx_host_with_ipv6_only_under_ipv4(resolver):
    result = resolver.resolve(fqdn("v6only"), MxOptions(ip_protocol="ipv4"))
    assert result.state == "misconfigured"
    assert table(result) == [(10, "mx.v6only.smtpmon.test", "no_address", [])]
    both = resolver.resolve(fqdn("v6only"))
    assert (both.state, table(both)) == ("ok", [(10, "mx.v6only.smtpmon.test", "ok", ["::1"])])


def test_a_delegation_to_a_server_that_never_answers_is_a_servfail(resolver):
    # knot, asked directly, answers with a referral to ns.lame (127.0.53.99, where nothing
    # listens); a recursive resolver would try it and answer SERVFAIL. Taken for NODATA it
    # would make an implicit MX out of a broken domain.
    result = resolver.resolve(fqdn("lame"))
    assert result.state == "servfail"
    assert result.mx_hosts == ()
    assert any("referral to the nameservers of lame.smtpmon.test" in note
               and "does not resolve recursively" in note for note in result.notes)


def test_every_state_seen_is_in_its_vocabulary(resolver):
    """States become label values: each must be one of the documented words."""
    labels = ["pref", "equal", "implicit", "nodata", "nullmx", "nullmix", "cname", "missing",
              "noaddr", "literal", "v6only", "lame", "alias", "twice", "dangling", "absent"]
    seen = set()
    for label in labels:
        result = resolver.resolve(fqdn(label))
        assert result.state in DOMAIN_STATES
        assert {host.state for host in result.mx_hosts} <= set(MX_HOST_STATES)
        assert {lookup.state for lookup in result.lookups} <= set(LOOKUP_STATES)
        seen.add(result.state)
    assert seen == {"ok", "implicit_mx", "no_address", "null_mx", "misconfigured", "servfail",
                    "nxdomain"}


# -- names ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("written", ["bücher.smtpmon.test", "BÜCHER.smtpmon.test.",
                                     "xn--bcher-kva.smtpmon.test"])
def test_idn_domains_keep_both_forms(resolver, written):
    result = resolver.resolve(written)
    assert (result.domain, result.domain_unicode) == ("xn--bcher-kva.smtpmon.test",
                                                      "bücher.smtpmon.test")
    assert result.state == "ok"
    assert table(result) == [(10, "mx2.pref.smtpmon.test", "ok", ["127.0.54.3"])]


@pytest.mark.parametrize("written, reason", [
    ("", "the domain is empty"),
    ("a..smtpmon.test", "empty label"),
    ("exa mple.test", "is not a host name label"),
    ("-x.test", "is not a host name label"),
    ("_dmarc.example.test", "is not a host name label"),
    ("127.0.0.1", "is an IP address, not a domain"),
    ("[::1]", "is an IP address, not a domain"),
    ("x" * 64 + ".test", "longer than 63"),
    ("xn--zz.test", "not a valid internationalized domain name"),
    (" pref.smtpmon.test", "spaces around it"),
])
def test_invalid_domain_names_are_a_result_and_ask_nothing(bad_resolvers, written, reason):
    server = bad_resolvers(silent_server())
    resolver = MxResolver(ResolverSettings(nameservers=(server.nameserver,)))
    result = resolver.resolve(written)
    assert result.state == "invalid_name"
    assert result.domain == written
    assert len(result.notes) == 1 and reason in result.notes[0]
    assert result.lookups == () and resolver.resolver.queries_sent == 0 and server.queries == 0
    assert isinstance(parse_domain(written), str)


# -- resolvers that misbehave --------------------------------------------------------------------
def test_a_resolver_that_never_answers_is_a_timeout_within_the_deadline(bad_resolvers):
    server = bad_resolvers(silent_server())
    resolver = MxResolver(ResolverSettings(nameservers=(server.nameserver,),
                                           timeout_seconds=0.2, lifetime_seconds=0.8))
    started = time.monotonic()
    result = resolver.resolve(fqdn("pref"))
    assert time.monotonic() - started < 1.3
    assert result.state == "timeout"
    assert result.ttl_seconds == 0 and result.mx_hosts == ()
    assert any(note.startswith("MX pref.smtpmon.test: no answer in time: "
                               f"{server.address}:{server.port} did not answer within 0.20 s")
               for note in result.notes), result.notes
    assert server.queries >= 2  # retried within the lifetime

    # a caller's own deadline is kept too
    started = time.monotonic()
    assert resolver.resolve(fqdn("pref"), deadline=time.monotonic() + 0.3).state == "timeout"
    assert time.monotonic() - started < 0.6


def test_a_silent_address_question_costs_its_own_attempts_not_the_whole_deadline(
        knot_server, bad_resolvers):
    # AAAA questions go unanswered: each gives up after its attempts, and the A questions
    # after them still get their answers, so IPv4 senders' addresses are known.
    server = bad_resolvers(selectively_silent_server(knot_server, ("AAAA",)))
    resolver = MxResolver(ResolverSettings(nameservers=(server.nameserver,),
                                           timeout_seconds=0.2, lifetime_seconds=5))
    started = time.monotonic()
    result = resolver.resolve(fqdn("pref"))
    assert time.monotonic() - started < 2
    assert result.state == "timeout"
    assert table(result) == [
        (10, "mx1.pref.smtpmon.test", "timeout", ["127.0.54.1", "127.0.54.2", "127.0.54.10"]),
        (20, "mx2.pref.smtpmon.test", "timeout", ["127.0.54.3"]),
    ]
    assert all(host.usable for host in result.mx_hosts)
    assert [(a.rdtype, a.state) for a in result.lookups] == [
        ("MX", "ok"), ("AAAA", "timeout"), ("A", "ok"), ("AAAA", "timeout"), ("A", "ok")]
    assert any(note.startswith("AAAA mx1.pref.smtpmon.test: no answer in time: ")
               for note in result.notes), result.notes


def test_when_the_first_nameserver_is_silent_the_next_one_answers(knot_server, bad_resolvers):
    silent = bad_resolvers(silent_server())
    resolver = MxResolver(ResolverSettings(nameservers=(silent.nameserver, knot_server.nameserver),
                                           timeout_seconds=0.2, lifetime_seconds=5))
    started = time.monotonic()
    result = resolver.resolve(fqdn("equal"))
    assert result.state == "ok" and len(result.mx_hosts) == 3
    assert time.monotonic() - started < 3  # 7 questions, each 0.2 s on the silent server first
    assert silent.queries == len(result.lookups) == 7


def test_a_resolver_that_answers_garbage_is_a_bad_response(bad_resolvers):
    server = bad_resolvers(garbage_server())
    resolver = MxResolver(ResolverSettings(nameservers=(server.nameserver,),
                                           timeout_seconds=0.5, lifetime_seconds=2))
    started = time.monotonic()
    result = resolver.resolve(fqdn("pref"))
    assert result.state == "bad_response"
    assert time.monotonic() - started < 2.5
    assert any("answered something unusable" in note for note in result.notes), result.notes


def test_a_resolver_that_answers_servfail(bad_resolvers):
    server = bad_resolvers(servfail_server())
    resolver = MxResolver(ResolverSettings(nameservers=(server.nameserver,)))
    result = resolver.resolve(fqdn("pref"))
    assert result.state == "servfail"
    assert f"MX pref.smtpmon.test: {server.address}:{server.port} over UDP answered SERVFAIL" in result.notes


def test_a_truncated_answer_is_asked_again_over_tcp(knot_server, bad_resolvers):
    server = bad_resolvers(truncating_server(knot_server))
    resolver = MxResolver(ResolverSettings(nameservers=(server.nameserver,)))
    result = resolver.resolve(fqdn("pref"))
    assert result.state == "ok"
    assert table(result)[0][1:] == ("mx1.pref.smtpmon.test", "ok",
                                     ["::1", "127.0.54.1", "127.0.54.2", "127.0.54.10"])
    assert server.tcp_queries == len(result.lookups) == 5


def test_a_truncated_answer_whose_tcp_side_never_answers_ends_at_the_deadline(bad_resolvers):
    server = bad_resolvers(truncating_server(None))
    resolver = MxResolver(ResolverSettings(nameservers=(server.nameserver,),
                                           timeout_seconds=0.4, lifetime_seconds=1))
    started = time.monotonic()
    result = resolver.resolve(fqdn("pref"))
    assert time.monotonic() - started < 1.3
    assert result.state == "timeout"
    assert any("did not answer over TCP within" in note for note in result.notes), result.notes


def test_a_truncated_answer_whose_tcp_side_is_closed_is_unreachable(bad_resolvers):
    server = bad_resolvers(truncating_server(None, tcp_listens=False))
    resolver = MxResolver(ResolverSettings(nameservers=(server.nameserver,)))
    result = resolver.resolve(fqdn("pref"))
    assert result.state == "unreachable"
    assert (f"MX pref.smtpmon.test: {server.address}:{server.port} answered truncated over UDP "
            "and refused the TCP connection to ask again (is TCP port 53 blocked?)") in result.notes


def test_a_nameserver_where_nothing_listens_is_a_timeout_within_the_deadline():
    # Nothing tells an unconnected UDP socket that the port is closed: as with a resolver
    # that is down, the question goes unanswered until the deadline.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.53.3", 0))
        port = probe.getsockname()[1]
    resolver = MxResolver(ResolverSettings(nameservers=(("127.0.53.3", port),),
                                           timeout_seconds=0.2, lifetime_seconds=0.6))
    started = time.monotonic()
    result = resolver.resolve(fqdn("pref"))
    assert result.state == "timeout"
    assert time.monotonic() - started < 1.0


# -- settings ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    ({"nameservers": (("not-an-ip", 53),)}, "nameservers: 'not-an-ip' is not an IP address"),
    ({"nameservers": (("127.0.0.1", 0),)}, "nameservers: port 0 of 127.0.0.1 is not 1-65535"),
    ({"nameservers": [("127.0.0.1", 53)]}, "nameservers: .* is not a tuple"),
    ({"timeout_seconds": 0}, "timeout_seconds: 0 is not a positive number"),
])
def test_resolver_settings_name_the_bad_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ResolverSettings(**kwargs)


@pytest.mark.parametrize("kwargs, message", [
    ({"ip_protocol": "ipv5"}, "ip_protocol: 'ipv5' is not one of both, ipv4, ipv6"),
    ({"max_mx_hosts": 0}, "max_mx_hosts: 0 is not a whole number of at least 1"),
])
def test_mx_options_name_the_bad_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MxOptions(**kwargs)


# -- the cache -----------------------------------------------------------------------------------
def test_answers_are_reused_for_their_ttl(knot_server):
    cache = DnsCache(min_ttl_seconds=30, max_ttl_seconds=600)
    resolver = MxResolver(ResolverSettings(nameservers=(knot_server.nameserver,)), cache)
    first = resolver.resolve(fqdn("pref"))
    sent = resolver.resolver.queries_sent
    assert sent == 5 and not first.from_cache
    for _ in range(20):
        again = resolver.resolve(fqdn("pref"))
    assert resolver.resolver.queries_sent == sent  # DNS was not asked again
    assert again.from_cache and not again.stale and table(again) == table(first)
    # the shortest TTL of the answers used (mx2's NODATA for AAAA: the SOA minimum), counting down
    assert 50 < again.ttl_seconds < 60
    assert all(lookup.duration_seconds == 0 for lookup in again.lookups)
    # a second domain sharing an MX host asks only for what it does not share
    resolver.resolve(fqdn("nullmix"))
    assert resolver.resolver.queries_sent == sent + 1


@pytest.mark.parametrize("domain", ["pref", "implicit", "cname", "absent"])
def test_from_the_cache_alone_a_resolution_asks_nothing(knot_server, domain):
    """What the daemon tries on the probe's own thread before waking a lookup thread."""
    resolver = MxResolver(ResolverSettings(nameservers=(knot_server.nameserver,)), DnsCache())
    with pytest.raises(NotCached):
        resolver.resolve(fqdn(domain), cached_only=True)
    assert resolver.resolver.queries_sent == 0
    asked = resolver.resolve(fqdn(domain))
    sent = resolver.resolver.queries_sent
    cached = resolver.resolve(fqdn(domain), cached_only=True)
    assert (cached.state, table(cached), cached.notes) == (asked.state, table(asked), asked.notes)
    assert cached.from_cache and resolver.resolver.queries_sent == sent
    with pytest.raises(NotCached):  # no cache at all: nothing to answer from
        MxResolver(ResolverSettings(nameservers=(knot_server.nameserver,))).resolve(fqdn(domain), cached_only=True)


def test_ttls_are_bounded_below_and_above(knot_server):
    below = MxResolver(ResolverSettings(nameservers=(knot_server.nameserver,)),
                       DnsCache(min_ttl_seconds=900, max_ttl_seconds=3600))
    assert below.resolve(fqdn("implicit")).ttl_seconds == 60 * 15  # NODATA's 60 s raised
    above = MxResolver(ResolverSettings(nameservers=(knot_server.nameserver,)),
                       DnsCache(min_ttl_seconds=0, max_ttl_seconds=0.3))
    assert above.resolve(fqdn("pref")).ttl_seconds == pytest.approx(0.3)
    sent = above.resolver.queries_sent
    assert above.resolve(fqdn("pref")).from_cache
    time.sleep(0.35)
    again = above.resolve(fqdn("pref"))
    assert not again.from_cache and above.resolver.queries_sent == sent + 5


def test_a_failure_serves_the_last_good_answer_for_the_grace_time_and_says_so(knot):
    server = knot([Zone("grace.test", "@ MX 10 mx\nmx A 127.0.54.50\n")])
    cache = DnsCache(min_ttl_seconds=0, max_ttl_seconds=0.2, grace_seconds=1.5)
    resolver = MxResolver(ResolverSettings(nameservers=(server.nameserver,),
                                           timeout_seconds=0.3, lifetime_seconds=1), cache)
    good = resolver.resolve("grace.test")
    assert good.state == "ok"
    server.stop()
    time.sleep(0.25)  # expired, within the grace time

    stale = resolver.resolve("grace.test")
    assert stale.state == "ok" and stale.stale and not stale.from_cache
    assert table(stale) == table(good) == [(10, "mx.grace.test", "ok", ["127.0.54.50"])]
    assert stale.ttl_seconds == 0
    assert all(lookup.stale for lookup in stale.lookups)
    assert {lookup.state for lookup in stale.lookups} == {"timeout"}
    assert any(note.startswith("MX grace.test: timeout:") and
               "serving the last good answer" in note for note in stale.notes), stale.notes
    assert cache.stale_served == 3

    time.sleep(1.5)  # the grace time is over: the failure shows as what it is
    failed = resolver.resolve("grace.test")
    assert failed.state == "timeout" and not failed.stale and failed.mx_hosts == ()


# -- on the lookup pool, as the daemon runs it ---------------------------------------------------
def test_resolutions_on_the_lookup_pool_share_the_cache_and_agree(knot_server):
    """The daemon runs resolve() on smtpmon.net.lookups' threads; identical resolutions in flight
    share one call, and the cache is shared by all threads."""
    resolver = MxResolver(ResolverSettings(nameservers=(knot_server.nameserver,)), DnsCache())
    expected = {domain: table(resolver.resolve(fqdn(domain)))
                for domain in ("pref", "equal", "implicit", "cname")}
    sent = resolver.resolver.queries_sent
    pool = LookupPool(max_threads=4)
    outcomes = []

    def resolve_on_pool(domain: str) -> None:
        until = time.monotonic() + 5
        call = functools.partial(resolver.resolve, fqdn(domain), MxOptions(), until)
        outcomes.append((domain, pool.run(("mx", domain), call, until)))

    threads = [threading.Thread(target=resolve_on_pool, args=(domain,))
               for domain in list(expected) * 10]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(outcomes) == 40
    for domain, (answered, result) in outcomes:
        assert answered and result.from_cache and table(result) == expected[domain]
    assert resolver.resolver.queries_sent == sent  # every answer came from the cache
