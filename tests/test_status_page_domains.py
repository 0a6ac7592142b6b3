"""Mail domains on the status page, as a person sees them: a real daemon probing domains that a
real knotd on loopback serves, whose MX hosts are real SMTP servers on 127.0.59.x and ::1; the
page read over HTTP and in a real headless chromium (tests/browser.py). Plus the domains' part
of the page on its own: order, paging at 1,000 domains, the summary.

| domain | MX (preference host: addresses) | what the page says |
|---|---|---|
| ok | 10 mx1.ok: 127.0.59.1, ::1; 20 mx2.ok: 127.0.59.2 | deliverable, every address accepts |
| half | 10 mx1.half: 127.0.59.3 (nothing listens); 20 mx2.ok | deliverable, degraded |
| nullmx | `MX 0 .`, mail expected | undeliverable: null MX |
| gone | (not in the zone) | undeliverable: NXDOMAIN |
| hostile | 10 `mx<b>x</b>.hostile` (DNS lets a name carry markup): 127.0.59.4, a server that answers 554 with markup and terminal escapes | undeliverable |
"""

from __future__ import annotations

import dataclasses
import re
import time

import probe_results
import pytest
from browser import Browser
from daemon_process import start_daemon
from dns_server import Zone, require_knot, start_knot
from helpers import sample_value
from smtpservers import AiosmtpdServer, ScriptedServer, Send
from test_status_page import HOSTILE_TEXT, RED

from smtpmon.config.load import parse_config
from smtpmon.dns import Address, DomainResolution, MxHost
from smtpmon.domains import AddressProbe, DomainResult
from smtpmon.runtime.daemon import Daemon
from smtpmon.web import domain_triage, landing, triage

ZONE = "page.test"
# \060 < \062 > \047 / : the MX host's name is mx<b>x</b>.hostile.page.test
HOSTILE_MX = "mx<b>x</b>.hostile.page.test"
RECORDS = r"""
ok MX 10 mx1.ok
ok MX 20 mx2.ok
mx1.ok A 127.0.59.1
mx1.ok AAAA ::1
mx2.ok A 127.0.59.2
half MX 10 mx1.half
half MX 20 mx2.ok
mx1.half A 127.0.59.3
nullmx MX 0 .
hostile MX 10 mx\060b\062x\060\047b\062.hostile
mx\060b\062x\060\047b\062.hostile A 127.0.59.4
"""
FAILING_FIRST = ["gone.page.test", "hostile.page.test", "nullmx.page.test", "half.page.test",
                 "ok.page.test"]


def fqdn(label: str) -> str:
    return f"{label}.{ZONE}"


@dataclasses.dataclass
class World:
    nameserver: str  # the knotd, as dns.nameservers takes it
    port: int  # 127.0.59.1, 127.0.59.2 and ::1 accept mail here
    hostile_port: int  # 127.0.59.4's


@pytest.fixture(scope="module")
def world():
    require_knot()
    knot = start_knot([Zone(ZONE, RECORDS, ttl=300, negative_ttl=60)])
    servers: list = []
    try:
        first = AiosmtpdServer(host="127.0.59.1").start()
        servers.append(first)
        for host in ("::1", "127.0.59.2"):
            servers.append(AiosmtpdServer(host=host, port=first.port).start())
        hostile = ScriptedServer([Send(HOSTILE_TEXT)], host="127.0.59.4").start()
        servers.append(hostile)
        address, port = knot.nameserver
        yield World(f"{address}:{port}", first.port, hostile.port)
    finally:
        for server in servers:
            server.stop()
        knot.stop()


@pytest.fixture(scope="module")
def domain_daemon(world, tmp_path_factory):
    config = f"""\
global: {{interval: 2s, timeout: 1500ms}}
modules:
  plain: {{tls: none}}
domains:
  - {{domain: {fqdn("ok")}, module: plain, port: {world.port}}}
  - {{domain: {fqdn("half")}, module: plain, port: {world.port}}}
  - {{domain: {fqdn("nullmx")}, module: plain, port: {world.port}}}
  - {{domain: {fqdn("gone")}, module: plain, port: {world.port}}}
  - {{domain: {fqdn("hostile")}, module: plain, port: {world.hostile_port}}}
dns:
  nameservers: ["{world.nameserver}"]
"""
    running = start_daemon(tmp_path_factory.mktemp("domain-page"), config)
    try:
        running.wait_for(lambda text: all(
            (sample_value(text, "smtpmon_domain_probes_total", domain=fqdn(name)) or 0) >= 2
            for name in ("ok", "half", "nullmx", "gone", "hostile")), timeout=20)
        yield running
    finally:
        running.stop()


def page(daemon, path: str = "/") -> str:
    status, body = daemon.get(path)
    assert status == 200, body
    return body


