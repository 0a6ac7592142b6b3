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

import datetime
import hashlib
import heapq
import itertools
import queue
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

# `schedule` counts in naive local time, which jumps at a daylight-saving change or an NTP
# step. A jump larger than this (measured against the monotonic clock) moves every pending
# run by the same amount, so the spread is kept and nothing waits an hour or fires at once.
CLOCK_STEP_SECONDS = 1.0
_LOCAL_EPOCH = datetime.datetime(1970, 1, 1)

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


class _Wakeup:
    """An Event for one sleeper, on a bare lock: `threading.Event.wait` builds a Condition
    waiter (a new lock, Python-level bookkeeping) on every call, and the loop sleeps once per
    due probe. `wait` returns at once when `set` came first, and clears it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()

    def set(self) -> None:
        try:
            self._lock.release()
        except RuntimeError:  # already set
            pass

    def wait(self, timeout: float) -> None:
        self._lock.acquire(timeout=max(0.0, timeout))


class _Workers:
    """Up to `size` probe threads fed by one queue, started as needed.

    A ThreadPoolExecutor made a Future (with its Condition), a work item and a done callback
    for every probe; the schedule needs none of them, since results go to the store. Here a
    probe costs a queue put and get. Threads are counted idle once they finish a probe, so a
    new thread starts only when none is free (as ThreadPoolExecutor does).
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._closed = False

    def submit(self, function: Callable, *args) -> None:
        """Queue function(*args); RuntimeError once closed."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the probe workers are closed")
            if self._idle:
                self._idle -= 1
            elif len(self._threads) < self.size:
                thread = threading.Thread(target=self._work, name=f"probe_{len(self._threads)}",
                                          daemon=True)
                thread.start()  # counted only once it runs: a failed start leaves no ghost
                self._threads.append(thread)
        self._queue.put((function, args))

    def close(self) -> list[threading.Thread]:
        """Accept nothing more; each thread ends after what is queued. Returns the threads."""
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        for _ in threads:
            self._queue.put(None)
        return threads

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            function, args = item
            try:
                function(*args)
            except Exception:  # the caller's own guard failed; keep the thread
                log.exception("probe worker error")
            with self._lock:
                self._idle += 1


class Scheduler:
    def __init__(self, store: Store, state: State, probe: ProbeFunction = run_module_probe):
        self._store = store
        self._state = state
        self._probe = probe
        self._lock = threading.Lock()
        self._wake = _Wakeup()
        self._stopping = threading.Event()
        self._schedule = schedule.Scheduler()
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._heap: list[tuple[datetime.datetime, int, _Entry]] = []
        self._sequence = itertools.count()
        self._workers: _Workers | None = None
        self._retired_threads: list[threading.Thread] = []  # of pools replaced by a reload
        self._thread: threading.Thread | None = None
        self._clock_offset: float | None = None  # local wall time - monotonic time, seconds

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
        log.info("schedule applied", targets=len(wanted), max_concurrency=self._workers.size)

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
        if self._workers is not None and max_workers == self._workers.size:
            return
        old = self._workers
        self._workers = _Workers(max_workers)
        if old is not None:
            # Probes already running finish on the old threads; stop() still waits for them.
            alive = [thread for thread in self._retired_threads if thread.is_alive()]
            self._retired_threads = alive + old.close()

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
        for entry in list(self._entries.values()):
            entry.active = False  # probes still queued return at once
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            threads = self._retired_threads + (self._workers.close() if self._workers else [])
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in threads)

    def _loop(self) -> None:
        while not self._stopping.is_set():
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
        self._follow_clock_steps(now)
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, entry = heapq.heappop(heap)
            if not entry.active:
                continue
            try:
                entry.job.run()  # calls self._dispatch(entry), then schedules the next run
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
            self._workers.submit(self._run_probe, entry, due)
        except RuntimeError:  # the workers are closing
            entry.busy = False

    def _run_probe(self, entry: _Entry, due: datetime.datetime) -> None:
        """On a worker thread: one probe of one target; never lets anything escape."""
        try:
            if not entry.active:  # removed by a reload, or stopping: not a probe, not a lag
                return
            self._state.observe_schedule_lag((datetime.datetime.now() - due).total_seconds())
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
        if not changed and not log.enabled("debug"):
            return  # the usual case: skip building the fields of a line nobody writes
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
