"""The mail log's counts and the log reader's health as text exposition, for `/metrics`.

Rendered at scrape time from one `ReaderSnapshot` (a copy of the reader's counts). Each event
is a bounded label tuple and the same events come back scrape after scrape, so the family and
label text of each event is built once (`_event_line`) and a scrape only formats the counts.
The names and labels are the contract in docs/metrics.md; they do not depend on whether the
probes run in daemon mode or through `/probe`.
"""

from __future__ import annotations

import functools

from smtpmon.exposition.metrics import Family, label_pairs, sample_value
from smtpmon.maillog.events import (
    CONNECT_FAILURE,
    REPLY,
    SESSION_END,
    LogEvent,
)
from smtpmon.maillog.health import ERROR_KINDS, ReaderHealth
from smtpmon.maillog.reader import ReaderSnapshot

REPLY_LABELS = ("direction", "program", "stage", "status", "code", "enhanced_code", "class",
                "category", "reason", "domain", "rbl")
SESSION_END_LABELS = ("direction", "program", "stage", "reason")
CONNECT_FAILURE_LABELS = ("program", "reason")
LINE_LABELS = ("kind", "program", "reason")

EVENT_FAMILIES: tuple[Family, ...] = (
    Family("smtpmon_maillog_replies_total", "counter",
           "Replies the mail log records: given to senders (inbound) and given by remote "
           "servers to our deliveries (outbound), by stage, code, class and category."),
    Family("smtpmon_maillog_session_ends_total", "counter",
           "Inbound sessions the mail log records as ended without QUIT, by stage and how."),
    Family("smtpmon_maillog_connect_failures_total", "counter",
           "Outbound connections that failed before any reply, by reason."),
    Family("smtpmon_maillog_lines_total", "counter",
           "Mail log lines read, by what they were (reply, session_end, connect_failure, "
           "unrelated, malformed)."),
)
_REPLIES, _SESSION_ENDS, _CONNECT_FAILURES, _LINES = range(len(EVENT_FAMILIES))

READER_FAMILIES: tuple[Family, ...] = (
    Family("smtpmon_maillog_reader_up", "gauge",
           "1 while the mail log reader reads without an error condition, else 0."),
    Family("smtpmon_maillog_reader_condition", "gauge",
           "1 for the error condition the mail log reader is in now, by kind."),
    Family("smtpmon_maillog_reader_errors_total", "counter",
           "Times the mail log reader ran into an error condition, by kind."),
    Family("smtpmon_maillog_reader_read_bytes_total", "counter", "Bytes of mail log read."),
    Family("smtpmon_maillog_reader_behind_bytes", "gauge",
           "Bytes written to the mail log file and not read yet (absent for the journal)."),
    Family("smtpmon_maillog_reader_last_line_timestamp_seconds", "gauge",
           "The timestamp of the last mail log line read (Unix time)."),
    Family("smtpmon_maillog_reader_last_read_timestamp_seconds", "gauge",
           "When the mail log reader last read a line (Unix time)."),
    Family("smtpmon_maillog_reader_rotations_total", "counter",
           "Times the mail log file was replaced (rotation by rename)."),
    Family("smtpmon_maillog_reader_truncations_total", "counter",
           "Times the mail log file was truncated in place (copy-and-truncate rotation)."),
    Family("smtpmon_maillog_reader_skipped_bytes_total", "counter",
           "Bytes of mail log left unread because catching up hit its bound."),
    Family("smtpmon_maillog_reader_caught_up", "gauge",
           "1 once the reader has read what was in the log when it started, else 0."),
    Family("smtpmon_maillog_reader_last_poll_timestamp_seconds", "gauge",
           "When the mail log reader last looked for new lines (Unix time)."),
)


