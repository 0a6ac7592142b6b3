"""What the status page decides before it draws anything: each target's state (failing, warning,
healthy, not probed yet), the order a person reads them in, the filter, the page, the summary.

Pure functions of snapshots and the configuration; no HTML here (that is landing.py).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from smtpmon.exposition.store import TargetSnapshot

FAILING, WARNING, HEALTHY, PENDING = "failing", "warning", "healthy", "pending"
# In the order the page shows them: what needs a person first.
STATES: tuple[str, ...] = (FAILING, WARNING, HEALTHY, PENDING)
_RANK = {state: rank for rank, state in enumerate(STATES)}

# A certificate this close to its expiry is a warning: Let's Encrypt renews at 30 days left, so
# a certificate under 14 days has missed at least two weeks of renewal attempts.
CERTIFICATE_WARNING_DAYS = 14
# A probe that took more than this share of its timeout is slow: one bad day from a timeout.
SLOW_SHARE_OF_TIMEOUT = 0.5
PAGE_SIZE = 100
# Seconds between the page's refreshes by default, and the bounds a `refresh=` may ask for
# (0 turns refreshing off).
DEFAULT_REFRESH_SECONDS = 30
MIN_REFRESH_SECONDS = 5
MAX_REFRESH_SECONDS = 3600
MAX_QUERY_LENGTH = 200
_SECONDS_PER_DAY = 86400.0


class QueryError(ValueError):
    """A page parameter the client must fix."""


@dataclass(frozen=True, slots=True)
class Expectation:
    """What a target's configuration makes of its result: its timeout and TLS mode."""

    timeout_seconds: float
    tls_mode: str


@dataclass(frozen=True, slots=True)
class Row:
    snapshot: TargetSnapshot
    state: str
    warnings: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PageQuery:
    state: str | None = None  # one of STATES; None: all
    text: str = ""  # a case-insensitive part of the target, module, reason or address
    reason: str | None = None
    page: int = 1
    refresh_seconds: int = DEFAULT_REFRESH_SECONDS
    on_demand: bool = False  # show the /probe results instead of the configured targets


@dataclass(frozen=True, slots=True)
class Summary:
    total: int
    by_state: Mapping[str, int]
    failing_by_reason: Sequence[tuple[str, int]]  # most frequent first


@dataclass(frozen=True, slots=True)
class Page:
    rows: Sequence[Row]
    number: int  # 1-based
    count: int  # pages in all (at least 1)
    matching: int  # rows that matched the filter


def parse_query(params: Mapping[str, str]) -> PageQuery:
    """The page's parameters; QueryError names the one that is wrong and why."""
    unknown = sorted(set(params) - {"state", "q", "reason", "page", "refresh", "view"})
    if unknown:
        raise QueryError(f"unknown parameter {unknown[0]!r}; known: state, q, reason, page, "
                         "refresh, view")
    state = params.get("state") or None
    if state not in (None, "all", *STATES):
        raise QueryError(f"parameter 'state' must be one of all, {', '.join(STATES)}")
    text = params.get("q", "").strip()
    if len(text) > MAX_QUERY_LENGTH:
        raise QueryError(f"parameter 'q' is longer than {MAX_QUERY_LENGTH} characters")
    page = _integer(params, "page", 1, 1, 10**9)
    refresh = _integer(params, "refresh", DEFAULT_REFRESH_SECONDS, 0, MAX_REFRESH_SECONDS)
    if 0 < refresh < MIN_REFRESH_SECONDS:
        raise QueryError(f"parameter 'refresh' must be 0 (off) or at least {MIN_REFRESH_SECONDS}")
    view = params.get("view") or "targets"
    if view not in ("targets", "probe"):
        raise QueryError("parameter 'view' must be targets or probe")
    return PageQuery(None if state == "all" else state, text, params.get("reason") or None,
                     page, refresh, view == "probe")


def _integer(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    value = params.get(name)
    if value is None or value == "":
        return default
    if not value.isascii() or not value.isdigit() or not low <= int(value) <= high:
        raise QueryError(f"parameter {name!r} must be a whole number from {low} to {high}")
    return int(value)


def assess(snapshot: TargetSnapshot, expectation: Expectation | None, now: float) -> Row:
    """The snapshot's state and, for a target that passed, what should worry its admin."""
    result = snapshot.latest
    if result is None:
        return Row(snapshot, PENDING, ())
    if not result.success:
        return Row(snapshot, FAILING, ())
    warnings = []
    tls = snapshot.tls if result.tls is None else result.tls
    if tls is not None and tls.not_after is not None:
        days = (tls.not_after - now) / _SECONDS_PER_DAY
        if days < 0:
            warnings.append(f"certificate expired {-days:.0f} days ago")
        elif days < CERTIFICATE_WARNING_DAYS:
            warnings.append(f"certificate expires in {days:.0f} days")
    if result.tls is not None and not result.tls.verified:
        warnings.append("certificate not verified")
    if (expectation is not None and expectation.tls_mode == "opportunistic"
            and result.ehlo is not None and "STARTTLS" not in result.ehlo.extensions):
        warnings.append("STARTTLS not offered")
    if (expectation is not None
            and result.duration_seconds > SLOW_SHARE_OF_TIMEOUT * expectation.timeout_seconds):
        warnings.append(f"slow: {result.duration_seconds:.1f} s of a "
                        f"{expectation.timeout_seconds:g} s timeout")
    return Row(snapshot, WARNING if warnings else HEALTHY, tuple(warnings))


def order(rows: Iterable[Row]) -> list[Row]:
    """Failing, then warnings, then healthy, then not probed yet; by target within each, so
    rows stay where they were from one refresh to the next."""
    return sorted(rows, key=lambda row: (_RANK[row.state], row.snapshot.target,
                                         row.snapshot.module))


def summarize(rows: Sequence[Row]) -> Summary:
    by_state = Counter(row.state for row in rows)
    reasons = Counter(row.snapshot.latest.reason or "unknown"
                      for row in rows if row.state == FAILING)
    return Summary(len(rows), {state: by_state.get(state, 0) for state in STATES},
                   sorted(reasons.items(), key=lambda item: (-item[1], item[0])))


def matches(row: Row, query: PageQuery) -> bool:
    if query.state is not None and row.state != query.state:
        return False
    result = row.snapshot.latest
    if query.reason is not None and (result is None or result.reason != query.reason):
        return False
    if query.text:
        needle = query.text.casefold()
        haystack = [row.snapshot.target, row.snapshot.module]
        if result is not None:
            haystack += [result.reason or "", result.address or ""]
        return any(needle in value.casefold() for value in haystack)
    return True


def paginate(ordered: Sequence[Row], query: PageQuery) -> Page:
    """The query's page of the rows that match it; a page past the end shows the last one."""
    matching = [row for row in ordered if matches(row, query)]
    count = max(1, -(-len(matching) // PAGE_SIZE))
    number = min(query.page, count)
    start = (number - 1) * PAGE_SIZE
    return Page(matching[start:start + PAGE_SIZE], number, count, len(matching))
