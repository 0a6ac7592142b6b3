"""The history ring: the last results of a target as compact values, and its notable sessions."""

from __future__ import annotations

import dataclasses

import probe_results

from smtpmon.exposition.history import (
    HISTORY_LENGTH,
    OLDER_SESSIONS,
    TargetHistory,
    TranscriptBudget,
)
from smtpmon.exposition.store import ResultStore


def at(result, started_at: float, duration: float | None = None):
    changes = {"started_at": started_at}
    if duration is not None:
        changes["duration_seconds"] = duration
    return dataclasses.replace(result, **changes)


def feed(history: TargetHistory, results, budget: TranscriptBudget | None = None):
    budget = budget or TranscriptBudget()
    previous = None
    for result in results:
        history.record(result, previous, budget)
        previous = result
    return previous


def test_points_come_back_oldest_first_with_their_outcome():
    history = TargetHistory()
    results = [at(probe_results.healthy(), 100.0, 0.5), at(probe_results.rcpt_450(), 160.0, 0.25)]
    latest = feed(history, results)
    view = history.view(latest)
    assert [(p.started_at, p.duration_seconds, p.success) for p in view.points] == [
        (100.0, 0.5, True), (160.0, 0.25, False)]
    assert (view.points[1].failed_stage, view.points[1].reason) == ("rcpt", "rcpt_rejected")
    assert (view.points[0].failed_stage, view.points[0].reason) == (None, None)


def test_the_ring_keeps_only_the_last_history_length_results():
    history = TargetHistory()
    count = HISTORY_LENGTH * 2 + 7
    results = [at(probe_results.healthy() if i % 3 else probe_results.banner_421(), float(i))
               for i in range(count)]
    latest = feed(history, results)
    points = history.view(latest).points
    assert len(points) == HISTORY_LENGTH
    assert [p.started_at for p in points] == [float(i) for i in range(count - HISTORY_LENGTH, count)]
    assert [p.success for p in points] == [bool(i % 3) for i in range(count - HISTORY_LENGTH, count)]


def test_since_is_when_the_current_run_began():
    history = TargetHistory()
    results = [at(probe_results.healthy(), 10.0), at(probe_results.healthy(), 20.0),
               at(probe_results.banner_421(), 30.0), at(probe_results.rcpt_450(), 40.0)]
    feed(history, results)
    assert history.since == 30.0
    history.record(at(probe_results.healthy(), 50.0), results[-1], TranscriptBudget())
    assert history.since == 50.0


def test_sessions_keep_failures_and_the_last_success_before_one_not_every_success():
    history = TargetHistory()
    ok1, ok2 = at(probe_results.healthy(), 1.0), at(probe_results.healthy(), 2.0)
    failed = at(probe_results.banner_421(), 3.0)
    ok3 = at(probe_results.healthy(), 4.0)
    ok4 = at(probe_results.healthy(), 5.0)
    feed(history, [ok1, ok2])
    assert history.view(ok2).sessions == (ok2,)  # a success after a success: nothing kept
    history.record(failed, ok2, TranscriptBudget())
    assert history.view(failed).sessions == (failed, ok2)
    history.record(ok3, failed, TranscriptBudget())
    assert history.view(ok3).sessions == (ok3, failed, ok2)[:1 + OLDER_SESSIONS]
    history.record(ok4, ok3, TranscriptBudget())
    assert history.view(ok4).sessions[0] is ok4
    assert failed in history.view(ok4).sessions


def test_older_sessions_are_bounded_per_target_and_across_targets():
    budget = TranscriptBudget(limit=3)
    histories = [TargetHistory() for _ in range(4)]
    for number, history in enumerate(histories):
        feed(history, [at(probe_results.banner_421(), float(number * 10 + i)) for i in range(5)],
             budget)
    kept = [len(h.view(None).sessions) for h in histories]
    assert max(kept) <= OLDER_SESSIONS
    assert sum(kept) <= 3
    assert len(histories[-1].view(None).sessions) == OLDER_SESSIONS  # the newest are kept


def test_the_store_records_history_and_hands_out_copies():
    store = ResultStore()
    store.register("mx.example.org:25", "mx")
    store.record(at(probe_results.healthy(), 1.0))
    view = store.history("mx.example.org:25", "mx")
    store.record(at(probe_results.banner_421("mx.example.org:25"), 2.0))
    assert [p.success for p in view.points] == [True]  # the copy does not change
    later = store.history("mx.example.org:25", "mx")
    assert [p.success for p in later.points] == [True, False]
    assert later.since == 2.0
    (snapshot,) = store.snapshot(counts=False)
    assert snapshot.since == 2.0
    assert store.history("nowhere:25", "mx") is None


def test_snapshot_in_chunks_sees_every_entry_once():
    store = ResultStore()
    names = [f"mx{i}.example.org:25" for i in range(1000)]
    for name in names:
        store.register(name, "mx")
    assert [s.target for s in store.snapshot(counts=False)] == names


def test_a_point_keeps_the_second_and_three_significant_digits_of_the_duration():
    history = TargetHistory()
    result = at(probe_results.healthy(), 1_700_000_123.75, 0.0423)
    history.record(result, None, TranscriptBudget())
    history.record(at(probe_results.healthy(), 1_700_000_200.0, 1e9), result, TranscriptBudget())
    first, second = history.view(None).points
    assert first.started_at == 1_700_000_123.0
    assert abs(first.duration_seconds - 0.0423) / 0.0423 < 0.001
    assert second.duration_seconds == 65504.0  # a duration past float16's range is capped
    assert history.since == 1_700_000_123.75  # "since" keeps the exact start
