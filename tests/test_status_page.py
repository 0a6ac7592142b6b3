"""The status page as a person sees it: a real daemon probing real loopback SMTP servers, its
page loaded in a real headless chromium (tests/browser.py), plus the page's parts on their own
(ordering, escaping, paging, /probe-only mode, the docs it links to)."""

from __future__ import annotations

import dataclasses
import re
import time
import urllib.parse

import probe_results
import pytest
from browser import Browser
from daemon_process import probed, start_daemon
from smtpservers import ScriptedHandler, Send

from smtpmon.config.load import parse_config
from smtpmon.exposition.store import TargetSnapshot
from smtpmon.runtime.daemon import Daemon
from smtpmon.smtp.results import TlsInfo
from smtpmon.web import inert, landing, triage

# What a hostile server says: markup, script, an image that runs script, a terminal escape
# sequence (colour, then a window title), a bidirectional override.
HOSTILE_TEXT = (b"554 5.7.1 <script>window.pwned=1</script><img src=x onerror=alert(1)> "
                b"\x1b[31mred\x1b]0;owned\x07 \xe2\x80\xaereversed\r\n")

GREEN, BLUE, AMBER, RED = "rgb(23, 111, 44)", "rgb(31, 79, 160)", "rgb(138, 83, 0)", "rgb(176, 0, 32)"


@pytest.fixture
def mail_servers(smtp_server, scripted_server, tls_contexts):
    """Healthy (STARTTLS, a message accepted: 2xx and 354), greylisting (450 at RCPT), hostile
    (554 banner with markup and escapes), no STARTTLS (a warning for an opportunistic module),
    and a certificate that expires in 7 days (a warning)."""
    return {
        "healthy": smtp_server(starttls_context=tls_contexts["trusted"]),
        "greylisting": smtp_server(ScriptedHandler(
            rcpt_replies={"grey@example.org": "450 4.2.0 <grey@example.org>: Greylisted"})),
        "hostile": scripted_server([Send(HOSTILE_TEXT)]),
        "plain": smtp_server(),
        "expiring": smtp_server(starttls_context=tls_contexts["expiring"]),
    }


@pytest.fixture
def running(tmp_path, mail_servers, ca_file):
    config = f"""
global: {{interval: 1s, timeout: 900ms}}
modules:
  mx:
    tls: starttls
    tls_ca_file: {ca_file}
    tls_server_name: mx.test.example
    mail_from: probe@example.org
    rcpt_to: [postmaster@example.org]
    data: true
  grey:
    tls: none
    mail_from: probe@example.org
    rcpt_to: [grey@example.org]
  opportunistic: {{tls: opportunistic}}
targets:
  - {{address: "{mail_servers['healthy'].target}", module: mx}}
  - {{address: "{mail_servers['greylisting'].target}", module: grey}}
  - {{address: "{mail_servers['hostile'].target}", module: opportunistic}}
  - {{address: "{mail_servers['plain'].target}", module: opportunistic}}
  - {{address: "{mail_servers['expiring'].target}", module: mx}}
"""
    daemon = start_daemon(tmp_path, config)
    try:
        for server in mail_servers.values():
            daemon.wait_for(probed(server.target, 3), timeout=15)
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture
def browser(tmp_path):
    started = Browser(tmp_path)
    yield started
    started.close()


def rows(page):
    return page.evaluate("""[...document.querySelectorAll('table.targets tbody tr')].map(r => ({
        state: r.className,
        target: (r.querySelector('td:nth-child(2) code') || {}).textContent,
        history: r.querySelectorAll('svg.history path').length,
        failedBars: r.querySelectorAll('svg.history path.ko').length,
    }))""")


def code_colour(page, starts_with: str):
    """The computed colour of the first reply-code chip whose text starts with `starts_with`."""
    return page.evaluate(f"""(function () {{
        var chip = [...document.querySelectorAll('code.code')]
            .find(e => e.textContent.startsWith({starts_with!r}));
        return chip ? getComputedStyle(chip).color : null; }})()""")


