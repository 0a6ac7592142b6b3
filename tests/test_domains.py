"""The domain probe (smtpmon.domains): a real knotd names the MX hosts, real SMTP servers on
127.0.57.x and ::1 answer (tests/mail_domains.py). Every resolver is pointed at the loopback
knotd; nothing asks the system resolver.
"""

from __future__ import annotations

import threading
import time

import pytest
from dns_server import silent_server
from mail_domains import LISTENING, NOTHING_LISTENS, fqdn, mail_world
from smtpservers import BANNER, EHLO_OK, QUIT_OK, Sleep

from smtpmon.dns import DnsCache, MxOptions, MxResolver, ResolverSettings
from smtpmon.domains import VERDICTS, probe_domain, run_on_hub
from smtpmon.net.hub import Hub
from smtpmon.smtp.module import Module


@pytest.fixture(scope="module")
def world(ca, ca_file):
    with mail_world(ca, ca_file) as world:
        yield world


@pytest.fixture
def resolver(world) -> MxResolver:
    return MxResolver(ResolverSettings(nameservers=(world.knot.nameserver,)), DnsCache())


def starttls(ca_file: str, **options) -> Module:
    return Module(tls="starttls", tls_ca_file=ca_file, timeout_seconds=5, **options)


def table(result) -> list[tuple]:
    return [(p.mx.preference, p.mx.name, p.address.ip, p.result.target, p.accepts)
            for p in result.probes]


def test_every_address_of_every_mx_gets_a_session_checked_against_the_mx_name(world, resolver):
    result = probe_domain(fqdn("good"), starttls(world.ca_file), resolver, port=world.port,
                          module_name="mx")
    port = world.port
    assert table(result) == [
        (10, "mx1.good.domains.test", "::1", f"[::1]:{port}", True),
        (10, "mx1.good.domains.test", "127.0.57.1", f"127.0.57.1:{port}", True),
        (20, "mx2.good.domains.test", "127.0.57.2", f"127.0.57.2:{port}", True),
    ]
    for probe in result.probes:  # the certificate names the MX hosts, not the addresses
        assert probe.result.tls.verified and probe.result.address == probe.address.ip
        assert probe.result.module == "mx"
    assert result.resolution.state == "ok" and result.verdict == "ok" and result.success
    assert result.deliverable and result.most_preferred_accepts
    assert (result.addresses("ipv4"), result.addresses("ipv6")) == (2, 1)
    assert (result.accepting("ipv4"), result.accepting("ipv6"), result.accepting()) == (2, 1, 3)


def test_the_sessions_run_in_parallel(world, resolver, scripted_server):
    """Three sessions against servers that each wait 0.6 s before their banner take about
    0.6 s together, not 1.8 s: on threads (the command line) and on a hub alike."""
    script = [Sleep(0.6), BANNER, EHLO_OK, QUIT_OK]
    first = scripted_server(script, host=LISTENING[0])
    for host in LISTENING[1:]:
        scripted_server(script, host=host, port=first.port)
    module = Module(tls="none", timeout_seconds=5)
    started = time.monotonic()
    result = probe_domain(fqdn("good"), module, resolver, port=first.port)
    assert result.verdict == "ok" and len(result.probes) == 3
    assert all(p.result.duration_seconds >= 0.6 for p in result.probes)
    assert time.monotonic() - started < 1.5

    hub, outcome = Hub(), []
    hub.spawn(lambda: outcome.append(probe_domain(fqdn("good"), module, resolver,
                                                  port=first.port, hub=hub)))
    started = time.monotonic()
    while not outcome and time.monotonic() - started < 10:
        hub.run_once(0.05)
    hub.close()
    assert outcome[0].verdict == "ok" and time.monotonic() - started < 1.5


def test_a_broken_first_mx_leaves_the_domain_deliverable_but_degraded(world, resolver):
    result = probe_domain(fqdn("half"), starttls(world.ca_file), resolver, port=world.port)
    assert [(p.mx.preference, p.address.ip, p.accepts) for p in result.probes] == [
        (10, NOTHING_LISTENS, False), (20, "127.0.57.2", True)]
    assert result.probes[0].result.reason == "connect_refused"
    assert result.deliverable and not result.most_preferred_accepts
    assert result.verdict == "degraded" and not result.success


def test_no_address_accepting_is_undeliverable(world, resolver):
    result = probe_domain(fqdn("dead"), starttls(world.ca_file), resolver, port=world.port)
    assert not result.deliverable and result.verdict == "undeliverable"
    assert result.accepting() == 0 and len(result.probes) == 1


