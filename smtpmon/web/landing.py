"""The status page (`/`) and a target's page (`/target`): what a mail admin keeps open.

The summary comes first (failing out of all, by reason; the configuration's state; the
process's health), then the targets in triage order (triage.py): failing, warnings, healthy.
Each row shows its reply codes by stage coloured by class, the failure linked to its runbook
section, the stages' durations as a bar, TLS facts and a strip of its last results. The page
refreshes itself (`<meta http-equiv=refresh>`: no JavaScript needed); a small script only keeps
the "… ago" times moving between refreshes. No external assets: CSS and SVG are inline.

Everything that came from a server, the configuration or the request (reply text, failure
details, target and module names, the filter) goes through `inert.text`, so neither a browser
nor a terminal that gets the page (curl) acts on it.
"""

from __future__ import annotations

import os
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from smtpmon.config.load import Config
from smtpmon.exposition.domains import DomainSnapshot, DomainStore
from smtpmon.exposition.history import HistoryView
from smtpmon.exposition.state import ExporterStatus
from smtpmon.exposition.store import ResultStore, TargetSnapshot
from smtpmon.smtp import transcript
from smtpmon.smtp.results import StageResult
from smtpmon.web import docs, domain_triage, domains_page
from smtpmon.web.domains_page import DOMAIN_STYLE
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
from smtpmon.web.triage import (
    FAILING,
    HEALTHY,
    PAGE_SIZE,
    PENDING,
    STATES,
    WARNING,
    Expectation,
    Page,
    PageQuery,
    Row,
    Summary,
    assess,
    paginate,
    summarize,
    triage,
    warnings_of,
)


class Exporter(Protocol):
    """What the pages read (see smtpmon.web.routes.Exporter)."""

    store: ResultStore
    probe_store: ResultStore
    domain_store: DomainStore
    domain_probe_store: DomainStore
    telemetry_path: str

    @property
    def config(self) -> Config: ...

    @property
    def ready(self) -> bool: ...


# -- the pieces ---------------------------------------------------------------------------------
def _stage_bar(stages: Sequence[StageResult]) -> str:
    total = sum(stage.duration_seconds for stage in stages)
    if total <= 0:
        return ""
    parts = []
    for stage in stages:
        share = stage.duration_seconds / total * 100
        failed = "" if stage.ok else " failed"
        parts.append(f'<i class="s-{text(stage.stage)}{failed}" style="width:{share:.1f}%" '
                     f'title="{text(stage.stage)} {duration(stage.duration_seconds)}"></i>')
    return f'<span class="bar">{"".join(parts)}</span>'


def _tls(snapshot: TargetSnapshot, now: float) -> str:
    tls = snapshot.tls
    if tls is None:
        return '<span class="muted">no TLS</span>'
    facts = [text(tls.version or "TLS")]
    if tls.verified:
        facts.append("verified")
    else:
        why = f": {text(tls.verify_reason)}" if tls.verify_reason else ""
        facts.append(f'<span class="warn" title="{text((tls.verify_error or "")[:200])}">not verified{why}</span>')
    if tls.not_after is not None:
        day = time.strftime("%Y-%m-%d", time.gmtime(tls.not_after))
        days = int((tls.not_after - now) // 86400)
        left = f"expired {-days} days ago" if days < 0 else f"{days} days left"
        facts.append(f"expires {day} ({left})")
    return "<br>".join(facts)


def history_strip(history: HistoryView | None, *, detailed: bool = False) -> str:
    """The last results as an inline SVG: a bar per probe, its height the probe's duration
    (against the slowest shown), green for a success, red for a failure. `detailed` adds a
    tooltip to each bar (the target's page); the list draws two paths, to stay small."""
    points = history.points if history is not None else ()
    width, height, step = (6, 40, 8) if detailed else (3, 20, 4)
    if not points:
        return '<span class="muted">no history yet</span>'
    slowest = max(point.duration_seconds for point in points) or 1.0
    bars = {True: [], False: []}
    for index, point in enumerate(points):
        bar = max(3, round(point.duration_seconds / slowest * height))
        x, y = index * step, height - bar
        if detailed:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(point.started_at))
            outcome = "ok" if point.success else f"{point.failed_stage}: {point.reason}"
            bars[point.success].append(
                f'<rect x="{x}" y="{y}" width="{width}" height="{bar}">'
                f"<title>{text(when)} UTC, {text(outcome)}, "
                f"{duration(point.duration_seconds)}</title></rect>")
        else:
            bars[point.success].append(f"M{x} {y}h{width}v{bar}h-{width}z")
    total_width = len(points) * step
    failures = sum(1 for point in points if not point.success)
    label = f"last {len(points)} probes, {failures} failed"
    if detailed:
        body = (f'<g class="ok">{"".join(bars[True])}</g>'
                f'<g class="ko">{"".join(bars[False])}</g>')
    else:
        body = "".join(f'<path class="{name}" d="{"".join(bars[ok])}"/>'
                       for ok, name in ((True, "ok"), (False, "ko")) if bars[ok])
    return (f'<svg class="history" role="img" aria-label="{label}" width="{total_width}" '
            f'height="{height}" viewBox="0 0 {total_width} {height}">'
            f"<title>{label}</title>{body}</svg>")


