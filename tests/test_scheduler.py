"""The scheduler: when probes run, how many at once, and that nothing a probe does stops it.

Most tests drive the scheduler with a stand-in probe function that records when it was called
(the schedule is what is under test here, not SMTP); one runs the real probe engine against a
loopback tarpit and a loopback SMTP server. The store and exporter state are the real ones.
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import re
import statistics
import threading
import time
import types
from collections import defaultdict
from types import MappingProxyType

import pytest
from helpers import render_metrics, sample_value
from smtpservers import BANNER, EHLO_OK, QUIT_OK, Sleep

from smtpmon.config.load import Config, Settings, Target
from smtpmon.exposition.state import ExporterState
from smtpmon.exposition.store import ResultStore
from smtpmon.logs import setup_logging
from smtpmon.runtime.scheduler import Scheduler, spread_offset
from smtpmon.smtp.module import Module
from smtpmon.smtp.results import ProbeResult, StageResult
from smtpmon.smtp.session import run_probe


def make_config(targets, *, interval=1.0, timeout=0.5, max_concurrency=8, modules=None):
    modules = modules or {"m": Module(timeout_seconds=timeout)}
    return Config(
        settings=Settings(interval_seconds=interval, timeout_seconds=timeout,
                          max_concurrency=max_concurrency),
        modules=MappingProxyType(dict(modules)),
        targets=tuple(
            Target(name=name, host=name.rpartition(":")[0], port=int(name.rpartition(":")[2]),
                   module=module, interval_seconds=interval, timeout_seconds=timeout)
            for name, module in ((t if isinstance(t, tuple) else (t, "m")) for t in targets)
        ),
        source="test",
    )


class RecordingProbe:
    """Stands in for the probe engine: notes each call's time; `behaviour` per target."""

    def __init__(self, behaviour=None):
        self.calls: dict[str, list[float]] = defaultdict(list)
        self.lock = threading.Lock()
        self.behaviour = behaviour or {}

    def __call__(self, target, host, port, module, *, deadline, module_name, hub):
        with self.lock:
            self.calls[target].append(time.monotonic())
        action = self.behaviour.get(target)
        if action == "raise":
            raise RuntimeError("probe engine bug")
        if action == "hang":  # a probe that honours its deadline, waiting on the hub as the engine does
            hub.sleep(max(0.0, deadline - time.monotonic()))
        return ProbeResult(target=target, module=module_name, success=True, started_at=time.time(),
                           duration_seconds=0.001,
                           stages=(StageResult("banner", 0.001, True),))

    def count(self, target):
        with self.lock:
            return len(self.calls[target])


@pytest.fixture
def running():
    """Start a scheduler on a config; stops it at the end of the test."""
    started = []

    def start(config, probe):
        store, state = ResultStore(), ExporterState()
        scheduler = Scheduler(store, state, probe)
        scheduler.apply(config)
        scheduler.start()
        started.append(scheduler)
        return scheduler, store, state

    yield start
    for scheduler in started:
        scheduler.stop(2.0)


