"""The mail domains on the status page: their lines in the summary, their section (each domain
with its verdict, its MX hosts in preference order and each address with its state, reply
codes, failure and since when), and a domain's own page (`/domain`: its DNS questions and the
last session of each address).

The order, filter, page and summary are decided in domain_triage.py. Everything that came
from DNS or a server (MX host names, which DNS lets carry markup, reply text, notes) or from
the configuration goes through `inert.text`.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Sequence
from typing import Protocol

from smtpmon.domains import AddressProbe, DomainResult, policy_report
from smtpmon.domains.policy import DANE_FAILURES, DomainPolicy
from smtpmon.exposition.domains import DomainSnapshot, DomainStore
from smtpmon.smtp import transcript
from smtpmon.smtp.results import ProbeResult
from smtpmon.web.domain_triage import (
    DOMAIN_PAGE_SIZE,
    DomainSummary,
    family_words,
    problems,
    state_of,
)
from smtpmon.web.inert import text
from smtpmon.web.parts import (
    SCRIPT,
    STYLE,
    Context,
    duration,
    failure,
    header,
    href,
    icon,
    reply_codes,
    when,
)
from smtpmon.web.triage import FAILING, HEALTHY, PENDING, STATES, WARNING, Page, PageQuery

# Where the docs explain a domain's DNS state and an MX host's.
DNS_STATE_DOCS = "/docs?page=domains#the-dns-state-of-a-domain"
MX_STATE_DOCS = "/docs?page=domains#mx-misconfigurations"
NOTE_CHARACTERS = 300

_STATE_WORDS = {FAILING: "UNDELIVERABLE", WARNING: "DEGRADED", HEALTHY: "OK",
                PENDING: "not probed yet"}
_COUNT_WORDS = {FAILING: "undeliverable", WARNING: "degraded", HEALTHY: "healthy",
                PENDING: "not probed yet"}
_SINCE_WORDS = {FAILING: "failing", WARNING: "degraded", HEALTHY: "healthy"}

# What DNS said, in words (smtpmon.dns.DOMAIN_STATES; docs/domains.md says more).
DNS_WORDS = {
    "ok": "MX records found",
    "implicit_mx": "implicit MX: no MX records, the domain's own address takes its mail",
    "null_mx": "null MX (RFC 7505): the domain accepts no mail",
    "misconfigured": "MX misconfigured",
    "no_address": "no MX records and no address: senders bounce",
    "nxdomain": "NXDOMAIN: the domain does not exist",
    "servfail": "SERVFAIL: a DNS server reported failure",
    "timeout": "DNS timeout: no answer in time",
    "bad_response": "DNS answers that could not be used",
    "unreachable": "no nameserver could be asked",
    "invalid_name": "not a mail domain name",
}


class Exporter(Protocol):
    """What the domain's page reads (see smtpmon.web.routes.Exporter)."""

    domain_store: DomainStore
    domain_probe_store: DomainStore
    telemetry_path: str