def _target_link(snapshot: TargetSnapshot) -> str:
    query = urllib.parse.urlencode({"target": snapshot.target, "module": snapshot.module})
    return f"/target?{query}"


_STATE_WORDS = {FAILING: "FAILING", WARNING: "WARNING", HEALTHY: "OK", PENDING: "not probed yet"}
_COUNT_WORDS = {FAILING: "failing", WARNING: "with warnings", HEALTHY: "healthy",
                PENDING: "not probed yet"}


def _state(row: Row, now: float) -> str:
    since = row.snapshot.since
    words = f'<span class="badge {row.state}">{_STATE_WORDS[row.state]}</span>'
    if since is not None and row.state != PENDING:
        kind = "failing" if row.state == FAILING else "healthy"
        words += f'<div class="since">{kind} since {when(since, now)}</div>'
    return words


def _row(row: Row, history: HistoryView | None, context: Context) -> str:
    snapshot, result = row.snapshot, row.snapshot.latest
    target = (f'<a href="{text(_target_link(snapshot))}"><code>{text(snapshot.target)}</code></a>'
              f'<div class="muted">{text(snapshot.module)}')
    if result is not None and result.address:
        target += f" &middot; {text(result.address)}"
    target += "</div>"
    if result is None:
        cells = (_state(row, context.now), target, "", "", "", "", "", "")
    else:
        problem = (failure(result, context) if not result.success else
                   "<br>".join(f'<span class="warn">{text(w)}</span>' for w in row.warnings))
        finished = result.started_at + result.duration_seconds
        cells = (
            _state(row, context.now), target, reply_codes(result), problem,
            _stage_bar(result.stages) + f'<div class="muted">{duration(result.duration_seconds)}'
                                        "</div>",
            _tls(snapshot, context.now), history_strip(history),
            when(finished, context.now),
        )
    return (f'<tr class="{row.state}">' + "".join(f"<td>{cell}</td>" for cell in cells)
            + "</tr>")


# -- the summary --------------------------------------------------------------------------------
def _summary(summary: Summary, query: PageQuery, what: str) -> str:
    failing, total = summary.by_state[FAILING], summary.total
    if total == 0:
        headline = f'<p class="headline muted">No {what} yet.</p>'
    elif failing:
        headline = (f'<p class="headline failing"><a href="{href(query, state=FAILING)}">'
                    f"{failing} of {total} {what} failing</a></p>")
    else:
        headline = f'<p class="headline healthy">All {total} {what} passing</p>'
    counts = " &middot; ".join(
        f'<a class="count {state}" href="{href(query, state=state)}">'
        f"{summary.by_state[state]} {_COUNT_WORDS[state]}</a>" for state in STATES)
    reasons = "".join(
        f'<a class="chip" href="{href(query, state=FAILING, reason=reason)}">'
        f"{text(reason)} <b>{count}</b></a>" for reason, count in summary.failing_by_reason)
    by_reason = f'<p class="reasons">Failing by reason: {reasons}</p>' if reasons else ""
    return f"{headline}<p>{counts}</p>{by_reason}"