def test_spread_offset_is_stable_and_covers_the_interval():
    offsets = [spread_offset(f"mx{i}.example.org:25/mx", 60.0) for i in range(1000)]
    assert offsets == [spread_offset(f"mx{i}.example.org:25/mx", 60.0) for i in range(1000)]
    assert all(0 <= offset < 60 for offset in offsets)
    # Roughly uniform: each tenth of the interval gets its share (100 expected).
    buckets = [0] * 10
    for offset in offsets:
        buckets[int(offset // 6)] += 1
    assert min(buckets) > 60 and max(buckets) < 140


def first_runs(running, count: int, *, interval: float, wait: float) -> list[float]:
    """When each of `count` new targets first ran, in seconds from the start, sorted."""
    probe = RecordingProbe()
    names = [f"127.0.0.{i}:25" for i in range(1, count + 1)]
    started = time.monotonic()
    running(make_config(names, interval=interval, timeout=interval / 2), probe)
    time.sleep(wait)
    return sorted(probe.calls[name][0] - started for name in names if probe.calls[name])


def test_first_runs_are_spread_over_the_interval(running):
    firsts = first_runs(running, 40, interval=2.0, wait=2.1)
    assert len(firsts) == 40
    # Not fired at once: spread across the 2 s interval, the middle half over at least ~0.5 s.
    assert firsts[-1] - firsts[0] > 1.0
    assert firsts[30] - firsts[10] > 0.5


def test_first_runs_of_a_small_config_start_a_few_together(running):
    firsts = first_runs(running, 12, interval=1.0, wait=1.0)
    assert len(firsts) == 12
    groups = 1 + sum(1 for a, b in zip(firsts, firsts[1:]) if b - a > 0.03)
    # Twelve first runs over 0.6 s, in slots of about four: a few wake-ups, not twelve, and
    # still spread out rather than all at once.
    assert 2 <= groups <= 4, firsts


def test_a_small_config_runs_at_once(running):
    probe = RecordingProbe()
    started = time.monotonic()
    running(make_config(["127.0.0.1:25", "127.0.0.2:25"], interval=60.0, timeout=10.0), probe)
    time.sleep(0.3)
    assert probe.count("127.0.0.1:25") == 1 and probe.count("127.0.0.2:25") == 1
    assert probe.calls["127.0.0.1:25"][0] - started < 0.2


def test_each_target_runs_once_per_interval(running):
    probe = RecordingProbe()
    scheduler, store, state = running(make_config(["127.0.0.1:25"], interval=0.3, timeout=0.2), probe)
    time.sleep(2.0)
    calls = probe.calls["127.0.0.1:25"]
    assert 5 <= len(calls) <= 8
    gaps = [b - a for a, b in zip(calls, calls[1:])]
    assert statistics.median(gaps) == pytest.approx(0.3, abs=0.05)
    metrics = render_metrics(store, state)
    assert sample_value(metrics, "smtpmon_probes_total", target="127.0.0.1:25") == len(calls)


def test_overlapping_run_is_skipped_and_counted(running):
    # The probe takes its whole 0.9 s timeout; the interval is 0.4 s: runs in between are skipped.
    probe = RecordingProbe({"127.0.0.1:2525": "hang"})
    config = make_config(["127.0.0.1:2525"], interval=0.4, timeout=0.9)
    scheduler, store, state = running(config, probe)
    time.sleep(2.5)
    metrics = render_metrics(store, state)
    skipped = sample_value(metrics, "smtpmon_probe_skipped_total", target="127.0.0.1:2525")
    started = probe.count("127.0.0.1:2525")
    assert 2 <= started <= 3  # never two at once: a new one only after the last one ended
    assert skipped >= 2
    calls = probe.calls["127.0.0.1:2525"]
    assert all(b - a >= 0.85 for a, b in zip(calls, calls[1:]))


def test_a_crashing_or_hanging_probe_does_not_stop_or_delay_the_others(running):
    probe = RecordingProbe({"10.255.255.1:25": "raise", "10.255.255.2:25": "hang"})
    healthy = [f"127.0.0.{i}:25" for i in range(1, 6)]
    config = make_config(healthy + ["10.255.255.1:25", "10.255.255.2:25"],
                         interval=0.5, timeout=0.45, max_concurrency=3)
    scheduler, store, state = running(config, probe)
    time.sleep(2.6)
    for name in healthy:
        assert probe.count(name) >= 4, name
    assert probe.count("10.255.255.1:25") >= 4  # the crash did not stop its own schedule either
    metrics = render_metrics(store, state)
    assert sample_value(metrics, "smtpmon_probe_failures_total", target="10.255.255.1:25",
                  reason="internal_error") >= 4
    assert sample_value(metrics, "smtpmon_probe_success", target="10.255.255.1:25") == 0
    assert scheduler.running
    # Lag stays small although one worker of three is always busy with the hanging target.
    assert lag_quantile(metrics, 0.99) <= 0.1


def lag_quantile(metrics: bytes, quantile: float) -> float:
    """The upper bound of the histogram bucket that holds the quantile."""
    buckets = [(float(m.group(1)), float(m.group(2))) for m in re.finditer(
        rb'smtpmon_schedule_lag_seconds_bucket\{le="([^"]+)"\} (\S+)'.decode(), metrics.decode())]
    total = buckets[-1][1]
    assert total > 0
    for bound, count in buckets:
        if count >= quantile * total:
            return bound
    return float("inf")


def test_apply_adds_removes_and_keeps_unchanged_targets(running):
    probe = RecordingProbe()
    first = make_config(["127.0.0.1:25", "127.0.0.2:25"], interval=0.2, timeout=0.1)
    scheduler, store, state = running(first, probe)
    time.sleep(0.8)
    kept_before = sample_value(render_metrics(store, state), "smtpmon_probes_total", target="127.0.0.1:25")
    assert kept_before >= 2

    second = make_config(["127.0.0.1:25", "127.0.0.3:25"], interval=0.2, timeout=0.1)
    scheduler.apply(second)
    removed_calls = probe.count("127.0.0.2:25")
    time.sleep(0.8)
    metrics = render_metrics(store, state)
    assert sample_value(metrics, "smtpmon_probes_total", target="127.0.0.1:25") > kept_before
    assert sample_value(metrics, "smtpmon_probes_total", target="127.0.0.3:25") >= 2
    assert sample_value(metrics, "smtpmon_probe_success", target="127.0.0.2:25") is None
    assert b"127.0.0.2:25" not in metrics
    assert probe.count("127.0.0.2:25") <= removed_calls + 1  # at most the one in flight


def test_an_apply_that_cannot_be_held_changes_nothing(running):
    """A value the schedule's dates cannot hold (validation bounds it; this is the net below):
    apply raises before it retires, registers or schedules anything."""
    probe = RecordingProbe()
    first = make_config(["127.0.0.1:25", "127.0.0.2:25"], interval=0.2, timeout=0.1)
    scheduler, store, state = running(first, probe)
    time.sleep(0.5)
    counted = sample_value(render_metrics(store, state), "smtpmon_probes_total", target="127.0.0.2:25")
    assert counted >= 1
    second = make_config(["127.0.0.1:25", "127.0.0.3:25", "127.0.0.4:25"], interval=0.2, timeout=0.1)
    centuries = dataclasses.replace(second.targets[2], interval_seconds=360e9)
    unholdable = dataclasses.replace(second, targets=(*second.targets[:2], centuries))

    with pytest.raises(OverflowError):
        scheduler.apply(unholdable)
    time.sleep(0.5)
    metrics = render_metrics(store, state)
    assert sample_value(metrics, "smtpmon_probes_total", target="127.0.0.2:25") > counted  # still probed
    assert b"127.0.0.3:25" not in metrics and b"127.0.0.4:25" not in metrics  # no phantom series
    assert probe.count("127.0.0.3:25") == 0


def test_apply_restarts_a_target_whose_module_options_changed(running):
    probe = RecordingProbe()
    config = make_config(["127.0.0.1:25"], interval=0.2, timeout=0.1)
    scheduler, store, state = running(config, probe)
    time.sleep(0.7)
    assert sample_value(render_metrics(store, state), "smtpmon_probes_total", target="127.0.0.1:25") >= 2
    changed = make_config(["127.0.0.1:25"], interval=0.2, timeout=0.1,
                          modules={"m": Module(timeout_seconds=0.1, tls="none")})
    scheduler.apply(changed)
    # Counters of the old options are gone; the target starts over from zero (its first run
    # under the new options may already have come: a lone new target runs at once).
    assert sample_value(render_metrics(store, state), "smtpmon_probes_total", target="127.0.0.1:25") <= 1


def test_stop_starts_nothing_new_and_waits_for_in_flight_probes(running):
    probe = RecordingProbe({"127.0.0.9:25": "hang"})
    config = make_config(["127.0.0.9:25"] + [f"127.0.0.{i}:25" for i in range(1, 4)],
                         interval=1.0, timeout=0.8)
    scheduler, store, state = running(config, probe)
    time.sleep(1.2)
    begun = time.monotonic()
    assert scheduler.stop(2.0)
    assert time.monotonic() - begun < 0.9  # the hanging probe ends at its deadline
    assert not scheduler.running
    counts = {name: len(calls) for name, calls in probe.calls.items()}
    time.sleep(1.2)
    assert {name: len(calls) for name, calls in probe.calls.items()} == counts


def test_ten_thousand_targets_keep_schedule_lag_low(running):
    """The loop's cost per due probe must not grow with the number of targets."""
    probe = RecordingProbe()
    names = [f"10.{i // 65536}.{i // 256 % 256}.{i % 256}:25" for i in range(10_000)]
    # 10,000 targets every 10 s: 1,000 probes a second, six times the 10,000 per 60 s.
    scheduler, store, state = running(
        make_config(names, interval=10.0, timeout=5.0, max_concurrency=16), probe)
    time.sleep(3.0)
    metrics = render_metrics(store, state)
    done = sum(len(calls) for calls in probe.calls.values())
    assert done >= 2500
    # The issue asks for p99 < 1 s at a sixth of this rate; a loop that scanned every job on
    # every tick (schedule.run_pending) would fall seconds behind here. ~0.1 s is usual; the
    # bound leaves room for a busy machine (0.25 s was once exceeded while the tests ran
    # beside another load) and still catches a loop that falls behind.
    assert lag_quantile(metrics, 0.99) <= 0.5


def test_real_probes_a_tarpit_does_not_hold_up_a_healthy_server(running, scripted_server):
    tarpit = scripted_server([Sleep(30)])  # accepts, never says a word
    healthy = scripted_server([BANNER, EHLO_OK, QUIT_OK])
    module = Module(tls="none", timeout_seconds=0.8)
    config = make_config([tarpit.target, healthy.target], interval=1.0, timeout=0.8,
                         max_concurrency=2, modules={"m": module})
    scheduler, store, state = running(config, run_probe)
    time.sleep(3.2)
    metrics = render_metrics(store, state)
    assert sample_value(metrics, "smtpmon_probe_success", target=healthy.target) == 1
    assert sample_value(metrics, "smtpmon_probes_total", target=healthy.target) >= 3
    assert sample_value(metrics, "smtpmon_probe_success", target=tarpit.target) == 0
    assert sample_value(metrics, "smtpmon_probe_failures_total", target=tarpit.target, stage="banner",
                  reason="timeout") >= 2
    assert lag_quantile(metrics, 0.99) <= 0.1


def test_log_lines_mark_changes_not_every_probe(running):
    stream = io.StringIO()
    setup_logging("info", stream)
    outcomes = iter([False, False, False, True, True])

    def flaky(target, host, port, module, *, deadline, module_name, hub):
        ok = next(outcomes, True)
        return ProbeResult(target=target, module=module_name, success=ok, started_at=time.time(),
                           duration_seconds=0.001, failed_stage=None if ok else "banner",
                           reason=None if ok else "banner_rejected")

    try:
        running(make_config(["127.0.0.1:25"], interval=0.2, timeout=0.1), flaky)
        time.sleep(1.3)
    finally:
        setup_logging("info")
    # Three failures in a row: one line; the recovery: one line. "ts=..." left out.
    lines = [line.split(" ", 1)[1] for line in stream.getvalue().splitlines() if "target=" in line]
    assert lines == [
        'level=warn msg="probe failed" target=127.0.0.1:25 module=m stage=banner '
        'reason=banner_rejected duration_seconds=0.001',
        'level=info msg="probe recovered" target=127.0.0.1:25 module=m duration_seconds=0.001',
    ]


class ConcurrencyProbe(RecordingProbe):
    """Every probe hangs until its deadline; notes the most probes in flight at once."""

    def __init__(self):
        super().__init__()
        self.in_flight = 0
        self.most = 0

    def __call__(self, target, host, port, module, *, deadline, module_name, hub):
        with self.lock:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
        try:
            hub.sleep(max(0.0, deadline - time.monotonic()))
            return super().__call__(target, host, port, module, deadline=deadline,
                                    module_name=module_name, hub=hub)
        finally:
            with self.lock:
                self.in_flight -= 1


def test_max_concurrency_bounds_the_probes_in_flight(running):
    probe = ConcurrencyProbe()
    targets = [f"127.0.0.{i}:25" for i in range(1, 7)]
    scheduler, store, state = running(make_config(targets, interval=1.0, timeout=0.3,
                                                  max_concurrency=2), probe)
    time.sleep(2.0)
    assert probe.most == 2
    assert all(probe.count(target) >= 1 for target in targets)  # queued, not dropped


def test_a_lowered_max_concurrency_holds_from_the_reload_on(running):
    probe = ConcurrencyProbe()
    targets = [f"127.0.0.{i}:25" for i in range(1, 5)]
    scheduler, store, state = running(make_config(targets, interval=1.0, timeout=0.6,
                                                  max_concurrency=4), probe)
    deadline = time.monotonic() + 2.0
    while probe.in_flight < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert probe.in_flight == 4
    scheduler.apply(make_config(targets, interval=1.0, timeout=0.6, max_concurrency=1))
    time.sleep(0.7)  # the four in flight have ended by their deadlines
    probe.most = probe.in_flight
    time.sleep(1.5)
    assert probe.most == 1
    assert scheduler.stop(2.0)
    assert probe.in_flight == 0  # stop waited for the probe in flight


@pytest.fixture
def stepped_clock(monkeypatch):
    """Local wall time as `schedule` and the scheduler read it, plus `offset` seconds: set
    `offset` to step the clock as a daylight-saving change or NTP does."""
    import schedule as schedule_module

    import smtpmon.runtime.scheduler as scheduler_module

    clock = types.SimpleNamespace(offset=0.0)

    class SteppedDatetime(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.datetime.now(tz) + datetime.timedelta(seconds=clock.offset)

    shim = types.SimpleNamespace(**{name: getattr(datetime, name) for name in dir(datetime)
                                    if not name.startswith("__")})
    shim.datetime = SteppedDatetime
    monkeypatch.setattr(scheduler_module, "datetime", shim)
    monkeypatch.setattr(schedule_module, "datetime", shim)
    return clock


@pytest.mark.parametrize("step", [-3600.0, 3600.0])
def test_a_wall_clock_step_neither_stalls_nor_bunches_the_schedule(running, stepped_clock, step):
    probe = RecordingProbe()
    targets = [f"127.0.0.{i}:25" for i in range(1, 5)]
    scheduler, store, state = running(make_config(targets, interval=0.5, timeout=0.3), probe)
    time.sleep(1.2)
    before = {target: probe.count(target) for target in targets}
    stepped_clock.offset = step  # the clock goes back an hour (autumn) or forward (spring)
    time.sleep(1.6)
    after = {target: probe.count(target) - before[target] for target in targets}
    # 1.6 s at 0.5 s: three runs each, give or take one; back an hour, without the fix, none
    # for an hour; forward, every target at once and then every 0.5 s from that moment.
    assert all(2 <= runs <= 4 for runs in after.values()), after
    assert scheduler.running


def test_a_dispatch_error_keeps_the_target_scheduled(running):
    class FailingOnce(ResultStore):
        failed = False

        def record_skip(self, target, module):
            if not FailingOnce.failed:
                FailingOnce.failed = True
                raise RuntimeError("store bug")
            return super().record_skip(target, module)

    probe = ConcurrencyProbe()  # hangs to its deadline: the next run is a skip
    store, state = FailingOnce(), ExporterState()
    scheduler = Scheduler(store, state, probe)
    scheduler.apply(make_config(["127.0.0.1:25"], interval=0.2, timeout=0.3))
    scheduler.start()
    try:
        time.sleep(1.5)
    finally:
        scheduler.stop(2.0)
    assert FailingOnce.failed
    assert probe.count("127.0.0.1:25") >= 3  # still probed after the error


def test_an_error_in_the_hub_does_not_end_the_schedule(running, monkeypatch):
    probe = RecordingProbe()
    scheduler, store, state = running(make_config(["127.0.0.1:25"], interval=0.2, timeout=0.1), probe)
    real_run_once = scheduler._hub.run_once
    failures = []

    def fails_once(timeout):
        if not failures:
            failures.append(timeout)
            raise OSError("epoll broke")
        return real_run_once(timeout)

    monkeypatch.setattr(scheduler._hub, "run_once", fails_once)
    time.sleep(2.2)
    assert failures and scheduler.running
    assert probe.count("127.0.0.1:25") >= 5  # a second's pause, then on every 0.2 s