# -- the summary --------------------------------------------------------------------------------
def summary_lines(summary: DomainSummary, query: PageQuery) -> str:
    """"N of M domains undeliverable, K degraded", the counts by state, the failing MX
    addresses of all by reason, the domains by DNS state; each count links to its filter."""
    failing, degraded, total = (summary.by_state[FAILING], summary.by_state[WARNING],
                                summary.total)
    link = lambda state, words: (  # noqa: E731
        f'<a href="{href(query, state=state)}#domains">{words}</a>')
    if failing:
        more = f", {link(WARNING, f'{degraded} degraded')}" if degraded else ""
        headline = (f'<p class="headline failing">{link(FAILING, f"{failing} of {total} domains undeliverable")}'
                    f"{more}</p>")
    elif degraded:
        headline = (f'<p class="headline degraded">{link(WARNING, f"{degraded} of {total} domains degraded")}'
                    "; every one deliverable</p>")
    elif summary.by_state[HEALTHY]:
        headline = f'<p class="headline healthy">All {summary.by_state[HEALTHY]} domains deliverable</p>'
    else:
        headline = f'<p class="headline muted">{total} domains, not probed yet</p>'
    counts = " &middot; ".join(
        f'<a class="count {state}" href="{href(query, state=state)}#domains">'
        f"{summary.by_state[state]} {_COUNT_WORDS[state]}</a>" for state in STATES)
    addresses = (f"MX addresses: <b>{summary.failing_addresses} of {summary.addresses} failing</b>"
                 if summary.failing_addresses else
                 f"MX addresses: all {summary.addresses} accepting")
    reasons = "".join(_reason_chip(query, reason, count)
                      for reason, count in summary.failing_by_reason)
    if reasons:
        addresses += f"; by reason: {reasons}"
    dns = "".join(_reason_chip(query, state, count) for state, count in summary.by_dns_state)
    dns_line = f'<p class="reasons">Domains by DNS state: {dns}</p>' if dns else ""
    return (f'{headline}<p>Domains: {counts}</p><p class="reasons">{addresses}</p>{dns_line}')


def _reason_chip(query: PageQuery, reason: str, count: int) -> str:
    return (f'<a class="chip" href="{href(query, reason=reason)}#domains">'
            f"{text(reason)} <b>{count}</b></a>")


# -- the section --------------------------------------------------------------------------------
def section(page: Page, query: PageQuery, context: Context, on_demand: bool) -> str:
    """The domains' section: its pager and the page's domains, each a block of rows."""
    blocks = "\n".join(domain_block(state, snapshot, context) for state, snapshot in page.rows)
    if not blocks:
        blocks = '<tbody><tr><td colspan="6" class="muted">No domain matches this filter.</td></tr></tbody>'
    title = "Mail domains asked for through <code>/probe?domain=</code>" if on_demand else "Mail domains"
    pager = _pager(page, query)
    return (f'<section class="domains" id="domains"><h2>{title}</h2>\n{pager}\n'
            f'<table class="domains">{_HEAD}\n{blocks}\n</table>\n'
            f'{pager if page.count > 1 else ""}</section>')


_HEAD = ('<thead><tr><th>State</th><th>Domain &middot; MX host &middot; address</th>'
         "<th>Reply codes by stage</th><th>Failure</th><th>Duration</th>"
         "<th>TLS &middot; last probe</th></tr></thead>")


def _pager(page: Page, query: PageQuery) -> str:
    start = (page.number - 1) * DOMAIN_PAGE_SIZE + 1 if page.rows else 0
    shown = f"{start}–{start + len(page.rows) - 1 if page.rows else 0} of {page.matching}"
    keep = query.page if query.page > 1 else None  # the targets' page stays where it is
    links = []
    if page.number > 1:
        links.append(f'<a href="{href(query, page=keep, dpage=page.number - 1)}#domains" '
                     'rel="prev">previous</a>')
    if page.number < page.count:
        links.append(f'<a href="{href(query, page=keep, dpage=page.number + 1)}#domains" '
                     'rel="next">next</a>')
    return (f'<p class="pager">Domains {shown} (page {page.number} of {page.count}) '
            + " ".join(links) + "</p>")


def domain_link(snapshot: DomainSnapshot) -> str:
    return "/domain?" + urllib.parse.urlencode({"domain": snapshot.name, "module": snapshot.module})


def verdict_words(latest: DomainResult | None) -> str:
    """The verdict a sender would reach, in words."""
    if latest is None:
        return "not probed yet"
    verdict, state = latest.verdict, latest.resolution.state
    if verdict == "invalid":
        return "invalid: not a mail domain name"
    if verdict == "no_mail":
        return "null MX: accepts no mail, and none is expected"
    if verdict == "undeliverable":
        if state == "null_mx":
            return "undeliverable: null MX (RFC 7505), but mail is expected"
        if state not in ("ok", "implicit_mx", "misconfigured"):
            return f"undeliverable: {DNS_WORDS.get(state, state)}"
        return "undeliverable: no MX address accepts mail"
    implicit = " (implicit MX)" if state == "implicit_mx" else ""
    if verdict == "degraded":
        return f"deliverable{implicit}, degraded"
    return f"deliverable{implicit}"


