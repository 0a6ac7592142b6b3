"""Mail domains at scale: N domains × 2 MX hosts × 2 addresses each, against a loopback knotd.

    .venv/bin/python benchmarks/domains.py [--domains 1000] [--interval 60] [--measure 120]

A private knotd (tests/dns_server.py) serves a generated zone: domain dN.bench.test has
`MX 10 mxa.dN` and `MX 20 mxb.dN`, each with two A records (127.60.0.1 onwards: 4 × N
addresses, no AAAA, so every AAAA question is a cached NODATA). The benchmark SMTP server
(smtpserver.py) listens on every one of those addresses, on one port. smtpmon runs in daemon
mode with those domains (module: banner, EHLO, QUIT, no TLS) and `dns.nameservers` naming the
knotd, then, for comparison, with the same 4 × N addresses as host targets, at the same
interval. Each phase warms up for one interval plus a bit, then measures for `--measure`
seconds:

- schedule lag p99 (each domain's start against its due time; target probes for the targets);
- DNS queries per minute (smtpmon_dns_queries_total), in the window and since the start,
  against what the TTLs allow (a window of 300 s or more sees every answer expire once);
- CPU per SMTP session, domains against host targets;
- RSS at the end.

/metrics is scraped every 15 s throughout, as Prometheus would (rendering is part of the cost).

Prints a Markdown table; the figures go to benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import harness as h  # noqa: E402
from dns_server import Zone, start_knot  # noqa: E402

ZONE = "bench.test"
TTL = 300  # the zone's TTL and negative TTL; smtpmon's max_ttl is 300 s too
MAX_CONCURRENCY = 64
SCRAPE_INTERVAL = 15.0  # /metrics is scraped as Prometheus would, in both phases
WARM_UP_EXTRA_SECONDS = 15.0


def log(message: str) -> None:
    print(f"# {datetime.datetime.now():%H:%M:%S} {message}", file=sys.stderr, flush=True)


def address(index: int) -> str:
    return f"127.60.{index // 250}.{index % 250 + 1}"


def zone_records(domains: int) -> str:
    lines = []
    for n in range(domains):
        lines += [f"d{n} MX 10 mxa.d{n}", f"d{n} MX 20 mxb.d{n}"]
        for host, first in (("mxa", 4 * n), ("mxb", 4 * n + 2)):
            lines += [f"{host}.d{n} A {address(first)}", f"{host}.d{n} A {address(first + 1)}"]
    return "\n".join(lines) + "\n"


def domains_config(path: Path, domains: int, port: int, nameserver: tuple[str, int],
                   interval: float) -> None:
    lines = [
        "global:",
        f"  interval: {interval}s",
        f"  timeout: {min(10.0, interval / 2):g}s",
        f"  max_concurrency: {MAX_CONCURRENCY}",
        "  ehlo_name: bench.example.org",
        "modules:",
        "  plain: {tls: none}",
        "dns:",
        f"  nameservers: ['{nameserver[0]}:{nameserver[1]}']",
        "domains:",
    ]
    lines += [f"  - {{domain: d{n}.{ZONE}, module: plain, port: {port}}}" for n in range(domains)]
    path.write_text("\n".join(lines) + "\n")


def targets_config(path: Path, addresses: int, port: int, interval: float) -> None:
    lines = [
        "global:",
        f"  interval: {interval}s",
        f"  timeout: {min(10.0, interval / 2):g}s",
        f"  max_concurrency: {MAX_CONCURRENCY}",
        "  ehlo_name: bench.example.org",
        "modules:",
        "  plain: {tls: none}",
        "targets:",
    ]
    lines += [f"  - {{address: '{address(i)}:{port}', module: plain}}" for i in range(addresses)]
    path.write_text("\n".join(lines) + "\n")


async def scrape(port: int) -> bytes:
    client = h.HttpClient(port)
    try:
        status, body = await client.get("/metrics")
    finally:
        client.close()
    assert status == 200
    return body


def figures(body: bytes) -> dict:
    probes = sum(value for _, value in h.samples(body, "smtpmon_probes_total"))
    queries = sum(value for _, value in h.samples(body, "smtpmon_dns_queries_total"))
    hits = sum(value for _, value in h.samples(body, "smtpmon_dns_cache_hits_total"))
    failed = sum(1 for _, value in h.samples(body, "smtpmon_probe_success") if value == 0)
    deliverable = sum(value for _, value in h.samples(body, "smtpmon_domain_deliverable"))
    return dict(probes=probes, queries=queries, hits=hits, failed=failed, deliverable=deliverable,
                lag=h.histogram(body, "smtpmon_schedule_lag_seconds"))


def scraped_sleep(port: int, seconds: float) -> None:
    """Sleep `seconds`, scraping /metrics every SCRAPE_INTERVAL meanwhile."""
    until = time.monotonic() + seconds
    while (left := until - time.monotonic()) > 0:
        time.sleep(min(SCRAPE_INTERVAL, left))
        if until - time.monotonic() > 1:
            asyncio.run(scrape(port))


def run_phase(procs: h.Processes, config: Path, name: str, interval: float,
              measure: float) -> dict:
    process, port = h.start_smtpmon(procs, config, name=name)
    launched = time.monotonic()
    log(f"{name}: warming up for {interval + WARM_UP_EXTRA_SECONDS:.0f} s")
    scraped_sleep(port, interval + WARM_UP_EXTRA_SECONDS)
    before = figures(asyncio.run(scrape(port)))
    window_cpu, started = h.cpu_seconds(process.pid), time.monotonic()
    log(f"{name}: measuring for {measure:.0f} s")
    scraped_sleep(port, measure)
    after = figures(asyncio.run(scrape(port)))
    cpu = h.cpu_seconds(process.pid) - window_cpu
    seconds = time.monotonic() - started
    running_minutes = (time.monotonic() - launched) / 60
    rss = h.rss_bytes(process.pid)
    procs.stop(process)
    sessions = after["probes"] - before["probes"]
    lag = h.histogram_delta(after["lag"], before["lag"])
    return {
        "sessions": sessions,
        "sessions_per_second": sessions / seconds,
        "cpu_per_session_ms": 1000 * cpu / sessions if sessions else float("nan"),
        "cpu_share": cpu / seconds,
        "lag_p99": h.histogram_quantile(0.99, lag),
        "lag_p50": h.histogram_quantile(0.50, lag),
        "queries_per_minute": (after["queries"] - before["queries"]) * 60 / seconds,
        "hits_per_minute": (after["hits"] - before["hits"]) * 60 / seconds,
        "queries_since_start_per_minute": after["queries"] / running_minutes,
        "failed": after["failed"],
        "deliverable": after["deliverable"],
        "rss_mb": rss / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=60.0)
    parser.add_argument("--measure", type=float, default=120.0)
    args = parser.parse_args()
    addresses = 4 * args.domains
    h.raise_fd_limit(addresses + 4096)
    workdir = h.workdir("smtpmon-bench-domains-")
    procs = h.Processes(workdir)
    knot = None
    try:
        log(f"knotd: {args.domains} domains, {addresses} addresses")
        knot = start_knot([Zone(ZONE, zone_records(args.domains), ttl=TTL, negative_ttl=TTL)])
        certs = h.make_certificates(workdir)
        port = h.free_port()
        server = h.start_smtp_server(procs, certs, [f"ok@{address(i)}" for i in range(addresses)],
                                     port=port)
        assert server.ports and all(p == port for p in server.ports), "listeners not on one port"
        domains_file, targets_file = workdir / "domains.yml", workdir / "targets.yml"
        domains_config(domains_file, args.domains, port, knot.nameserver, args.interval)
        targets_config(targets_file, addresses, port, args.interval)
        domains = run_phase(procs, domains_file, "smtpmon-domains", args.interval, args.measure)
        targets = run_phase(procs, targets_file, "smtpmon-targets", args.interval, args.measure)
    finally:
        procs.close()
        if knot is not None:
            knot.stop()
    # 5 names per domain (the domain's MX, two hosts' A and AAAA) asked once per TTL at most.
    allowed = 5 * args.domains * 60 / TTL
    print(f"\n{args.domains} domains × 2 MX × 2 addresses ({addresses} sessions per "
          f"{args.interval:g} s interval), max_concurrency {MAX_CONCURRENCY}, measured over "
          f"{args.measure:g} s after one interval of warm-up\n")
    print("| figure | domains | the same addresses as host targets |")
    print("|---|---:|---:|")
    rows = [
        ("SMTP sessions per second", "sessions_per_second", "{:.1f}"),
        ("CPU per session (ms)", "cpu_per_session_ms", "{:.3f}"),
        ("CPU (share of one core)", "cpu_share", "{:.2f}"),
        ("schedule lag p50 (s)", "lag_p50", "{:.3f}"),
        ("schedule lag p99 (s)", "lag_p99", "{:.3f}"),
        ("DNS queries per minute", "queries_per_minute", "{:.0f}"),
        ("DNS cache hits per minute", "hits_per_minute", "{:.0f}"),
        ("DNS queries per minute since the start (first answers included)",
         "queries_since_start_per_minute", "{:.0f}"),
        ("addresses failing at the end", "failed", "{:.0f}"),
        ("RSS at the end (MB)", "rss_mb", "{:.0f}"),
    ]
    for title, key, form in rows:
        print(f"| {title} | {form.format(domains[key])} | {form.format(targets[key])} |")
    print(f"| domains deliverable at the end | {domains['deliverable']:.0f} of {args.domains} | |")
    ratio = domains["cpu_per_session_ms"] / targets["cpu_per_session_ms"]
    print(f"\nCPU per session, domains / host targets: {ratio:.2f}; DNS queries per minute "
          f"allowed by the TTLs ({TTL} s): {allowed:.0f}")


if __name__ == "__main__":
    main()
