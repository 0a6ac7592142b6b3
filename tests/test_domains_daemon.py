"""Mail domains end to end: `smtpmon run` with a `domains:` config whose `dns.nameservers`
names the loopback knotd of tests/mail_domains.py, scraped over HTTP; and `/probe?domain=`."""

from __future__ import annotations

import subprocess
import threading
import time

import pytest
from daemon_process import start_daemon
from dns_server import silent_server
from helpers import sample_value, samples
from mail_domains import fqdn, mail_world
from prometheus_tools import require_tool
from smtpservers import Sleep

from smtpmon.config.load import parse_config
from smtpmon.exposition.domains import DomainStore
from smtpmon.exposition.store import ResultStore
from smtpmon.runtime.scheduler import Scheduler


@pytest.fixture(scope="module")
def world(ca, ca_file):
    with mail_world(ca, ca_file) as world:
        yield world


def config(world, extra: str = "") -> str:
    return f"""\
global: {{interval: 2s, timeout: 1500ms, max_concurrency: 2}}
modules:
  mx: {{tls: starttls, tls_ca_file: "{world.ca_file}"}}
  plain: {{tls: none}}
  submit: {{tls: starttls, auth: {{mechanism: PLAIN, username: monitor, password_env: SMTPMON_TEST_UNSET}}}}
domains:
  - {{domain: {fqdn("good")}, module: mx, port: {world.port}}}
  - {{domain: {fqdn("half")}, module: mx, port: {world.port}}}
  - {{domain: {fqdn("nullmx")}, module: mx, port: {world.port}, expect_mail: false}}
  - {{domain: {fqdn("dead")}, module: mx, port: {world.port}}}
  - {{domain: {fqdn("v6")}, module: plain, port: {world.other_port}}}
dns:
  nameservers: ["{world.nameserver}"]
probe_allow_domains: ["*.domains.test"]
{extra}"""


def probed_domains(names: list[str], times: int = 1):
    return lambda text: all(
        (sample_value(text, "smtpmon_domain_probes_total", domain=fqdn(name)) or 0) >= times
        for name in names)


@pytest.fixture(scope="module")
def daemon(world, tmp_path_factory):
    running = start_daemon(tmp_path_factory.mktemp("domains"), config(world))
    try:
        running.wait_for(probed_domains(["good", "half", "nullmx", "dead", "v6"], times=2),
                         timeout=20)
        yield running
    finally:
        running.stop()


def test_every_mx_address_has_the_probe_series_with_domain_mx_and_address(daemon, world):
    text = daemon.metrics()
    good = fqdn("good")
    for mx, address in (("mx1.good.domains.test", "127.0.57.1"), ("mx1.good.domains.test", "::1"),
                        ("mx2.good.domains.test", "127.0.57.2")):
        labels = dict(domain=good, mx=mx, address=address, module="mx")
        assert sample_value(text, "smtpmon_probe_success", **labels) == 1
        assert sample_value(text, "smtpmon_tls_certificate_verified", **labels) == 1
        assert sample_value(text, "smtpmon_replies_total", stage="banner", code="220", **labels) >= 2
        assert sample_value(text, "smtpmon_probe_stage_duration_seconds", stage="starttls",
                            **labels) > 0
    target = next(labels["target"] for name, labels, _ in samples(text)
                  if name == "smtpmon_probe_success" and labels.get("address") == "::1"
                  and labels["domain"] == good)
    assert target == f"[::1]:{world.port}"