def blocks(body: str) -> dict[str, str]:
    """Each domain's block of rows by domain, in the page's order."""
    found = re.findall(r'<tbody class="domain (\w+)" data-domain="([^"]*)">(.*?)</tbody>', body,
                       re.S)
    return {name: f"{state}|{html}" for state, name, html in found}


def row_of(block: str, needle: str) -> str:
    """The <tr> of `block` that holds `needle`."""
    at = block.index(needle)
    return block[block.rindex("<tr", 0, at):block.index("</tr>", at)]


def test_the_summary_counts_domains_and_mx_addresses_by_reason(domain_daemon):
    body = page(domain_daemon)
    summary = body[body.index('<section class="summary">'):body.index("</section>")]
    words = re.sub(r"<[^>]+>", "", summary)
    assert "3 of 5 domains undeliverable, 1 degraded" in words
    assert "3 undeliverable · 1 degraded · 1 healthy · 0 not probed yet" in words.replace(
        "&middot;", "·")
    # ok: 3 addresses, half: 2 (one refused), hostile: 1 (554): 2 of 6 failing
    assert "MX addresses: 2 of 6 failing; by reason: banner_rejected 1connect_refused 1" in words
    assert "Domains by DNS state: null_mx 1nxdomain 1" in words
    assert '<a class="chip" href="/?reason=nxdomain#domains">' in summary
    # A configuration of domains only: no empty targets' table, and not /probe-only mode.
    assert '<table class="targets">' not in body and "Probe-only mode" not in body
    assert "<title>smtpmon: 3 failing</title>" in body


def test_domains_come_failing_first_with_their_mx_hosts_and_addresses(domain_daemon):
    body = page(domain_daemon)
    shown = blocks(body)
    assert list(shown) == FAILING_FIRST
    states = [block.split("|")[0] for block in shown.values()]
    assert states == ["failing", "failing", "failing", "warning", "healthy"]
    text = {name: re.sub(r"<[^>]+>", " ", block) for name, block in shown.items()}
    assert "undeliverable: NXDOMAIN: the domain does not exist" in text["gone.page.test"]
    assert "undeliverable: null MX (RFC 7505), but mail is expected" in text["nullmx.page.test"]
    assert "deliverable, degraded" in text["half.page.test"]
    assert "1 of 2 MX addresses failing" in text["half.page.test"]
    assert "the most preferred MX does not accept: senders fall back" in text["half.page.test"]
    assert "deliverable" in text["ok.page.test"] and "3 of 3 addresses accept (IPv4 2/2 IPv6 1/1)" \
        in text["ok.page.test"]
    # MX hosts in preference order, each address under its host, with its state
    ok = shown["ok.page.test"]
    order = [ok.index(part) for part in ("MX 10", "mx1.ok.page.test", "::1", "127.0.59.1",
                                         "MX 20", "mx2.ok.page.test", "127.0.59.2")]
    assert order == sorted(order)
    assert ok.count('<tr class="address healthy">') == 3 and "ACCEPTS" in ok
    half = shown["half.page.test"]
    refused = row_of(half, "127.0.59.3")
    assert "FAILING" in half and 'href="/docs?page=troubleshooting#connect_refused"' in refused
    # since when, for the domain and each address
    assert "failing since" in shown["gone.page.test"] and "healthy since" in ok
    assert "accepting since" in ok and "failing since" in refused
    # reply chips coloured by class, as the targets' rows
    assert '<code class="code c2"' in ok
    assert '<code class="code c5"' in shown["hostile.page.test"]


def test_what_dns_and_a_server_said_comes_out_inert(domain_daemon):
    body = page(domain_daemon)
    hostile = blocks(body)["hostile.page.test"]
    assert HOSTILE_MX not in body and "<script>window.pwned" not in body
    assert "mx&lt;b&gt;x&lt;/b&gt;.hostile.page.test" in hostile
    assert "&lt;script&gt;window.pwned=1&lt;/script&gt;" in hostile
    assert "\x1b" not in body and "\u202e" not in body and "\\x1b[31mred" in hostile
    domain = page(domain_daemon, f"/domain?domain={fqdn('hostile')}&module=plain")
    assert HOSTILE_MX not in domain and "\x1b" not in domain
    assert "S: 554 5.7.1 &lt;script&gt;window.pwned=1&lt;/script&gt;" in domain