@functools.lru_cache(maxsize=16_384)  # events are bounded label tuples (see events.py)
def _event_line(event: LogEvent) -> tuple[int | None, str]:
    """(family index, the sample's name and labels) of an event's count in its own family;
    None for kinds that only count as lines."""
    if event.kind == REPLY:
        values = (event.direction, event.program, event.stage, event.status, event.code,
                  event.enhanced, event.reply_class, event.category, event.reason,
                  event.domain, event.rbl)
        return _REPLIES, _sample(EVENT_FAMILIES[_REPLIES].name, REPLY_LABELS, values)
    if event.kind == SESSION_END:
        values = (event.direction, event.program, event.stage, event.status)
        return _SESSION_ENDS, _sample(EVENT_FAMILIES[_SESSION_ENDS].name, SESSION_END_LABELS,
                                      values)
    if event.kind == CONNECT_FAILURE:
        return _CONNECT_FAILURES, _sample(EVENT_FAMILIES[_CONNECT_FAILURES].name,
                                          CONNECT_FAILURE_LABELS, (event.program, event.reason))
    return None, ""


@functools.lru_cache(maxsize=4096)
def _line_key(event: LogEvent) -> tuple[str, str, str]:
    # A malformed line has no program; only malformed lines have a reason worth a label.
    return (event.kind, event.program, event.reason if event.kind == "malformed" else "")


def _sample(name: str, labels: tuple[str, ...], values: tuple[str, ...]) -> str:
    return f"{name}{{{label_pairs(labels, values)[1:]}}} "


def render_maillog(snapshot: ReaderSnapshot) -> bytes:
    """The maillog families of one snapshot."""
    samples: list[list[str]] = [[] for _ in EVENT_FAMILIES]
    lines: dict[tuple[str, str, str], int] = {}
    for event, count in snapshot.counts.items():
        index, prefix = _event_line(event)
        if index is not None:
            samples[index].append(f"{prefix}{sample_value(count)}\n")
        key = _line_key(event)
        lines[key] = lines.get(key, 0) + count
    line_name = EVENT_FAMILIES[_LINES].name
    samples[_LINES] = [f"{_sample(line_name, LINE_LABELS, key)}{sample_value(count)}\n"
                       for key, count in lines.items()]
    out: list[str] = []
    for family, family_samples in zip(EVENT_FAMILIES, samples):
        if family_samples:
            out.append(family.header.decode())
            out += family_samples
    out += _reader_lines(snapshot.health, snapshot.polled_at)
    return "".join(out).encode()


def _reader_lines(health: ReaderHealth, polled_at: float | None) -> list[str]:
    values: dict[str, list[tuple[str, float]]] = {
        "smtpmon_maillog_reader_up": [("", health.condition is None)],
        "smtpmon_maillog_reader_condition": [
            (label_pairs(("kind",), (kind,)), health.condition == kind) for kind in ERROR_KINDS],
        "smtpmon_maillog_reader_errors_total": [
            (label_pairs(("kind",), (kind,)), health.errors.get(kind, 0)) for kind in ERROR_KINDS],
        "smtpmon_maillog_reader_read_bytes_total": [("", health.bytes_read)],
        "smtpmon_maillog_reader_rotations_total": [("", health.rotations)],
        "smtpmon_maillog_reader_truncations_total": [("", health.truncations)],
        "smtpmon_maillog_reader_skipped_bytes_total": [("", health.skipped_bytes)],
        "smtpmon_maillog_reader_caught_up": [("", health.caught_up)],
    }
    if health.bytes_behind is not None:
        values["smtpmon_maillog_reader_behind_bytes"] = [("", health.bytes_behind)]
    if health.last_line_timestamp is not None:
        values["smtpmon_maillog_reader_last_line_timestamp_seconds"] = [
            ("", health.last_line_timestamp)]
    if health.last_read_at is not None:
        values["smtpmon_maillog_reader_last_read_timestamp_seconds"] = [("", health.last_read_at)]
    if polled_at is not None:
        values["smtpmon_maillog_reader_last_poll_timestamp_seconds"] = [("", polled_at)]
    source = label_pairs(("source",), (health.source,))[1:]
    out: list[str] = []
    for family in READER_FAMILIES:
        if family.name in values:
            out.append(family.header.decode())
            out += [f"{family.name}{{{source}{labels}}} {sample_value(value)}\n"
                    for labels, value in values[family.name]]
    return out