def test_domain_gauges_say_what_a_mail_admin_asks(daemon):
    text = daemon.metrics()
    value = lambda name, domain, **labels: sample_value(text, name, domain=fqdn(domain), **labels)  # noqa: E731
    assert value("smtpmon_domain_success", "good") == 1
    assert value("smtpmon_domain_deliverable", "good") == 1
    assert value("smtpmon_domain_mx_hosts", "good") == 2
    assert value("smtpmon_domain_addresses", "good", family="ipv4") == 2
    assert value("smtpmon_domain_addresses", "good", family="ipv6") == 1
    assert value("smtpmon_domain_addresses_accepting", "good", family="ipv6") == 1
    assert value("smtpmon_domain_most_preferred_accepting", "good") == 1
    assert value("smtpmon_domain_dns_state", "good", state="ok") == 1
    assert value("smtpmon_domain_dns_state", "good", state="nxdomain") == 0
    assert value("smtpmon_domain_mx_info", "good", mx="mx2.good.domains.test") == 1
    # the first MX is broken, the second takes the mail
    assert value("smtpmon_domain_deliverable", "half") == 1
    assert value("smtpmon_domain_most_preferred_accepting", "half") == 0
    assert value("smtpmon_domain_verdict", "half", verdict="degraded") == 1
    assert value("smtpmon_domain_success", "half") == 0
    # a null MX where none is expected is fine
    assert value("smtpmon_domain_dns_state", "nullmx", state="null_mx") == 1
    assert value("smtpmon_domain_success", "nullmx") == 1
    assert value("smtpmon_domain_deliverable", "nullmx") == 0
    assert value("smtpmon_domain_expect_mail", "nullmx") == 0
    assert value("smtpmon_domain_verdict", "dead", verdict="undeliverable") == 1
    # IPv6 broken while IPv4 works
    assert value("smtpmon_domain_addresses_accepting", "v6", family="ipv4") == 1
    assert value("smtpmon_domain_addresses_accepting", "v6", family="ipv6") == 0
    # the exporter's own: DNS queries bounded by the cache, not one per probe
    assert sample_value(text, "smtpmon_domains") == 5
    queries = sample_value(text, "smtpmon_dns_queries_total")
    hits = sample_value(text, "smtpmon_dns_cache_hits_total")
    # (MTA-STS is on by default: each domain's _mta-sts and _smtp._tls TXT are asked too)
    assert 0 < queries <= 30 and hits > 0


def test_the_page_passes_promtool(daemon):
    done = subprocess.run([require_tool("promtool"), "check", "metrics"],
                          input=daemon.metrics().encode(), capture_output=True, timeout=30)
    assert done.returncode == 0, (done.stdout + done.stderr).decode()


def test_probe_domain_answers_the_same_series_for_the_whole_domain(daemon):
    status, text = daemon.get(f"/probe?domain={fqdn('good')}&module=mx")
    assert status == 200, text
    assert sample_value(text, "smtpmon_probe_success", domain=fqdn("good"), address="::1") == 1
    assert sample_value(text, "smtpmon_domain_deliverable", domain=fqdn("good")) == 1
    assert sample_value(text, "smtpmon_domain_addresses", domain=fqdn("good"), family="ipv4") == 2
    status, again = daemon.get(f"/probe?domain={fqdn('good')}&module=mx")
    assert sample_value(again, "smtpmon_domain_probes_total", domain=fqdn("good")) == 2


@pytest.mark.parametrize("query, status, words", [
    ("domain=example.org&module=mx", 403, "probe_allow_domains"),
    # AUTH: a domain probe_allow_domains allows, configured with another module, gets no password
    ("domain=good.domains.test&module=submit", 403,
     "module submit sends an AUTH password, so /probe uses it only for the domains configured with it"),
    ("domain=exa%20mple.org&module=mx", 400, "invalid domain"),
    ("domain=good.domains.test&module=nope", 400, "unknown module"),
    ("domain=good.domains.test&target=127.0.0.1:25&module=mx", 400, "not both"),
])
def test_probe_domain_refuses_bad_requests(daemon, query, status, words):
    answer_status, text = daemon.get(f"/probe?{query}")
    assert answer_status == status and words in text, text


def test_probe_domain_debug_shows_the_mx_table_and_transcripts(daemon):
    status, text = daemon.get(f"/probe?domain={fqdn('half')}&module=mx&debug=true")
    assert status == 200
    assert "mx1.half.domains.test" in text and "connect_refused" in text
    assert "Metrics that would have been returned:" in text


