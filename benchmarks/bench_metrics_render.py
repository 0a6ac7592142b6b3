"""Micro-benchmark: how long `/metrics` takes to render, and how big it is.

Fills a ResultStore with realistic results (an MX session with STARTTLS; one target in ten
rejects its banner with 421 and one in twenty a recipient with 450) for 10, 1,000 and 10,000
targets, then times the whole page (`metrics_chunks` joined; best and median of several runs),
`record`, and how long the landing page holds the store's lock (its snapshot: every probe
finishing meanwhile waits).
Target (issue 6): 10,000 targets in under 250 ms.

    .venv/bin/python benchmarks/bench_metrics_render.py [--repeat N]
"""

from __future__ import annotations

import argparse
import statistics
import time

from smtpmon.exposition.metrics import metrics_chunks
from smtpmon.exposition.state import ExporterState
from smtpmon.exposition.store import ResultStore
from smtpmon.smtp.results import Capabilities, ProbeResult, Reply, StageResult, TlsInfo

TARGET_BUDGET_SECONDS = 0.250
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
    locked = []
    for _ in range(repeat):
        started = time.perf_counter()
        store.snapshot(counts=False)
        locked.append(time.perf_counter() - started)
    landing_ms = statistics.median(locked) * 1000
    verdict = ""
    if targets >= 10_000:
        verdict = "ok" if median / 1000 < TARGET_BUDGET_SECONDS else "OVER BUDGET"
    print(f"{targets:>7} {best:>9.1f} {median:>11.1f} {size:>12,} {record_us:>10.1f} "
          f"{landing_ms:>15.1f}  {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="renders per size (default 7)")
    args = parser.parse_args()
    print(f"{'targets':>7} {'best ms':>9} {'median ms':>11} {'bytes':>12} {'record µs':>10} "
          f"{'landing lock ms':>15}")
    for targets in (10, 1_000, 10_000):
        measure(targets, args.repeat)
    print(f"budget: {TARGET_BUDGET_SECONDS * 1000:.0f} ms for 10,000 targets (median)")


if __name__ == "__main__":
    main()