def test_state_reason_and_text_filters_apply_to_domains(domain_daemon):
    def shown(query: str) -> list[str]:
        return list(blocks(page(domain_daemon, "/?" + query)))

    assert shown("state=failing") == FAILING_FIRST[:3]
    assert shown("state=warning") == ["half.page.test"]
    assert shown("state=healthy") == ["ok.page.test"]
    assert shown("q=mx2.ok") == ["half.page.test", "ok.page.test"]  # an MX host
    assert shown("q=127.0.59.3") == ["half.page.test"]  # an address
    assert shown("q=%3A%3A1") == ["ok.page.test"]
    assert shown("q=NULLMX") == ["nullmx.page.test"]  # the domain, any case
    assert shown("reason=nxdomain") == ["gone.page.test"]  # a DNS state
    assert shown("reason=connect_refused") == ["half.page.test"]  # an address's failure
    body = page(domain_daemon, "/?q=nothing-like-this")
    assert "No domain matches this filter." in body
    for bad in ("/?dpage=0", "/?dpage=x"):
        assert domain_daemon.get(bad)[0] == 400


def test_a_domain_page_shows_its_dns_questions_and_each_address_session(domain_daemon):
    body = page(domain_daemon, f"/domain?domain={fqdn('half')}&module=plain")
    assert "<h2><code>half.page.test</code>" in body
    assert "mx1.half.page.test" in body and ">MX<" in body  # the DNS questions asked
    sessions = re.findall(r'<section class="session (\w+)"><h3>MX (\d+) <code>([^<]*)</code>',
                          body)
    assert sessions == [("failing", "10", "mx1.half.page.test"), ("ok", "20", "mx2.ok.page.test")]
    assert "S: 220" in body and "connect_refused" in body
    assert domain_daemon.get(f"/domain?domain={fqdn('nowhere')}&module=plain")[0] == 404
    assert domain_daemon.get("/domain?domain=x")[0] == 400
    # the status page links each domain to its page
    assert f'href="/domain?domain={fqdn("half")}&amp;module=plain"' in page(domain_daemon)


def test_a_browser_sees_the_domains_failing_first(domain_daemon, tmp_path):
    browser = Browser(tmp_path)
    try:
        tab = browser.open(f"http://127.0.0.1:{domain_daemon.port}/")
        screenshot = tab.screenshot(tmp_path / "domains.png")
        section = tab.evaluate("""(function () {
            var s = document.querySelector('section.domains');
            var box = s.getBoundingClientRect();
            return {visible: box.height > 100 && box.width > 500 && s.offsetParent !== null,
                    heading: s.querySelector('h2').textContent}; })()""")
        assert section == {"visible": True, "heading": "Mail domains"}
        seen = tab.evaluate("""[...document.querySelectorAll('table.domains tbody.domain')]
            .map(b => [b.dataset.domain, b.className,
                       b.querySelector('.verdict').textContent,
                       b.querySelectorAll('tr.address').length])""")
        assert [row[0] for row in seen] == FAILING_FIRST, seen
        assert seen[0][1] == "domain failing" and seen[-1][1] == "domain healthy"
        assert seen[0][2] == "undeliverable: NXDOMAIN: the domain does not exist"
        assert [row[3] for row in seen] == [0, 1, 0, 2, 3]
        # the failing domain's border and the 554 chip in red, as the browser computes them
        colours = tab.evaluate("""(function () {
            var first = document.querySelector('tbody.domain.failing tr.domain td');
            var chip = [...document.querySelectorAll('table.domains code.code')]
                .find(e => e.textContent.startsWith('554'));
            return [getComputedStyle(first).borderLeftColor, getComputedStyle(chip).color]; })()""")
        assert colours == [RED, RED]
        headline = tab.evaluate("document.querySelector('.summary .headline').textContent")
        assert headline == "3 of 5 domains undeliverable, 1 degraded"
        mx = tab.evaluate("""[...document.querySelectorAll('tbody.domain tr.mx code')]
            .map(e => e.textContent)""")
        assert HOSTILE_MX in mx  # shown as text, not markup
        assert tab.evaluate("document.querySelectorAll('table.domains b').length") == 0
        assert tab.evaluate("window.pwned") is None and tab.dialogs() == []
        assert tab.errors() == []
        assert screenshot.stat().st_size > 10_000
        # the failing domain's link leads to its page: the session of its address, as text
        tab.evaluate("document.querySelector('tbody.domain[data-domain=\"hostile.page.test\"] a').click()")
        tab.wait_for_load(0)
        deadline = time.monotonic() + 10
        while tab.evaluate("location.pathname") != "/domain" and time.monotonic() < deadline:
            time.sleep(0.1)
        tab.screenshot(tmp_path / "domain.png")
        session = tab.evaluate("document.querySelector('.session pre').textContent")
        assert "S: 554 5.7.1 <script>window.pwned=1</script>" in session
        assert tab.evaluate("window.pwned") is None and tab.errors() == [] and tab.dialogs() == []
    finally:
        browser.close()


