"""A one-shot summary of a mail log, for the person reading last night's log: the codes by
direction, stage, status, class and category with their counts and the most frequent reply
texts, then sessions that ended without QUIT, connection failures, lines not about replies
by program, and malformed lines. What `smtpmon log-report FILE` prints."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from smtpmon.maillog.events import (
    CONNECT_FAILURE,
    MALFORMED,
    REPLY,
    SESSION_END,
    UNRELATED,
    LogEvent,
)
from smtpmon.maillog.postfix import PostfixParser

MAX_LINE_CHARS = 16 * 1024  # a longer line is counted as malformed, as the reader does
_TOO_LONG = LogEvent(MALFORMED, reason="too_long")
# Parts of a reply text that differ from message to message: grouped as one text.
_VARIABLE = re.compile(r"<[^>]*>|\[[^\]]*\]|\b[0-9A-F]{8,}\b")


class ReportRow(NamedTuple):
    direction: str
    stage: str
    status: str
    code: str
    enhanced: str
    reply_class: str
    category: str
    reason: str
    count: int
    top_texts: tuple[tuple[str, int], ...]  # (text, count), most frequent first


@dataclass(frozen=True, slots=True)
class LogSummary:
    lines: int
    replies: tuple[ReportRow, ...]  # most frequent first
    session_ends: tuple[tuple[str, str, int], ...]  # (stage, status, count)
    connect_failures: tuple[tuple[str, int], ...]  # (reason, count)
    unrelated: tuple[tuple[str, int], ...]  # (program, count)
    malformed: tuple[tuple[str, int], ...]  # (reason, count)


def summarize(lines: Iterable[str], parser: PostfixParser, *, top_texts: int = 3) -> LogSummary:
    """Count `lines` (without their newlines) by event, keeping the reply texts of each row."""
    counts: Counter[LogEvent] = Counter()
    texts: dict[LogEvent, Counter[str]] = {}
    total = 0
    for line in lines:
        total += 1
        if len(line) > MAX_LINE_CHARS:
            counts[_TOO_LONG] += 1
            continue
        event = parser.parse_line(line)
        counts[event] += 1
        if event.kind == REPLY:
            text = parser.reply_text(line)
            if text is not None:
                texts.setdefault(event, Counter())[_VARIABLE.sub("…", text)] += 1

    def of(kind: str) -> list[tuple[LogEvent, int]]:
        return [(event, count) for event, count in counts.items() if event.kind == kind]

    rows: dict[tuple[str, ...], Counter[str]] = {}
    row_counts: Counter[tuple[str, ...]] = Counter()
    for event, count in of(REPLY):
        key = (event.direction, event.stage, event.status, event.code, event.enhanced,
               event.reply_class, event.category, event.reason)
        row_counts[key] += count
        rows.setdefault(key, Counter()).update(texts.get(event, Counter()))
    replies = tuple(ReportRow(*key, count, tuple(rows[key].most_common(top_texts)))
                    for key, count in row_counts.most_common())
    ends: Counter[tuple[str, str]] = Counter()
    for event, count in of(SESSION_END):
        ends[event.stage, event.status] += count
    return LogSummary(
        lines=total,
        replies=replies,
        session_ends=tuple((stage, status, count) for (stage, status), count in ends.most_common()),
        connect_failures=_by(of(CONNECT_FAILURE), "reason"),
        unrelated=_by(of(UNRELATED), "program"),
        malformed=_by(of(MALFORMED), "reason"),
    )


def summarize_file(path: str, parser: PostfixParser, *, top_texts: int = 3) -> LogSummary:
    """summarize() over a log file; invalid UTF-8 is read with replacement. Raises OSError."""
    with open(path, encoding="utf-8", errors="replace", newline="\n") as log:
        return summarize((line.rstrip("\n") for line in log), parser, top_texts=top_texts)


def _by(events: list[tuple[LogEvent, int]], field: str) -> tuple[tuple[str, int], ...]:
    totals: Counter[str] = Counter()
    for event, count in events:
        totals[getattr(event, field)] += count
    return tuple(totals.most_common())


def format_summary(summary: LogSummary) -> str:
    """The summary as plain-text tables."""
    out = [f"{summary.lines} lines"]
    if summary.replies:
        out.append("")
        header = ("direction", "stage", "status", "code", "enhanced", "class", "category",
                  "reason", "count")
        table = [header] + [(row.direction, row.stage, row.status, row.code, row.enhanced or "-",
                             row.reply_class, row.category, row.reason, str(row.count))
                            for row in summary.replies]
        widths = [max(len(cells[column]) for cells in table) for column in range(len(header))]
        for number, cells in enumerate(table):
            out.append("  ".join(cell.rjust(width) if column == len(header) - 1
                                 else cell.ljust(width)
                                 for column, (cell, width) in enumerate(zip(cells, widths))).rstrip())
            if number and summary.replies[number - 1].top_texts:
                for text, count in summary.replies[number - 1].top_texts:
                    out.append(f"      {count:>6} × {text[:160]}")
    for title, rows in (
        ("sessions ended without QUIT (stage, how)", [(f"{stage} {status}", count)
                                                       for stage, status, count in summary.session_ends]),
        ("outbound connection failures", summary.connect_failures),
        ("lines not about replies, by program", summary.unrelated),
        ("malformed lines", summary.malformed),
    ):
        if rows:
            out.append("")
            out.append(title + ":")
            out.extend(f"  {count:>8}  {name}" for name, count in rows)
    return "\n".join(out) + "\n"