def test_the_metrics_reference_lists_the_domain_families_with_their_labels(daemon):
    """docs/metrics.md's "Per mail domain" table is DOMAIN_FAMILIES, in order, and the labels
    the daemon's page shows; every address series is a documented per-target family."""
    from test_docs import (
        METRICS_DOC,
        backticked,
        documented_families,
        exported_families,
        tables_by_heading,
    )

    from smtpmon.exposition.domains import DOMAIN_FAMILIES

    rows = tables_by_heading(METRICS_DOC.read_text(encoding="utf-8"))["Per mail domain"]
    documented = {backticked(row["metric"])[0]: (row["type"], frozenset(
        {"domain", "module", *backticked(row["extra labels"])})) for row in rows}
    assert [(name, kind) for name, (kind, _) in documented.items()] == [
        (family.name, family.type) for family in DOMAIN_FAMILIES]
    per_target, _ = documented_families()
    for name, family in exported_families(daemon.metrics().encode()).items():
        if name in documented:
            assert (family.type, family.labels) == documented[name], name
        elif name in per_target:
            assert family.labels - per_target[name].labels <= {"domain", "mx", "address"}, name


class CountingState:
    """The scheduler's State, counting the SMTP sessions in flight at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.in_flight = self.most = self.sessions = 0
        self.lags: list[float] = []

    def probe_started(self) -> None:
        with self.lock:
            self.in_flight += 1
            self.sessions += 1
            self.most = max(self.most, self.in_flight)

    def probe_finished(self) -> None:
        with self.lock:
            self.in_flight -= 1

    def observe_schedule_lag(self, seconds: float) -> None:
        self.lags.append(seconds)


def test_max_concurrency_bounds_every_session_of_every_domain(world):
    """Three domains of 3 + 2 + 1 addresses, max_concurrency 2: never more than 2 sessions at
    once, and every domain still gets all its results; a reload that drops a domain drops its
    series."""
    text = config(world).replace("interval: 2s", "interval: 30s")
    parsed = parse_config(text, "test.yml")
    store, domains, state = ResultStore(), DomainStore(), CountingState()
    scheduler = Scheduler(store, state, domain_store=domains)
    scheduler.apply(parsed)
    scheduler.start()
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            latest = [domains.latest(fqdn(name), module) for name, module in
                      (("good", "mx"), ("half", "mx"), ("dead", "mx"), ("v6", "plain"))]
            if all(latest):
                break
            time.sleep(0.05)
        assert all(latest), "not every domain was probed"
        assert [len(result.probes) for result in latest] == [3, 2, 1, 2]
        assert state.most == 2 and state.sessions == 8
        # a reload without `half` drops its series
        fewer = text.replace(f"  - {{domain: {fqdn('half')}, module: mx, port: {world.port}}}\n", "")
        scheduler.apply(parse_config(fewer, "test.yml"))
        assert domains.latest(fqdn("half"), "mx") is None
        assert domains.latest(fqdn("good"), "mx") is not None  # unchanged: kept
    finally:
        assert scheduler.stop(5)


def test_probe_domain_with_a_silent_resolver_answers_within_the_scrape_timeout(
        world, tmp_path, bad_resolvers):
    silent = bad_resolvers(silent_server())
    text = f"""\
modules:
  mx: {{tls: none, timeout: 10s}}
dns:
  nameservers: ["{silent.address}:{silent.port}"]
  timeout: 500ms
