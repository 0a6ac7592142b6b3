"""A ProbeResult as text: the session as a person at a telnet prompt would have seen it.

    [  0.001] S: 550 5.1.1 <bob@example.org>: Recipient address rejected
                 # 550: permanent negative, mail system: requested action not taken: ...
                 # 5.1.1: permanent failure, addressing status: bad destination mailbox address

Each server reply is followed by its explanation (smtpmon.smtp.replycodes.describe). Notes (`*`)
tell what happened between the lines: connecting, TLS facts, a timeout.
"""

from __future__ import annotations

import time

from smtpmon.smtp.replycodes import describe
from smtpmon.smtp.results import ProbeResult, Reply, TlsInfo

_ANNOTATION_INDENT = " " * 13  # under the text of "[  0.001] S: "
_SECONDS_PER_DAY = 86400.0


def render(result: ProbeResult, *, annotate: bool = True, summary: bool = True) -> str:
    """The transcript, then (unless summary is False) the summary line."""
    replies = iter([reply for stage in result.stages for reply in stage.replies])
    current: Reply | None = None
    lines_left = 0  # server lines still to come for the current reply
    out = []
    for line in result.transcript:
        marker = "* " if line.direction == "*" else f"{line.direction}:"
        out.append(f"[{line.offset_seconds:7.3f}] {marker} {line.text}".rstrip())
        if line.direction != "S" or not annotate:
            continue
        # Server lines arrive in the order the replies were recorded; a reply's annotation goes
        # under its last line. Lines with no reply (cut off by a close or timeout) get none.
        if lines_left == 0:
            current = next(replies, None)
            lines_left = max(1, len(current.lines)) if current is not None else 0
        if current is None:
            continue
        lines_left -= 1
        if lines_left == 0:
            out.extend(f"{_ANNOTATION_INDENT}# {words}" for words in describe(current))
    if summary:
        out.append(summary_line(result))
    return "\n".join(out) + "\n"


def summary_line(result: ProbeResult, *, now: float | None = None) -> str:
    """One line: where, verdict, how long; on failure the stage, reason and the words why."""
    where = result.target
    if result.address is not None and result.address not in result.target:
        where += f" [{result.address}]"
    if result.success:
        facts = [_tls_words(result.tls, now)] if result.tls is not None else []
        extra = f" ({', '.join(facts)})" if facts else ""
        return f"{where}: success in {result.duration_seconds:.3f}s{extra}"
    detail = f": {result.detail}" if result.detail else ""
    return (
        f"{where}: failed at {result.failed_stage} ({result.reason}) "
        f"after {result.duration_seconds:.3f}s{detail}"
    )


def days_until_expiry(tls: TlsInfo | None, now: float | None = None) -> float | None:
    """Days until the certificate's notAfter (negative once expired); None without one."""
    if tls is None or tls.not_after is None:
        return None
    return (tls.not_after - (time.time() if now is None else now)) / _SECONDS_PER_DAY


def _tls_words(tls: TlsInfo, now: float | None) -> str:
    words = [tls.version or "TLS"]
    if tls.verified:
        words.append("certificate verified")
    elif tls.verify_reason is not None:
        words.append(f"certificate NOT verified: {tls.verify_reason}")
    else:
        words.append("certificate NOT verified")
    days = days_until_expiry(tls, now)
    if days is not None:
        words.append(f"expires in {days:.0f} days" if days >= 0 else f"expired {-days:.0f} days ago")
    return ", ".join(words)
