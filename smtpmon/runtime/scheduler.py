"""The schedule: probe every configured target at its interval, at most max_concurrency at once.

The `schedule` library decides when each target is due: one `schedule.Job` per target, on a
private `schedule.Scheduler()`. Its `run_pending()` and `idle_seconds` scan every job on every
tick, which at 10,000 targets takes longer than the time between two due probes: the loop
would eat a core and fall behind (figures in benchmarks/README.md). So the loop keeps a heap
of the jobs' `next_run` times, runs each due job through `Job.run()` (which calls our dispatch
and lets `schedule` compute the next run), and pushes the job back with its new `next_run`:
O(log n) per due probe, nothing per idle tick.

The same thread runs the probes: each session is a greenlet on a `smtpmon.net.hub.Hub`, parked
while it waits for its server, and the loop waits on the hub (every session's socket at once)
until the next due time. Stop and reload wake it at once.

Guarantees:
- at most one probe per target in flight: a run that falls due while the previous one is still
  queued or running is skipped and counted (`store.record_skip`);
- first runs are spread by a stable hash of the target, not fired at once: over the interval,
  or over a shorter window when few targets are new (at most FIRST_RUNS_PER_SECOND start);
- schedule lag (start of the session - due time) is observed for every probe, so probes
  waiting for a free slot show up as lag;
- nothing a probe does (hang, raise, hostile server) reaches the loop: the probe has its own
  deadline, enforced by the hub, and every call is wrapped. A probe must only ever wait
  through the hub it is given.
"""

from __future__ import annotations

import collections
import datetime
import hashlib
import heapq
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import schedule

from smtpmon.logs import get_logger
from smtpmon.net.hub import Hub
from smtpmon.smtp.module import Module
from smtpmon.smtp.results import ProbeResult
from smtpmon.smtp.session import run_probe

log = get_logger("scheduler")

# The loop sleeps until the next due job but never longer than this: a safety net against the
# wall clock (which `schedule` uses) being stepped; stop and reload wake the loop at once.
MAX_SLEEP_SECONDS = 1.0

# After stop()'s timeout the loop leaves its sessions where they wait and ends; it gets this
# much longer to get there (a round of the hub, the lock).
STOP_JOIN_SLACK_SECONDS = 1.0

# `schedule` counts in naive local time, which jumps at a daylight-saving change or an NTP
# step. A jump larger than this (measured against the monotonic clock) moves every pending
# run by the same amount, so the spread is kept and nothing waits an hour or fires at once.
CLOCK_STEP_SECONDS = 1.0
_LOCAL_EPOCH = datetime.datetime(1970, 1, 1)

# Due probes start in rounds at least this far apart (sooner when the loop is awake anyway for
# a probe's socket): probes started together share one wake-up of the process and each other's
# warm caches, which costs far less CPU per probe than one wake-up each (benchmarks/README.md).
# The price is up to this much schedule lag, which the lag histogram shows.
DISPATCH_ROUND_SECONDS = 0.05

# New targets' first runs start at about this rate at most (spread over at most their interval),
# about this many together: a small configuration's probes then share wake-ups too, as a large
# one's do in every dispatch round (benchmarks/README.md).
FIRST_RUNS_PER_SECOND = 20.0
FIRST_RUNS_TOGETHER = 4

# The probe engine's signature (smtpmon.smtp.session.run_probe): (target name, host, port,
# module, *, deadline= absolute time.monotonic(), module_name=, hub= the hub to wait on).
ProbeFunction = Callable[..., ProbeResult]


class Store(Protocol):
    def register(self, target: str, module: str) -> None: ...
    def record(self, result: ProbeResult) -> None: ...
    def record_skip(self, target: str, module: str) -> None: ...
    def remove(self, target: str, module: str) -> None: ...


class State(Protocol):
    def probe_started(self) -> None: ...
    def probe_finished(self) -> None: ...
    def observe_schedule_lag(self, seconds: float) -> None: ...