def _config_facts(config: Config, status: ExporterStatus, now: float) -> str:
    facts = [f"<code>{text(config.source)}</code>"]
    if status.config_loaded_at:
        facts.append(f"loaded {when(status.config_loaded_at, now)}")
    if status.config_loaded:
        facts.append('<span class="ok">last load succeeded</span>')
    else:
        errors = "".join(f"<li>{text(error)}</li>" for error in status.config_errors[:20])
        attempted = (f" {when(status.config_attempted_at, now)}"
                     if status.config_attempted_at else "")
        facts.append(f'<span class="bad">last reload FAILED{attempted}; the previous '
                     f"configuration keeps running</span><ul class=\"errors\">{errors}</ul>")
    return " &middot; ".join(facts)


def _resident_bytes() -> int | None:
    """This process's resident memory (Linux's /proc), or None elsewhere."""
    try:
        with open("/proc/self/statm", "rb") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _process_facts(ready: bool, status: ExporterStatus, skipped: int, now: float) -> str:
    facts = ['<span class="ok">ready</span>' if ready else '<span class="bad">not ready</span>',
             f"up since {when(status.started_at, now)}",
             f"{status.probes_in_flight} probe{'' if status.probes_in_flight == 1 else 's'} "
             "running"]
    resident = _resident_bytes()
    if resident is not None:
        facts.append(f"{resident / 2**20:.0f} MiB resident")
    if skipped:
        facts.append(f'<span class="warn">{skipped} scheduled probes skipped (the previous one '
                     "was still running)</span>")
    return " &middot; ".join(facts)


# -- the filter and the pages -------------------------------------------------------------------
def _filter_form(query: PageQuery) -> str:
    options = "".join(
        f'<option value="{state}"{" selected" if query.state == state else ""}>{state}</option>'
        for state in ("all", *STATES))
    hidden = '<input type="hidden" name="view" value="probe">' if query.on_demand else ""
    return (f'<form method="get" action="/" class="filter">{hidden}'
            f'<label>State <select name="state">{options}</select></label> '
            f'<label>Search <input type="search" name="q" value="{text(query.text)}" '
            'placeholder="target, domain, MX host, module, reason or address"></label> '
            '<button type="submit">Filter</button></form>')


def _pager(page: Page, query: PageQuery) -> str:
    start = (page.number - 1) * PAGE_SIZE + 1 if page.rows else 0
    shown = f"{start}–{start + len(page.rows) - 1 if page.rows else 0} of {page.matching}"
    keep = query.domain_page if query.domain_page > 1 else None  # the domains' page stays
    links = []
    if page.number > 1:
        links.append(f'<a href="{href(query, page=page.number - 1, dpage=keep)}" '
                     'rel="prev">previous</a>')
    if page.number < page.count:
        links.append(f'<a href="{href(query, page=page.number + 1, dpage=keep)}" '
                     'rel="next">next</a>')
    return (f'<p class="pager">Showing {shown} (page {page.number} of {page.count}) '
            + " ".join(links) + "</p>")


def _expectations(config: Config) -> Mapping[str, Expectation]:
    """Each configured target's Expectation by `_key`, built once per configuration. Keyed by
    strings and sharing one Expectation per (timeout, TLS mode): 10,000 targets make 10,000
    strings, which the garbage collector never walks, not 20,000 objects it would."""
    cached = _EXPECTATIONS.get(id(config))
    if cached is not None and cached[0] is config:
        return cached[1]
    shared: dict[tuple[float, str], Expectation] = {}
    expectations = {}
    for target in config.targets:
        module = config.modules.get(target.module)
        values = (target.timeout_seconds, module.tls if module is not None else "none")
        expectation = shared.setdefault(values, Expectation(*values))
        expectations[_key(target.name, target.module)] = expectation
    _EXPECTATIONS.clear()  # only the running configuration's
    _EXPECTATIONS[id(config)] = (config, expectations)
    return expectations


def _key(target: str, module: str) -> str:
    return f"{target}\0{module}"


_EXPECTATIONS: dict[int, tuple[Config, Mapping[str, Expectation]]] = {}