def test_probe_only_mode_shows_the_domains_asked_for_through_probe(world, tmp_path):
    config = f"""\
modules: {{plain: {{tls: none}}}}
targets: []
probe_allow_domains: ["*.{ZONE}"]
dns:
  nameservers: ["{world.nameserver}"]
"""
    running = start_daemon(tmp_path, config)
    try:
        # Not configured: port 25, where nothing listens on 127.0.59.x
        for name in ("ok", "gone"):
            assert running.get(f"/probe?domain={fqdn(name)}&module=plain")[0] == 200
        body = page(running)
        domain = page(running, f"/domain?domain={fqdn('ok')}&module=plain")
    finally:
        running.stop()
    assert "Probe-only mode" in body and "the last 2 mail domains asked for through" in body
    assert "Mail domains asked for through <code>/probe?domain=</code>" in body
    assert "2 of 2 domains undeliverable" in re.sub(r"<[^>]+>", "", body)
    assert list(blocks(body)) == ["gone.page.test", "ok.page.test"]
    assert "No transcript kept" in domain  # a /probe result keeps none


# -- the parts on their own ---------------------------------------------------------------------
NOW = probe_results.STARTED_AT + 30


def domain_result(index: int) -> DomainResult:
    """A domain of 2 MX hosts of 2 addresses each; every seventh has its first MX down."""
    name = f"d{index:04d}.example"
    hosts = tuple(MxHost(preference, f"mx{preference}.{name}", f"mx{preference}.{name}", "ok",
                         (Address("ipv4", f"192.0.2.{preference}"),
                          Address("ipv6", f"2001:db8::{preference}")))
                  for preference in (10, 20))
    probes = []
    for host in hosts:
        for address in host.addresses:
            result = probe_results.healthy(f"{address.ip}:25", "mx")
            if index % 7 == 0 and host.preference == 10:
                result = probe_results.banner_421(f"{address.ip}:25", "mx")
            probes.append(AddressProbe(host, address, dataclasses.replace(result,
                                                                          started_at=NOW - 30)))
    resolution = DomainResolution(name, name, "ok", hosts, mx_record_count=2)
    return DomainResult(name, "mx", 25, resolution, tuple(probes), True, NOW - 30, 0.05)


def test_the_rendered_page_pages_1_000_domains():
    daemon = Daemon(parse_config("modules: {mx: {tls: opportunistic}}\ntargets: []\n", "test"),
                    None)
    for index in range(1000):
        daemon.domain_probe_store.record_on_demand(domain_result(index))
    query = triage.parse_query({"dpage": "3"})
    started = time.perf_counter()
    body = landing.render(daemon, daemon.state.status(), query).decode()
    took = time.perf_counter() - started
    shown = blocks(body)
    assert len(shown) == domain_triage.DOMAIN_PAGE_SIZE
    assert "Domains 101–150 of 1000 (page 3 of 20)" in body
    assert "143 of 1000 domains degraded; every one deliverable" in re.sub(r"<[^>]+>", "", body)
    assert "MX addresses: <b>286 of 4000 failing</b>" in body
    assert body.count('<tr class="address') == 4 * domain_triage.DOMAIN_PAGE_SIZE
    # the degraded ones first: page 3 is past them (143 = 50 + 50 + 43)
    states = [block.split("|")[0] for block in shown.values()]
    assert states == ["warning"] * 43 + ["healthy"] * 7
    assert took < 2.0  # generous for a shared machine; benchmarks/ measures it


def test_domain_states_follow_the_verdict_and_order_by_name():
    from smtpmon.exposition.domains import DomainSnapshot

    def snapshot(name: str, result: DomainResult | None) -> DomainSnapshot:
        return DomainSnapshot(name, "mx", name, True, result, 0, None, {})

    degraded = domain_result(7)
    ok = domain_result(1)
    nxdomain = dataclasses.replace(ok, probes=(), resolution=DomainResolution(
        "x.example", "x.example", "nxdomain"))
    snapshots = [snapshot("b.example", ok), snapshot("a.example", ok),
                 snapshot("z.example", nxdomain), snapshot("m.example", degraded),
                 snapshot("c.example", None)]
    buckets = domain_triage.triage(snapshots)
    page_rows = domain_triage.paginate(buckets, triage.PageQuery()).rows
    assert [(state, s.name) for state, s in page_rows] == [
        ("failing", "z.example"), ("warning", "m.example"), ("healthy", "a.example"),
        ("healthy", "b.example"), ("pending", "c.example")]
    summary = domain_triage.summarize(buckets)
    assert (summary.addresses, summary.failing_addresses) == (12, 2)
    assert summary.failing_by_reason == [("banner_rejected", 2)]
    assert summary.by_dns_state == [("nxdomain", 1)]
    assert domain_triage.problems(degraded)[:2] == [
        "2 of 4 MX addresses failing", "the most preferred MX does not accept: senders fall back"]
