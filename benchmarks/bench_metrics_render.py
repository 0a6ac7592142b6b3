"""Micro-benchmark: how long `/metrics` and the status page take to render, how long the page
holds the store's lock, and what the status page's history costs in memory.

Fills a ResultStore with realistic results (an MX session with STARTTLS; one target in ten
rejects its banner with 421 and one in twenty a recipient with 450) for 10, 1,000 and 10,000
targets, then times the whole `/metrics` page (`metrics_chunks` joined; best and median of
several runs), `record`, the status page's first page (`/`: summary, triage of every target,
100 rows with their history; the very first view, then views with half the targets probed
since the last one, as at a 60 s interval and the page's 30 s refresh), and the longest single
hold of the store's lock while the page is drawn (a probe finishing meanwhile waits at most that
long for the lock). Then the history's memory at 10,000 targets. Then the same page with
mail domains (issue 17 on the page): 1,000 domains of 2 MX hosts of 2 addresses each (4,000
sessions; one domain in ten with its first MX rejecting the banner, one in fifty NXDOMAIN),
alone and next to the 10,000 targets: the first view and the median of the next (half the
domains probed again between views), and the domain store's longest lock hold.
Targets: /metrics at 10,000 targets in under 250 ms (issue 6); the page under 100 ms, each
lock hold under 5 ms, the history under 30 MB (issue 20).

    .venv/bin/python benchmarks/bench_metrics_render.py [--repeat N] [--only targets|domains]
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import statistics
import threading
import time
import tracemalloc

from smtpmon.config.load import parse_config
from smtpmon.dns import Address, DomainResolution, MxHost
from smtpmon.domains import AddressProbe, DomainResult
from smtpmon.exposition import history
from smtpmon.exposition.domains import DomainStore
from smtpmon.exposition.metrics import metrics_chunks
from smtpmon.exposition.state import ExporterState
from smtpmon.exposition.store import ResultStore
from smtpmon.smtp.results import (
    Capabilities,
    ProbeResult,
    Reply,
    StageResult,
    TlsInfo,
    TranscriptLine,
)
from smtpmon.web import landing, triage

TARGET_BUDGET_SECONDS = 0.250
PAGE_BUDGET_SECONDS = 0.100
LOCK_BUDGET_SECONDS = 0.005
HISTORY_BUDGET_BYTES = 30 * 2**20
EXTENSIONS = frozenset({"PIPELINING", "SIZE", "ETRN", "STARTTLS", "ENHANCEDSTATUSCODES",
                        "8BITMIME", "DSN", "SMTPUTF8", "CHUNKING"})


def healthy(target: str, now: float) -> ProbeResult:
    ok = Reply(250, ("mx.example.org",))
    return ProbeResult(
        target=target, module="mx", success=True, started_at=now, duration_seconds=0.042,
        stages=(
            StageResult("resolve", 0.001, True),
            StageResult("connect", 0.002, True),
            StageResult("banner", 0.003, True, (Reply(220, ("mx.example.org ESMTP",)),)),
            StageResult("ehlo", 0.001, True, (ok,)),
            StageResult("starttls", 0.012, True, (Reply(220, ("2.0.0 Ready to start TLS",),
                                                        enhanced="2.0.0"),)),
            StageResult("ehlo_tls", 0.001, True, (ok,)),
            StageResult("mail", 0.001, True, (Reply(250, ("2.1.0 Ok",), enhanced="2.1.0"),)),
            StageResult("rcpt", 0.001, True, (Reply(250, ("2.1.5 Ok",), enhanced="2.1.5"),)),
            StageResult("quit", 0.001, True, (Reply(221, ("2.0.0 Bye",), enhanced="2.0.0"),)),
        ),
        ehlo=Capabilities(EXTENSIONS, size_limit=10240000),
        ehlo_tls=Capabilities(EXTENSIONS - {"STARTTLS"} | {"AUTH"}, size_limit=10240000),
        tls=TlsInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", not_before=now - 86400 * 30,
                    not_after=now + 86400 * 60, verified=True),
    )


def banner_421(target: str, now: float) -> ProbeResult:
    return ProbeResult(
        target=target, module="mx", success=False, started_at=now, duration_seconds=0.004,
        stages=(
            StageResult("resolve", 0.001, True),
            StageResult("connect", 0.002, True),
            StageResult("banner", 0.001, False, (Reply(421, ("4.3.2 busy",), enhanced="4.3.2"),),
                        reason="banner_rejected"),
        ),
        failed_stage="banner", reason="banner_rejected",
    )


def rcpt_450(target: str, now: float) -> ProbeResult:
    good = healthy(target, now)
    stages = tuple(
        StageResult("rcpt", 0.001, False, (Reply(450, ("4.2.0 greylisted",), enhanced="4.2.0"),),
                    reason="rcpt_rejected") if stage.stage == "rcpt" else stage
        for stage in good.stages
    )
    return ProbeResult(
        target=target, module="mx", success=False, started_at=now, duration_seconds=0.040,
        stages=stages, failed_stage="rcpt", reason="rcpt_rejected", ehlo=good.ehlo,
        ehlo_tls=good.ehlo_tls, tls=good.tls,
    )


def realistic(index: int, now: float) -> ProbeResult:
    target = f"mx{index}.example.org:25"
    if index % 10 == 3:
        return banner_421(target, now)
    if index % 20 == 7:
        return rcpt_450(target, now)
    return healthy(target, now)


class GcClock:
    """CPU time spent in the garbage collector. A collection stops every thread (it holds the
    GIL), whether it runs under the store's lock or not: a lock hold's own work is its time
    less the collections that ran in it."""

    def __init__(self) -> None:
        self.total = 0.0
        self.longest = 0.0
        self._started = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.thread_time()
        else:
            spent = time.thread_time() - self._started
            self.total += spent
            self.longest = max(self.longest, spent)


GC = GcClock()


class TimedLock:
    """The store's lock, timing each hold: the longest is how long a probe's `record` could
    have waited for it. Wall time includes the holder being preempted (on a busy machine, any
    holder, a probe's own `record` too); CPU time is the holder's own work, less collections."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._since = self._since_cpu = self._since_gc = 0.0
        self.longest = self.longest_cpu = 0.0

    def __enter__(self):
        self._lock.acquire()
        self._since, self._since_cpu = time.perf_counter(), time.thread_time()
        self._since_gc = GC.total
        return self

    def __exit__(self, *exc) -> None:
        self.longest = max(self.longest, time.perf_counter() - self._since)
        cpu = time.thread_time() - self._since_cpu - (GC.total - self._since_gc)
        self.longest_cpu = max(self.longest_cpu, cpu)
        self._lock.release()


@dataclasses.dataclass
class Exporter:
    """What the status page reads (see smtpmon.web.landing.Exporter)."""

    store: ResultStore
    probe_store: ResultStore
    config: object
    ready: bool = True
    telemetry_path: str = "/metrics"
    domain_store: DomainStore = dataclasses.field(default_factory=DomainStore)
    domain_probe_store: DomainStore = dataclasses.field(default_factory=DomainStore)


def config_for(results: list[ProbeResult], domains: list[DomainResult] = ()):
    lines = ["modules: {mx: {tls: opportunistic}}", "targets:" if results else "targets: []"]
    lines += [f'  - {{address: "{result.target}", module: mx}}' for result in results]
    if domains:
        lines += ['dns: {nameservers: ["127.0.0.1"]}', "domains:"]
        lines += [f"  - {{domain: {domain.domain}, module: mx}}" for domain in domains]
    return parse_config("\n".join(lines) + "\n", "bench")


def realistic_domain(index: int, now: float) -> DomainResult:
    """2 MX hosts of 2 addresses each (IPv6 and IPv4), 4 sessions; every tenth domain's first
    MX rejects the banner (degraded), every fiftieth does not exist (undeliverable)."""
    name = f"d{index}.example.org"
    if index % 50 == 7:
        resolution = DomainResolution(name, name, "nxdomain",
                                      notes=(f"{name} does not exist (NXDOMAIN)",))
        return DomainResult(name, "mx", 25, resolution, (), True, now, 0.002)
    hosts = tuple(
        MxHost(preference, f"mx{preference}.{name}", f"mx{preference}.{name}", "ok",
               (Address("ipv6", f"2001:db8:{index:x}::{preference}"),
                Address("ipv4", f"10.{index // 250}.{index % 250}.{preference}")),
               address_count=2)
        for preference in (10, 20))
    probes = []
    for host in hosts:
        for address in host.addresses:
            target = f"[{address.ip}]:25" if address.family == "ipv6" else f"{address.ip}:25"
            broken = index % 10 == 3 and host.preference == 10
            result = banner_421(target, now) if broken else healthy(target, now)
            probes.append(AddressProbe(host, address, result))
    resolution = DomainResolution(name, name, "ok", hosts, mx_record_count=2,
                                  duration_seconds=0.001)
    return DomainResult(name, "mx", 25, resolution, tuple(probes), True, now, 0.05)


def measure_domains(domains: int, targets: int, repeat: int) -> None:
    """The status page's first page with `domains` mail domains (and `targets` targets)."""
    now = time.time()
    results = [realistic(index, now) for index in range(targets)]
    store = ResultStore()
    for result in results:
        store.register(result.target, result.module)
        store.record(result)
    domain_results = [realistic_domain(index, now) for index in range(domains)]
    domain_store = DomainStore()
    for result in domain_results:
        domain_store.register(result.name, result.module, result.name, True)
        domain_store.record(result)
    exporter = Exporter(store, ResultStore(), config_for(results, domain_results),
                        domain_store=domain_store)
    state = ExporterState()
    query = triage.parse_query({})
    page_times, holds, size = [], [], 0
    for view in range(repeat):
        if view:  # half the domains (and targets) probed since the last view
            for result in domain_results[view % 2::2]:
                domain_store.record(result)
            for result in results[view % 2::2]:
                store.record(result)
        timed = domain_store._lock = TimedLock()  # noqa: SLF001 - the real lock, timed
        started = time.perf_counter()
        size = len(landing.render(exporter, state.status(), query))
        page_times.append(time.perf_counter() - started)
        holds.append(timed.longest)
    print(f"{domains:>7} {targets:>7} {page_times[0] * 1000:>12.1f} "
          f"{statistics.median(page_times[1:] or page_times) * 1000:>10.1f} "
          f"{statistics.median(holds) * 1000:>10.2f} {size:>10,}")


def measure(targets: int, repeat: int) -> None:
    store, state = ResultStore(), ExporterState()
    now = time.time()
    results = [realistic(index, now) for index in range(targets)]
    for result in results:
        store.register(result.target, result.module)
    started = time.perf_counter()
    for _ in range(2):  # the second round is the steady state: entries already exist
        for result in results:
            store.record(result)
    record_us = (time.perf_counter() - started) / (2 * targets) * 1e6
    times, size = [], 0
    for _ in range(repeat):
        started = time.perf_counter()
        size = len(b"".join(metrics_chunks(store.rows(), state)))
        times.append(time.perf_counter() - started)
    best, median = min(times) * 1000, statistics.median(times) * 1000
    exporter = Exporter(store, ResultStore(), config_for(results))
    query = triage.parse_query({})
    page_times, holds, holds_cpu = [], [], []
    GC.longest = 0.0
    for view in range(repeat):
        if view:  # half the targets probed since the last view: 30 s of a 60 s interval
            for result in results[view % 2::2]:
                store.record(result)
        timed = store._lock = TimedLock()  # noqa: SLF001 - the benchmark times the real lock
        started = time.perf_counter()
        landing.render(exporter, state.status(), query)
        page_times.append(time.perf_counter() - started)
        holds.append(timed.longest)
        holds_cpu.append(timed.longest_cpu)
    first_page_ms = page_times[0] * 1000  # the first builds the configuration's lookup table
    page_ms = statistics.median(page_times) * 1000
    lock_ms, lock_cpu_ms = statistics.median(holds) * 1000, max(holds_cpu) * 1000
    verdict = ""
    if targets >= 10_000:
        verdict = "ok" if (median / 1000 < TARGET_BUDGET_SECONDS
                           and page_ms / 1000 < PAGE_BUDGET_SECONDS
                           and max(holds_cpu) < LOCK_BUDGET_SECONDS) else "OVER BUDGET"
    print(f"{targets:>7} {best:>9.1f} {median:>11.1f} {size:>12,} {record_us:>10.1f} "
          f"{first_page_ms:>12.1f} {page_ms:>10.1f} {lock_ms:>10.2f} {lock_cpu_ms:>10.2f} "
          f"{GC.longest * 1000:>9.1f}  {verdict}")


def traced_bytes() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def session_result(index: int, now: float) -> ProbeResult:
    """A failed session as large as a real one: 29 transcript lines (a STARTTLS session that
    ends at RCPT), each with its own text, as a probe makes them."""
    result = rcpt_450(f"mx{index}.example.org:25", now)
    lines = tuple(TranscriptLine(0.001 * line, "S", f"250-mx{index}.example.org line {line} "
                                 "of a reply from the server, as long as real ones are")
                  for line in range(29))
    return dataclasses.replace(result, transcript=lines)


def measure_history(targets: int) -> None:
    """The history's memory at `targets` (tracemalloc): the rings, filled; then every target
    failing three times in a row with sessions of its own, so that each would keep two earlier
    sessions and the budget across targets decides. The latest result of each is not counted:
    the store holds it anyway."""
    now = time.time()
    gc.collect()
    tracemalloc.start()
    before = traced_bytes()
    histories = [history.TargetHistory() for _ in range(targets)]
    budget = history.TranscriptBudget()
    filler = healthy("mx.example.org:25", now)
    for ring in histories:
        for _ in range(history.HISTORY_LENGTH):
            ring.record(filler, filler, budget)  # a success after a success keeps no session
    rings = traced_bytes() - before
    for index, ring in enumerate(histories):
        previous = None
        for _ in range(3):
            result = session_result(index, now)
            ring.record(result, previous, budget)
            previous = result
    del result, previous
    total = traced_bytes() - before
    tracemalloc.stop()
    kept = sum(len(ring.view(None).sessions) for ring in histories)
    verdict = "ok" if total < HISTORY_BUDGET_BYTES else "OVER BUDGET"
    print(f"history at {targets:,} targets x {history.HISTORY_LENGTH} results: rings "
          f"{rings / 2**20:.1f} MiB ({rings / targets:.0f} B per target); with every target "
          f"failing ({kept:,} earlier sessions kept, the bound is "
          f"{history.MAX_OLDER_SESSIONS:,}) {total / 2**20:.1f} MiB  {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="renders per size (default 7)")
    parser.add_argument("--only", choices=("targets", "domains"),
                        help="only the targets' figures, or only the domains' page")
    args = parser.parse_args()
    if args.only != "domains":
        print(f"{'targets':>7} {'best ms':>9} {'median ms':>11} {'bytes':>12} {'record µs':>10} "
              f"{'1st page ms':>12} {'page ms':>10} {'lock ms':>10} {'lock CPU':>10} {'GC ms':>9}")
        for targets in (10, 1_000, 10_000):
            measure(targets, args.repeat)
        print(f"budgets at 10,000 targets: /metrics {TARGET_BUDGET_SECONDS * 1000:.0f} ms (median), "
              f"page {PAGE_BUDGET_SECONDS * 1000:.0f} ms (median), lock hold "
              f"{LOCK_BUDGET_SECONDS * 1000:.0f} ms (the longest hold's CPU time)")
        print("lock ms: each view's longest hold of the store's lock, wall time (median of the "
              "views); lock CPU: the longest hold's CPU time less collections (of all views); GC: "
              "the longest collection during the views (it stops every thread, lock or not)")
        measure_history(10_000)
    if args.only != "targets":
        print("the status page with mail domains (2 MX x 2 addresses each):")
        print(f"{'domains':>7} {'targets':>7} {'1st page ms':>12} {'page ms':>10} "
              f"{'lock ms':>10} {'bytes':>10}")
        for domains, targets in ((1_000, 0), (1_000, 10_000)):
            measure_domains(domains, targets, args.repeat)
        print("lock ms: the domain store's longest hold during a view, wall time (median of the "
              "views)")


if __name__ == "__main__":
    main()
