"""A mail domain's TLS policy checked around its sessions (smtpmon.domains.policy), and the
engine's hook for it (run_probe's want_chain), against tests/mail_policy_world.py: knotd with
a signed zone, a validating unbound, SMTP servers on 127.18.4.x, nginx serving an MTA-STS
policy. No test name reaches the system resolver: every part is named by its address."""

from __future__ import annotations

import dataclasses
import re
import time

import dns.message
import dns.name
import pytest
from mail_policy_world import PolicyWorld, start_world

import smtpmon.smtp.session as session_module
from smtpmon.dns import Address, DnsCache, MxHost, MxResolver, NotCached, Resolver, ResolverSettings
from smtpmon.dns.cached import CachedResolver
from smtpmon.domains import probe_domain
from smtpmon.domains.policy import PolicyChecker, PolicySwitches
from smtpmon.exposition.domains import DOMAIN_FAMILIES, DomainStore, domain_chunks, render_domain
from smtpmon.exposition.policy import POLICY_FAMILIES
from smtpmon.net.lookups import LookupPool
from smtpmon.smtp.chain import PkixVerdicts, known_pkix_problem, pkix_problem
from smtpmon.smtp.module import Module
from smtpmon.smtp.session import run_probe


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> PolicyWorld:
    world = start_world(tmp_path_factory.mktemp("policy"))
    yield world
    world.stop()


@pytest.fixture(autouse=True)
def _watched(no_system_resolver):
    """No name of these tests reaches the system resolver."""


@pytest.fixture()
def parts(world):
    """One resolver (the validating unbound, alone), one cache, as the daemon wires them."""
    resolver = Resolver(ResolverSettings(nameservers=((world.unbound.address, world.unbound.port),),
                                         timeout_seconds=2.0))
    cache = DnsCache()
    cached = CachedResolver(resolver, cache)
    return MxResolver(resolver, cache), PolicyChecker(cached, cached), resolver


def probe(world, parts, domain: str, **switches):
    mx, checker, _ = parts
    module = Module(tls="opportunistic", tls_ca_file=world.ca_file, timeout_seconds=10)
    wanted = PolicySwitches(**({"dane": True, "mta_sts": True, "mta_sts_ca_file": world.ca_file} | switches))
    return probe_domain(domain, module, mx, port=world.port, policy=checker, switches=wanted)


def test_dane_ee_matching_the_presented_key(world, parts):
    result = probe(world, parts, "good.pol.test")
    lookups = result.policy.lookups
    assert (lookups.mx_lookup_state, lookups.mx_secure) == ("ok", True)
    assert [(t.mx_host, t.state) for t in lookups.tlsa] == [("mx.good.pol.test", "secure")]
    (address,) = result.policy.addresses
    assert (address.address, address.dane, address.pkix_valid) == ("127.18.4.1", "match", True)
    assert str(address.dane_check.matched) == world.tlsa["mx.good.pol.test"]
    assert result.success and len(result.probes[0].result.tls.chain) >= 1


def test_a_key_change_without_a_new_record_is_a_mismatch_while_the_session_passes(world, parts):
    result = probe(world, parts, "changed.pol.test")
    (address,) = result.policy.addresses
    assert address.dane == "mismatch"
    assert [str(r) for r in address.dane_check.unmatched] == [world.tlsa["mx.changed.pol.test"]]
    assert result.probes[0].result.success  # SMTP itself works: only DANE senders defer


def test_a_self_signed_dane_ee_certificate_matches_and_pkix_is_judged_apart(world, parts):
    result = probe(world, parts, "selfsigned.pol.test")
    (address,) = result.policy.addresses
    session = result.probes[0].result
    assert (address.dane, address.pkix_valid) == ("match", False)
    assert session.success and session.tls.verify_error  # opportunistic: reported, not failed


def test_an_enforced_sts_policy_missing_one_mx(world, parts):
    result = probe(world, parts, "sts.pol.test")
    sts = result.policy.lookups.sts
    assert (sts.record.state, sts.mode, sts.fetch.error) == ("present", "enforce", None)
    verdicts = [(a.mx_host, a.sts.verdict, a.sts.severity) for a in result.policy.addresses]
    assert verdicts == [("mx1.sts.pol.test", "ok", "none"), ("mx2.sts.pol.test", "mx_not_listed", "critical")]
    assert result.policy.lookups.tlsrpt.state == "present"
    # No TLSA records in a signed zone: DANE does not apply; no session read a chain.
    assert [t.state for t in result.policy.lookups.tlsa] == ["none", "none"]
    assert {a.dane for a in result.policy.addresses} == {"not_applicable"}
    assert all(p.result.tls.chain == () for p in result.probes)