def test_a_browser_sees_failing_targets_first_coloured_by_class_with_history(
        browser, running, mail_servers, tmp_path):
    page = browser.open(f"http://127.0.0.1:{running.port}/")
    screenshot = page.screenshot(tmp_path / "status.png")
    seen = rows(page)
    states = [row["state"] for row in seen]
    assert states == ["failing", "failing", "warning", "warning", "healthy"], seen
    assert {seen[0]["target"], seen[1]["target"]} == {
        mail_servers["greylisting"].target, mail_servers["hostile"].target}
    assert {seen[2]["target"], seen[3]["target"]} == {
        mail_servers["plain"].target, mail_servers["expiring"].target}
    assert seen[4]["target"] == mail_servers["healthy"].target
    # Each row has its history strip; the failing ones draw failures.
    assert all(row["history"] >= 1 for row in seen), seen
    assert seen[0]["failedBars"] == seen[1]["failedBars"] == 1
    assert seen[4]["failedBars"] == 0
    # Colours by class, as computed by the browser: 250 green, 354 blue, 450 amber, 554 red.
    assert code_colour(page, "250") == GREEN
    assert code_colour(page, "354") == BLUE
    assert code_colour(page, "450 4.2.0") == AMBER
    assert code_colour(page, "554 5.7.1") == RED
    summary = page.evaluate("document.querySelector('.summary .headline').textContent")
    assert summary == "2 of 5 targets failing"
    reasons = page.evaluate("document.querySelector('.summary .reasons').textContent")
    assert "banner_rejected 1" in reasons and "rcpt_rejected 1" in reasons
    warnings = page.evaluate("[...document.querySelectorAll('tr.warning')].map(r => r.textContent)")
    assert any("STARTTLS not offered" in row for row in warnings), warnings
    assert any("certificate expires in 6 days" in row for row in warnings), warnings  # 7 days less the time since it was made
    assert page.errors() == [] and page.dialogs() == []
    assert screenshot.stat().st_size > 10_000


def test_what_a_hostile_server_says_comes_out_inert(browser, running, mail_servers):
    page = browser.open(f"http://127.0.0.1:{running.port}/?state=failing")
    assert page.evaluate("window.pwned") is None
    assert page.evaluate("document.querySelectorAll('img').length") == 0
    assert page.evaluate("document.scripts.length") == 1  # the page's own clock script
    # The reply's text is there to read, as text (the chip's tooltip).
    shown = page.evaluate("[...document.querySelectorAll('code.code')].map(e => e.title).join('|')")
    assert "<script>window.pwned=1</script><img src=x onerror=alert(1)>" in shown
    assert "\\x1b[31mred\\x1b]0;owned\\x07 \\u202ereversed" in shown
    assert "\x1b" not in shown and "\u202e" not in shown
    # The target's page shows the session, just as inert.
    target = urllib.parse.quote(mail_servers["hostile"].target)
    page.navigate(f"http://127.0.0.1:{running.port}/target?target={target}&module=opportunistic")
    session = page.evaluate("document.querySelector('.session pre').textContent")
    assert "S: 554 5.7.1 <script>window.pwned=1</script>" in session
    assert "\\x1b[31mred" in session and "\x1b" not in session
    assert page.evaluate("window.pwned") is None and page.dialogs() == [] and page.errors() == []
    # And with curl: neither the page nor the plain-text transcript carries the raw bytes.
    for path in ("/", f"/transcript?target={target}&module=opportunistic",
                 f"/probe?target={target}&module=opportunistic&debug=true"):
        status, body = running.get(path)
        assert status == 200 and "\x1b" not in body and "\u202e" not in body
    status, body = running.get("/")
    assert "<script>window.pwned" not in body and "&lt;script&gt;window.pwned" in body


def test_a_target_page_shows_its_history_and_last_sessions(browser, running, mail_servers,
                                                           tmp_path):
    target = urllib.parse.quote(mail_servers["greylisting"].target)
    page = browser.open(f"http://127.0.0.1:{running.port}/target?target={target}&module=grey")
    page.screenshot(tmp_path / "target.png")
    bars = page.evaluate("document.querySelectorAll('svg.history rect').length")
    assert bars >= 3
    tooltip = page.evaluate("document.querySelector('svg.history g.ko rect title').textContent")
    assert "rcpt: rcpt_rejected" in tooltip
    sessions = page.evaluate("[...document.querySelectorAll('.session pre')].map(e => e.textContent)")
    assert 1 <= len(sessions) <= 3
    assert all("S: 450 4.2.0 <grey@example.org>: Greylisted" in text for text in sessions)
    # The failure links to its runbook section, served by the daemon, anchor and all.
    page.evaluate("document.querySelector('a.reason').click()")
    page.wait_for_load(0)
    deadline = time.monotonic() + 10
    while "docs" not in (page.evaluate("location.pathname") or "") and time.monotonic() < deadline:
        time.sleep(0.1)
    anchor = page.evaluate("location.hash")
    assert anchor.startswith("#rcpt_rejected")
    heading = page.evaluate(f"document.getElementById({anchor[1:]!r}).textContent")
    assert heading.startswith("rcpt_rejected: 450 (greylisting) or 550")
    assert page.errors() == []


