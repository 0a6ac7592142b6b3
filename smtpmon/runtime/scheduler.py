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

Mail domains (config `domains:`) are scheduled the same way, one job per domain. A due domain
starts a session of its own on the hub at once (it holds no slot: it only waits) which
resolves the domain on the lookup pool (smtpmon.domains.probe_domain), then queues one
session per MX address with the target probes, so that `max_concurrency` bounds every SMTP
session in flight, and waits for them. The resolver and its answer cache are kept across
reloads while the `dns:` settings stay the same.
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

from smtpmon.dns import DnsCache, MxResolver
from smtpmon.domains import DomainResult, probe_domain
from smtpmon.domains.policy import PolicyChecker, policy_checker
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


class DomainStore(Protocol):
    def register(self, name: str, module: str, unicode: str, expect_mail: bool) -> None: ...
    def record(self, result: DomainResult) -> bool: ...
    def record_skip(self, name: str, module: str) -> bool: ...
    def remove(self, name: str, module: str) -> None: ...


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


@dataclass(eq=False)
class _ScheduledDomain:
    """A mail domain on the schedule: the attributes the loop reads are those of
    _ScheduledTarget (`name`, `module_name`, `interval_seconds`, `job`, `busy`, `active`)."""

    name: str  # the A-label: the `domain` label
    module_name: str
    module: Module
    domain: object  # the config's DomainTarget
    interval_seconds: float
    timeout_seconds: float
    signature: tuple
    job: schedule.Job | None = None
    busy: bool = False
    active: bool = True
    verdict: str | None = None  # of the last probe, to log changes only


