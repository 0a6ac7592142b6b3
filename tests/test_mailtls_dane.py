"""DANE end to end with real parts: knotd serves a DNSSEC-signed zone (dane.test), a signed
zone whose trust anchor is wrong (bogus.test) and an unsigned one (insecure.test); a real
validating unbound on loopback trusts the first through the DS that `keymgr ds` prints; SMTP
servers on 127.18.3.x present the certificates the TLSA records describe (or not)."""

from __future__ import annotations

import hashlib
import time

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from dns_server import Zone, require_knot, servfail_server, silent_server, start_knot
from mailtls_sender import starttls_chain
from smtpservers import AiosmtpdServer, server_tls_context
from validating_resolver import UnboundResolver

from smtpmon.dns import DnsCache, Resolver, ResolverSettings
from smtpmon.dns.cached import CachedResolver
from smtpmon.mailtls.dane import check_address, lookup_tlsa, mx_secure

KNOT = "127.18.0.53"
UNBOUND = "127.18.0.54"


def spki_sha256(cert: trustme.LeafCert) -> str:
    key = x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes()).public_key()
    return hashlib.sha256(key.public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)).hexdigest()


def cert_sha256(pem: bytes) -> str:
    return hashlib.sha256(x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)).hexdigest()


def corrupted(ds: str) -> str:
    """The same DS with its digest's last hex digit changed: a wrong trust anchor."""
    return ds[:-1] + ("0" if ds[-1] != "0" else "1")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    require_knot()
    ca = trustme.CA()
    intermediate = ca.create_child_ca()
    certs = {
        "mx-ee": ca.issue_cert("mx-ee.dane.test"),
        "mx-changed": ca.issue_cert("mx-changed.dane.test"),  # the key the server has now
        "mx-changed-old": ca.issue_cert("mx-changed.dane.test"),  # the key the record names
        "mx-rollover": ca.issue_cert("mx-rollover.dane.test"),
        "mx-rollover-next": ca.issue_cert("mx-rollover.dane.test"),
        "mx-ta": intermediate.issue_cert("mx-ta.dane.test"),
        "mx-pkix": ca.issue_cert("mx-pkix.dane.test"),
        "mx-plain": ca.issue_cert("mx-plain.dane.test"),
        "insecure": ca.issue_cert("mx.insecure.test"),
        "unrelated": ca.issue_cert("mx.insecure.test"),
    }
    servers = {}
    for number, (name, served) in enumerate([("mx-ee", "mx-ee"), ("mx-changed", "mx-changed"),
                                             ("mx-rollover", "mx-rollover"), ("mx-ta", "mx-ta"),
                                             ("mx-pkix", "mx-pkix"), ("mx-plain", None),
                                             ("insecure", "insecure")], 1):
        context = server_tls_context(certs[served]) if served else None
        servers[name] = AiosmtpdServer(starttls_context=context, host=f"127.18.3.{number}").start()
    knot = unbound = None
    try:
        def tlsa(name: str, *records: str) -> str:
            return "".join(f"_{servers[name].port}._tcp.{name} TLSA {record}\n" for record in records)

        dane_records = (
            "@ MX 10 mx-ee\n@ MX 20 mx-changed\n@ MX 30 mx-rollover\n@ MX 40 mx-ta\n"
            "@ MX 50 mx-pkix\n@ MX 60 mx-plain\n@ MX 70 mx.insecure.test.\n@ MX 80 mx-none\n"
            + "".join(f"{name} A {servers[name].host}\n" for name in servers if name.startswith("mx-"))
            + "mx-none A 127.18.3.9\n"
            + tlsa("mx-ee", f"3 1 1 {spki_sha256(certs['mx-ee'])}")
            + tlsa("mx-changed", f"3 1 1 {spki_sha256(certs['mx-changed-old'])}")
            + tlsa("mx-rollover", f"3 1 1 {spki_sha256(certs['mx-rollover'])}",
                   f"3 1 1 {spki_sha256(certs['mx-rollover-next'])}")
            + tlsa("mx-ta", f"2 0 1 {cert_sha256(intermediate.cert_pem.bytes())}")
            + tlsa("mx-pkix", f"1 1 1 {spki_sha256(certs['mx-pkix'])}", f"0 0 1 {cert_sha256(ca.cert_pem.bytes())}")
            + tlsa("mx-plain", f"3 1 1 {spki_sha256(certs['mx-plain'])}")
        )
        insecure_port = servers["insecure"].port
        knot = start_knot([
            Zone("dane.test", dane_records, dnssec_signing=True),
            Zone("bogus.test", f"@ MX 10 mx\nmx A 127.18.3.8\n_25._tcp.mx TLSA 3 1 1 {'ab' * 32}\n",
                 dnssec_signing=True),
            Zone("insecure.test", f"@ MX 10 mx\nmx A {servers['insecure'].host}\n"
                 f"_{insecure_port}._tcp.mx TLSA 3 1 1 {spki_sha256(certs['unrelated'])}\n"),
        ], workdir=tmp_path_factory.mktemp("knot"), address=KNOT)
        where = f"{knot.address}@{knot.port}"
        unbound = UnboundResolver(
            tmp_path_factory.mktemp("unbound"), UNBOUND,
            stubs={zone: where for zone in ("dane.test.", "bogus.test.", "insecure.test.")},
            trust_anchors=knot.ds("dane.test") + [corrupted(ds) for ds in knot.ds("bogus.test")],
        ).start()
        yield {"resolver": validating(unbound.address, unbound.port, timeout=5.0),
               "servers": servers, "certs": certs, "unbound": unbound}
    finally:
        if unbound is not None:
            unbound.stop()
        if knot is not None:
            knot.stop()
        for server in servers.values():
            server.stop()


