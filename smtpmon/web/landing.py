"""The landing page (`/`): every target with its last result, for a person with a browser.

Everything that came from a server or the configuration is HTML-escaped: reply text and failure
details are the remote server's words, and a hostile server must not be able to inject markup.
"""

from __future__ import annotations

import html
import time
import urllib.parse
from collections.abc import Iterable

from smtpmon import __version__
from smtpmon.config.load import Config
from smtpmon.exposition.store import TargetSnapshot
from smtpmon.smtp.results import ProbeResult

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; }
th, td { border-bottom: 1px solid #ddd; padding: .3em .6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
.ok { color: #176f2c; font-weight: bold; } .fail { color: #b00020; font-weight: bold; }
.pending { color: #777; } code { font-size: .95em; } .detail { color: #555; font-size: .9em; }
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"


def _status(result: ProbeResult | None) -> str:
    if result is None:
        return '<span class="pending">not probed yet</span>'
    return '<span class="ok">OK</span>' if result.success else '<span class="fail">FAILED</span>'


def _stage_codes(result: ProbeResult | None) -> str:
    if result is None:
        return ""
    parts = []
    for stage in result.stages:
        reply = stage.reply
        if reply is None:
            continue
        code = reply.code if reply.code is not None else "???"
        enhanced = f" {reply.enhanced}" if reply.enhanced else ""
        parts.append(f"{_e(stage.stage)}&nbsp;<code>{_e(code)}{_e(enhanced)}</code>")
    return "<br>".join(parts)


def _failure(result: ProbeResult | None) -> str:
    if result is None or result.success:
        return ""
    where = f"{_e(result.failed_stage or '?')}: <b>{_e(result.reason or 'unknown')}</b>"
    if result.detail:
        where += f'<br><span class="detail">{_e(result.detail[:300])}</span>'
    return where


def _certificate(snapshot: TargetSnapshot, now: float) -> str:
    tls = snapshot.tls
    if tls is None or tls.not_after is None:
        return ""
    day = time.strftime("%Y-%m-%d", time.gmtime(tls.not_after))
    days_left = int((tls.not_after - now) // 86400)
    left = f"expired {-days_left} days ago" if days_left < 0 else f"{days_left} days left"
    verified = "verified" if tls.verified else "not verified"
    return f"{_e(day)} ({_e(left)}, {verified})"


def _row(snapshot: TargetSnapshot, now: float) -> str:
    result = snapshot.latest
    when = ""
    if result is not None:
        finished = result.started_at + result.duration_seconds
        when = f"{_ago(now - finished)}<br>{result.duration_seconds:.3f} s"
    query = urllib.parse.urlencode({"target": snapshot.target, "module": snapshot.module})
    link = f'<a href="/transcript?{_e(query)}">transcript</a>' if result is not None else ""
    cells = (
        f"<code>{_e(snapshot.target)}</code>",
        _e(snapshot.module),
        _status(result),
        when,
        _stage_codes(result),
        _failure(result),
        _certificate(snapshot, now),
        link,
    )
    return "<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"


def render(config: Config, snapshots: Iterable[TargetSnapshot], *, ready: bool,
           telemetry_path: str = "/metrics") -> bytes:
    now = time.time()
    rows = [_row(s, now) for s in sorted(snapshots, key=lambda s: (s.target, s.module))]
    body = "\n".join(rows) or '<tr><td colspan="8">no targets configured</td></tr>'
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>smtpmon</title><style>{_STYLE}</style></head>
<body>
<h1>smtpmon</h1>
<p>Version {_e(__version__)} &middot; configuration: <code>{_e(config.source)}</code>
&middot; {len(rows)} target{"" if len(rows) == 1 else "s"} &middot; {"ready" if ready else "not ready"}</p>
<p><a href="{_e(telemetry_path)}">Metrics</a> &middot; <a href="/-/healthy">Health</a>
&middot; <a href="/-/ready">Readiness</a>
&middot; probe one target: <code>/probe?target=host:port&amp;module=NAME[&amp;debug=true]</code></p>
<table>
<thead><tr><th>Target</th><th>Module</th><th>Status</th><th>Last probe</th>
<th>Reply codes by stage</th><th>Failure</th><th>Certificate expiry</th><th>Session</th></tr></thead>
<tbody>
{body}
</tbody></table>
</body></html>
"""
    return page.encode("utf-8")