def test_lookups_are_cached_a_second_probe_asks_dns_nothing_new(world, parts):
    probe(world, parts, "good.pol.test")
    probe(world, parts, "sts.pol.test")
    _, checker, resolver = parts
    sent, fetches = resolver.queries_sent, checker.policy_fetches
    probe(world, parts, "good.pol.test")
    probe(world, parts, "sts.pol.test")
    assert (resolver.queries_sent, checker.policy_fetches) == (sent, fetches) == (sent, 1)


def test_switched_off_nothing_is_looked_up(world, parts):
    result = probe(world, parts, "good.pol.test", dane=False, mta_sts=False)
    assert result.policy is None and result.probes[0].result.tls.chain == ()


def test_a_host_target_pays_nothing_and_want_chain_reads_the_chain(world):
    server = world.servers["mx.good"]
    module = Module(tls="opportunistic", tls_ca_file=world.ca_file)
    plain = run_probe(server.target, server.host, server.port, module, server_name="mx.good.pol.test")
    hooked = run_probe(server.target, server.host, server.port, module, server_name="mx.good.pol.test",
                       want_chain=True)
    assert plain.success and hooked.success and plain.tls.chain == ()
    assert hooked.tls.verified and len(hooked.tls.chain) >= 1
    assert any("presented chain" in line.text for line in hooked.transcript)


def test_want_chain_with_a_module_that_requires_verification_fails_on_pkix(world):
    server = world.servers["mx.selfsigned"]
    module = Module(tls="starttls", tls_ca_file=world.ca_file)
    result = run_probe(server.target, server.host, server.port, module,
                       server_name="mx.selfsigned.pol.test", want_chain=True)
    assert (result.success, result.failed_stage, result.reason) == (False, "starttls", "certificate_untrusted")
    assert len(result.tls.chain) == 1


def test_want_chain_reports_a_name_mismatch_as_openssl_would(world):
    server = world.servers["mx.good"]
    module = Module(tls="starttls", tls_ca_file=world.ca_file)
    result = run_probe(server.target, server.host, server.port, module,
                       server_name="elsewhere.pol.test", want_chain=True)
    assert (result.failed_stage, result.reason) == ("starttls", "certificate_hostname_mismatch")
    opportunistic = run_probe(server.target, server.host, server.port,
                              Module(tls="opportunistic", tls_ca_file=world.ca_file),
                              server_name="elsewhere.pol.test", want_chain=True)
    assert opportunistic.success and not opportunistic.tls.verified
    assert opportunistic.tls.verify_error == "hostname mismatch"  # OpenSSL's words (X509_V_ERR_HOSTNAME_MISMATCH)


def test_want_chain_with_a_ca_file_openssl_cannot_load_is_an_internal_error_not_a_verdict(world, tmp_path):
    server = world.servers["mx.good"]
    broken = tmp_path / "not-a-bundle.pem"
    broken.write_text("not a certificate\n")
    result = run_probe(server.target, server.host, server.port,
                       Module(tls="opportunistic", tls_ca_file=str(broken)),
                       server_name="mx.good.pol.test", want_chain=True)
    assert (result.success, result.failed_stage, result.reason) == (False, "starttls", "internal_error")
    assert "cannot judge the certificate chain: openssl verify failed" in result.detail


class CountingPool(LookupPool):
    """The real lookup pool, noting what each call hands it."""

    def __init__(self) -> None:
        super().__init__()
        self.kinds: list[str] = []

    def run(self, key, function, until, hub=None):
        self.kinds.append(key[0])
        return super().run(key, function, until, hub)


def test_a_domain_probed_again_judges_its_policy_from_the_caches_without_a_lookup_thread(world, parts, monkeypatch):
    first = probe(world, parts, "good.pol.test")
    pool = CountingPool()
    monkeypatch.setattr(session_module, "LOOKUPS", pool)  # where sessions judge PKIX
    mx, checker, resolver = parts
    sent = resolver.queries_sent
    module = Module(tls="opportunistic", tls_ca_file=world.ca_file, timeout_seconds=10)
    again = probe_domain("good.pol.test", module, mx, port=world.port, policy=checker, lookups=pool,
                         switches=PolicySwitches(dane=True, mta_sts=True, mta_sts_ca_file=world.ca_file))
    # No lookup thread: the MX resolution, the policy lookups and the chain's PKIX verdict are
    # answered from the caches on the probe's own, and nothing new is asked.
    assert (pool.kinds, resolver.queries_sent) == ([], sent)
    (address,) = again.policy.addresses
    assert (address.dane, address.pkix_valid) == ("match", True) == (first.policy.addresses[0].dane, True)
    assert again.policy.lookups.sts == first.policy.lookups.sts


