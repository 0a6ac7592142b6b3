"""What the status page decides before it draws anything: each target's state (failing, warning,
healthy, not probed yet), the order a person reads them in, the filter, the page, the summary.

Pure functions of snapshots and the configuration; no HTML here (that is landing.py).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from smtpmon.exposition.store import TargetSnapshot

T = TypeVar("T")  # a target's or a mail domain's snapshot

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
    text: str = ""  # a case-insensitive part of the target (domain, MX host), module, reason or address
    reason: str | None = None
    page: int = 1
    refresh_seconds: int = DEFAULT_REFRESH_SECONDS
    on_demand: bool = False  # show the /probe results instead of the configured targets
    domain_page: int = 1  # the mail domains' own page (domain_triage.py)


@dataclass(frozen=True, slots=True)
class Summary:
    total: int
    by_state: Mapping[str, int]
    failing_by_reason: Sequence[tuple[str, int]]  # most frequent first


@dataclass(frozen=True, slots=True)
class Page:
    rows: Sequence[tuple[str, Any]]  # (state, snapshot): TargetSnapshot or DomainSnapshot
    number: int  # 1-based
    count: int  # pages in all (at least 1)
    matching: int  # rows that matched the filter


def parse_query(params: Mapping[str, str]) -> PageQuery:
    """The page's parameters; QueryError names the one that is wrong and why."""
    unknown = sorted(set(params) - {"state", "q", "reason", "page", "dpage", "refresh", "view"})
    if unknown:
        raise QueryError(f"unknown parameter {unknown[0]!r}; known: state, q, reason, page, "
                         "dpage, refresh, view")
    state = params.get("state") or None
    if state not in (None, "all", *STATES):
        raise QueryError(f"parameter 'state' must be one of all, {', '.join(STATES)}")
    text = params.get("q", "").strip()
    if len(text) > MAX_QUERY_LENGTH:
        raise QueryError(f"parameter 'q' is longer than {MAX_QUERY_LENGTH} characters")
    page = _integer(params, "page", 1, 1, 10**9)
    domain_page = _integer(params, "dpage", 1, 1, 10**9)
    refresh = _integer(params, "refresh", DEFAULT_REFRESH_SECONDS, 0, MAX_REFRESH_SECONDS)
    if 0 < refresh < MIN_REFRESH_SECONDS:
        raise QueryError(f"parameter 'refresh' must be 0 (off) or at least {MIN_REFRESH_SECONDS}")
    view = params.get("view") or "targets"
    if view not in ("targets", "probe"):
        raise QueryError("parameter 'view' must be targets or probe")
    return PageQuery(None if state == "all" else state, text, params.get("reason") or None,
                     page, refresh, view == "probe", domain_page)