def test_the_page_refreshes_itself_without_javascript(browser, running):
    page = browser.open(f"http://127.0.0.1:{running.port}/?refresh=5", javascript=False)
    assert page.evaluate("document.querySelectorAll('table.targets tbody tr').length") == 5
    loads = page.event_count()
    page.wait_for_load(loads, timeout=12)  # the meta refresh loads it again
    assert page.evaluate("document.querySelectorAll('table.targets tbody tr').length") == 5


def test_filter_by_state_and_text(running, mail_servers):
    status, body = running.get("/?state=failing")
    assert status == 200
    assert body.count('<tr class="failing">') == 2 and '<tr class="healthy">' not in body
    port = str(mail_servers["plain"].port)
    status, body = running.get(f"/?q={port}")
    assert status == 200 and body.count("<tr class=") == 1 and f":{port}</code>" in body
    status, body = running.get("/?state=failing&reason=rcpt_rejected")
    assert body.count('<tr class="failing">') == 1
    for bad in ("/?state=sad", "/?page=0", "/?refresh=1", "/?q=" + "x" * 201, "/?color=red"):
        status, body = running.get(bad)
        assert status == 400, (bad, body)


def test_the_page_links_metrics_health_docs_and_shows_the_version(running):
    from smtpmon import __version__

    status, body = running.get("/")
    for link in ('href="/metrics"', 'href="/-/healthy"', 'href="/-/ready"', 'href="/docs"'):
        assert link in body
    assert f"version {__version__}" in body
    assert running.get("/docs")[0] == 200
    assert running.get("/docs?page=troubleshooting")[0] == 200
    for bad in ("/docs?page=../README", "/docs?page=nonexistent", "/docs?page=%2Fetc%2Fpasswd"):
        assert running.get(bad)[0] == 404


def test_a_failed_reload_shows_in_the_summary_with_its_errors(running):
    running.config_path.write_text("modules: {mx: {tls: sometimes}}\ntargets: []\n")
    status, _ = running.request("POST", "/-/reload")
    assert status == 400
    status, body = running.get("/")
    assert status == 200
    assert "last reload FAILED" in body and "the previous configuration keeps running" in body
    assert "modules.mx.tls" in body
    assert body.count("<tr class=") == 5  # the running configuration's targets, still probed


# -- /probe-only mode ---------------------------------------------------------------------------
def test_probe_only_mode_shows_the_last_on_demand_probes(tmp_path, smtp_server, scripted_server):
    good, bad = smtp_server(), scripted_server([Send(b"421 4.3.2 busy\r\n")])
    config = """
modules: {plain: {tls: none}}
probe_allow: ["127.0.0.1:*"]
targets: []
"""
    daemon = start_daemon(tmp_path, config)
    try:
        status, body = daemon.get("/")
        assert status == 200 and "No <code>/probe</code> request yet" in body
        assert "no targets configured" not in body
        for server in (good, bad):
            assert daemon.get(f"/probe?target={server.target}&module=plain")[0] == 200
        status, body = daemon.get("/")
    finally:
        daemon.stop()
    assert "Probe-only mode" in body
    assert "1 of 2 on-demand targets failing" in body
    assert body.index(bad.target) < body.index(good.target)


# -- the parts on their own ---------------------------------------------------------------------
NOW = probe_results.STARTED_AT + 30  # certificates: 115 days left


def snapshot(result, target=None, tls=None):
    target = target or result.target
    result = dataclasses.replace(result, target=target, started_at=NOW - 30,
                                 tls=tls or result.tls)
    return TargetSnapshot(target, result.module, result, None, 0, result.tls, NOW - 60)


def test_ordering_is_failing_then_warnings_then_healthy_then_pending_by_target():
    expiring = TlsInfo("TLSv1.3", verified=True, not_after=NOW + 3 * 86400)
    snapshots = [
        snapshot(probe_results.healthy(), "a.example:25"),
        snapshot(probe_results.rcpt_450(), "z.example:25"),
        TargetSnapshot("b.example:25", "mx", None, None, 0, None, None),
        snapshot(probe_results.healthy(), "c.example:25", tls=expiring),
        snapshot(probe_results.banner_421(), "m.example:25"),
        snapshot(probe_results.banner_421("m.example:25", "alpha"), "m.example:25"),
    ]
    expected = [
        ("failing", "m.example:25", "alpha"), ("failing", "m.example:25", "mx"),
        ("failing", "z.example:25", "mx"), ("warning", "c.example:25", "mx"),
        ("healthy", "a.example:25", "mx"), ("pending", "b.example:25", "mx")]
    buckets = triage.triage(snapshots, lambda s: None, NOW)
    page = triage.paginate(buckets, triage.PageQuery())
    assert [(state, s.target, s.module) for state, s in page.rows] == expected
    ordered = triage.order(triage.assess(s, None, NOW) for s in snapshots)
    assert [(row.state, row.snapshot.target, row.snapshot.module) for row in ordered] == expected
    assert ordered[3].warnings == ("certificate expires in 3 days",)


