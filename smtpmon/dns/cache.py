"""Answers kept for their TTL, so that DNS is asked once per record lifetime, not per probe.

A TTL is bounded below (a TTL of 0 or 5 s would otherwise mean a question per probe) and
above (so that a changed MX set shows within minutes even when the zone says a day). Answers
(records, NODATA, NXDOMAIN) are kept; failures are not. When a question fails and the last
good answer expired less than `grace_seconds` ago, that answer is served again, marked stale
with the failure that made it so: one DNS hiccup does not look like every MX being down,
while a failure that outlasts the grace time shows as what it is.

Shared by threads: every access holds one lock; questions are asked outside it, so two
threads missing the same entry at once both ask (the lookup pool already joins identical
domain resolutions, so this stays rare).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, replace

from smtpmon.dns.resolver import Answer

DEFAULT_MIN_TTL_SECONDS = 30.0
DEFAULT_MAX_TTL_SECONDS = 300.0
DEFAULT_GRACE_SECONDS = 300.0
SWEEP_INTERVAL_SECONDS = 60.0  # how often entries past their grace time are dropped


class NotCached(Exception):
    """A question asked of the cache alone (`cached_only`) that it cannot answer fresh."""


@dataclass(slots=True)
class _Entry:
    answer: Answer  # as asked, with its own TTL
    stored: float  # monotonic time
    expires: float
    grace_until: float


class DnsCache:
    def __init__(self, min_ttl_seconds: float = DEFAULT_MIN_TTL_SECONDS,
                 max_ttl_seconds: float = DEFAULT_MAX_TTL_SECONDS,
                 grace_seconds: float = DEFAULT_GRACE_SECONDS) -> None:
        if not 0 <= min_ttl_seconds <= max_ttl_seconds:
            raise ValueError(f"min_ttl_seconds ({min_ttl_seconds}) must be between 0 and "
                             f"max_ttl_seconds ({max_ttl_seconds})")
        if grace_seconds < 0:
            raise ValueError(f"grace_seconds: {grace_seconds!r} is negative")
        self.min_ttl_seconds = min_ttl_seconds
        self.max_ttl_seconds = max_ttl_seconds
        self.grace_seconds = grace_seconds
        self._lock = threading.Lock()
        self._entries: dict[Hashable, _Entry] = {}
        self._misses = 0
        self._hits = 0
        self._stale_served = 0
        self._next_sweep = time.monotonic() + SWEEP_INTERVAL_SECONDS

    @property
    def misses(self) -> int:
        """Questions the cache could not answer and handed on (answered or not)."""
        with self._lock:
            return self._misses

    @property
    def hits(self) -> int:
        """Questions answered from the cache within the answer's TTL."""
        with self._lock:
            return self._hits

    @property
    def stale_served(self) -> int:
        """Failed questions answered with the last good answer, within the grace time."""
        with self._lock:
            return self._stale_served

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def get(self, key: Hashable, ask: Callable[[], Answer], *, serve_stale: bool = True,
            keep_servfail_seconds: float = 0.0, cached_only: bool = False) -> Answer:
        """The answer for `key`: a fresh cached one (`from_cache`, `ttl_seconds` left), else
        `ask()`'s, kept when it is an answer; when `ask()` fails, the last good answer within
        its grace time (`stale`, `failed_state` and `detail` saying what failed), else the
        failure.

        DNSSEC questions for DANE pass `serve_stale=False` (a zone that turned bogus must
        show at once: senders defer at once) and `keep_servfail_seconds` (a validating
        resolver's SERVFAIL for a bogus zone is lasting; asking again at every probe of every
        address would multiply the queries, not the information).

        `cached_only`: a fresh cached answer or NotCached, `ask` never called (for a thread
        that must not wait on the network; the caller asks again where it may)."""
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and now < entry.expires:
                self._hits += 1
                return replace(entry.answer, from_cache=True, duration_seconds=0.0,
                               ttl_seconds=entry.expires - now)
            if cached_only:
                raise NotCached(key)
            self._misses += 1
        asked = ask()
        now = time.monotonic()
        with self._lock:
            if asked.is_answer:
                ttl = min(max(asked.ttl_seconds, self.min_ttl_seconds), self.max_ttl_seconds)
                self._entries[key] = _Entry(asked, now, now + ttl, now + ttl + self.grace_seconds)
                self._sweep(now)
                return replace(asked, ttl_seconds=ttl)
            if not serve_stale:
                if asked.state == "servfail" and keep_servfail_seconds > 0:
                    expires = now + keep_servfail_seconds
                    self._entries[key] = _Entry(asked, now, expires, expires)
                else:
                    self._entries.pop(key, None)
                return asked
            entry = self._entries.get(key)
            if entry is None or now >= entry.grace_until:
                self._entries.pop(key, None)
                return asked
            self._stale_served += 1
        age = now - entry.stored
        return replace(
            entry.answer, from_cache=True, stale=True, failed_state=asked.state,
            duration_seconds=asked.duration_seconds, ttl_seconds=0.0,
            detail=(f"{asked.state}: {asked.detail}; serving the last good answer, "
                    f"{age:.0f} s old (grace time {self.grace_seconds:.0f} s)"))

    def _sweep(self, now: float) -> None:
        """Drop entries past their grace time (under the lock), at most once a minute, so
        that names no longer asked about do not stay forever."""
        if now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_INTERVAL_SECONDS
        for key in [key for key, entry in self._entries.items() if now >= entry.grace_until]:
            del self._entries[key]