class Scheduler:
    def __init__(self, store: Store, state: State, probe: ProbeFunction = run_probe,
                 domain_store: DomainStore | None = None):
        self._store = store
        self._domain_store = domain_store
        self._state = state
        self._probe = probe
        self._lock = threading.Lock()
        self._hub = Hub()
        self._stopping = threading.Event()
        self._stop_deadline = 0.0  # monotonic; set by stop() before it wakes the loop
        self._schedule = schedule.Scheduler()
        self._entries: dict[tuple[str, str], _ScheduledTarget] = {}
        self._domains: dict[tuple[str, str], _ScheduledDomain] = {}
        self._dns_settings = None  # the config's DnsSettings the resolver was made with
        self._resolver: MxResolver | None = None
        self._policy: PolicyChecker | None = None
        self._retired_dns_counts = (0, 0)  # (queries, cache hits) of resolvers replaced
        self._domain_sessions = 0  # domain sessions on the hub: they hold no probe slot
        self._heap: list[tuple[datetime.datetime, int, _ScheduledTarget]] = []
        self._sequence = itertools.count()
        self._max_concurrency = 1
        # Due probes waiting for a free slot, oldest first, as (function, arguments) to spawn:
        # target probes (queued under the lock by _dispatch) and the address sessions of mail
        # domains (queued by their domain's session). Emptied by the loop outside the lock (a
        # session may take the lock).
        self._waiting: collections.deque[tuple[Callable, tuple]] = collections.deque()
        # Due mail domains, started at once by the loop (they hold no slot).
        self._domains_due: collections.deque[tuple[_ScheduledDomain, datetime.datetime]] = collections.deque()
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
            domains_plan = self._plan_domains(config)
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
            self._commit_domains(domains_plan)
            # Lowered, it holds from now on: running probes finish, no new one starts past it.
            self._max_concurrency = max_concurrency
        self._hub.wake()
        log.info("schedule applied", targets=len(wanted), domains=len(self._domains),
                 max_concurrency=self._max_concurrency)

    def _plan_domains(self, config) -> tuple:
        """apply() for `domains:` (under the lock), as for targets: unchanged ones keep their
        schedule and counters. Changes nothing (new jobs are made on a scratch scheduler), so
        that apply() stays all or nothing; _commit_domains puts the plan in force."""
        dns = getattr(config, "dns", None)
        resolver, policy = self._resolver, self._policy
        if dns is not None and dns != self._dns_settings:
            resolver = MxResolver(dns.resolver_settings, DnsCache(
                dns.min_ttl_seconds, dns.max_ttl_seconds, dns.grace_seconds))
            policy = policy_checker(dns, resolver)
        wanted: dict[tuple[str, str], _ScheduledDomain] = {}
        scratch = schedule.Scheduler()
        added = []
        for domain in getattr(config, "domains", ()):
            module = config.modules[domain.module]
            old = self._domains.get((domain.name, domain.module))
            # The resolver is looked up at each run: a changed `dns:` keeps the counters.
            if old is not None and old.signature == (domain, module):
                wanted[(domain.name, domain.module)] = old
                continue
            entry = _ScheduledDomain(
                name=domain.name, module_name=domain.module, module=module, domain=domain,
                interval_seconds=float(domain.interval_seconds),
                timeout_seconds=float(domain.timeout_seconds),
                signature=(domain, module))
            entry.job = scratch.every(entry.interval_seconds).seconds.do(self._dispatch_domain, entry)
            entry.job.scheduler = self._schedule
            added.append(entry)
        retired = [old for key, old in self._domains.items() if key not in wanted]
        wanted.update(((entry.name, entry.module_name), entry) for entry in added)
        return dns, resolver, policy, wanted, retired, added, self._first_runs(added)

    def _commit_domains(self, plan: tuple) -> None:
        """Put a _plan_domains plan in force (under the lock); raises nothing a config causes."""
        dns, resolver, policy, wanted, retired, added, first_runs = plan
        if resolver is not self._resolver:
            if self._resolver is not None:
                queries, hits = self._retired_dns_counts
                self._retired_dns_counts = (queries + self._dns_queries(),
                                            hits + self._resolver.cache.hits)
            self._resolver = resolver
            self._policy = policy
            self._dns_settings = dns
        for entry in retired:
            entry.active = False
            if self._domain_store is not None:
                self._domain_store.remove(entry.name, entry.module_name)
        gone = {id(entry.job) for entry in retired}
        if gone:
            self._schedule.jobs[:] = [job for job in self._schedule.jobs if id(job) not in gone]
        for entry in added:
            if self._domain_store is not None:
                domain = entry.domain
                self._domain_store.register(domain.name, domain.module, domain.unicode,
                                            domain.expect_mail)
        self._schedule.jobs.extend(entry.job for entry in added)
        self._domains = wanted
        for entry, first_run in zip(added, first_runs):
            entry.job.next_run = first_run
            heapq.heappush(self._heap, (first_run, next(self._sequence), entry))

    @property
    def resolver(self) -> MxResolver | None:
        """The resolver of the applied `dns:` settings (None before the first apply)."""
        return self._resolver

    @property
    def policy(self) -> PolicyChecker | None:
        """The TLS policy checker of the applied `dns:` settings (None before the first apply)."""
        return self._policy

    def _dns_queries(self) -> int:
        """Questions sent by the resolver in use and, when it is another one, the validating
        resolver (one counter for every DNS question smtpmon asks)."""
        total = self._resolver.resolver.queries_sent
        validating = self._policy.validating if self._policy is not None else None
        if validating is not None and validating.resolver is not self._resolver.resolver:
            total += validating.resolver.queries_sent
        return total

    def dns_counts(self) -> tuple[int, int]:
        """(DNS queries sent, cache hits) by the domain resolutions since the start."""
        queries, hits = self._retired_dns_counts
        resolver = self._resolver
        if resolver is None:
            return queries, hits
        return queries + self._dns_queries(), hits + resolver.cache.hits

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
        for entry in [*self._entries.values(), *self._domains.values()]:
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
            # Probes that never started: their targets are free (domains' sessions end with
            # their domain's session).
            for function, args in self._waiting:
                if function == self._run_probe:
                    args[0].busy = False
            self._waiting.clear()
            for entry, _ in self._domains_due:
                entry.busy = False
            self._domains_due.clear()
            # Probes in flight get until stop()'s deadline; those still waiting then are
            # abandoned where they wait, never resumed, and record nothing.
            while hub.sessions and time.monotonic() < self._stop_deadline:
                hub.run_once(self._stop_deadline - time.monotonic())
        finally:
            if not hub.sessions:
                hub.close()

    def _start_waiting(self) -> None:
        """Start due domains, then due probes while fewer than max_concurrency run."""
        hub, waiting = self._hub, self._waiting
        while self._domains_due:
            hub.spawn(self._run_domain, *self._domains_due.popleft())
        while waiting and hub.sessions - self._domain_sessions < self._max_concurrency:
            function, args = waiting.popleft()
            hub.spawn(function, *args)

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
        self._waiting.append((self._run_probe, (entry, entry.job.next_run)))

    def _dispatch_domain(self, entry: _ScheduledDomain) -> None:
        """Called by `Job.run()` while the scheduler lock is held: queue one domain probe."""
        if self._stopping.is_set():
            return
        if entry.busy:
            if self._domain_store is not None:
                self._domain_store.record_skip(entry.name, entry.module_name)
            log.warning("domain probe skipped: previous run still in flight",
                        domain=entry.name, module=entry.module_name)
            return
        entry.busy = True
        self._domains_due.append((entry, entry.job.next_run))

    def _run_domain(self, entry: _ScheduledDomain, due: datetime.datetime) -> None:
        """A session on the hub: one probe of one mail domain (resolution on the lookup pool,
        then the address sessions through the queue); never lets anything escape."""
        self._domain_sessions += 1
        try:
            if not entry.active or self._resolver is None:
                return
            self._state.observe_schedule_lag((datetime.datetime.now() - due).total_seconds())
            domain = entry.domain
            result = probe_domain(
                domain.name, entry.module, self._resolver, port=domain.port,
                options=domain.mx_options, expect_mail=domain.expect_mail,
                module_name=entry.module_name,
                deadline=time.monotonic() + entry.timeout_seconds, hub=self._hub,
                run_sessions=self._run_address_sessions, policy=self._policy,
                switches=domain.policy_switches)
            with self._lock:
                if entry.active and self._domain_store is not None:
                    self._domain_store.record(result)
            self._log_domain(entry, result)
        except Exception:
            log.exception("domain probe crashed", domain=entry.name, module=entry.module_name)
        finally:
            entry.busy = False
            self._domain_sessions -= 1

    def _run_address_sessions(self, thunks, until: float) -> list:
        """probe_domain's session runner: each thunk queued for a probe slot like a target's
        probe; the domain's session parks until all are done or `until` passes. A session that
        gets its slot after `until` does not start."""
        hub = self._hub
        results: list = [None] * len(thunks)
        pending = [len(thunks)]
        wake: list[Callable[[], None]] = []

        def one(index: int, thunk) -> None:
            try:
                if time.monotonic() < until and not self._stopping.is_set():
                    self._state.probe_started()
                    try:
                        results[index] = thunk()
                    finally:
                        self._state.probe_finished()
            finally:
                pending[0] -= 1
                if pending[0] == 0 and wake:
                    wake[0]()

        self._waiting.extend((one, (index, thunk)) for index, thunk in enumerate(thunks))
        hub.wake()  # the loop starts them at its next turn, not after its sleep

        def start(done: Callable[[], None]) -> None:
            if pending[0]:
                wake.append(done)
            else:
                done()

        hub.wait_callback(start, until)
        return list(results)

    @staticmethod
    def _log_domain(entry: _ScheduledDomain, result: DomainResult) -> None:
        """Warn when a domain's verdict changes to a failing one, info when it changes to a
        passing one; debug otherwise."""
        changed, entry.verdict = result.verdict != entry.verdict, result.verdict
        if not changed and not log.enabled("debug"):
            return
        failing = [f"{p.mx.name}[{p.address.ip}]:{p.result.reason}" for p in result.probes
                   if not p.accepts]
        # As for targets: a change to a failing verdict is a warning, a recovery info.
        level = log.debug if not changed else log.info if result.success else log.warning
        level(
            "domain probed", domain=entry.name, module=entry.module_name,
            verdict=result.verdict, dns_state=result.resolution.state,
            deliverable=int(result.deliverable), accepting=result.accepting(),
            addresses=len(result.probes), failing=" ".join(failing) or None,
            duration_seconds=f"{result.duration_seconds:.3f}")

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