def test_warnings_for_missing_starttls_slow_and_unverified():
    result = dataclasses.replace(probe_results.healthy(), duration_seconds=6.0,
                                 ehlo=dataclasses.replace(probe_results.healthy().ehlo,
                                                          extensions=frozenset({"SIZE"})))
    result = dataclasses.replace(result, tls=dataclasses.replace(result.tls, verified=False))
    row = triage.assess(snapshot(result), triage.Expectation(10.0, "opportunistic"), NOW)
    assert row.state == "warning"
    assert row.warnings == ("certificate not verified", "STARTTLS not offered",
                            "slow: 6.0 s of a 10 s timeout")
    calm = triage.assess(snapshot(probe_results.healthy()), triage.Expectation(10.0, "starttls"),
                         NOW)
    assert (calm.state, calm.warnings) == ("healthy", ())


def test_paging_keeps_each_page_bounded_and_the_summary_whole():
    snapshots = [snapshot(probe_results.banner_421() if i % 7 == 0 else probe_results.healthy(),
                          f"mx{i:04d}.example:25") for i in range(250)]
    buckets = triage.triage(snapshots, lambda s: None, NOW)
    summary = triage.summarize(buckets)
    assert summary.total == 250 and summary.by_state["failing"] == 36
    assert summary.failing_by_reason == [("banner_rejected", 36)]
    first = triage.paginate(buckets, triage.PageQuery())
    last = triage.paginate(buckets, triage.PageQuery(page=99))
    assert (len(first.rows), first.count, first.number, first.matching) == (100, 3, 1, 250)
    assert (len(last.rows), last.number) == (50, 3)
    assert [state for state, _ in first.rows[:37]] == ["failing"] * 36 + ["healthy"]
    failing = triage.paginate(buckets, triage.PageQuery(state="failing"))
    assert failing.matching == 36 and failing.count == 1
    found = triage.paginate(buckets, triage.PageQuery(text="MX0123"))
    assert [s.target for _, s in found.rows] == ["mx0123.example:25"] and found.matching == 1


def test_the_rendered_page_pages_10_000_targets(tmp_path):
    config = parse_config("modules: {mx: {tls: opportunistic}}\ntargets: []\n", "test")
    daemon = Daemon(config, None)
    for i in range(10_000):
        result = probe_results.rcpt_450(f"mx{i}.example:25") if i % 10 == 3 else \
            probe_results.healthy(f"mx{i}.example:25")
        daemon.probe_store.record_on_demand(result)
    query = triage.parse_query({"page": "3"})
    page = landing.render(daemon, daemon.state.status(), query).decode()
    assert page.count("<tr class=") == triage.PAGE_SIZE
    assert "1000 of 10000 on-demand targets failing" in page
    assert "page 3 of 100" in page


@pytest.mark.parametrize("raw, shown", [
    ("<b>&\"'", "&lt;b&gt;&amp;&quot;&#x27;"),
    ("\x1b[2J\x1b]0;x\x07", "\\x1b[2J\\x1b]0;x\\x07"),
    ("a\u202eb\u2066c", "a\\u202eb\\u2066c"),
    ("\x9b31m\x7f", "\\x9b31m\\x7f"),
    ("tab\tand\nnewline", "tab\tand\nnewline"),
])
def test_text_escapes_markup_and_shows_control_characters(raw, shown):
    assert inert.text(raw) == shown


def test_the_history_strip_draws_a_bar_per_probe():
    from smtpmon.exposition.history import HistoryView, Point

    points = tuple(Point(NOW + i, 0.1 * (i + 1), i != 2, None if i != 2 else "rcpt",
                         None if i != 2 else "rcpt_rejected") for i in range(5))
    svg = landing.history_strip(HistoryView(points, NOW, ()))
    assert svg.startswith('<svg class="history"') and 'aria-label="last 5 probes, 1 failed"' in svg
    ok_path = re.search(r'class="ok" d="([^"]*)"', svg).group(1)
    ko_path = re.search(r'class="ko" d="([^"]*)"', svg).group(1)
    assert ok_path.count("M") == 4 and ko_path.count("M") == 1
    detailed = landing.history_strip(HistoryView(points, NOW, ()), detailed=True)
    assert detailed.count("<rect") == 5 and "rcpt: rcpt_rejected" in detailed