@pytest.mark.parametrize(("domain", "mx_host", "tlsa", "mode", "tlsrpt"), [
    ("good.pol.test", "mx.good.pol.test", "secure", "none", "absent"),
    ("sts.pol.test", "mx1.sts.pol.test", "none", "enforce", "present"),
])
def test_policy_lookups_from_the_caches_alone_ask_nothing(world, parts, domain, mx_host, tlsa, mode, tlsrpt):
    _, checker, resolver = parts
    host = MxHost(preference=10, name=mx_host, unicode_name=mx_host, state="ok",
                  addresses=(Address("ipv4", "127.18.4.1"),))
    switches = PolicySwitches(dane=True, mta_sts=True, mta_sts_ca_file=world.ca_file)
    with pytest.raises(NotCached):
        checker.look_up(domain, [host], world.port, switches, time.monotonic() + 5, cached_only=True)
    assert (resolver.queries_sent, checker.policy_fetches) == (0, 0)
    asked = checker.look_up(domain, [host], world.port, switches, time.monotonic() + 5)
    sent = resolver.queries_sent
    cached = checker.look_up(domain, [host], world.port, switches, time.monotonic() + 5, cached_only=True)
    assert ([t.state for t in cached.tlsa], cached.sts.mode, cached.tlsrpt.state) == ([tlsa], mode, tlsrpt)
    assert ([t.records for t in cached.tlsa], cached.sts.policy) == ([t.records for t in asked.tlsa], asked.sts.policy)
    assert all(t.from_cache for t in cached.tlsa)
    assert (resolver.queries_sent, checker.policy_fetches) == (sent, 1 if mode == "enforce" else 0)


def test_pkix_verdicts_are_kept_an_hour_from_when_each_was_made(world):
    server = world.servers["mx.good"]
    chain = run_probe(server.target, server.host, server.port,
                      Module(tls="opportunistic", tls_ca_file=world.ca_file),
                      server_name="mx.good.pol.test", want_chain=True).tls.chain
    clock = [0.0]
    verdicts = PkixVerdicts(kept_seconds=3600, max_entries=2, clock=lambda: clock[0])
    assert known_pkix_problem(chain, "mx.good.pol.test", world.ca_file, verdicts) == (False, None)
    assert pkix_problem(chain, "mx.good.pol.test", world.ca_file, verdicts) is None
    clock[0] = 1800.0
    wrong = pkix_problem(chain, "elsewhere.pol.test", world.ca_file, verdicts)
    assert wrong == ("certificate_hostname_mismatch", "hostname mismatch")
    clock[0] = 3599.0
    assert known_pkix_problem(chain, "mx.good.pol.test", world.ca_file, verdicts) == (True, None)
    assert known_pkix_problem(chain, "elsewhere.pol.test", world.ca_file, verdicts) == (True, wrong)
    clock[0] = 3600.0  # the first verdict's hour is over, the second's is not
    assert known_pkix_problem(chain, "mx.good.pol.test", world.ca_file, verdicts) == (False, None)
    assert known_pkix_problem(chain, "elsewhere.pol.test", world.ca_file, verdicts) == (True, wrong)
    # No certificate is a verdict known without judging; a third chain drops the least recent.
    assert known_pkix_problem((), "mx.good.pol.test", world.ca_file, verdicts)[1][0] == "certificate_untrusted"
    pkix_problem(chain, "mx.good.pol.test", world.ca_file, verdicts)
    pkix_problem(chain, "third.pol.test", world.ca_file, verdicts)
    assert known_pkix_problem(chain, "elsewhere.pol.test", world.ca_file, verdicts) == (False, None)


def test_a_name_asked_in_another_case_or_without_its_final_dot_is_one_cache_entry(parts):
    _, checker, resolver = parts
    ask = checker.resolver.ask
    first = ask("Good.POL.test", "MX", deadline=time.monotonic() + 5, dnssec=True)
    again = ask("good.pol.test.", "MX", deadline=time.monotonic() + 5, dnssec=True)
    assert (first.state, again.from_cache, resolver.queries_sent) == ("ok", True, 1)
    with pytest.raises(ValueError, match="is not a DNS name"):
        ask("a" * 64 + ".pol.test", "MX", deadline=time.monotonic() + 5)