@pytest.mark.parametrize("expect_mail, verdict", [(True, "undeliverable"), (False, "no_mail")])
def test_a_null_mx_fails_only_where_mail_is_expected(world, resolver, expect_mail, verdict):
    result = probe_domain(fqdn("nullmx"), starttls(world.ca_file), resolver, port=world.port,
                          expect_mail=expect_mail)
    assert result.resolution.state == "null_mx" and result.probes == ()
    assert result.verdict == verdict and result.success is (not expect_mail)
    assert not result.deliverable


def test_the_implicit_mx_is_probed_under_the_domain_name(world, resolver):
    result = probe_domain(fqdn("implicit"), starttls(world.ca_file), resolver, port=world.port)
    assert result.resolution.state == "implicit_mx"
    assert table(result) == [(0, "implicit.domains.test", "127.0.57.2",
                              f"127.0.57.2:{world.port}", True)]
    assert result.probes[0].result.tls.verified
    assert result.verdict == "ok"


def test_a_missing_mx_host_is_a_misconfiguration_while_mail_still_flows(world, resolver):
    result = probe_domain(fqdn("misconf"), starttls(world.ca_file), resolver, port=world.port)
    assert result.resolution.state == "misconfigured"
    assert [(h.name, h.state) for h in result.mx_hosts] == [
        ("mx2.good.domains.test", "ok"), ("gone.misconf.domains.test", "nxdomain")]
    assert result.deliverable and result.most_preferred_accepts
    assert result.verdict == "degraded"


def test_ipv6_broken_while_ipv4_works(world, resolver):
    result = probe_domain(fqdn("v6"), Module(tls="none", timeout_seconds=5), resolver,
                          port=world.other_port)
    assert [(p.address.family, p.accepts) for p in result.probes] == [("ipv6", False), ("ipv4", True)]
    assert (result.accepting("ipv4"), result.accepting("ipv6")) == (1, 0)
    assert result.deliverable and result.verdict == "degraded"


def test_ip_protocol_and_the_module_family_do_not_fight(world, resolver):
    """The domain's ip_protocol picks the addresses; a module saying ip4 does not refuse them."""
    result = probe_domain(fqdn("good"), Module(tls="none", ip_protocol="ip4", timeout_seconds=5),
                          resolver, port=world.port, options=MxOptions(ip_protocol="ipv6"))
    assert [(p.address.ip, p.accepts) for p in result.probes] == [("::1", True)]


def test_a_resolver_that_never_answers_gives_a_clear_result_within_the_deadline(bad_resolvers):
    silent = bad_resolvers(silent_server())
    resolver = MxResolver(ResolverSettings(nameservers=(silent.nameserver,), timeout_seconds=0.5,
                                           lifetime_seconds=5))
    started = time.monotonic()
    result = probe_domain(fqdn("good"), Module(timeout_seconds=2), resolver)
    took = time.monotonic() - started
    assert result.resolution.state == "timeout" and result.probes == ()
    assert result.verdict == "undeliverable" and not result.deliverable
    assert took < 2.0  # the resolution may use half the probe's time
    assert result.resolution.notes


def test_an_invalid_name_asks_nothing(bad_resolvers):
    silent = bad_resolvers(silent_server())
    resolver = MxResolver(ResolverSettings(nameservers=(silent.nameserver,)))
    result = probe_domain("_dmarc.example..org", Module(timeout_seconds=2), resolver)
    assert result.verdict == "invalid" and result.resolution.state == "invalid_name"
    assert silent.queries == 0


def test_on_a_hub_the_resolution_and_sessions_park_and_the_hub_keeps_turning(world, resolver):
    """On a hub (the daemon, /probe) nothing blocks its thread: a ticker session on the same hub
    keeps ticking while the domain is resolved and probed."""
    hub = Hub()
    outcome, ticks = [], []

    def domain_session() -> None:
        outcome.append(probe_domain(fqdn("good"), starttls(world.ca_file), resolver,
                                    port=world.port, hub=hub, run_sessions=run_on_hub(hub)))

    def ticker() -> None:
        while not outcome:
            ticks.append(time.monotonic())
            hub.sleep(0.01)

    hub.spawn(ticker)
    hub.spawn(domain_session)
    deadline = time.monotonic() + 10
    while (hub.sessions or not outcome) and time.monotonic() < deadline:
        hub.run_once(0.05)
    hub.close()
    [result] = outcome
    assert result.verdict == "ok" and len(result.probes) == 3
    gaps = [later - earlier for earlier, later in zip(ticks, ticks[1:])]
    assert gaps and max(gaps) < 0.2
    assert threading.current_thread() is threading.main_thread()


def test_verdicts_are_a_fixed_vocabulary(world, resolver):
    seen = {probe_domain(fqdn(name), Module(tls="none", timeout_seconds=3), resolver,
                         port=world.port).verdict
            for name in ("good", "half", "dead", "nullmx", "implicit", "misconf")}
    assert seen <= set(VERDICTS) and {"ok", "degraded", "undeliverable"} <= seen
