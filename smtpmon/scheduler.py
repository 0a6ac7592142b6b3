"""The schedule: probe every configured target at its interval, on a bounded worker pool.

The `schedule` library decides when each target is due: one `schedule.Job` per target, on a
private `schedule.Scheduler()`. Its `run_pending()` and `idle_seconds` scan every job on every
tick, which at 10,000 targets costs about 7.5 ms, longer than the 6 ms between due probes
(10,000 / 60 s): the loop would eat a core and fall behind. So the loop keeps a heap of the
jobs' `next_run` times, runs each due job through `Job.run()` (which calls our dispatch and
lets `schedule` compute the next run), and pushes the job back with its new `next_run`: O(log n)
per due probe, nothing per idle tick. It sleeps on an Event until the next due time, so stop
and reload wake it at once.

Guarantees:
- at most one probe per target in flight: a run that falls due while the previous one is still
  queued or running is skipped and counted (`store.record_skip`);
- first runs are spread by a stable hash of the target, not fired at once: over the interval,
  or over a shorter window when few targets are new (at most FIRST_RUNS_PER_SECOND start);
- schedule lag (start on a worker - due time) is observed for every probe, so a saturated pool
  shows up as lag;
- nothing a probe does (hang, raise, hostile server) reaches the loop: the probe has its own
  deadline and every call is wrapped.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import hashlib
import heapq
import itertools
import threading
import time
from dataclasses import dataclass
from typing import Callable, Protocol

import schedule

from smtpmon.logs import get_logger
from smtpmon.module import Module
from smtpmon.probe import run_probe
from smtpmon.results import ProbeResult

log = get_logger("scheduler")

# The loop sleeps until the next due job but never longer than this: a safety net against the
# wall clock (which `schedule` uses) being stepped; stop and reload wake the loop at once.
MAX_SLEEP_SECONDS = 1.0

# New targets' first runs start at about this rate at most (spread over at most their interval).
FIRST_RUNS_PER_SECOND = 20.0

# (target "host:port", module name, module, absolute time.monotonic() deadline) -> result
ProbeFunction = Callable[[str, str, Module, float], ProbeResult]


def run_module_probe(target: str, module_name: str, module: Module, deadline: float) -> ProbeResult:
    """The real probe engine, the result labelled with the module's configured name."""
    return run_probe(target, module, deadline=deadline, module_name=module_name)


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
class _Entry:
    name: str  # "host:port"
    module_name: str
    module: Module
    interval_seconds: float
    timeout_seconds: float
    signature: tuple  # (config Target, Module): equal on reload means "unchanged"
    job: schedule.Job | None = None
    busy: bool = False  # a probe is queued or running
    active: bool = True  # False once removed by a reload or stop
    failure: tuple[str | None, str | None] | None = None  # (stage, reason) of the last probe