def test_a_domain_row_shows_each_new_policy_verdict_and_keeps_its_lines_while_they_stay(world, parts):
    """The store renders a domain's policy lines again only when what they show changes
    (exposition.policy.PolicyState): every row it keeps must equal a fresh rendering."""
    results = {name: probe(world, parts, f"{name}.pol.test") for name in ("good", "changed", "sts")}
    store = DomainStore()
    store.register("good.pol.test", "default", "good.pol.test", True)
    rows: list[tuple[bytes, ...]] = []
    for name in ("good", "good", "changed", "sts", "good"):
        # Another domain's result recorded as good.pol.test's: its policy changes all at once.
        result = results[name]
        assert store.record(dataclasses.replace(result, domain="good.pol.test", resolution=dataclasses.replace(
            result.resolution, domain="good.pol.test")))
        (row,) = store.domain_rows()
        latest = store.latest("good.pol.test", "default")
        assert row == render_domain("good.pol.test", "default", "good.pol.test", True, latest,
                                    len(rows) + 1, 0)
        rows.append(row)
    texts = [b"".join(domain_chunks([row])).decode() for row in rows]
    labels = 'domain="good.pol.test",module="default"'
    verdict = 'smtpmon_domain_dane_verdict{%s,mx="%s",address="%s",verdict="%s"} 1'
    assert verdict % (labels, "mx.good.pol.test", "127.18.4.1", "match") in texts[0]
    assert verdict % (labels, "mx.changed.pol.test", "127.18.4.2", "mismatch") in texts[2]
    assert f'smtpmon_domain_mta_sts_policy_mode{{{labels},mode="no_policy"}} 1' in texts[2]
    assert f'smtpmon_domain_mta_sts_policy_mode{{{labels},mode="enforce"}} 1' in texts[3]
    assert _policy_lines(texts[0]) == _policy_lines(texts[1]) == _policy_lines(texts[4])
    assert _policy_lines(texts[3]) != _policy_lines(texts[0]) != _policy_lines(texts[2])
    # The second probe with the same verdicts kept the lines it had, not rendered again.
    policy = len(DOMAIN_FAMILIES) - len(POLICY_FAMILIES)
    assert all(kept is again for kept, again in zip(rows[0][policy:], rows[1][policy:]))


def _policy_lines(text: str) -> list[str]:
    return [line for line in text.splitlines()
            if re.match(r"smtpmon_domain_(dane|tlsa|mta_sts|tlsrpt)_", line)]


def test_signed_answers_from_the_validating_resolver_are_read_without_dnspythons_parser(world, monkeypatch):
    """The MX with DNSSEC, the TLSA and the TXT answers a domain refreshes every TTL are read
    by smtpmon.dns.wire (dnspython's parser broken here), AD bit and records as dnspython
    reads them; a negative answer with NSEC3 proofs is still left to dnspython."""
    resolver = Resolver(ResolverSettings(nameservers=((world.unbound.address, world.unbound.port),)))
    asked = {(name, rdtype): resolver.query(dns.name.from_text(name), rdtype, time.monotonic() + 5, dnssec=True)
             for name, rdtype in (("good.pol.test", "MX"), (f"_{world.port}._tcp.mx.good.pol.test", "TLSA"),
                                  ("_mta-sts.sts.pol.test", "TXT"), ("_smtp._tls.sts.pol.test", "TXT"))}

    def broken(*args, **kwargs):
        raise AssertionError("dnspython's parser was called")

    monkeypatch.setattr(dns.message, "from_wire", broken)
    for (name, rdtype), expected in asked.items():
        again = resolver.query(dns.name.from_text(name), rdtype, time.monotonic() + 5, dnssec=True)
        assert (again.state, again.authenticated, again.records) == ("ok", True, expected.records)
        assert again.ttl_seconds <= expected.ttl_seconds
    tlsa = asked[(f"_{world.port}._tcp.mx.good.pol.test", "TLSA")]
    assert [rdata.to_text() for rdata in tlsa.records] == [world.tlsa["mx.good.pol.test"]]
    missing = resolver.query(dns.name.from_text("_mta-sts.good.pol.test"), "TXT", time.monotonic() + 5,
                             dnssec=True)
    assert missing.state == "bad_response" and "dnspython's parser was called" in missing.detail