probe_allow_domains: ["*.domains.test"]
"""
    running = start_daemon(tmp_path, text)
    try:
        started = time.monotonic()
        status, body = running.request("GET", f"/probe?domain={fqdn('good')}&module=mx",
                                       headers={"X-Prometheus-Scrape-Timeout-Seconds": "3"})
        took = time.monotonic() - started
    finally:
        running.stop()
    assert status == 200, body
    assert took < 3
    assert sample_value(body, "smtpmon_domain_dns_state", state="timeout") == 1
    assert sample_value(body, "smtpmon_domain_deliverable") == 0
    assert sample_value(body, "smtpmon_domain_success") == 0


def test_an_address_dns_no_longer_names_loses_its_series(world, knot):
    """The store keeps an address's counters while DNS names it; once the MX is gone from the
    zone, its series go with it, and the page still passes promtool."""
    from dns_server import Zone

    from smtpmon.dns import DnsCache, MxResolver, ResolverSettings
    from smtpmon.domains import probe_domain
    from smtpmon.exposition.domains import domain_chunks
    from smtpmon.exposition.metrics import render_probe_rows
    from smtpmon.smtp.module import Module

    both = "@ MX 10 mx1\n@ MX 20 mx2\nmx1 A 127.0.57.1\nmx2 A 127.0.57.2\n"
    server = knot([Zone("gone.test", both, ttl=1, negative_ttl=1)])
    resolver = MxResolver(ResolverSettings(nameservers=(server.nameserver,)),
                          DnsCache(min_ttl_seconds=0, max_ttl_seconds=0, grace_seconds=0))
    store, module = DomainStore(), Module(tls="none", timeout_seconds=5)
    store.register("gone.test", "plain", "gone.test", True)

    def page() -> str:
        rows = store.address_rows()
        return render_probe_rows(rows, domain_chunks(store.domain_rows())).decode()

    store.record(probe_domain("gone.test", module, resolver, port=world.port, module_name="plain"))
    first = page()
    assert sample_value(first, "smtpmon_probes_total", mx="mx2.gone.test") == 1
    assert sample_value(first, "smtpmon_probes_total", mx="mx1.gone.test") == 1
    server.set_zone(Zone("gone.test", "@ MX 10 mx1\nmx1 A 127.0.57.1\n", ttl=1, negative_ttl=1))
    store.record(probe_domain("gone.test", module, resolver, port=world.port, module_name="plain"))
    second = page()
    assert sample_value(second, "smtpmon_probes_total", mx="mx1.gone.test") == 2
    assert sample_value(second, "smtpmon_probes_total", mx="mx2.gone.test") is None
    assert sample_value(second, "smtpmon_domain_mx_hosts", domain="gone.test") == 1
    done = subprocess.run([require_tool("promtool"), "check", "metrics"], input=second.encode(),
                          capture_output=True, timeout=30)
    assert done.returncode == 0, (done.stdout + done.stderr).decode()


def test_a_domain_run_that_outlasts_its_interval_is_skipped_and_counted(world, tmp_path,
                                                                        scripted_server):
    """One probe slot (max_concurrency 1), held nearly all the time by a host target whose
    server accepts and never speaks (a real tarpit on loopback): the domain's sessions wait
    for the slot until the domain's deadline and its grace (0.5 s + 1 s), past its 1 s
    interval, so the runs in between are skipped, and counted on /metrics as a target's are."""
    tarpit = scripted_server([Sleep(30)])
    text = f"""\
global: {{max_concurrency: 1}}
modules:
  mx: {{tls: starttls, tls_ca_file: "{world.ca_file}"}}
  plain: {{tls: none}}
targets:
  - {{address: "{tarpit.target}", module: plain, interval: 2s, timeout: 1900ms}}
domains:
  - {{domain: {fqdn("good")}, module: mx, port: {world.port}, interval: 1s, timeout: 500ms}}
  - {{domain: {fqdn("dead")}, module: mx, port: {world.port}, interval: 60s, timeout: 5s}}
dns:
  nameservers: ["{world.nameserver}"]
"""
    running = start_daemon(tmp_path, text)
    try:
        skipped = lambda page: sample_value(  # noqa: E731
            page, "smtpmon_domain_probe_skipped_total", domain=fqdn("good")) or 0
        page = running.wait_for(lambda page: skipped(page) >= 2, timeout=20)
        log = running.log()
    finally:
        running.stop()
    assert sample_value(page, "smtpmon_domain_probe_skipped_total", domain=fqdn("dead")) == 0
    assert sample_value(page, "smtpmon_domain_probes_total", domain=fqdn("good")) >= 1
    assert "domain probe skipped: previous run still in flight" in log
    # The family is documented and typed as a counter (promtool reads the whole page).
    done = subprocess.run([require_tool("promtool"), "check", "metrics"], input=page.encode(),
                          capture_output=True, timeout=30)
    assert done.returncode == 0, (done.stdout + done.stderr).decode()


def test_probe_domain_has_no_skip_counter(daemon):
    """/probe?domain= runs are never skipped: the family is left out there, as for targets."""
    status, text = daemon.get(f"/probe?domain={fqdn('good')}&module=mx")
    assert status == 200
    assert "smtpmon_domain_probe_skipped_total" not in text
    assert sample_value(daemon.metrics(), "smtpmon_domain_probe_skipped_total",
                        domain=fqdn("good"), module="mx") == 0
