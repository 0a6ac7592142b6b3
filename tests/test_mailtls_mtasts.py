"""MTA-STS and TLS-RPT with real parts: knotd serves the test domains' records (the policy
host `mta-sts.<domain>` is an A record to 127.18.0.80), and a real nginx on 127.18.0.80:443
serves the policies with certificates from a test CA that the fetch trusts through its extra
CA file. No name is ever given to the system resolver: getaddrinfo is watched."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import trustme
from dns_server import Zone, require_knot, start_knot
from https_server import NginxServer, Site

from smtpmon.dns import DnsCache, NotCached, Resolver, ResolverSettings
from smtpmon.dns.cached import CachedResolver
from smtpmon.mailtls import tlsrpt
from smtpmon.mailtls.mtasts import MAX_POLICY_BYTES, POLICY_PATH, MtaSts, check_mx

KNOT = "127.18.0.55"
HTTPS = "127.18.0.80"


def policy(mode: str, *mx: str, max_age: int = 86400) -> bytes:
    return ("version: STSv1\n" f"mode: {mode}\n" + "".join(f"mx: {pattern}\n" for pattern in mx)
            + f"max_age: {max_age}\n").encode()


SITES = {  # domain -> (certificate name, files, redirects)
    "enforce": (None, {POLICY_PATH: policy("enforce", "mx1.enforce.sts.test", "*.enforce.sts.test")}, {}),
    "partial": (None, {POLICY_PATH: policy("enforce", "mx1.partial.sts.test")}, {}),
    "testing": (None, {POLICY_PATH: policy("testing", "mx1.testing.sts.test")}, {}),
    "missing": (None, {}, {}),
    "redirect": (None, {}, {POLICY_PATH: "https://mta-sts.enforce.sts.test" + POLICY_PATH}),
    "wrongname": ("mta-sts.elsewhere.sts.test", {POLICY_PATH: policy("enforce", "mx1.wrongname.sts.test")}, {}),
    "big": (None, {POLICY_PATH: policy("enforce", "mx1.big.sts.test") + b"# padding\n" * 7000}, {}),
    "maxage": (None, {POLICY_PATH: policy("enforce", "mx1.maxage.sts.test", max_age=31557601)}, {}),
    "changing": (None, {POLICY_PATH: policy("testing", "mx1.changing.sts.test")}, {}),
}


def zone_records(changing_id: str) -> str:
    lines = []
    for domain in [*SITES, "noaddress"]:
        policy_id = changing_id if domain == "changing" else "20261203"
        lines.append(f'_mta-sts.{domain} 1 TXT "v=STSv1; id={policy_id};"')
        lines.append(f"{domain} MX 10 mx1.{domain}\n{domain} MX 20 mx2.{domain}")
        if domain != "noaddress":
            lines.append(f"mta-sts.{domain} A {HTTPS}")
    lines.append("none MX 10 mx1.none")
    lines.append('_smtp._tls.enforce TXT "v=TLSRPTv1; rua=mailto:tls-reports@enforce.sts.test,'
                 'https://reports.enforce.sts.test/tlsrpt"')
    lines.append('_smtp._tls.partial TXT "v=TLSRPTv1; rua=ftp://reports.partial.sts.test/"')
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    require_knot()
    ca = trustme.CA()
    ca_file = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    nginx = NginxServer(tmp_path_factory.mktemp("nginx"), HTTPS)
    for domain, (cert_name, files, redirects) in SITES.items():
        host = f"mta-sts.{domain}.sts.test"
        nginx.add(Site(host, ca.issue_cert(cert_name or host), files, redirects))
    nginx.add(Site("mta-sts.untrusted.sts.test", trustme.CA().issue_cert("mta-sts.untrusted.sts.test"),
                   {POLICY_PATH: policy("enforce", "mx1.untrusted.sts.test")}))
    knot = None
    nginx.start()
    try:
        records = zone_records("1") + f'_mta-sts.untrusted 1 TXT "v=STSv1; id=1"\nmta-sts.untrusted A {HTTPS}\n'
        knot = start_knot([Zone("sts.test", records)], workdir=tmp_path_factory.mktemp("knot"), address=KNOT)
        yield {"nameserver": ResolverSettings(nameservers=((knot.address, knot.port),), timeout_seconds=2.0), "ca_file": str(ca_file),
               "knot": knot, "nginx": nginx, "untrusted_records": records[len(zone_records("1")):]}
    finally:
        if knot is not None:
            knot.stop()
        nginx.stop()


@pytest.fixture(autouse=True)
def _watched(no_system_resolver):
    """No name of these tests reaches the system resolver (conftest.no_system_resolver)."""


def resolver(world, cache: DnsCache | None = None) -> CachedResolver:
    return CachedResolver(Resolver(world["nameserver"]), cache if cache is not None else DnsCache())


def checker(world, cache: DnsCache | None = None, **kwargs) -> MtaSts:
    return MtaSts(resolver(world, cache), extra_ca_file=world["ca_file"], **kwargs)


def check(world, domain: str, **kwargs):
    return checker(world, **kwargs).check(f"{domain}.sts.test", deadline=time.monotonic() + 10)


def test_an_enforced_policy_covering_every_mx(world):
    result = check(world, "enforce")
    assert (result.record.state, result.record.id, result.fetch.error, result.mode) == ("present", "20261203", None, "enforce")
    assert result.fetch.address == HTTPS and result.fetch.http_status == 200
    assert result.policy.mx == ("mx1.enforce.sts.test", "*.enforce.sts.test")
    verdicts = [check_mx(result, f"mx{n}.enforce.sts.test", starttls_offered=True, certificate_valid=True).verdict
                for n in (1, 2)]
    assert verdicts == ["ok", "ok"]


def test_an_enforced_policy_missing_one_mx_is_critical_for_it(world):
    result = check(world, "partial")
    first, second = (check_mx(result, f"mx{n}.partial.sts.test", starttls_offered=True, certificate_valid=True)
                     for n in (1, 2))
    assert (first.verdict, second.verdict, second.severity) == ("ok", "mx_not_listed", "critical")


def test_testing_mode_reports_the_same_failure_as_a_warning(world):
    result = check(world, "testing")
    uncovered = check_mx(result, "mx2.testing.sts.test", starttls_offered=True, certificate_valid=True)
    assert (result.mode, uncovered.verdict, uncovered.severity) == ("testing", "mx_not_listed", "warning")


def test_under_a_policy_a_certificate_that_fails_pkix_or_no_starttls_fails_the_mx(world):
    result = check(world, "enforce")
    assert check_mx(result, "mx1.enforce.sts.test", starttls_offered=True, certificate_valid=False).verdict \
        == "certificate_invalid"
    assert check_mx(result, "mx1.enforce.sts.test", starttls_offered=False, certificate_valid=False).verdict \
        == "starttls_missing"


@pytest.mark.parametrize("domain, error, status", [
    ("missing", "http_status", 404),
    ("redirect", "redirect", 301),
    ("wrongname", "certificate_name_mismatch", None),
    ("untrusted", "certificate_untrusted", None),
    ("big", "too_large", 200),
    ("maxage", "max_age_too_large", 200),
    ("noaddress", "address_lookup_failed", None),
])
def test_each_fetch_failure_is_named_and_leaves_no_policy(world, domain, error, status):
    result = check(world, domain)
    assert (result.record.state, result.fetch.error, result.fetch.http_status) == ("present", error, status)
    assert (result.policy, result.fetch_failing, result.mode) == (None, True, "none")
    assert check_mx(result, f"mx1.{domain}.sts.test", starttls_offered=False, certificate_valid=False).verdict \
        == "not_applicable"


def test_the_redirect_is_not_followed(world):
    before = world["nginx"].access_log().count(POLICY_PATH)
    check(world, "redirect")
    assert world["nginx"].access_log().count(POLICY_PATH) == before + 1


def test_the_oversized_policy_is_read_no_further_than_the_limit(world):
    result = check(world, "big")
    assert str(MAX_POLICY_BYTES) in result.fetch.detail


def test_a_failed_fetch_is_retried_only_after_its_retry_time(world):
    clock = [100.0]
    sts = checker(world, retry_failed_after=300.0, clock=lambda: clock[0])
    before = world["nginx"].access_log().count(POLICY_PATH)
    first = sts.check("missing.sts.test", deadline=time.monotonic() + 10)
    clock[0] += 299
    again = sts.check("missing.sts.test", deadline=time.monotonic() + 10)
    assert (first.fetched, again.fetched, again.fetch_failing, again.fetch.http_status) == (True, False, True, 404)
    assert world["nginx"].access_log().count(POLICY_PATH) == before + 1
    clock[0] += 2
    assert sts.check("missing.sts.test", deadline=time.monotonic() + 10).fetched is True
    assert world["nginx"].access_log().count(POLICY_PATH) == before + 2


def test_no_record_means_no_policy(world):
    result = check(world, "none")
    assert (result.record.state, result.fetch, result.policy) == ("absent", None, None)


def test_the_policy_is_cached_for_max_age_and_refetched_when_the_id_changes(world):
    clock = [1000.0]
    sts = checker(world, DnsCache(min_ttl_seconds=1), wall_clock=lambda: clock[0])  # the TXT's TTL is 1 s
    domain = "changing.sts.test"
    first = sts.check(domain, deadline=time.monotonic() + 10)
    assert (first.fetch.error, first.policy.id, first.policy_changed_at) == (None, "1", 1000.0)
    clock[0] = 2000.0
    time.sleep(1.1)
    cached = sts.check(domain, deadline=time.monotonic() + 10)
    assert (cached.fetched, cached.policy.id, cached.policy_changed_at, sts.fetches) == (False, "1", 1000.0, 1)
    world["knot"].set_zone(Zone("sts.test", zone_records("2") + world["untrusted_records"]))
    time.sleep(1.1)
    clock[0] = 3000.0
    changed = sts.check(domain, deadline=time.monotonic() + 10)
    assert (changed.fetch.error, changed.policy.id, changed.policy_changed_at, sts.fetches) == (None, "2", 3000.0, 2)


def test_a_fetch_is_bounded_by_its_timeout(world):
    # A listener that accepts and never speaks TLS: the handshake waits until the deadline.
    silent = socket.create_server(("127.18.0.81", 443))
    try:
        records = zone_records("1") + world["untrusted_records"] + \
            '_mta-sts.silent 1 TXT "v=STSv1; id=1"\nmta-sts.silent A 127.18.0.81\n'
        world["knot"].set_zone(Zone("sts.test", records))
        started = time.monotonic()
        result = check(world, "silent", fetch_timeout=1.0)
        elapsed = time.monotonic() - started
    finally:
        silent.close()
    assert (result.fetch.error, result.policy) == ("timeout", None)
    assert elapsed < 2.5


def test_from_the_caches_alone_nothing_is_asked_fetched_or_waited_for(world):
    asking = resolver(world)
    sts = MtaSts(asking, extra_ca_file=world["ca_file"])
    with pytest.raises(NotCached):  # nothing cached yet
        sts.check("enforce.sts.test", deadline=time.monotonic() + 10, cached_only=True)
    assert (asking.resolver.queries_sent, sts.fetches) == (0, 0)
    first = sts.check("enforce.sts.test", deadline=time.monotonic() + 10)
    sent = asking.resolver.queries_sent
    cached = sts.check("enforce.sts.test", deadline=time.monotonic() + 10, cached_only=True)
    assert (cached.fetched, cached.mode, cached.policy) == (False, "enforce", first.policy)
    assert (asking.resolver.queries_sent, sts.fetches) == (sent, 1)
    # While another thread fetches a domain's policy (a host that never answers), asking for
    # that domain from the caches does not wait for it.
    silent = socket.create_server(("127.18.0.82", 443))
    try:
        world["knot"].set_zone(Zone("sts.test", zone_records("1") + world["untrusted_records"]
                                    + '_mta-sts.hung 1 TXT "v=STSv1; id=1"\nmta-sts.hung A 127.18.0.82\n'))
        slow = MtaSts(asking, extra_ca_file=world["ca_file"], fetch_timeout=3.0)
        assert slow.record("hung.sts.test", deadline=time.monotonic() + 5).state == "present"  # now cached
        fetching = threading.Thread(target=slow.check, args=("hung.sts.test",),
                                    kwargs={"deadline": time.monotonic() + 10})
        fetching.start()
        time.sleep(0.3)
        started = time.monotonic()
        with pytest.raises(NotCached):
            slow.check("hung.sts.test", deadline=time.monotonic() + 10, cached_only=True)
        assert time.monotonic() - started < 0.5 and fetching.is_alive()
        fetching.join()
    finally:
        silent.close()


def test_tls_rpt_record_and_its_report_addresses(world):
    found = tlsrpt.lookup(resolver(world), "enforce.sts.test", deadline=time.monotonic() + 5)
    assert (found.state, [(uri.scheme, uri.target) for uri in found.rua]) == (
        "present", [("mailto", "tls-reports@enforce.sts.test"), ("https", "https://reports.enforce.sts.test/tlsrpt")])
    assert tlsrpt.lookup(resolver(world), "partial.sts.test", deadline=time.monotonic() + 5).state \
        == "invalid"
    assert tlsrpt.lookup(resolver(world), "testing.sts.test", deadline=time.monotonic() + 5).state \
        == "absent"