def validating(address: str, port: int, timeout: float, cache: DnsCache | None = None) -> CachedResolver:
    """The validating resolver alone (no fallback), through a cache of its own."""
    settings = ResolverSettings(nameservers=((address, port),), timeout_seconds=timeout)
    return CachedResolver(Resolver(settings), cache if cache is not None else DnsCache())


def fresh(world) -> CachedResolver:
    """The test's validating resolver with an empty cache."""
    return CachedResolver(world["resolver"].resolver, DnsCache())


def deadline(seconds: float = 10.0) -> float:
    return time.monotonic() + seconds


def verdict_of(world, host: str, server_name: str):
    """What a DANE-validating sender decides for one MX address, step by step."""
    resolver = fresh(world)
    domain = host.split(".", 1)[1]
    mx = mx_secure(resolver, domain, deadline=deadline())
    server = world["servers"][server_name]
    lookup = lookup_tlsa(resolver, host, server.port, mx_is_secure=mx.authenticated, deadline=deadline())
    offered, chain = starttls_chain(server.host, server.port, host) if lookup.dane_applies else (True, ())
    return lookup, check_address(lookup, starttls_offered=offered, chain=chain)


def test_dane_ee_3_1_1_matches_the_presented_key(world):
    lookup, check = verdict_of(world, "mx-ee.dane.test", "mx-ee")
    assert (lookup.state, check.verdict, check.unmatched) == ("secure", "match", ())
    assert str(check.matched) == f"3 1 1 {spki_sha256(world['certs']['mx-ee'])}"


def test_a_key_change_without_a_new_record_is_a_mismatch(world):
    lookup, check = verdict_of(world, "mx-changed.dane.test", "mx-changed")
    assert (lookup.state, check.verdict) == ("secure", "mismatch")
    assert [str(record) for record in check.unmatched] == [f"3 1 1 {spki_sha256(world['certs']['mx-changed-old'])}"]


def test_two_records_during_a_rollover_one_matches_and_the_next_is_ready(world):
    _, check = verdict_of(world, "mx-rollover.dane.test", "mx-rollover")
    assert (check.verdict, check.rollover_ready) == ("match", True)
    assert str(check.matched).endswith(spki_sha256(world["certs"]["mx-rollover"]))
    assert [str(record) for record in check.unmatched] == [f"3 1 1 {spki_sha256(world['certs']['mx-rollover-next'])}"]


