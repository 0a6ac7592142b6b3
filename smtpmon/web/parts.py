"""The pieces the status page (landing.py) and the mail domains' section and page
(domains_page.py) both draw: points in time that keep moving, durations, reply codes coloured
by class, a failure linked to its runbook section, the page's own links, header, icon, style
and script.

Everything that came from a server, the configuration or the request goes through
`inert.text`.
"""

from __future__ import annotations

import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from smtpmon import __version__
from smtpmon.smtp.results import ProbeResult
from smtpmon.web import docs
from smtpmon.web.inert import text
from smtpmon.web.triage import DEFAULT_REFRESH_SECONDS, PageQuery

DETAIL_CHARACTERS = 300


@dataclass(frozen=True, slots=True)
class Context:
    """What every row of one rendering shares."""

    now: float
    docs_directory: Path | None


def ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    if seconds < 172800:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} days ago"


def when(timestamp: float, now: float) -> str:
    """A point in time as "… ago", kept moving by the page's script, the date in its title."""
    moment = time.gmtime(timestamp)
    iso, shown = time.strftime("%Y-%m-%dT%H:%M:%SZ", moment), time.strftime(
        "%Y-%m-%d %H:%M:%S UTC", moment)
    return (f'<time datetime="{iso}" data-t="{timestamp:.0f}" title="{shown}">'
            f"{ago(now - timestamp)}</time>")


def duration(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def code_class(code: int | None) -> str:
    return f"c{code // 100}" if code is not None and 200 <= code < 600 else "cx"


def reply_codes(result: ProbeResult) -> str:
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
            codes.append(f'<code class="code {code_class(reply.code)}" '
                         f'title="{text(first_line[:200])}">{text(code)}{text(enhanced)}</code>')
        chips.append(f'<span class="reply"><span class="stage">{text(stage.stage)}</span>'
                     f'{" ".join(codes)}</span>')
    return "".join(chips)


def failure(result: ProbeResult, context: Context) -> str:
    link = docs.runbook_link(result.reason, context.docs_directory)
    words = (f'{text(result.failed_stage or "?")}: <a class="reason" href="{text(link)}">'
             f'{text(result.reason or "unknown")}</a>')
    if result.detail:
        words += f'<div class="detail">{text(result.detail[:DETAIL_CHARACTERS])}</div>'
    return words


def href(query: PageQuery, **changes: object) -> str:
    """The page's own URL with `changes` to its query (and back to the first page)."""
    values = {"state": query.state, "q": query.text, "reason": query.reason,
              "view": "probe" if query.on_demand else None,
              "refresh": (query.refresh_seconds
                          if query.refresh_seconds != DEFAULT_REFRESH_SECONDS else None),
              "page": None, "dpage": None}
    values.update(changes)
    pairs = {name: value for name, value in values.items() if value not in (None, "")}
    return text("/?" + urllib.parse.urlencode(pairs) if pairs else "/")


def icon(failing: bool) -> str:
    """The tab's icon, inline (a browser asks for /favicon.ico otherwise): a red or green dot,
    so a tab among many says whether mail flows."""
    colour = "%23c4162a" if failing else "%232e9a48"
    return ('<link rel="icon" href="data:image/svg+xml,<svg xmlns=%22http://www.w3.org/2000/svg%22 '
            f'viewBox=%220 0 16 16%22><circle cx=%228%22 cy=%228%22 r=%227%22 fill=%22{colour}%22/>'
            '</svg>">')


def header(telemetry_path: str) -> str:
    return (f'<header><h1><a href="/">smtpmon</a></h1><span class="version">version '
            f"{text(__version__)}</span><nav>"
            f'<a href="{text(telemetry_path)}">metrics</a> <a href="/-/healthy">healthy</a> '
            '<a href="/-/ready">ready</a> <a href="/docs">docs</a> '
            f'<a href="/docs?page={docs.RUNBOOK}">runbook</a></nav></header>')


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
