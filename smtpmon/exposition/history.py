"""The recent past of each target, for the status page: its last results as compact values, and
the sessions (transcripts) of its last few notable probes.

Recording happens on the probe's hot path, under the store's lock, for every probe: it packs
a start time (whole seconds), a duration (a half-precision float: three significant digits,
which is what a strip of bars can show) and a 16-bit outcome into 8 bytes of a preallocated
buffer (no object is made per probe) and moves one reference. The buffer is fixed at
HISTORY_LENGTH slots per target, so its cost is known in advance (benchmarks/README.md has the
figure for 10,000 targets).

Whole results are large (the transcript is most of one), so a target keeps, besides its latest
result (which the store holds anyway), at most OLDER_SESSIONS earlier ones, and only notable
ones: a failure, or the last success before a failure. A success followed by another success
is forgotten. Across all targets at most `TranscriptBudget.limit` earlier results are kept: the
one kept longest goes first. So a mail outage over 10,000 targets costs a bounded amount.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass

from smtpmon.smtp.results import FAILURE_REASONS, STAGES, ProbeResult

HISTORY_LENGTH = 60
OLDER_SESSIONS = 2
MAX_OLDER_SESSIONS = 1000

# Outcome encoding: 0 is a success; a failure is (stage + 1) << 8 | (reason + 1), each an index
# into the fixed vocabularies, 0 for a name outside them.
_SUCCESS = 0
_STAGE_INDEX = {name: index + 1 for index, name in enumerate(STAGES)}
_REASON_INDEX = {name: index + 1 for index, name in enumerate(FAILURE_REASONS)}
_STAGE_NAMES = (None, *STAGES)
_REASON_NAMES = (None, *FAILURE_REASONS)


def encode_outcome(result: ProbeResult) -> int:
    if result.success:
        return _SUCCESS
    stage = _STAGE_INDEX.get(result.failed_stage or "", 0)
    reason = _REASON_INDEX.get(result.reason or "", 0)
    return (stage << 8 | reason) or 0xFFFF  # a failure with neither name is still a failure


@dataclass(frozen=True, slots=True)
class Point:
    """One past probe, as the history strip draws it."""

    started_at: float  # Unix time, whole seconds
    duration_seconds: float  # to three significant digits
    success: bool
    failed_stage: str | None
    reason: str | None


@dataclass(frozen=True, slots=True)
class HistoryView:
    """A copy of one target's history, safe to read without the store's lock."""

    points: tuple[Point, ...]  # oldest first
    since: float | None  # when the current run of successes or failures began (Unix time)
    sessions: tuple[ProbeResult, ...]  # the latest result first, then the earlier notable ones


class TranscriptBudget:
    """How many earlier results all targets keep together. Shared by the targets of one store and
    used under its lock: `kept` holds (history, result) in the order they were kept; an item
    whose result its history has since let go is simply skipped when it comes up."""

    def __init__(self, limit: int = MAX_OLDER_SESSIONS) -> None:
        self.limit = limit
        self._kept: deque[tuple[TargetHistory, ProbeResult]] = deque()

    def keep(self, history: TargetHistory, result: ProbeResult) -> None:
        self._kept.append((history, result))
        while len(self._kept) > self.limit:
            owner, oldest = self._kept.popleft()
            owner.forget(oldest)


# A slot: start (Unix seconds, unsigned 32 bits: until 2106), duration (float16), outcome.
_SLOT = struct.Struct("<IeH")
_LONGEST_DURATION = 65504.0  # the largest float16


class TargetHistory:
    """The last HISTORY_LENGTH outcomes of one target, in a ring, and its earlier sessions."""

    __slots__ = ("_slots", "_next", "_count", "since", "_older")

    def __init__(self) -> None:
        self._slots = bytearray(_SLOT.size * HISTORY_LENGTH)
        self._next = 0  # the slot the next result goes to
        self._count = 0
        self.since: float | None = None
        self._older: list[ProbeResult] | None = None  # newest first, at most OLDER_SESSIONS

    def record(self, result: ProbeResult, previous: ProbeResult | None,
               budget: TranscriptBudget) -> None:
        """Add `result`; `previous` is the latest result before it (the store holds it)."""
        slot = self._next
        _SLOT.pack_into(self._slots, slot * _SLOT.size, int(result.started_at),
                        min(result.duration_seconds, _LONGEST_DURATION), encode_outcome(result))
        self._next = (slot + 1) % HISTORY_LENGTH
        if self._count < HISTORY_LENGTH:
            self._count += 1
        if previous is None or previous.success != result.success:
            self.since = result.started_at
        if previous is not None and not (previous.success and result.success):
            if self._older is None:
                self._older = []
            older = self._older
            if len(older) == OLDER_SESSIONS:
                older.pop()
            older.insert(0, previous)
            budget.keep(self, previous)

    def forget(self, result: ProbeResult) -> None:
        """Let go of an earlier result (the budget is spent), if it is still kept."""
        for index, kept in enumerate(self._older or ()):
            if kept is result:
                del self._older[index]
                return

    def view(self, latest: ProbeResult | None) -> HistoryView:
        first = (self._next - self._count) % HISTORY_LENGTH
        points = []
        for offset in range(self._count):
            started, duration, outcome = _SLOT.unpack_from(
                self._slots, (first + offset) % HISTORY_LENGTH * _SLOT.size)
            points.append(Point(
                float(started), duration, outcome == _SUCCESS,
                _name(_STAGE_NAMES, outcome >> 8), _name(_REASON_NAMES, outcome & 0xFF),
            ))
        sessions = ((latest,) if latest is not None else ()) + tuple(self._older or ())
        return HistoryView(tuple(points), self.since, sessions)


def _name(names: tuple[str | None, ...], index: int) -> str | None:
    return names[index] if index < len(names) else None