def test_dane_ta_2_0_1_matches_the_intermediate_the_server_sends(world):
    _, check = verdict_of(world, "mx-ta.dane.test", "mx-ta")
    assert (check.verdict, check.matched_depth, check.matched.usage) == ("match", 1, 2)


def test_pkix_only_records_are_unusable(world):
    lookup, check = verdict_of(world, "mx-pkix.dane.test", "mx-pkix")
    assert (lookup.state, lookup.dane_applies, check.verdict) == ("secure", False, "unusable")
    assert len(check.ignored) == 2


def test_secure_tlsa_without_starttls_is_a_dane_failure(world):
    _, check = verdict_of(world, "mx-plain.dane.test", "mx-plain")
    assert check.verdict == "starttls_missing"


def test_no_tlsa_records_means_dane_does_not_apply(world):
    lookup = lookup_tlsa(fresh(world), "mx-none.dane.test", 25, mx_is_secure=True,
                         deadline=deadline())
    check = check_address(lookup, starttls_offered=False, chain=None)
    assert (lookup.state, check.verdict) == ("none", "not_applicable")


def test_a_bogus_zone_fails_validation_and_its_data_shows_with_cd(world):
    resolver = fresh(world)
    mx = mx_secure(resolver, "bogus.test", deadline=deadline())
    assert (mx.state, mx.rcode) == ("servfail", "SERVFAIL")
    lookup = lookup_tlsa(resolver, "mx.bogus.test", 25, mx_is_secure=True, deadline=deadline())
    check = check_address(lookup, starttls_offered=True, chain=None)
    assert (lookup.state, check.verdict) == ("bogus", "bogus")
    assert [str(record) for record in lookup.records] == [f"3 1 1 {'ab' * 32}"]


def test_tlsa_in_an_unsigned_zone_is_ignored(world):
    port = world["servers"]["insecure"].port
    lookup = lookup_tlsa(fresh(world), "mx.insecure.test", port, mx_is_secure=True,
                         deadline=deadline())
    check = check_address(lookup, starttls_offered=True, chain=None)
    assert (lookup.state, len(lookup.records), check.verdict) == ("insecure", 1, "not_applicable")


def test_an_insecure_mx_answer_makes_dane_not_applicable(world):
    lookup, check = verdict_of(world, "mx.insecure.test", "insecure")
    assert (lookup.state, check.verdict) == ("mx_insecure", "not_applicable")


def test_answers_are_cached_for_their_ttl(world):
    resolver = fresh(world)
    first = lookup_tlsa(resolver, "mx-ee.dane.test", world["servers"]["mx-ee"].port,
                        mx_is_secure=True, deadline=deadline())
    sent = resolver.resolver.queries_sent
    again = lookup_tlsa(resolver, "mx-ee.dane.test", world["servers"]["mx-ee"].port,
                        mx_is_secure=True, deadline=deadline())
    assert (first.from_cache, again.from_cache, resolver.resolver.queries_sent) == (False, True, sent)
    assert again.state == "secure" and 0 < again.ttl <= 300


def test_the_resolver_has_nowhere_to_ask_outside_the_test_zones(world):
    started = time.monotonic()
    answer = fresh(world).ask("outside-the-test-zones.example", "A", deadline=deadline(), dnssec=True)
    assert answer.state == "servfail"
    assert time.monotonic() - started < 9


@pytest.mark.parametrize("make, detail", [(servfail_server, "SERVFAIL, also with CD"),
                                          (silent_server, "did not answer")])
def test_a_resolver_that_fails_is_a_lookup_failure_not_bogus(make, detail):
    server = make().start()
    try:
        resolver = validating(server.address, server.port, timeout=0.5)
        lookup = lookup_tlsa(resolver, "mx-ee.dane.test", 25, mx_is_secure=True, deadline=deadline(2))
    finally:
        server.stop()
    check = check_address(lookup, starttls_offered=True, chain=None)
    assert (lookup.state, check.verdict) == ("lookup_failed", "lookup_failed")
    assert detail in lookup.detail
