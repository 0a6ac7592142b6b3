"""The latest result and cumulative counters of every (target, module), shared between threads.

The scheduler's probe sessions call `record` as probes finish; HTTP threads read. One lock
guards everything. Each entry also keeps its exposition lines (metrics.render_target), so
that a scrape of 10,000 targets mostly joins bytes. When to render: the first change after a
scrape read the entry is rendered at once, by the probe's session; later changes before the
next scrape only mark it stale, and the scrape renders it (`rows`). A target probed less often
than it is scraped is thus rendered by its session, never on the scrape's time; one probed
every second and scraped every 15 s is rendered twice per scrape, not 15 times.

The daemon keeps a second, bounded store for `/probe` (`record_on_demand`): its counters grow
from one request to the next as in daemon mode, so `rate()` means the same in both modes.
/probe callers choose what is stored, so it is bounded by entries and by an estimate of its
bytes, and keeps of each result only a slim copy once its row is rendered (a hostile server's replies
and their transcript reach hundreds of KB): no transcript, each reply's first line cut short
(debug=true shows the transcript of the result at hand, never a stored one).

Each entry also keeps its recent history for the status page (see history.py). The page reads
every entry but holds the lock for SNAPSHOT_CHUNK entries at a time, so a probe finishing
meanwhile waits for one chunk's copying, never for the whole store's.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace

from smtpmon.exposition.history import OLDER_SESSIONS, HistoryView, TargetHistory, TranscriptBudget
from smtpmon.exposition.metrics import TargetCounts, render_target
from smtpmon.smtp.results import ProbeResult, TlsInfo

# What an on-demand entry costs beyond its rendered row: the entry, its key, its TLS facts,
# and each counter's key and slot.
ENTRY_OVERHEAD_BYTES = 2048
COUNTER_BYTES = 300


@dataclass(frozen=True, slots=True)
class TargetSnapshot:
    """A copy of one entry, safe to read without the lock (for the landing page)."""

    target: str
    module: str
    latest: ProbeResult | None
    counts: TargetCounts | None  # None when the snapshot was taken without them
    skipped: int | None  # None for /probe entries: on-demand runs are never skipped
    tls: TlsInfo | None  # from the last probe that reached TLS
    since: float | None  # when the current run of successes or failures began (Unix time)


# Entries copied per hold of the lock by `snapshot`.
SNAPSHOT_CHUNK = 128


@dataclass(slots=True)
class _StoredTarget:
    """One (target, module): its latest result, counters, rendered row and history."""

    target: str
    module: str
    latest: ProbeResult | None = None
    counts: TargetCounts = field(default_factory=TargetCounts)
    skipped: int | None = 0
    tls: TlsInfo | None = None
    history: TargetHistory = field(default_factory=TargetHistory)
    # Rendered exposition, replaced (never mutated); None when the entry changed since.
    row: tuple[bytes, ...] | None = None
    scraped: bool = True  # a scrape read the row since the entry last changed
    cost: int = 0  # on-demand entries: the bytes counted against the store's bound
    # The status page's copy (without counters), replaced at each change and shared by every
    # view until the next: a view of 10,000 targets makes no object per target, and so never
    # brings on a collection of the whole heap (which costs more than the page).
    view: TargetSnapshot | None = None

    def snapshot(self) -> TargetSnapshot:
        if self.view is None:
            self.view = TargetSnapshot(self.target, self.module, self.latest, None, self.skipped,
                                       self.tls, self.history.since)
        return self.view

    def rendered(self) -> tuple[bytes, ...]:
        if self.row is None:
            self.row = render_target(
                self.target, self.module, self.latest, self.counts, self.tls, self.skipped
            )
        return self.row

    def changed(self) -> None:
        """Render now if a scrape read the previous row, else leave it to the next scrape."""
        self.row = None
        self.view = None
        self.snapshot()
        if self.scraped:
            self.scraped = False
            self.rendered()

    def add(self, result: ProbeResult, budget: TranscriptBudget) -> None:
        self.history.record(result, self.latest, budget)
        self.latest = result
        self.counts.add(result)
        if result.tls is not None:
            self.tls = result.tls
        self.changed()


class ResultStore:
    def __init__(self, max_entries: int | None = None, max_bytes: int | None = None) -> None:
        """`max_entries` and `max_bytes` (an estimate) bound the entries `record_on_demand`
        creates: /probe callers choose the targets, so without a bound they could grow the
        store (and /probe) forever."""
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], _StoredTarget] = {}
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._bytes = 0  # the costs of the on-demand entries
        self._budget = TranscriptBudget()

    def register(self, target: str, module: str) -> None:
        """Make the target's always-present series exist (at zero). An entry that exists
        already keeps its result and counters, so a reload does not reset unchanged targets."""
        with self._lock:
            if (target, module) not in self._entries:
                self._entries[(target, module)] = _StoredTarget(target, module)

    def record(self, result: ProbeResult) -> bool:
        """Store a finished probe and count it. A result for a target that is not registered
        (removed by a reload while its probe ran) is dropped, so its series stay gone:
        returns False then."""
        with self._lock:
            entry = self._entries.get((result.target, result.module))
            if entry is None:
                return False
            entry.add(result, self._budget)
            return True

    def record_on_demand(self, result: ProbeResult) -> tuple[bytes, ...]:
        """Store and count a `/probe` result, creating its entry if needed; the entry's
        rendered row (see metrics.render_target). When the store is full, the entry
        probed least recently makes room."""
        key = (result.target, result.module)
        with self._lock:
            # Re-inserted on every probe: the dict's order is then least recently probed first.
            entry = self._entries.pop(key, None)
            if entry is None:
                entry = _StoredTarget(result.target, result.module, skipped=None)
                if self._max_entries is not None and len(self._entries) >= self._max_entries:
                    self._evict_oldest()
            self._entries[key] = entry
            slim = _slim(result)
            entry.add(slim, self._budget)
            row = entry.rendered()
            self._bytes -= entry.cost
            # The slim result is kept, and up to OLDER_SESSIONS before it by the history.
            entry.cost = (sum(map(len, row)) + ENTRY_OVERHEAD_BYTES + (1 + OLDER_SESSIONS) * _text_bytes(slim)
                          + COUNTER_BYTES
                          * (len(entry.counts.replies) + len(entry.counts.enhanced) + len(entry.counts.failures)))
            self._bytes += entry.cost
            while self._max_bytes is not None and self._bytes > self._max_bytes and len(self._entries) > 1:
                self._evict_oldest()
            return row

    def _evict_oldest(self) -> None:
        oldest = self._entries.pop(next(iter(self._entries)))
        self._bytes -= oldest.cost

    def record_skip(self, target: str, module: str) -> bool:
        """Count a scheduled run skipped because the previous probe was still running."""
        with self._lock:
            entry = self._entries.get((target, module))
            if entry is None or entry.skipped is None:
                return False
            entry.skipped += 1
            entry.changed()
            return True

    def remove(self, target: str, module: str) -> None:
        with self._lock:
            entry = self._entries.pop((target, module), None)
            if entry is not None:
                self._bytes -= entry.cost

    def __len__(self) -> int:
        """How many entries the store holds."""
        with self._lock:
            return len(self._entries)

    def latest(self, target: str, module: str) -> ProbeResult | None:
        with self._lock:
            entry = self._entries.get((target, module))
            return None if entry is None else entry.latest

    def snapshot(self, *, counts: bool = True) -> list[TargetSnapshot]:
        """Every entry as it is now, in registration order (for /probe entries: least recently
        probed first). The lock is held for SNAPSHOT_CHUNK entries at a time; without `counts`
        each entry's copy is the one made at its last change (see _StoredTarget.view), so an
        entry costs a reference."""
        with self._lock:
            entries = list(self._entries.values())
        snapshots: list[TargetSnapshot] = []
        for start in range(0, len(entries), SNAPSHOT_CHUNK):
            with self._lock:
                for e in entries[start:start + SNAPSHOT_CHUNK]:
                    if self._entries.get((e.target, e.module)) is not e:
                        continue  # removed meanwhile
                    snapshots.append(
                        e.snapshot() if not counts else
                        TargetSnapshot(e.target, e.module, e.latest, e.counts.copy(), e.skipped,
                                       e.tls, e.history.since))
        return snapshots

    def snapshot_entry(self, target: str, module: str) -> TargetSnapshot | None:
        """One entry as `snapshot(counts=False)` has it, or None for an unknown entry."""
        with self._lock:
            entry = self._entries.get((target, module))
            return None if entry is None else entry.snapshot()

    def history(self, target: str, module: str) -> HistoryView | None:
        """The entry's recent history (see history.py), or None for an unknown entry."""
        with self._lock:
            entry = self._entries.get((target, module))
            return None if entry is None else entry.history.view(entry.latest)

    def rows(self) -> list[tuple[bytes, ...]]:
        """Every entry's rendered exposition (see metrics.render_target), in registration
        order. Rows are immutable, so the caller joins them outside the lock.

        Entries that changed are rendered here, each under the lock on its own: a probe
        finishing meanwhile waits for one entry's rendering, never for the whole scrape."""
        with self._lock:
            entries = list(self._entries.items())
            for _, entry in entries:
                entry.scraped = True
        rows = []
        for key, entry in entries:
            row = entry.row
            if row is None:
                with self._lock:
                    if self._entries.get(key) is not entry:
                        continue  # removed by a reload meanwhile: its series are gone
                    row = entry.rendered()
            rows.append(row)
        return rows


# What a /probe entry keeps of a reply for the status page: its first line, this long at most.
SLIM_REPLY_CHARACTERS = 200


def _slim(result: ProbeResult) -> ProbeResult:
    """A /probe result as the store keeps it: counted and shown on the status page, so codes,
    enhanced codes and each reply's first line stay; its transcript and long texts go."""
    stages = tuple(replace(stage, replies=tuple(
        replace(reply, lines=reply.lines[:1] and (reply.lines[0][:SLIM_REPLY_CHARACTERS],))
        for reply in stage.replies)) for stage in result.stages)
    detail = result.detail[:SLIM_REPLY_CHARACTERS] if result.detail else result.detail
    return replace(result, stages=stages, transcript=(), detail=detail)


def _text_bytes(result: ProbeResult) -> int:
    return len(result.detail or "") + sum(len(line) for stage in result.stages
                                          for reply in stage.replies for line in reply.lines)