def domain_block(state: str, snapshot: DomainSnapshot, context: Context, *,
                 link: bool = True) -> str:
    """One domain: its row (state, name, verdict, DNS, counts by family, problems), then each
    MX host in preference order and under it each address's row."""
    latest = snapshot.latest
    name = f"<code>{text(snapshot.name)}</code>"
    if link:
        name = f'<a href="{text(domain_link(snapshot))}">{name}</a>'
    if snapshot.unicode and snapshot.unicode != snapshot.name:
        name += f' <span class="muted">({text(snapshot.unicode)})</span>'
    port = f" &middot; port {latest.port}" if latest is not None else ""
    name += f'<div class="muted">{text(snapshot.module)}{port}</div>'
    words = _STATE_WORDS[state]
    if state == FAILING and latest is not None and latest.deliverable:
        words = "FAILING"  # by its TLS policy: senders that check it do not deliver
    badge = f'<span class="badge {state}">{words}</span>'
    if snapshot.since is not None and state != PENDING:
        badge += (f'<div class="since">{_SINCE_WORDS[state]} since '
                  f"{when(snapshot.since, context.now)}</div>")
    verdict = f'<div class="verdict {state}">{text(verdict_words(latest))}</div>'
    last = ""
    rows = []
    if latest is not None:
        verdict += _facts(latest)
        last = when(latest.started_at + latest.duration_seconds, context.now)
        rows = _host_rows(latest, snapshot, context)
    head = (f'<tr class="domain {state}"><td>{badge}</td><td>{name}</td>'
            f'<td colspan="3">{verdict}</td><td>{last}</td></tr>')
    return (f'<tbody class="domain {state}" data-domain="{text(snapshot.name)}">{head}'
            + "".join(rows) + "</tbody>")


def _facts(latest: DomainResult) -> str:
    state = latest.resolution.state
    facts = [f'DNS: <a class="dns-state" href="{DNS_STATE_DOCS}">{text(state)}</a>']
    if latest.probes:
        families = " ".join(
            f"{family_words(family)} {latest.accepting(family)}/{latest.addresses(family)}"
            for family in ("ipv4", "ipv6") if latest.addresses(family))
        facts.append(f"{latest.accepting()} of {len(latest.probes)} addresses accept "
                     f"({families})")
    out = f'<div class="dns">{" &middot; ".join(facts)}</div>'
    words = problems(latest)
    if words:
        out += "".join(f'<div class="warn">{text(word)}</div>' for word in words)
    notes = tuple(dict.fromkeys(latest.resolution.notes + latest.notes))
    if notes:
        out += "".join(f'<div class="detail">{text(note[:NOTE_CHARACTERS])}</div>'
                       for note in notes[:5])
    return out


def _host_rows(latest: DomainResult, snapshot: DomainSnapshot, context: Context) -> list[str]:
    by_host: dict[str, list[AddressProbe]] = {}
    for probe in latest.probes:
        by_host.setdefault(probe.mx.name, []).append(probe)
    rows = []
    for host in latest.mx_hosts:
        words = f"MX {host.preference}" if not host.implicit else "implicit MX"
        line = f'<span class="pref">{words}</span> <code>{text(host.name)}</code>'
        if host.unicode_name and host.unicode_name != host.name:
            line += f' <span class="muted">({text(host.unicode_name)})</span>'
        if host.state != "ok":
            line += (f' <a class="chip" href="{MX_STATE_DOCS}">{text(host.state)}</a>')
        if host.capped:
            line += (f' <span class="muted">{len(host.addresses)} of {host.address_count} '
                     "addresses probed (capped)</span>")
        rows.append(f'<tr class="mx"><td></td><td colspan="5">{line}</td></tr>')
        for probe in by_host.get(host.name, ()):
            rows.append(_address_row(probe, latest.policy, snapshot, context))
    return rows