def _integer(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    value = params.get(name)
    if value is None or value == "":
        return default
    if not value.isascii() or not value.isdigit() or not low <= int(value) <= high:
        raise QueryError(f"parameter {name!r} must be a whole number from {low} to {high}")
    return int(value)


def state_of(snapshot: TargetSnapshot, expectation: Expectation | None, now: float) -> str:
    result = snapshot.latest
    if result is None:
        return PENDING
    if not result.success:
        return FAILING
    return WARNING if warnings_of(snapshot, expectation, now) else HEALTHY


def warnings_of(snapshot: TargetSnapshot, expectation: Expectation | None,
                now: float) -> list[str]:
    """What should worry the admin of a target whose last probe passed."""
    result = snapshot.latest
    if result is None or not result.success:
        return []
    warnings = []
    tls = snapshot.tls if result.tls is None else result.tls
    if tls is not None and tls.not_after is not None:
        days = int((tls.not_after - now) // _SECONDS_PER_DAY)  # whole days, as the TLS column
        if days < 0:
            warnings.append(f"certificate expired {-days} days ago")
        elif days < CERTIFICATE_WARNING_DAYS:
            warnings.append(f"certificate expires in {days} days")
    if result.tls is not None and not result.tls.verified:
        warnings.append("certificate not verified")
    if (expectation is not None and expectation.tls_mode == "opportunistic"
            and result.ehlo is not None and "STARTTLS" not in result.ehlo.extensions):
        warnings.append("STARTTLS not offered")
    if (expectation is not None
            and result.duration_seconds > SLOW_SHARE_OF_TIMEOUT * expectation.timeout_seconds):
        warnings.append(f"slow: {result.duration_seconds:.1f} s of a "
                        f"{expectation.timeout_seconds:g} s timeout")
    return warnings


def assess(snapshot: TargetSnapshot, expectation: Expectation | None, now: float) -> Row:
    """The snapshot's state and its warnings."""
    return Row(snapshot, state_of(snapshot, expectation, now),
               tuple(warnings_of(snapshot, expectation, now)))


def triage(snapshots: Iterable[TargetSnapshot],
           expectation_of: Callable[[TargetSnapshot], Expectation | None],
           now: float) -> dict[str, list[TargetSnapshot]]:
    """The snapshots by state, in the order the page shows them (failing, warnings, healthy,
    not probed yet), each by target and module, so rows stay where they were from one refresh
    to the next.

    Built for 10,000 targets on every view: no object per target beyond the snapshot (a
    collection of the whole heap, which objects alive in large numbers bring on, would cost
    more than the page), and sorted on strings (the keys are not new objects)."""
    return in_buckets(snapshots, lambda snapshot: state_of(snapshot, expectation_of(snapshot), now),
                      _target)


def in_buckets(snapshots: Iterable[T], state: Callable[[T], str],
               name: Callable[[T], str]) -> dict[str, list[T]]:
    """`snapshots` by `state` (each of STATES, in order), each bucket by `name` then module:
    the page's order for targets and mail domains alike. Sorted on strings the snapshots hold
    (the keys are not new objects)."""
    buckets: dict[str, list[T]] = {each: [] for each in STATES}
    for snapshot in snapshots:
        buckets[state(snapshot)].append(snapshot)
    for bucket in buckets.values():
        bucket.sort(key=_module)
        bucket.sort(key=name)  # stable: by name, then module
    return buckets


def _target(snapshot: TargetSnapshot) -> str:
    return snapshot.target


def _module(snapshot) -> str:
    return snapshot.module


def order(rows: Iterable[Row]) -> list[Row]:
    """Rows in the page's order (see `triage`)."""
    return sorted(rows, key=lambda row: (_RANK[row.state], row.snapshot.target,
                                         row.snapshot.module))


def summarize(buckets: Mapping[str, Sequence[TargetSnapshot]]) -> Summary:
    reasons = Counter(snapshot.latest.reason or "unknown" for snapshot in buckets[FAILING])
    return Summary(sum(map(len, buckets.values())),
                   {state: len(buckets[state]) for state in STATES},
                   sorted(reasons.items(), key=lambda item: (-item[1], item[0])))


def matches(snapshot: TargetSnapshot, state: str, query: PageQuery) -> bool:
    if query.state is not None and state != query.state:
        return False
    result = snapshot.latest
    if query.reason is not None and (result is None or result.reason != query.reason):
        return False
    if query.text:
        needle = query.text.casefold()
        haystack = [snapshot.target, snapshot.module]
        if result is not None:
            haystack += [result.reason or "", result.address or ""]
        return any(needle in value.casefold() for value in haystack)
    return True


def paginate(buckets: Mapping[str, Sequence[TargetSnapshot]], query: PageQuery) -> Page:
    """The query's page of the snapshots that match it, as (state, snapshot) pairs."""
    return page_of(buckets, query, matches, query.page, PAGE_SIZE)


def page_of(buckets: Mapping[str, Sequence[T]], query: PageQuery,
            matching_query: Callable[[T, str, PageQuery], bool], number: int, size: int) -> Page:
    """Page `number` (of `size` rows) of the snapshots in `buckets` that `matching_query`
    keeps, as (state, snapshot) pairs in STATES' order; a page past the end shows the last one.
    Only the page's pairs are made: unfiltered, the total is the buckets' lengths."""
    def matching() -> Iterator[tuple[str, T]]:
        for state in STATES:
            if query.state is not None and state != query.state:
                continue
            for snapshot in buckets[state]:
                if matching_query(snapshot, state, query):
                    yield state, snapshot

    if query.reason is None and not query.text:
        total = sum(len(buckets[state]) for state in STATES
                    if query.state is None or state == query.state)
    else:
        total = sum(1 for _ in matching())
    count = max(1, -(-total // size))
    number = min(number, count)
    start = (number - 1) * size
    return Page(list(itertools.islice(matching(), start, start + size)), number, count, total)