def spread_offset(key: str, interval_seconds: float) -> float:
    """Where in its interval a target first runs: stable across restarts, uniform over keys."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 * interval_seconds


@dataclass(eq=False)
class _ScheduledTarget:
    name: str  # the address as configured: the `target` label
    host: str
    port: int
    module_name: str
    module: Module
    interval_seconds: float
    timeout_seconds: float
    signature: tuple  # (config Target, Module): equal on reload means "unchanged"
    job: schedule.Job | None = None
    busy: bool = False  # a probe is waiting for a free slot or running
    active: bool = True  # False once removed by a reload or stop
    failure: tuple[str | None, str | None] | None = None  # (stage, reason) of the last probe


class Scheduler:
    def __init__(self, store: Store, state: State, probe: ProbeFunction = run_probe):
        self._store = store
        self._state = state
        self._probe = probe
        self._lock = threading.Lock()
        self._hub = Hub()
        self._stopping = threading.Event()
        self._stop_deadline = 0.0  # monotonic; set by stop() before it wakes the loop
        self._schedule = schedule.Scheduler()
        self._entries: dict[tuple[str, str], _ScheduledTarget] = {}
        self._heap: list[tuple[datetime.datetime, int, _ScheduledTarget]] = []
        self._sequence = itertools.count()
        self._max_concurrency = 1
        # Due probes waiting for a free slot, oldest first: (entry, due time). Filled under
        # the lock by _dispatch, emptied by the loop outside it (a session may take the lock).
        self._waiting: collections.deque[tuple[_ScheduledTarget, datetime.datetime]] = collections.deque()
        self._thread: threading.Thread | None = None
        self._clock_offset: float | None = None  # local wall time - monotonic time, seconds

    # -- configuration -------------------------------------------------------------------

    def apply(self, config) -> None:
        """Make the running schedule match `config`.

        New targets start (first runs spread out), removed ones stop and their series go,
        unchanged ones (same target settings and module options) keep their schedule and
        counters; a changed one starts over as new.

        All or nothing: whatever raises (a value the schedule's dates cannot hold), it raises
        before anything changed, so the running schedule and every series stay as they were.
        """
        max_concurrency = max(1, int(config.settings.max_concurrency))
        with self._lock:
            wanted: dict[tuple[str, str], _ScheduledTarget] = {}
            new: list[tuple[object, Module]] = []
            for target in config.targets:
                module = config.modules[target.module]
                old = self._entries.get((target.name, target.module))
                if old is not None and old.signature == (target, module):
                    wanted[(target.name, target.module)] = old
                else:
                    new.append((target, module))
            added, first_runs = self._prepare(new)
            # Retire first: a changed target's fresh series must not be removed with the old.
            self._retire([old for key, old in self._entries.items() if key not in wanted])
            for entry in added:
                self._store.register(entry.name, entry.module_name)
            self._schedule.jobs.extend(entry.job for entry in added)
            wanted.update(((entry.name, entry.module_name), entry) for entry in added)
            self._entries = wanted
            for entry, first_run in zip(added, first_runs):
                entry.job.next_run = first_run
                heapq.heappush(self._heap, (first_run, next(self._sequence), entry))
            # Lowered, it holds from now on: running probes finish, no new one starts past it.
            self._max_concurrency = max_concurrency
        self._hub.wake()
        log.info("schedule applied", targets=len(wanted), max_concurrency=self._max_concurrency)

    def _prepare(self, new: list[tuple[object, Module]]) -> tuple[list[_ScheduledTarget], list[datetime.datetime]]:
        """The entries of new targets with their jobs, and their first runs; nothing is
        scheduled or registered yet (the jobs are made on a scratch scheduler)."""
        scratch = schedule.Scheduler()
        entries = []
        for target, module in new:
            entry = _ScheduledTarget(
                name=target.name,
                host=target.host,
                port=target.port,
                module_name=target.module,
                module=module,
                interval_seconds=float(target.interval_seconds),
                timeout_seconds=float(target.timeout_seconds),
                signature=(target, module),
            )
            entry.job = scratch.every(entry.interval_seconds).seconds.do(self._dispatch, entry)
            entry.job.scheduler = self._schedule
            entries.append(entry)
        return entries, self._first_runs(entries)

    def _first_runs(self, entries: list[_ScheduledTarget]) -> list[datetime.datetime]:
        """`schedule` would fire every new job one interval from now, all together. Instead
        each starts at its own point (a hash of its name) in a window counted from after the
        whole apply: the interval, or less when few targets are new, so that a small config
        shows results at once while thousands are spread evenly. `schedule` computes every
        later run from there, keeping the spread.

        The points are slots that each take about FIRST_RUNS_TOGETHER targets, so that the
        probes of a small config share wake-ups too (with many targets, every dispatch round
        holds several anyway)."""
        now = datetime.datetime.now()
        window = len(entries) / FIRST_RUNS_PER_SECOND
        first_runs = []
        for entry in entries:
            key = f"{entry.name}/{entry.module_name}"
            spread = min(entry.interval_seconds, window)
            slot = max(DISPATCH_ROUND_SECONDS, FIRST_RUNS_TOGETHER * spread / len(entries))
            offset = spread_offset(key, spread) // slot * slot
            first_runs.append(now + datetime.timedelta(seconds=offset))
        return first_runs

    def _retire(self, entries: list[_ScheduledTarget]) -> None:
        """Stop scheduling `entries` and drop their series (their heap items are skipped
        lazily). One pass over the jobs: `cancel_job` per entry would be O(n²) on a big reload."""
        if not entries:
            return
        for entry in entries:
            entry.active = False
            self._store.remove(entry.name, entry.module_name)
        gone = {id(entry.job) for entry in entries}
        self._schedule.jobs[:] = [job for job in self._schedule.jobs if id(job) not in gone]

    # -- running -------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping.is_set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> bool:
        """Start no new probe; give the in-flight ones up to `timeout` to finish, then abandon
        them where they wait (they record nothing; `in_flight` counts them).

        Returns True when the scheduler's thread ended.
        """
        self._stop_deadline = time.monotonic() + timeout
        self._stopping.set()
        for entry in list(self._entries.values()):
            entry.active = False  # probes still waiting for a slot never start
        self._hub.wake()
        if self._thread is None:  # never started: nothing ran
            self._hub.close()
            return True
        self._thread.join(timeout + STOP_JOIN_SLACK_SECONDS)
        return not self._thread.is_alive()

    @property
    def in_flight(self) -> int:
        """Probe sessions started and not finished (after stop: the abandoned ones)."""
        return self._hub.sessions

    def _loop(self) -> None:
        hub = self._hub
        try:
            while not self._stopping.is_set():
                try:
                    with self._lock:
                        delay = self._run_due()
                    self._start_waiting()
                except Exception:  # a bug here must not silently end all monitoring
                    log.exception("scheduler loop error")
                    delay = MAX_SLEEP_SECONDS
                try:
                    hub.run_once(min(max(delay, DISPATCH_ROUND_SECONDS), MAX_SLEEP_SECONDS))
                except Exception:  # the same promise; and a broken poll must not spin
                    log.exception("probe hub error")
                    time.sleep(MAX_SLEEP_SECONDS)
            for entry, _ in self._waiting:
                entry.busy = False
            self._waiting.clear()
            # Probes in flight get until stop()'s deadline; those still waiting then are
            # abandoned where they wait, never resumed, and record nothing.
            while hub.sessions and time.monotonic() < self._stop_deadline:
                hub.run_once(self._stop_deadline - time.monotonic())
        finally:
            if not hub.sessions:
                hub.close()

    def _start_waiting(self) -> None:
        """Start due probes while fewer than max_concurrency run."""
        hub, waiting = self._hub, self._waiting
        while waiting and hub.sessions < self._max_concurrency:
            hub.spawn(self._run_probe, *waiting.popleft())

    def _run_due(self) -> float:
        """Dispatch every due job; return the seconds until the next one."""
        now = datetime.datetime.now()
        self._follow_clock_steps(now)
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, entry = heapq.heappop(heap)
            if not entry.active:
                continue
            due = entry.job.next_run
            try:
                entry.job.run()  # calls self._dispatch(entry), then schedules the next run
                # `schedule` counts the next run from now: count it from the due time, or
                # every round's lag would stretch the interval (unless it is long past).
                on_time = due + datetime.timedelta(seconds=entry.interval_seconds)
                if on_time > now:
                    entry.job.next_run = on_time
            except Exception:  # the target must stay scheduled whatever went wrong here
                log.exception("dispatching a probe failed", target=entry.name, module=entry.module_name)
                entry.job.next_run = now + datetime.timedelta(seconds=entry.interval_seconds)
            heapq.heappush(heap, (entry.job.next_run, next(self._sequence), entry))
        if not heap:
            return MAX_SLEEP_SECONDS
        return max(0.0, (heap[0][0] - now).total_seconds())

    def _follow_clock_steps(self, now: datetime.datetime) -> None:
        offset = (now - _LOCAL_EPOCH).total_seconds() - time.monotonic()
        previous, self._clock_offset = self._clock_offset, offset
        if previous is None or abs(offset - previous) <= CLOCK_STEP_SECONDS:
            return
        step = datetime.timedelta(seconds=offset - previous)
        log.info("wall clock stepped; moving every pending run with it",
                 step_seconds=f"{step.total_seconds():.1f}")
        pending = [entry for _, _, entry in self._heap if entry.active]
        for entry in pending:
            entry.job.next_run += step
        self._heap = [(entry.job.next_run, next(self._sequence), entry) for entry in pending]
        heapq.heapify(self._heap)

    def _dispatch(self, entry: _ScheduledTarget) -> None:
        """Called by `Job.run()` while the scheduler lock is held: queue one probe."""
        if self._stopping.is_set():
            return
        if entry.busy:
            self._store.record_skip(entry.name, entry.module_name)
            log.warning("probe skipped: previous run still in flight",
                        target=entry.name, module=entry.module_name)
            return
        entry.busy = True
        # `schedule` moves next_run on only after this call returns: it is the due time.
        self._waiting.append((entry, entry.job.next_run))

    def _run_probe(self, entry: _ScheduledTarget, due: datetime.datetime) -> None:
        """A session on the hub: one probe of one target; never lets anything escape."""
        try:
            if not entry.active:  # removed by a reload while waiting: not a probe, not a lag
                return
            self._state.observe_schedule_lag((datetime.datetime.now() - due).total_seconds())
            self._state.probe_started()
            try:
                deadline = time.monotonic() + entry.timeout_seconds
                result = self._probe(entry.name, entry.host, entry.port, entry.module,
                                     deadline=deadline, module_name=entry.module_name, hub=self._hub)
            finally:
                self._state.probe_finished()
            with self._lock:
                # A reload may have removed the target meanwhile: its series must stay gone.
                if entry.active:
                    self._store.record(result)
            self._log_result(entry, result)
        except Exception as error:
            log.exception("probe crashed", target=entry.name, module=entry.module_name)
            self._record_crash(entry, error)
        finally:
            entry.busy = False

    @staticmethod
    def _log_result(entry: _ScheduledTarget, result: ProbeResult) -> None:
        """Warn when a target starts failing or fails differently, info when it recovers;
        debug otherwise, so 10,000 targets failing the same way each minute do not flood the
        journal, and an operator's "warnings and errors only" filter shows every new failure."""
        failure = None if result.success else (result.failed_stage, result.reason)
        changed, entry.failure = failure != entry.failure, failure
        if not changed and not log.enabled("debug"):
            return  # the usual case: skip building the fields of a line nobody writes
        where = dict(target=entry.name, module=entry.module_name)
        took = f"{result.duration_seconds:.3f}"
        if result.success:
            (log.info if changed else log.debug)(
                "probe recovered" if changed else "probe succeeded", **where, duration_seconds=took)
        else:
            (log.warning if changed else log.debug)(
                "probe failed", **where, stage=result.failed_stage, reason=result.reason,
                detail=result.detail, duration_seconds=took)

    def _record_crash(self, entry: _ScheduledTarget, error: Exception) -> None:
        """A probe engine bug still shows as a failed probe, not as a stale success."""
        crash = ProbeResult(
            target=entry.name, module=entry.module_name, success=False, started_at=time.time(),
            duration_seconds=0.0, reason="internal_error", detail=f"{type(error).__name__}: {error}",
        )
        try:
            with self._lock:
                if entry.active:
                    self._store.record(crash)
        except Exception:
            log.exception("could not record crashed probe", target=entry.name, module=entry.module_name)