def _address_row(probe: AddressProbe, policy: DomainPolicy | None, snapshot: DomainSnapshot,
                 context: Context) -> str:
    result = probe.result
    state = "healthy" if result.success else FAILING
    badge = (f'<span class="badge small {state}">'
             f'{"ACCEPTS" if result.success else "FAILING"}</span>')
    since = snapshot.address_since.get((probe.mx.name, probe.address.ip))
    if since is not None:
        badge += (f'<div class="since">{"accepting" if result.success else "failing"} since '
                  f"{when(since, context.now)}</div>")
    address = (f'<span class="family">{family_words(probe.address.family)}</span> '
               f"<code>{text(probe.address.ip)}</code>")
    problem = "" if result.success else failure(result, context)
    return (f'<tr class="address {state}"><td>{badge}</td><td class="address">{address}</td>'
            f"<td>{reply_codes(result)}</td><td>{problem}</td>"
            f"<td>{duration(result.duration_seconds)}</td><td>{_tls(result)}"
            f"{_policy_chips(policy, probe)}</td></tr>")


def _tls(result: ProbeResult) -> str:
    tls = result.tls
    if tls is None:
        return '<span class="muted">no TLS</span>'
    verified = "verified" if tls.verified else '<span class="warn">not verified</span>'
    return f"{text(tls.version or 'TLS')} {verified}"


def _policy_chips(policy: DomainPolicy | None, probe: AddressProbe) -> str:
    """The address's DANE and MTA-STS verdicts, when they were checked: a failure that makes
    senders honouring the policy stay away is marked as such."""
    checked = policy.address(probe.mx.name, probe.address.ip) if policy is not None else None
    if checked is None:
        return ""
    chips = []
    if policy.lookups.mx_lookup_state and checked.dane != "not_applicable":
        bad = checked.dane in DANE_FAILURES
        chips.append(f'<span class="policy{" bad" if bad else ""}">DANE {text(checked.dane)}</span>')
    if checked.sts is not None and checked.sts.verdict != "not_applicable":
        bad = checked.sts.severity in ("critical", "warning")
        chips.append(f'<span class="policy{" bad" if bad else ""}">MTA-STS '
                     f"{text(checked.sts.verdict)}</span>")
    return "<div>" + " ".join(chips) + "</div>" if chips else ""


# -- a domain's page ----------------------------------------------------------------------------
def render_domain_page(exporter: Exporter, name: str, module: str,
                       context: Context) -> bytes | None:
    """The domain's page: its block in full, the DNS questions of its last resolution and the
    last session of each address. None when neither store knows the domain."""
    for store in (exporter.domain_store, exporter.domain_probe_store):
        snapshot = store.snapshot_entry(name, module)
        if snapshot is not None:
            break
    else:
        return None
    state = state_of(snapshot)
    latest = snapshot.latest
    block = domain_block(state, snapshot, context, link=False)
    dns = sessions = ""
    if latest is not None:
        dns = _lookups(latest, context.now)
        sessions = "".join(_session(probe, context.now) for probe in latest.probes)
    if not sessions:
        sessions = '<p class="muted">No session: no MX address was probed.</p>'
    page_html = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="30">
<title>smtpmon: {text(name)} ({text(module)})</title>{icon(state == FAILING)}<style>{STYLE}{DOMAIN_STYLE}</style></head>
<body>
{header(exporter.telemetry_path)}
<h2><code>{text(name)}</code> <span class="muted">module {text(module)}</span></h2>
<table class="domains">{_HEAD}{block}</table>
<h2>DNS</h2>
{dns or '<p class="muted">Not resolved yet.</p>'}
{_policy_section(latest)}
<h2>Sessions</h2>
<p class="muted">The last session of each MX address, annotated as <code>smtpmon probe</code>
prints it.</p>
{sessions}
<script>{SCRIPT}</script>
</body></html>
"""
    return page_html.encode("utf-8")


def _policy_section(latest: DomainResult | None) -> str:
    """The TLS policy's lookups and verdicts as `smtpmon probe --mx` prints them."""
    shown = policy_report.render(latest) if latest is not None else ""
    return f"<h2>TLS policy</h2>\n<pre>{text(shown)}</pre>" if shown else ""