class Scheduler:
    def __init__(self, store: Store, state: State, probe: ProbeFunction = run_module_probe):
        self._store = store
        self._state = state
        self._probe = probe
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._schedule = schedule.Scheduler()
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._heap: list[tuple[datetime.datetime, int, _Entry]] = []
        self._sequence = itertools.count()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._max_workers = 0
        self._futures: set[concurrent.futures.Future] = set()
        self._thread: threading.Thread | None = None

    # -- configuration -------------------------------------------------------------------

    def apply(self, config) -> None:
        """Make the running schedule match `config`.

        New targets start (first runs spread out), removed ones stop and their series go,
        unchanged ones (same target settings and module options) keep their schedule and
        counters; a changed one starts over as new.
        """
        with self._lock:
            wanted: dict[tuple[str, str], _Entry] = {}
            new: list[tuple[object, Module]] = []
            for target in config.targets:
                module = config.modules[target.module]
                old = self._entries.get((target.name, target.module))
                if old is not None and old.signature == (target, module):
                    wanted[(target.name, target.module)] = old
                else:
                    new.append((target, module))
            # Retire first: a changed target's fresh series must not be removed with the old.
            self._retire([old for key, old in self._entries.items() if key not in wanted])
            added = [self._add(target, module) for target, module in new]
            wanted.update(((entry.name, entry.module_name), entry) for entry in added)
            self._entries = wanted
            self._schedule_first_runs(added)
            self._resize_pool(config.settings.max_concurrency)
        self._wake.set()
        log.info("schedule applied", targets=len(wanted), max_concurrency=self._max_workers)

    def _add(self, target, module: Module) -> _Entry:
        entry = _Entry(
            name=target.name,
            module_name=target.module,
            module=module,
            interval_seconds=float(target.interval_seconds),
            timeout_seconds=float(target.timeout_seconds),
            signature=(target, module),
        )
        self._store.register(entry.name, entry.module_name)
        entry.job = self._schedule.every(entry.interval_seconds).seconds.do(self._dispatch, entry)
        return entry

    def _schedule_first_runs(self, entries: list[_Entry]) -> None:
        """`schedule` would fire every new job one interval from now, all together. Instead
        each starts at its own point (a hash of its name) in a window counted from after the
        whole apply: the interval, or less when few targets are new, so that a small config
        shows results at once while thousands are spread evenly. `schedule` computes every
        later run from there, keeping the spread."""
        now = datetime.datetime.now()
        window = len(entries) / FIRST_RUNS_PER_SECOND
        for entry in entries:
            key = f"{entry.name}/{entry.module_name}"
            offset = spread_offset(key, min(entry.interval_seconds, window))
            entry.job.next_run = now + datetime.timedelta(seconds=offset)
            heapq.heappush(self._heap, (entry.job.next_run, next(self._sequence), entry))

    def _retire(self, entries: list[_Entry]) -> None:
        """Stop scheduling `entries` and drop their series (their heap items are skipped
        lazily). One pass over the jobs: `cancel_job` per entry would be O(n²) on a big reload."""
        if not entries:
            return
        for entry in entries:
            entry.active = False
            self._store.remove(entry.name, entry.module_name)
        gone = {id(entry.job) for entry in entries}
        self._schedule.jobs[:] = [job for job in self._schedule.jobs if id(job) not in gone]

    def _resize_pool(self, max_workers: int) -> None:
        max_workers = max(1, int(max_workers))
        if self._executor is not None and max_workers == self._max_workers:
            return
        old = self._executor
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix="probe"
        )
        self._max_workers = max_workers
        if old is not None:
            # Probes already running finish on the old pool (their futures stay tracked).
            old.shutdown(wait=False, cancel_futures=False)

    # -- running -------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping.is_set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> bool:
        """Start no new probe; wait up to `timeout` for the in-flight ones (they have deadlines).

        Returns True when every probe finished in time.
        """
        deadline = time.monotonic() + timeout
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            for entry in self._entries.values():
                entry.active = False
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
            pending = set(self._futures)
        _, not_done = concurrent.futures.wait(pending, timeout=max(0.0, deadline - time.monotonic()))
        return not not_done

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                with self._lock:
                    delay = self._run_due()
            except Exception:  # a bug here must not silently end all monitoring
                log.exception("scheduler loop error")
                delay = MAX_SLEEP_SECONDS
            self._wake.wait(min(delay, MAX_SLEEP_SECONDS))

    def _run_due(self) -> float:
        """Dispatch every due job; return the seconds until the next one."""
        now = datetime.datetime.now()
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, entry = heapq.heappop(heap)
            if not entry.active:
                continue
            entry.job.run()  # calls self._dispatch(entry), then schedules the next run
            heapq.heappush(heap, (entry.job.next_run, next(self._sequence), entry))
        if not heap:
            return MAX_SLEEP_SECONDS
        return max(0.0, (heap[0][0] - now).total_seconds())

    def _dispatch(self, entry: _Entry) -> None:
        """Called by `Job.run()` while the scheduler lock is held: queue one probe."""
        if self._stopping.is_set():
            return
        if entry.busy:
            self._store.record_skip(entry.name, entry.module_name)
            log.warning("probe skipped: previous run still in flight",
                        target=entry.name, module=entry.module_name)
            return
        due = entry.job.next_run  # `schedule` moves it on only after this call returns
        entry.busy = True
        try:
            future = self._executor.submit(self._run_probe, entry, due)
        except RuntimeError:  # the pool is shutting down
            entry.busy = False
            return
        self._futures.add(future)
        future.add_done_callback(self._futures.discard)

    def _run_probe(self, entry: _Entry, due: datetime.datetime) -> None:
        """On a worker thread: one probe of one target; never lets anything escape."""
        try:
            lag = (datetime.datetime.now() - due).total_seconds()
            self._state.observe_schedule_lag(max(0.0, lag))
            if not entry.active:
                return
            self._state.probe_started()
            try:
                deadline = time.monotonic() + entry.timeout_seconds
                result = self._probe(entry.name, entry.module_name, entry.module, deadline)
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
    def _log_result(entry: _Entry, result: ProbeResult) -> None:
        """Info when a target starts failing, fails differently, or recovers; debug otherwise,
        so 10,000 targets failing the same way each minute do not flood the journal."""
        failure = None if result.success else (result.failed_stage, result.reason)
        changed, entry.failure = failure != entry.failure, failure
        level = log.info if changed else log.debug
        where = dict(target=entry.name, module=entry.module_name)
        took = f"{result.duration_seconds:.3f}"
        if result.success:
            level("probe recovered" if changed else "probe succeeded", **where,
                  duration_seconds=took)
        else:
            level("probe failed", **where, stage=result.failed_stage, reason=result.reason,
                  detail=result.detail, duration_seconds=took)

    def _record_crash(self, entry: _Entry, error: Exception) -> None:
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
