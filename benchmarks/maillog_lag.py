"""Does the mail log reader slow the probes? The schedule lag of 1,000 targets with and
without a `maillog:` section whose log is written at 2,000 lines/s.

The daemon runs as in run.py's isolation phase (1,000 targets on the benchmark SMTP server,
every 10 s, timeout 1.5 s, max_concurrency 32, plain module), twice per round: once without
the reader, once with it following a log that this process appends to at `--rate` lines/s
(the real Postfix lines of tests/data/postfix-mail.log, replicated with varying ids by
maillog_parse.replicate). Rounds alternate the two, so drift of a shared machine falls on
both. For each run: the probes' schedule lag p50/p99 (smtpmon_schedule_lag_seconds over the
window), the daemon's CPU, the lines the reader counted against the lines written, and the
time of a /metrics scrape.

    .venv/bin/python benchmarks/maillog_lag.py [--rounds 2] [--seconds 60] [--rate 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import harness as h  # noqa: E402
from maillog_parse import replicate  # noqa: E402

SAMPLE = ROOT / "tests" / "data" / "postfix-mail.log"
TARGETS, INTERVAL, TIMEOUT = 1000, 10.0, 1.5


class Writer(threading.Thread):
    """Appends `rate` lines a second to `path`, in batches every 50 ms."""

    def __init__(self, path: Path, rate: int) -> None:
        super().__init__(daemon=True)
        self.path, self.rate = path, rate
        self.lines = [line.encode() + b"\n"
                      for line in replicate(SAMPLE.read_text().splitlines(), 100_000)]
        self.written = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        with open(self.path, "ab", buffering=0) as out:
            while not self.stopping.wait(0.05):
                due = int((time.monotonic() - started) * self.rate) - self.written
                if due > 0:
                    out.write(b"".join(self.lines[(self.written + n) % len(self.lines)]
                                       for n in range(due)))
                    self.written += due


async def one_run(with_reader: bool, seconds: float, rate: int) -> dict:
    wd = h.workdir("smtpmon-bench-maillog-")
    procs = h.Processes(wd)
    writer = None
    try:
        certs = h.make_certificates(wd)
        server = h.start_smtp_server(procs, certs, ["ok"] * TARGETS)
        config = wd / "smtpmon.yml"
        h.smtpmon_config(config, server.ports, interval=INTERVAL, timeout=TIMEOUT,
                         max_concurrency=32, ca_file=certs.ca_file)
        log = wd / "mail.log"
        log.touch()
        if with_reader:
            with open(config, "a") as handle:
                handle.write(f"maillog: {{path: {log}, domains: [replies.remote.test]}}\n")
            writer = Writer(log, rate)
            writer.start()
        smtpmon, port = h.start_smtpmon(procs, config)
        client = h.HttpClient(port)
        await asyncio.sleep(2 * INTERVAL)  # every target probed twice: warm
        _, before = await client.get("/metrics")
        cpu_before, written_before = h.cpu_seconds(smtpmon.pid), writer.written if writer else 0
        lines_before = sum(v for _, v in h.samples(before, "smtpmon_maillog_lines_total"))
        await asyncio.sleep(seconds)
        scrape_started = time.perf_counter()
        _, after = await client.get("/metrics")
        scrape_seconds = time.perf_counter() - scrape_started
        cpu = h.cpu_seconds(smtpmon.pid) - cpu_before
        written = (writer.written if writer else 0) - written_before
        lines = sum(v for _, v in h.samples(after, "smtpmon_maillog_lines_total")) - lines_before
        lag = h.histogram_delta(h.histogram(after, "smtpmon_schedule_lag_seconds"),
                                h.histogram(before, "smtpmon_schedule_lag_seconds"))
        return {"reader": with_reader, "probes": lag[-1][1],
                "lag_p50": h.histogram_quantile(0.5, lag), "lag_p99": h.histogram_quantile(0.99, lag),
                "cpu_share": cpu / seconds, "written_per_second": written / seconds,
                "counted_per_second": lines / seconds, "scrape_seconds": scrape_seconds,
                "series": after.count(b"\nsmtpmon_maillog_")}
    finally:
        if writer is not None:
            writer.stopping.set()
        procs.close()


async def main_async(args) -> None:
    results = []
    for round_number in range(args.rounds):
        for with_reader in (False, True) if round_number % 2 == 0 else (True, False):
            result = await one_run(with_reader, args.seconds, args.rate)
            print(f"# round {round_number + 1}: {result}", file=sys.stderr, flush=True)
            results.append(result)
    print("| reader | probes | lag p50 | lag p99 | CPU (share of a core) | lines/s written | "
          "lines/s counted | /metrics scrape |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {'on' if r['reader'] else 'off'} | {r['probes']:.0f} | "
              f"{r['lag_p50'] * 1000:.1f} ms | {r['lag_p99'] * 1000:.1f} ms | "
              f"{r['cpu_share'] * 100:.1f}% | {r['written_per_second']:.0f} | "
              f"{r['counted_per_second']:.0f} | {r['scrape_seconds'] * 1000:.1f} ms |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=60.0, help="measured window per run")
    parser.add_argument("--rate", type=int, default=2000, help="log lines written per second")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
