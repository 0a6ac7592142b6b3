"""Soak: 1,000 targets for 10 minutes, one in ten misbehaving in rotating ways.

    .venv/bin/python benchmarks/soak.py [--quick] [--targets N] [--minutes M]

The misbehaving tenth cycles through tarpit, reset after EHLO, 421 banner, garbage banner,
slowloris banner and TLS junk after STARTTLS (the module is opportunistic STARTTLS, so the
healthy nine tenths run a full TLS session), changing every 20 s. Every 10 s the soak reads the
daemon's open file descriptors, resident memory and /metrics. At the end it prints:

- file descriptors and RSS after warm-up (first interval and one rotation) and at the end, and
  the growth (target: under 5%);
- probes done against probes due: every target's `smtpmon_probes_total +
  smtpmon_probe_skipped_total` must have advanced by at least floor(elapsed / interval) - 1
  (a probe still in flight at the last scrape is counted after it); a target short by more
  lost a probe;
- the most probes in flight seen and the schedule lag p99, against max_concurrency (the pool
  was never exhausted if in-flight stayed below it and the lag stayed low).
Exit status 0 when every figure is within its limit, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as h  # noqa: E402

INTERVAL = 10.0
TIMEOUT = 2.0
MAX_CONCURRENCY = 64
ROTATE_SECONDS = 20.0
SAMPLE_SECONDS = 10.0
GROWTH_LIMIT = 0.05


def totals(body: bytes) -> dict[str, float]:
    done: dict[str, float] = {}
    for name in ("smtpmon_probes_total", "smtpmon_probe_skipped_total"):
        for labels, value in h.samples(body, name):
            target = h.label(labels, "target")
            done[target] = done.get(target, 0.0) + value
    return done


async def soak(targets: int, seconds: float) -> int:
    wd = h.workdir("smtpmon-soak-")
    procs = h.Processes(wd)
    try:
        certs = h.make_certificates(wd)
        server = h.start_smtp_server(procs, certs, [f"rotate:{i}" for i in range(targets)],
                                     rotate_seconds=ROTATE_SECONDS)
        config = wd / "smtpmon.yml"
        h.smtpmon_config(config, server.ports, interval=INTERVAL, timeout=TIMEOUT,
                         max_concurrency=MAX_CONCURRENCY, ca_file=certs.ca_file)
        text = config.read_text().replace(
            "  starttls: {tls: starttls,", "  starttls: {tls: opportunistic,")
        config.write_text(text.replace("module: plain", "module: starttls"))
        smtpmon, port = h.start_smtpmon(procs, config)
        client = h.HttpClient(port)
        warmup = INTERVAL + ROTATE_SECONDS
        print(f"soak: {targets} targets, interval {INTERVAL:.0f}s, timeout {TIMEOUT:.0f}s, "
              f"max_concurrency {MAX_CONCURRENCY}, {seconds:.0f}s after {warmup:.0f}s warm-up; "
              f"work dir {wd}", flush=True)
        await asyncio.sleep(warmup)
        _, first = await client.get("/metrics")
        started = time.monotonic()
        fds = [h.open_fds(smtpmon.pid)]
        rss = [h.rss_bytes(smtpmon.pid)]
        in_flight = []
        while time.monotonic() - started < seconds:
            await asyncio.sleep(SAMPLE_SECONDS)
            _, body = await client.get("/metrics")
            fds.append(h.open_fds(smtpmon.pid))
            rss.append(h.rss_bytes(smtpmon.pid))
            in_flight.append(h.samples(body, "smtpmon_probes_in_flight")[0][1])
            print(f"  t={time.monotonic() - started:5.0f}s fds={fds[-1]} rss={rss[-1] / 1e6:.1f}MB "
                  f"in_flight={in_flight[-1]:.0f}", flush=True)
        elapsed = time.monotonic() - started
        last = body
        if smtpmon.poll() is not None:
            print(f"FAIL: the daemon exited with {smtpmon.returncode}")
            return 1
    finally:
        procs.close()

    before, after = totals(first), totals(last)
    due = elapsed / INTERVAL
    # A probe in flight at the last scrape is counted after it: one run may be missing there.
    least = math.floor(due) - 1
    short = {t: after.get(t, 0) - before.get(t, 0) for t in before
             if after.get(t, 0) - before.get(t, 0) < least}
    probes = sum(after.values()) - sum(before.values())
    skipped = (sum(v for _, v in h.samples(last, "smtpmon_probe_skipped_total"))
               - sum(v for _, v in h.samples(first, "smtpmon_probe_skipped_total")))
    lag = h.histogram_delta(h.histogram(last, "smtpmon_schedule_lag_seconds"),
                            h.histogram(first, "smtpmon_schedule_lag_seconds"))
    # Compare the end against the mean of the first samples after warm-up: one sample is noisy.
    base_fds, base_rss = max(fds[:2]), max(rss[:2])
    fd_growth = fds[-1] / base_fds - 1
    rss_growth = rss[-1] / base_rss - 1
    checks = {
        "fds flat": fd_growth < GROWTH_LIMIT or fds[-1] - base_fds <= 5,
        "rss flat": rss_growth < GROWTH_LIMIT,
        "no probe lost": not short,
        "pool never exhausted": max(in_flight) < MAX_CONCURRENCY,
    }
    print(f"elapsed {elapsed:.0f}s: probes done {probes:.0f} (of which {skipped:.0f} skipped runs), "
          f"due {due * len(before):.0f} ({len(before)} targets x {due:.1f}); "
          f"targets that advanced by fewer than {least} runs: {len(short)} {sorted(short.values())[:10]}")
    print(f"open fds: {base_fds} after warm-up -> {fds[-1]} at the end ({fd_growth * 100:+.1f}%), "
          f"min {min(fds)} max {max(fds)}")
    print(f"RSS: {base_rss / 1e6:.1f} MB after warm-up -> {rss[-1] / 1e6:.1f} MB at the end "
          f"({rss_growth * 100:+.1f}%), max {max(rss) / 1e6:.1f} MB")
    print(f"probes in flight: max {max(in_flight):.0f} of {MAX_CONCURRENCY}; schedule lag p50 "
          f"{h.histogram_quantile(0.5, lag) * 1000:.2f} ms, p99 {h.histogram_quantile(0.99, lag) * 1000:.2f} ms")
    for name, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
    return 0 if all(checks.values()) else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 minute instead of 10")
    parser.add_argument("--targets", type=int, default=1000)
    parser.add_argument("--minutes", type=float)
    args = parser.parse_args()
    minutes = args.minutes or (1.0 if args.quick else 10.0)
    h.raise_fd_limit(65536)
    sys.exit(asyncio.run(soak(args.targets, minutes * 60)))


if __name__ == "__main__":
    main()