def expectation_lookup(config: Config) -> Callable[[TargetSnapshot], Expectation | None]:
    """A target's expectation: its own timeout and its module's TLS mode (a /probe target: its
    module's timeout)."""
    expectations = _expectations(config)

    def expectation_of(snapshot: TargetSnapshot) -> Expectation | None:
        found = expectations.get(_key(snapshot.target, snapshot.module))
        if found is None:
            module = config.modules.get(snapshot.module)
            if module is not None:
                found = Expectation(module.timeout_seconds, module.tls)
        return found

    return expectation_of


def render(exporter: Exporter, status: ExporterStatus, query: PageQuery) -> bytes:
    now = time.time()
    config = exporter.config
    probe_only = not config.targets and not config.domains
    on_demand = query.on_demand or probe_only
    store = exporter.probe_store if on_demand else exporter.store
    snapshots = store.snapshot(counts=False)
    domain_snapshots = (exporter.domain_probe_store if on_demand
                        else exporter.domain_store).snapshot()
    expectation_of = expectation_lookup(config)
    buckets = triage(snapshots, expectation_of, now)
    summary = summarize(buckets)
    page = paginate(buckets, query)
    rows = [Row(snapshot, state, tuple(warnings_of(snapshot, expectation_of(snapshot), now)))
            for state, snapshot in page.rows]
    context = Context(now, docs.docs_directory())
    body = "\n".join(_row(row, store.history(row.snapshot.target, row.snapshot.module), context)
                     for row in rows)
    what = "on-demand targets" if on_demand else "targets"
    if not body:
        if on_demand and not summary.total:
            empty = ("No <code>/probe</code> request yet. Prometheus (or you) can ask "
                     "<code>/probe?target=host:port&amp;module=NAME</code>; the last results "
                     "show here.")
        else:
            empty = "Nothing matches this filter."
        body = f'<tr><td colspan="8" class="muted">{empty}</td></tr>'
    skipped = (sum(snapshot.skipped or 0 for snapshot in snapshots)
               + domains_page.skipped(domain_snapshots))
    # A configuration of mail domains only shows no empty targets' table.
    show_targets = on_demand or bool(config.targets) or not domain_snapshots
    domains, domain_summary, domains_failing = _domains(domain_snapshots, query, context,
                                                        on_demand)
    if on_demand:
        asked_domains = (f" and the last {len(domain_snapshots)} mail domains asked for through "
                         "<code>/probe?domain=</code>" if domain_snapshots else "")
        mode = ("<p>Probe-only mode: no targets and no mail domains are configured. Below are "
                f"the last {summary.total} targets asked for through <code>/probe</code> (the daemon "
                f"keeps at most the 10,000 most recently probed){asked_domains}.</p>"
                ) if probe_only else (
                '<p>On-demand <code>/probe</code> results. <a href="/">Scheduled targets</a></p>')
    else:
        on_demand_domains = len(exporter.domain_probe_store)
        also = (f" and {on_demand_domains} domains through <code>/probe?domain=</code>"
                if on_demand_domains else "")
        mode = (f'<p class="muted">{len(exporter.probe_store)} targets asked for through '
                f'<code>/probe</code>{also}: <a href="/?view=probe">see them</a></p>')
    targets = ""
    if show_targets:
        targets = f"""{'<h2 id="targets">Targets</h2>' if domains else ""}
{_pager(page, query)}
<table class="targets">
<thead><tr><th>State</th><th>Target</th><th>Reply codes by stage</th><th>Failure / warnings</th>
<th>Stages</th><th>TLS</th><th>History</th><th>Last probe</th></tr></thead>
<tbody>
{body}
</tbody></table>
{_pager(page, query) if page.count > 1 else ""}"""
    failing = (summary.by_state[FAILING] if show_targets else 0) + domains_failing
    title = _title(summary if show_targets else None, what, failing, len(domain_snapshots))
    style = STYLE + DOMAIN_STYLE if domains else STYLE
    refresh = (f'<meta http-equiv="refresh" content="{query.refresh_seconds}">'
               if query.refresh_seconds else "")
    refresh_words = (f"refreshes every {query.refresh_seconds} s "
                     f'(<a href="{href(query, refresh=0)}">stop</a>)' if query.refresh_seconds
                     else f'not refreshing (<a href="{href(query, refresh=None)}">resume</a>)')
    page_html = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">{refresh}
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>{icon(failing > 0)}<style>{style}</style></head>
<body>
{header(exporter.telemetry_path)}
<section class="summary">
{_summary(summary, query, what) if show_targets else ""}{domain_summary}
<p>Configuration: {_config_facts(config, status, now)}</p>
<p>Process: {_process_facts(exporter.ready, status, skipped, now)}</p>
</section>
{mode}
{_filter_form(query)}
{domains}{targets}
<p class="muted">Rendered {time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now))};
{refresh_words}.</p>
<script>{SCRIPT}</script>
</body></html>
"""
    return page_html.encode("utf-8")


def _domains(snapshots: Sequence[DomainSnapshot], query: PageQuery, context: Context,
             on_demand: bool) -> tuple[str, str, int]:
    """The mail domains' section, their lines in the summary, and how many are undeliverable;
    nothing when there are none."""
    if not snapshots:
        return "", "", 0
    buckets = domain_triage.triage(snapshots)
    summary = domain_triage.summarize(buckets)
    page = domain_triage.paginate(buckets, query)
    return (domains_page.section(page, query, context, on_demand),
            domains_page.summary_lines(summary, query), summary.by_state[FAILING])


def _title(summary: Summary | None, what: str, failing: int, domains: int) -> str:
    if failing:
        return f"smtpmon: {failing} failing"
    shown = [f"{summary.total} {what}"] if summary is not None else []
    if domains:
        shown.append(f"{domains} domains")
    return f"smtpmon: {', '.join(shown)} OK"


# -- a domain's page ----------------------------------------------------------------------------
def render_domain(exporter: Exporter, name: str, module: str) -> bytes | None:
    """The mail domain's page (domains_page.py); None when neither store knows it."""
    return domains_page.render_domain_page(exporter, name, module,
                                           Context(time.time(), docs.docs_directory()))