def _lookups(latest: DomainResult, now: float) -> str:
    resolution = latest.resolution
    rows = "".join(
        f"<tr><td><code>{text(lookup.name)}</code></td><td>{text(lookup.rdtype)}</td>"
        f"<td>{text(lookup.state)}</td><td>{duration(lookup.duration_seconds)}</td>"
        f'<td>{"cache" if lookup.from_cache else "asked"}{" (stale)" if lookup.stale else ""}</td>'
        f"<td>{lookup.ttl_seconds:.0f} s</td><td>{text(lookup.detail[:NOTE_CHARACTERS])}</td></tr>"
        for lookup in resolution.lookups)
    table = (f'<table class="targets"><thead><tr><th>Name</th><th>Type</th><th>Answer</th>'
             f"<th>Took</th><th>From</th><th>TTL</th><th>Detail</th></tr></thead><tbody>{rows}"
             "</tbody></table>") if rows else ""
    return (f'<p>{text(DNS_WORDS.get(resolution.state, resolution.state))}; resolved in '
            f"{duration(resolution.duration_seconds)}"
            f'{", from the cache" if resolution.from_cache else ""}.</p>{table}')


def _session(probe: AddressProbe, now: float) -> str:
    result = probe.result
    kind = "ok" if result.success else "failing"
    body = (f"<pre>{text(transcript.render(result, summary=False))}</pre>" if result.transcript
            else '<p class="muted">No transcript kept (a <code>/probe?domain=</code> result '
                 "keeps none).</p>")
    return (f'<section class="session {kind}"><h3>MX {probe.mx.preference} '
            f"<code>{text(probe.mx.name)}</code> &middot; {family_words(probe.address.family)} "
            f"<code>{text(probe.address.ip)}</code>: {when(result.started_at, now)}</h3>"
            f"<p>{text(transcript.summary_line(result, now=now))}</p>{body}</section>")


def skipped(snapshots: Sequence[DomainSnapshot]) -> int:
    return sum(snapshot.skipped or 0 for snapshot in snapshots)


DOMAIN_STYLE = """
table.domains { border-collapse: collapse; width: 100%; margin-bottom: 1em; }
table.domains th, table.domains td { padding: .25em .5em; text-align: left; vertical-align: top;
        font-size: .92em; }
table.domains th { background: #f0f0f3; position: sticky; top: 0; }
table.domains tbody.domain { border-bottom: 2px solid #d6d6dc; }
table.domains tr.domain td { border-top: 1px solid #e2e2e6; padding-top: .5em; }
table.domains tr.domain.failing td:first-child { border-left: 4px solid #b00020; }
table.domains tr.domain.warning td:first-child { border-left: 4px solid #d08a00; }
table.domains tr.domain.healthy td:first-child { border-left: 4px solid #2e9a48; }
table.domains tr.domain.pending td:first-child { border-left: 4px solid #aaa; }
table.domains tr.mx td { padding-top: .35em; }
table.domains tr.mx td:nth-child(2), table.domains td.address { padding-left: 1.6em; }
table.domains td.address { padding-left: 2.8em; white-space: nowrap; }
.verdict { font-weight: 600; } .verdict.failing { color: #b00020; }
.verdict.warning { color: #8a5300; } .verdict.healthy { color: #176f2c; }
.dns { font-size: .9em; color: #333; } .pref { font-size: .85em; color: #555; }
.family { font-size: .8em; color: #555; } .badge.small { font-size: .75em; }
.headline.degraded a { color: #8a5300; }
.policy { font-size: .8em; color: #176f2c; } .policy.bad { color: #b00020; font-weight: 600; }
"""
