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
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from smtpmon import __version__
from smtpmon.config.load import Config
from smtpmon.exposition.history import HistoryView
from smtpmon.exposition.state import ExporterStatus
from smtpmon.exposition.store import ResultStore, TargetSnapshot
from smtpmon.smtp import transcript
from smtpmon.smtp.results import ProbeResult, StageResult
from smtpmon.web import docs
from smtpmon.web.inert import text
from smtpmon.web.triage import (
    DEFAULT_REFRESH_SECONDS,
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

DETAIL_CHARACTERS = 300


class Exporter(Protocol):
    """What the pages read (see smtpmon.web.routes.Exporter)."""

    store: ResultStore
    probe_store: ResultStore

    @property
    def config(self) -> Config: ...

    @property
    def ready(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class _Context:
    """What every row of one rendering shares."""

    now: float
    docs_directory: Path | None


# -- the pieces ---------------------------------------------------------------------------------
def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    if seconds < 172800:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} days ago"


def _time(timestamp: float, now: float) -> str:
    """A point in time as "… ago", kept moving by the page's script, the date in its title."""
    moment = time.gmtime(timestamp)
    iso, shown = time.strftime("%Y-%m-%dT%H:%M:%SZ", moment), time.strftime(
        "%Y-%m-%d %H:%M:%S UTC", moment)
    return (f'<time datetime="{iso}" data-t="{timestamp:.0f}" title="{shown}">'
            f"{_ago(now - timestamp)}</time>")


def _duration(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _code_class(code: int | None) -> str:
    return f"c{code // 100}" if code is not None and 200 <= code < 600 else "cx"


def _reply_codes(result: ProbeResult) -> str:
    """Every reply by stage (DATA gets two: 354, then the message's verdict), coloured by class,
    with its enhanced code; the reply's first line in the tooltip."""
    chips = []
    for stage in result.stages:
        if not stage.replies:
            continue
        codes = []
        for reply in stage.replies:
            code = f"{reply.code:03d}" if reply.code is not None else "???"
            enhanced = f" {reply.enhanced}" if reply.enhanced else ""
            first_line = reply.lines[0] if reply.lines else (reply.error or "")
            codes.append(f'<code class="code {_code_class(reply.code)}" '
                         f'title="{text(first_line[:200])}">{text(code)}{text(enhanced)}</code>')
        chips.append(f'<span class="reply"><span class="stage">{text(stage.stage)}</span>'
                     f'{" ".join(codes)}</span>')
    return "".join(chips)


def _failure(result: ProbeResult, context: _Context) -> str:
    link = docs.runbook_link(result.reason, context.docs_directory)
    words = (f'{text(result.failed_stage or "?")}: <a class="reason" href="{text(link)}">'
             f'{text(result.reason or "unknown")}</a>')
    if result.detail:
        words += f'<div class="detail">{text(result.detail[:DETAIL_CHARACTERS])}</div>'
    return words


def _stage_bar(stages: Sequence[StageResult]) -> str:
    total = sum(stage.duration_seconds for stage in stages)
    if total <= 0:
        return ""
    parts = []
    for stage in stages:
        share = stage.duration_seconds / total * 100
        failed = "" if stage.ok else " failed"
        parts.append(f'<i class="s-{text(stage.stage)}{failed}" style="width:{share:.1f}%" '
                     f'title="{text(stage.stage)} {_duration(stage.duration_seconds)}"></i>')
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
                f"{_duration(point.duration_seconds)}</title></rect>")
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
        words += f'<div class="since">{kind} since {_time(since, now)}</div>'
    return words


def _row(row: Row, history: HistoryView | None, context: _Context) -> str:
    snapshot, result = row.snapshot, row.snapshot.latest
    target = (f'<a href="{text(_target_link(snapshot))}"><code>{text(snapshot.target)}</code></a>'
              f'<div class="muted">{text(snapshot.module)}')
    if result is not None and result.address:
        target += f" &middot; {text(result.address)}"
    target += "</div>"
    if result is None:
        cells = (_state(row, context.now), target, "", "", "", "", "", "")
    else:
        problem = (_failure(result, context) if not result.success else
                   "<br>".join(f'<span class="warn">{text(w)}</span>' for w in row.warnings))
        finished = result.started_at + result.duration_seconds
        cells = (
            _state(row, context.now), target, _reply_codes(result), problem,
            _stage_bar(result.stages) + f'<div class="muted">{_duration(result.duration_seconds)}'
                                        "</div>",
            _tls(snapshot, context.now), history_strip(history),
            _time(finished, context.now),
        )
    return (f'<tr class="{row.state}">' + "".join(f"<td>{cell}</td>" for cell in cells)
            + "</tr>")


# -- the summary --------------------------------------------------------------------------------
def _summary(summary: Summary, query: PageQuery, what: str) -> str:
    failing, total = summary.by_state[FAILING], summary.total
    if total == 0:
        headline = f'<p class="headline muted">No {what} yet.</p>'
    elif failing:
        headline = (f'<p class="headline failing"><a href="{_href(query, state=FAILING)}">'
                    f"{failing} of {total} {what} failing</a></p>")
    else:
        headline = f'<p class="headline healthy">All {total} {what} passing</p>'
    counts = " &middot; ".join(
        f'<a class="count {state}" href="{_href(query, state=state)}">'
        f"{summary.by_state[state]} {_COUNT_WORDS[state]}</a>" for state in STATES)
    reasons = "".join(
        f'<a class="chip" href="{_href(query, state=FAILING, reason=reason)}">'
        f"{text(reason)} <b>{count}</b></a>" for reason, count in summary.failing_by_reason)
    by_reason = f'<p class="reasons">Failing by reason: {reasons}</p>' if reasons else ""
    return f"{headline}<p>{counts}</p>{by_reason}"


def _config_facts(config: Config, status: ExporterStatus, now: float) -> str:
    facts = [f"<code>{text(config.source)}</code>"]
    if status.config_loaded_at:
        facts.append(f"loaded {_time(status.config_loaded_at, now)}")
    if status.config_loaded:
        facts.append('<span class="ok">last load succeeded</span>')
    else:
        errors = "".join(f"<li>{text(error)}</li>" for error in status.config_errors[:20])
        attempted = (f" {_time(status.config_attempted_at, now)}"
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
             f"up since {_time(status.started_at, now)}",
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
def _href(query: PageQuery, **changes: object) -> str:
    """The page's own URL with `changes` to its query (and back to the first page)."""
    values = {"state": query.state, "q": query.text, "reason": query.reason,
              "view": "probe" if query.on_demand else None,
              "refresh": (query.refresh_seconds
                          if query.refresh_seconds != DEFAULT_REFRESH_SECONDS else None),
              "page": None}
    values.update(changes)
    pairs = {name: value for name, value in values.items() if value not in (None, "")}
    return text("/?" + urllib.parse.urlencode(pairs) if pairs else "/")


def _filter_form(query: PageQuery) -> str:
    options = "".join(
        f'<option value="{state}"{" selected" if query.state == state else ""}>{state}</option>'
        for state in ("all", *STATES))
    hidden = '<input type="hidden" name="view" value="probe">' if query.on_demand else ""
    return (f'<form method="get" action="/" class="filter">{hidden}'
            f'<label>State <select name="state">{options}</select></label> '
            f'<label>Search <input type="search" name="q" value="{text(query.text)}" '
            'placeholder="target, module, reason or address"></label> '
            '<button type="submit">Filter</button></form>')


def _pager(page: Page, query: PageQuery) -> str:
    start = (page.number - 1) * PAGE_SIZE + 1 if page.rows else 0
    shown = f"{start}–{start + len(page.rows) - 1 if page.rows else 0} of {page.matching}"
    links = []
    if page.number > 1:
        links.append(f'<a href="{_href(query, page=page.number - 1)}" rel="prev">previous</a>')
    if page.number < page.count:
        links.append(f'<a href="{_href(query, page=page.number + 1)}" rel="next">next</a>')
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
    probe_only = not config.targets
    on_demand = query.on_demand or probe_only
    store = exporter.probe_store if on_demand else exporter.store
    snapshots = store.snapshot(counts=False)
    expectation_of = expectation_lookup(config)
    buckets = triage(snapshots, expectation_of, now)
    summary = summarize(buckets)
    page = paginate(buckets, query)
    rows = [Row(snapshot, state, tuple(warnings_of(snapshot, expectation_of(snapshot), now)))
            for state, snapshot in page.rows]
    context = _Context(now, docs.docs_directory())
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
    skipped = sum(snapshot.skipped or 0 for snapshot in snapshots)
    if on_demand:
        mode = ("<p>Probe-only mode: no targets are configured. Below are the last "
                f"{summary.total} targets asked for through <code>/probe</code> (the daemon keeps at "
                "most the 10,000 most recently probed).</p>") if probe_only else (
                '<p>On-demand <code>/probe</code> results. <a href="/">Scheduled targets</a></p>')
    else:
        mode = (f'<p class="muted">{len(exporter.probe_store)} targets asked for through '
                f'<code>/probe</code>: <a href="/?view=probe">see them</a></p>')
    refresh = (f'<meta http-equiv="refresh" content="{query.refresh_seconds}">'
               if query.refresh_seconds else "")
    refresh_words = (f"refreshes every {query.refresh_seconds} s "
                     f'(<a href="{_href(query, refresh=0)}">stop</a>)' if query.refresh_seconds
                     else f'not refreshing (<a href="{_href(query, refresh=None)}">resume</a>)')
    page_html = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">{refresh}
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_title(summary, what)}</title>{_icon(summary.by_state[FAILING] > 0)}<style>{STYLE}</style></head>
<body>
{_header(exporter.telemetry_path)}
<section class="summary">
{_summary(summary, query, what)}
<p>Configuration: {_config_facts(config, status, now)}</p>
<p>Process: {_process_facts(exporter.ready, status, skipped, now)}</p>
</section>
{mode}
{_filter_form(query)}
{_pager(page, query)}
<table class="targets">
<thead><tr><th>State</th><th>Target</th><th>Reply codes by stage</th><th>Failure / warnings</th>
<th>Stages</th><th>TLS</th><th>History</th><th>Last probe</th></tr></thead>
<tbody>
{body}
</tbody></table>
{_pager(page, query) if page.count > 1 else ""}
<p class="muted">Rendered {time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now))};
{refresh_words}.</p>
<script>{SCRIPT}</script>
</body></html>
"""
    return page_html.encode("utf-8")


def _icon(failing: bool) -> str:
    """The tab's icon, inline (a browser asks for /favicon.ico otherwise): a red or green dot,
    so a tab among many says whether mail flows."""
    colour = "%23c4162a" if failing else "%232e9a48"
    return ('<link rel="icon" href="data:image/svg+xml,<svg xmlns=%22http://www.w3.org/2000/svg%22 '
            f'viewBox=%220 0 16 16%22><circle cx=%228%22 cy=%228%22 r=%227%22 fill=%22{colour}%22/>'
            '</svg>">')


def _title(summary: Summary, what: str) -> str:
    failing = summary.by_state[FAILING]
    return f"smtpmon: {failing} failing" if failing else f"smtpmon: {summary.total} {what} OK"


def _header(telemetry_path: str) -> str:
    return (f'<header><h1><a href="/">smtpmon</a></h1><span class="version">version '
            f"{text(__version__)}</span><nav>"
            f'<a href="{text(telemetry_path)}">metrics</a> <a href="/-/healthy">healthy</a> '
            '<a href="/-/ready">ready</a> <a href="/docs">docs</a> '
            f'<a href="/docs?page={docs.RUNBOOK}">runbook</a></nav></header>')


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
    context = _Context(now, docs.docs_directory())
    sessions = []
    for number, result in enumerate(history.sessions):
        title = "Latest session" if number == 0 else "Earlier session"
        raw = ""
        if number == 0:
            raw = (f' &middot; <a href="{text(_target_link(snapshot).replace("/target", "/transcript", 1))}">'
                   "as plain text</a>")
        sessions.append(
            f'<section class="session {"ok" if result.success else "failing"}">'
            f"<h3>{title}: {_time(result.started_at, now)}{raw}</h3>"
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
<title>smtpmon: {text(target)} ({text(module)})</title>{_icon(row.state == FAILING)}<style>{STYLE}</style></head>
<body>
{_header(exporter.telemetry_path)}
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


STYLE = """
body { font-family: system-ui, sans-serif; margin: 1em 1.5em; color: #1d1d1f; background: #fff; }
header { display: flex; align-items: baseline; gap: 1em; flex-wrap: wrap; }
header h1 { margin: 0; font-size: 1.5em; } header h1 a { color: inherit; text-decoration: none; }
header nav a { margin-right: .8em; } .version { color: #666; }
.summary { background: #f6f6f8; border-radius: 6px; padding: .2em 1em; margin: .8em 0; }
.headline { font-size: 1.35em; font-weight: 600; margin: .5em 0; }
.headline.failing a, .bad { color: #b00020; } .headline.healthy, .ok { color: #176f2c; }
.warn { color: #8a5300; } .muted { color: #666; font-size: .9em; }
.count { margin-right: .2em; } .errors { margin: .2em 0; color: #b00020; }
.chip { display: inline-block; border: 1px solid #d6a0a8; border-radius: 1em; padding: 0 .6em;
        margin: .1em .3em .1em 0; color: #b00020; text-decoration: none; }
table.targets { border-collapse: collapse; width: 100%; }
table.targets th, table.targets td { border-bottom: 1px solid #e2e2e6; padding: .35em .5em;
        text-align: left; vertical-align: top; font-size: .92em; }
table.targets th { background: #f0f0f3; position: sticky; top: 0; }
tr.failing td:first-child { border-left: 4px solid #b00020; }
tr.warning td:first-child { border-left: 4px solid #d08a00; }
tr.healthy td:first-child { border-left: 4px solid #2e9a48; }
tr.pending td:first-child { border-left: 4px solid #aaa; }
.badge { font-weight: 700; font-size: .85em; padding: .1em .45em; border-radius: 3px; }
.badge.failing { background: #b00020; color: #fff; } .badge.warning { background: #ffd27a; color: #4a2d00; }
.badge.healthy { background: #d8f0dd; color: #176f2c; } .badge.pending { background: #eee; color: #555; }
.since { font-size: .85em; color: #555; white-space: nowrap; }
.reply { display: inline-block; margin: 0 .35em .2em 0; white-space: nowrap; }
.reply .stage { font-size: .8em; color: #555; margin-right: .2em; }
.code { padding: 0 .3em; border-radius: 3px; font-weight: 600; }
.code.c2 { background: #dff3e4; color: #176f2c; } .code.c3 { background: #e1eafb; color: #1f4fa0; }
.code.c4 { background: #ffedc7; color: #8a5300; } .code.c5 { background: #fde0e4; color: #b00020; }
.code.cx { background: #eee; color: #333; outline: 1px dashed #999; }
.detail { color: #555; font-size: .85em; max-width: 40em; overflow-wrap: anywhere; }
.bar { display: inline-flex; width: 9em; height: .8em; background: #eee; border-radius: 2px;
       overflow: hidden; vertical-align: middle; }
.bar i { display: block; height: 100%; min-width: 1px; background: #7d8fb3; }
.bar i.s-connect { background: #9aa9c7; } .bar i.s-banner { background: #5c7cb8; }
.bar i.s-starttls { background: #8e6cc0; } .bar i.s-ehlo, .bar i.s-ehlo_tls { background: #4e9ab3; }
.bar i.s-mail, .bar i.s-rcpt, .bar i.s-data { background: #3f8f6f; } .bar i.failed { background: #b00020; }
svg.history .ok, svg.history g.ok rect { fill: #2e9a48; }
svg.history .ko, svg.history g.ko rect { fill: #c4162a; }
.filter { margin: .6em 0; } .filter input { width: 18em; } .pager { margin: .4em 0; }
.session pre { background: #f6f6f8; padding: .6em; overflow-x: auto; font-size: .85em; }
.session.failing h3 { color: #b00020; }
"""

# Keeps the "… ago" times moving between refreshes; the page works without it.
SCRIPT = """
(function () {
  function ago(s) {
    s = Math.max(0, Math.floor(s));
    if (s < 120) return s + " s ago";
    if (s < 7200) return Math.floor(s / 60) + " min ago";
    if (s < 172800) return Math.floor(s / 3600) + " h ago";
    return Math.floor(s / 86400) + " days ago";
  }
  function tick() {
    var now = Date.now() / 1000;
    document.querySelectorAll("time[data-t]").forEach(function (el) {
      el.textContent = ago(now - Number(el.getAttribute("data-t")));
    });
  }
  setInterval(tick, 1000);
})();
"""