# -- a target's page ----------------------------------------------------------------------------
def render_target(exporter: Exporter, target: str, module: str) -> bytes | None:
    """The target's page: its row in full, its history in detail, its last sessions. None when
    neither store knows the target."""
    now = time.time()
    for store in (exporter.store, exporter.probe_store):
        snapshot = store.snapshot_entry(target, module)
        history = store.history(target, module)
        if snapshot is not None and history is not None:
            break
    else:
        return None
    row = assess(snapshot, expectation_lookup(exporter.config)(snapshot), now)
    context = Context(now, docs.docs_directory())
    sessions = []
    for number, result in enumerate(history.sessions):
        title = "Latest session" if number == 0 else "Earlier session"
        raw = ""
        if number == 0:
            raw = (f' &middot; <a href="{text(_target_link(snapshot).replace("/target", "/transcript", 1))}">'
                   "as plain text</a>")
        sessions.append(
            f'<section class="session {"ok" if result.success else "failing"}">'
            f"<h3>{title}: {when(result.started_at, now)}{raw}</h3>"
            f"<p>{text(transcript.summary_line(result, now=now))}</p>"
            f"<pre>{text(transcript.render(result, summary=False))}</pre></section>")
    if not sessions:
        sessions.append('<p class="muted">Not probed yet.</p>')
    table = (f'<table class="targets"><thead><tr><th>State</th><th>Target</th><th>Reply codes by '
             "stage</th><th>Failure / warnings</th><th>Stages</th><th>TLS</th><th>History</th>"
             f"<th>Last probe</th></tr></thead><tbody>{_row(row, history, context)}</tbody>"
             "</table>")
    page_html = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="30">
<title>smtpmon: {text(target)} ({text(module)})</title>{icon(row.state == FAILING)}<style>{STYLE}</style></head>
<body>
{header(exporter.telemetry_path)}
<h2><code>{text(target)}</code> <span class="muted">module {text(module)}</span></h2>
{table}
<h3>Last {len(history.points)} probes</h3>
<p>{history_strip(history, detailed=True)}</p>
<h2>Sessions</h2>
<p class="muted">The latest session, and earlier ones worth reading: failures and the last
success before a failure (a run of successes keeps only its latest).</p>
{"".join(sessions)}
<script>{SCRIPT}</script>
</body></html>
"""
    return page_html.encode("utf-8")


