"""The smtpmon benchmark suite: smtpmon against blackbox_exporter, side by side, on loopback.

    .venv/bin/python benchmarks/run.py [--quick] [--sizes 10,1000,10000] [--skip PHASE ...]

Prints one table (Markdown) per phase; benchmarks/README.md explains each figure and keeps the
last full run. Phases:

- daemon: N targets on a fast loopback SMTP server (10% with a 20 ms banner delay), smtpmon in
  daemon mode (plain module: banner, EHLO, QUIT) with /metrics scraped every 15 s, and
  blackbox_exporter driven through /probe by a load client at the same rate over the same
  targets, both at once. CPU per probe, schedule lag, /metrics time and size, RSS, and the
  banner-stage timing error against the delay the server really made (and the nominal 20 ms);
  after the window, the status page (`/`) over HTTP: its first view and the median of the next.
- probe: /probe mode, closed loop at concurrency 1, 16 and 64 (plain) and 1 and 16 (STARTTLS), the
  exporters alternating in rounds: CPU per probe, and each round's ratio.
- isolation: 1,000 targets, one in ten a tarpit: the schedule lag of the probes.
- postfix: a STARTTLS session against a real Postfix (needs root): smtpmon, smtplib and
  blackbox_exporter wall time per session.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import smtplib
import ssl
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as h  # noqa: E402

SCRAPE_INTERVAL = 15.0
# The status page is viewed this many times after the daemon phase's window, this far apart.
PAGE_VIEWS = 6
PAGE_VIEW_PAUSE = 2.0
BANNER_DELAY = 0.020
# First runs are spread over one interval, and a reply enters smtpmon's reply cache on its
# second sighting: the measurement starts after every target was probed twice.
WARM_UP_INTERVALS = 2
STALL_SECONDS = 0.020  # a STARTTLS session against Postfix takes ~3 ms; a stall adds ~40
# (targets, probe interval seconds): the rate is targets / interval.
INTERVALS = {10: 1.0, 1000: 10.0, 10000: 60.0}


def log(message: str) -> None:
    print(f"# {datetime.datetime.now():%H:%M:%S} {message}", file=sys.stderr, flush=True)


def fmt_ratio(ours: float, theirs: float | None) -> str:
    if theirs is None or theirs != theirs or theirs == 0:
        return "n/a"
    return f"{ours / theirs:.2f}"


class Window:
    """CPU seconds of a process between start() and stop()."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.cpu0 = self.t0 = 0.0
        self.cpu = self.seconds = 0.0

    def start(self) -> None:
        self.cpu0, self.t0 = h.cpu_seconds(self.pid), time.monotonic()

    def stop(self) -> None:
        self.cpu = h.cpu_seconds(self.pid) - self.cpu0
        self.seconds = time.monotonic() - self.t0


async def open_loop(port: int, paths: list[str], rate: float, until: float, connections: int = 16) -> int:
    """GET paths round robin at `rate` per second until `until`; the successful answers."""
    pool: asyncio.Queue[h.HttpClient] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(h.HttpClient(port))
    done = 0

    async def one(path: str) -> None:
        nonlocal done
        client = await pool.get()
        try:
            status, _ = await client.get(path)
            done += status == 200
        except OSError:
            pass
        finally:
            pool.put_nowait(client)

    tasks = set()
    start = time.monotonic()
    sent = 0
    while time.monotonic() < until:
        due = start + sent / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.ensure_future(one(paths[sent % len(paths)]))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        sent += 1
    if tasks:
        await asyncio.wait(tasks, timeout=10)
    while not pool.empty():
        pool.get_nowait().close()
    return done


async def closed_loop(port: int, paths: list[str], concurrency: int, seconds: float) -> int:
    until = time.monotonic() + seconds
    counter = iter(range(10**9))
    done = 0

    async def worker() -> None:
        nonlocal done
        client = h.HttpClient(port)
        while time.monotonic() < until:
            status, _ = await client.get(paths[next(counter) % len(paths)])
            done += status == 200
        client.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done


# -- phase: daemon mode ------------------------------------------------------------------------

async def daemon_phase(n: int, interval: float, measure_seconds: float) -> dict:
    wd = h.workdir(f"smtpmon-bench-{n}-")
    procs = h.Processes(wd)
    try:
        certs = h.make_certificates(wd)
        delayed = set(range(3, n, 10))  # one in ten: the timing-accuracy targets
        behaviours = [f"delay:{BANNER_DELAY}" if i in delayed else "ok" for i in range(n)]
        started = time.monotonic()
        server = h.start_smtp_server(procs, certs, behaviours)
        config = wd / "smtpmon.yml"
        h.smtpmon_config(config, server.ports, interval=interval, timeout=min(5.0, interval * 0.8),
                         max_concurrency=32, ca_file=certs.ca_file)
        smtpmon, port = h.start_smtpmon(procs, config)
        blackbox = h.start_blackbox(procs, certs.ca_file)
        log(f"daemon N={n}: processes up in {time.monotonic() - started:.1f}s; "
            f"warm-up {WARM_UP_INTERVALS * interval:.0f}s, measuring {measure_seconds:.0f}s")
        client = h.HttpClient(port)
        delayed_targets = {f"127.0.0.1:{server.ports[i]}" for i in delayed}
        # (target, when its probe ended) -> the banner stage's duration as smtpmon reported it
        banner_durations: dict[tuple[str, float], float] = {}
        scrape_times, sizes, rss = [], [], []

        async def scrape() -> bytes:
            begun = time.perf_counter()
            _, body = await client.get("/metrics")
            scrape_times.append(time.perf_counter() - begun)
            sizes.append(len(body))
            rss.append(h.rss_bytes(smtpmon.pid))
            last = {h.label(labels, "target"): v for labels, v in
                    h.samples(body, "smtpmon_probe_last_timestamp_seconds")}
            for labels, value in h.samples(body, "smtpmon_probe_stage_duration_seconds"):
                target = h.label(labels, "target")
                if target in delayed_targets and h.label(labels, "stage") == "banner":
                    banner_durations[(target, last.get(target, 0.0))] = value
            return body

        await asyncio.sleep(WARM_UP_INTERVALS * interval)  # steady state: see WARM_UP_INTERVALS
        before = await scrape()
        scrape_times.clear()
        ours, theirs = Window(smtpmon.pid), Window(blackbox[0].pid) if blackbox else None
        ours.start()
        theirs and theirs.start()
        end = time.monotonic() + measure_seconds
        paths = [f"/probe?target=127.0.0.1:{p}&module=smtp_plain" for p in server.ports]
        load = asyncio.ensure_future(
            open_loop(blackbox[1], paths, n / interval, end)) if blackbox else None
        while time.monotonic() + SCRAPE_INTERVAL < end:
            await asyncio.sleep(SCRAPE_INTERVAL)
            await scrape()
        await asyncio.sleep(max(0.0, end - time.monotonic()))
        after = await scrape()  # the last scrape counts: Prometheus would make it
        ours.stop()
        blackbox_done = await load if load else 0
        theirs and theirs.stop()
        # The status page, after the CPU window (its views would count in smtpmon's CPU): the
        # first view makes every target's page copy, the next ones see the probes since.
        page_times = []
        for _ in range(PAGE_VIEWS):
            begun = time.perf_counter()
            status, _ = await client.get("/")
            page_times.append(time.perf_counter() - begun)
            assert status == 200, status
            await asyncio.sleep(PAGE_VIEW_PAUSE)
        probes = (sum(v for _, v in h.samples(after, "smtpmon_probes_total"))
                  - sum(v for _, v in h.samples(before, "smtpmon_probes_total")))
        skipped = (sum(v for _, v in h.samples(after, "smtpmon_probe_skipped_total"))
                   - sum(v for _, v in h.samples(before, "smtpmon_probe_skipped_total")))
        lag = h.histogram_delta(h.histogram(after, "smtpmon_schedule_lag_seconds"),
                                h.histogram(before, "smtpmon_schedule_lag_seconds"))
        procs.stop(server.process)  # which writes the delays it really made
        errors, nominal_errors = banner_errors(banner_durations, server.banner_delays())
        result = {
            "n": n, "interval": interval, "seconds": ours.seconds,
            "probes": probes, "skipped": skipped, "cpu": ours.cpu,
            "cpu_per_probe": ours.cpu / max(probes, 1),
            "cores": ours.cpu / ours.seconds,
            "bb_probes": blackbox_done, "bb_cpu": theirs.cpu if theirs else None,
            "bb_cpu_per_probe": theirs.cpu / max(blackbox_done, 1) if theirs else None,
            "lag_p50": h.histogram_quantile(0.5, lag), "lag_p99": h.histogram_quantile(0.99, lag),
            "metrics_ms": statistics.median(scrape_times) * 1000 if scrape_times else float("nan"),
            "metrics_bytes": sizes[-1], "rss_mb": max(rss) / 1e6,
            "page_first_ms": page_times[0] * 1000,
            "page_ms": statistics.median(page_times[1:]) * 1000,
            "bb_rss_mb": h.rss_bytes(blackbox[0].pid) / 1e6 if blackbox else None,
            "timing_samples": len(errors),
            "timing_p50_ms": h.percentile(errors, 0.5) * 1000,
            "timing_p99_ms": h.percentile(errors, 0.99) * 1000,
            "nominal_p50_ms": h.percentile(nominal_errors, 0.5) * 1000,
            "nominal_p99_ms": h.percentile(nominal_errors, 0.99) * 1000,
            "wall": time.monotonic() - started,
        }
        log(f"daemon N={n}: done in {result['wall']:.0f}s")
        return result
    finally:
        procs.close()


def banner_errors(reported: dict[tuple[str, float], float],
                  delays: dict[int, list[tuple[float, float]]]) -> tuple[list[float], list[float]]:
    """|reported - real delay| and |reported - BANNER_DELAY| for each reported banner duration.

    The real delay is the one the server made: from its accept to its write of the banner (its
    timer fires up to about a millisecond late). A probe is matched to the session on its
    port accepted last before the probe ended: one probe per target at a time, seconds apart.
    """
    errors, nominal = [], []
    for (target, ended), duration in reported.items():
        sessions = [pair for pair in delays.get(int(target.rsplit(":", 1)[1]), []) if pair[0] <= ended]
        if sessions:
            errors.append(abs(duration - max(sessions)[1]))
            nominal.append(abs(duration - BANNER_DELAY))
    return errors, nominal


# -- phase: /probe mode ------------------------------------------------------------------------

async def probe_phase(seconds: float, rounds: int) -> list[dict]:
    """Each case: `rounds` rounds of seconds / rounds per exporter, their order alternating
    (ABBA...), so that the machine's other work, which drifts over seconds, weighs on both
    alike. The figures are over all rounds; each round's ratio is kept for its spread."""
    wd = h.workdir("smtpmon-bench-probe-")
    procs = h.Processes(wd)
    rows = []
    try:
        certs = h.make_certificates(wd)
        server = h.start_smtp_server(procs, certs, ["ok"] * 64)
        config = wd / "smtpmon.yml"
        h.smtpmon_config(config, [], interval=60, timeout=5, max_concurrency=32, ca_file=certs.ca_file)
        smtpmon, port = h.start_smtpmon(procs, config)
        blackbox = h.start_blackbox(procs, certs.ca_file)
        cases = [("plain", 1), ("plain", 16), ("plain", 64), ("starttls", 1), ("starttls", 16)]
        for module, concurrency in cases:
            contenders = [("smtpmon", smtpmon.pid, port, module)]
            if blackbox:
                contenders.append(("blackbox", blackbox[0].pid, blackbox[1], f"smtp_{module}"))
            totals = {name: [0.0, 0, 0.0] for name, *_ in contenders}  # CPU, probes, seconds
            round_ratios = []
            for _, _, http_port, module_name in contenders:  # warm-up: threads, TLS
                await closed_loop(http_port, probe_paths(server, module_name), concurrency, 1.0)
            for index in range(rounds):
                per_probe = {}
                for name, pid, http_port, module_name in contenders[::1 if index % 2 == 0 else -1]:
                    window = Window(pid)
                    window.start()
                    done = await closed_loop(http_port, probe_paths(server, module_name),
                                             concurrency, seconds / rounds)
                    window.stop()
                    total = totals[name]
                    total[0] += window.cpu
                    total[1] += done
                    total[2] += window.seconds
                    per_probe[name] = window.cpu / max(done, 1)
                if "blackbox" in per_probe:
                    round_ratios.append(per_probe["smtpmon"] / per_probe["blackbox"])
            row = {"module": module, "concurrency": concurrency, "round_ratios": round_ratios}
            for name, (cpu, done, window_seconds) in totals.items():
                row[name] = cpu / max(done, 1)
                row[f"{name}_rate"] = done / window_seconds
            rows.append(row)
            log(f"probe {module} c={concurrency}: {row}")
        return rows
    finally:
        procs.close()


def probe_paths(server: h.SmtpServer, module_name: str) -> list[str]:
    return [f"/probe?target=127.0.0.1:{p}&module={module_name}" for p in server.ports]


# -- phase: isolation --------------------------------------------------------------------------

async def isolation_phase(n: int, measure_seconds: float) -> dict:
    wd = h.workdir("smtpmon-bench-isolation-")
    procs = h.Processes(wd)
    try:
        certs = h.make_certificates(wd)
        behaviours = ["tarpit" if i % 10 == 5 else "ok" for i in range(n)]
        server = h.start_smtp_server(procs, certs, behaviours)
        config = wd / "smtpmon.yml"
        interval, timeout = 10.0, 1.5
        h.smtpmon_config(config, server.ports, interval=interval, timeout=timeout,
                         max_concurrency=32, ca_file=certs.ca_file)
        smtpmon, port = h.start_smtpmon(procs, config)
        client = h.HttpClient(port)
        await asyncio.sleep(interval + timeout)
        _, before = await client.get("/metrics")
        await asyncio.sleep(measure_seconds)
        _, after = await client.get("/metrics")
        lag = h.histogram_delta(h.histogram(after, "smtpmon_schedule_lag_seconds"),
                                h.histogram(before, "smtpmon_schedule_lag_seconds"))
        skipped = (sum(v for _, v in h.samples(after, "smtpmon_probe_skipped_total"))
                   - sum(v for _, v in h.samples(before, "smtpmon_probe_skipped_total")))
        under_100ms = dict(lag).get(0.1, 0) / max(lag[-1][1], 1)
        return {"n": n, "tarpits": n // 10, "interval": interval, "timeout": timeout,
                "probes": lag[-1][1], "skipped": skipped,
                "lag_p50": h.histogram_quantile(0.5, lag), "lag_p99": h.histogram_quantile(0.99, lag),
                "share_under_100ms": under_100ms}
    finally:
        procs.close()


# -- phase: STARTTLS against Postfix -----------------------------------------------------------

async def postfix_phase(sessions: int) -> dict | None:
    sys.path.insert(0, str(h.ROOT))
    sys.path.insert(0, str(h.ROOT / "tests"))  # the tests' Postfix harness and its helpers
    from postfix import start_postfix, unavailable_reason

    from smtpmon.config.addresses import parse_address
    from smtpmon.smtp.module import Module
    from smtpmon.smtp.session import run_probe

    if unavailable_reason():
        log(f"postfix phase skipped: {unavailable_reason()}")
        return None
    wd = h.workdir("smtpmon-bench-postfix-")
    procs = h.Processes(wd)
    postfix = start_postfix()
    try:
        module = Module(tls="starttls", tls_ca_file=postfix.ca_file,
                        tls_server_name=postfix.hostname, ehlo_name="bench.example.org")
        context = ssl.create_default_context(cafile=postfix.ca_file)

        def with_smtplib() -> None:
            with smtplib.SMTP(postfix.host, postfix.port, local_hostname="bench.example.org",
                              timeout=10) as smtp:
                smtp.ehlo()
                smtp._host = postfix.hostname  # the name starttls() checks the certificate against
                smtp.starttls(context=context)
                smtp.ehlo()

        def with_smtpmon() -> None:
            result = run_probe(postfix.target, *parse_address(postfix.target), module)
            assert result.success, result

        # Wall time (and this thread's CPU time) of each, alternating after a warm-up, so that
        # neither pays for Postfix starting its smtpd processes or for the machine's noise at
        # a given moment.
        ours, theirs, ours_cpu, theirs_cpu = [], [], [], []
        for round_ in range(sessions + 5):
            for session, times, cpu in ((with_smtpmon, ours, ours_cpu),
                                        (with_smtplib, theirs, theirs_cpu)):
                begun, begun_cpu = time.perf_counter(), time.thread_time()
                session()
                if round_ >= 5:
                    times.append(time.perf_counter() - begun)
                    cpu.append(time.thread_time() - begun_cpu)
        blackbox_times = []
        blackbox = h.start_blackbox(procs, postfix.ca_file, server_name=postfix.hostname)
        if blackbox:
            client = h.HttpClient(blackbox[1])
            for _ in range(sessions):
                _, body = await client.get(f"/probe?target={postfix.target}&module=smtp_starttls")
                if dict(h.samples(body, "probe_success")).get(b"") == 1:
                    blackbox_times.append(dict(h.samples(body, "probe_duration_seconds"))[b""])
            client.close()
        # A delayed-ACK / Nagle stall costs ~40 ms; the medians hide one that hits a third.
        def stalled(times: list[float]) -> int:
            return sum(t > STALL_SECONDS for t in times)

        return {"sessions": sessions, "smtpmon_ms": statistics.median(ours) * 1000,
                "smtplib_ms": statistics.median(theirs) * 1000,
                "smtpmon_mean_ms": statistics.fmean(ours) * 1000,
                "smtplib_mean_ms": statistics.fmean(theirs) * 1000,
                "smtpmon_cpu_ms": statistics.median(ours_cpu) * 1000,
                "smtplib_cpu_ms": statistics.median(theirs_cpu) * 1000,
                "smtpmon_stalls": stalled(ours), "smtplib_stalls": stalled(theirs),
                "blackbox_stalls": stalled(blackbox_times),
                "blackbox_ms": statistics.median(blackbox_times) * 1000 if blackbox_times else None,
                "blackbox_ok": len(blackbox_times)}
    finally:
        postfix.stop()
        procs.close()


# -- output ------------------------------------------------------------------------------------

def machine() -> str:
    model = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{platform.node()}: {os.cpu_count()} cores ({model}), Python {platform.python_version()}, "
            f"{datetime.date.today().isoformat()}")


def print_tables(daemon: list[dict], probe: list[dict], isolation: dict | None,
                 postfix: dict | None, timings: dict[str, float]) -> None:
    print(f"machine: {machine()}\n")
    if daemon:
        print("Daemon mode (plain probe: banner, EHLO, QUIT; /metrics scraped every 15 s); "
              "blackbox_exporter through /probe at the same rate, same targets, same time\n")
        print("| targets | interval | probes | smtpmon CPU/probe | blackbox CPU/probe | ratio "
              "| smtpmon cores | lag p50 | lag p99 | /metrics | /metrics size | RSS | blackbox RSS "
              "| banner error p50 / p99 (samples) | against the nominal 20 ms "
              "| status page first / median |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in daemon:
            bb = f"{r['bb_cpu_per_probe'] * 1e6:.0f} µs" if r["bb_cpu_per_probe"] else "n/a"
            bbrss = f"{r['bb_rss_mb']:.1f} MB" if r["bb_rss_mb"] else "n/a"
            print(f"| {r['n']:,} | {r['interval']:.0f} s | {r['probes']:.0f} (+{r['skipped']:.0f} skipped) "
                  f"| {r['cpu_per_probe'] * 1e6:.0f} µs | {bb} "
                  f"| {fmt_ratio(r['cpu_per_probe'], r['bb_cpu_per_probe'])} "
                  f"| {r['cores']:.3f} | {r['lag_p50'] * 1000:.2f} ms | {r['lag_p99'] * 1000:.2f} ms "
                  f"| {r['metrics_ms']:.1f} ms | {r['metrics_bytes'] / 1e6:.2f} MB | {r['rss_mb']:.1f} MB "
                  f"| {bbrss} | {r['timing_p50_ms']:.2f} / {r['timing_p99_ms']:.2f} ms ({r['timing_samples']}) "
                  f"| {r['nominal_p50_ms']:.2f} / {r['nominal_p99_ms']:.2f} ms "
                  f"| {r['page_first_ms']:.1f} / {r['page_ms']:.1f} ms |")
        print()
    if probe:
        print("/probe mode, closed loop (CPU per probe; probes per second in brackets; the "
              "exporters alternate in rounds)\n")
        print("| module | concurrency | smtpmon | blackbox | ratio | rounds' ratios |")
        print("|---|---:|---:|---:|---:|---|")
        for r in probe:
            bb = f"{r['blackbox'] * 1e6:.0f} µs ({r['blackbox_rate']:.0f}/s)" if "blackbox" in r else "n/a"
            spread = " ".join(f"{ratio:.2f}" for ratio in sorted(r["round_ratios"])) or "n/a"
            print(f"| {r['module']} | {r['concurrency']} | {r['smtpmon'] * 1e6:.0f} µs "
                  f"({r['smtpmon_rate']:.0f}/s) | {bb} | {fmt_ratio(r['smtpmon'], r.get('blackbox'))} "
                  f"| {spread} |")
        print()
    if isolation:
        r = isolation
        print(f"Isolation: {r['n']:,} targets, {r['tarpits']} of them tarpits (interval "
              f"{r['interval']:.0f} s, timeout {r['timeout']} s, max_concurrency 32): "
              f"{r['probes']:.0f} probes, {r['skipped']:.0f} skipped, lag p50 "
              f"{r['lag_p50'] * 1000:.2f} ms, p99 {r['lag_p99'] * 1000:.2f} ms, "
              f"{r['share_under_100ms'] * 100:.2f}% under 100 ms\n")
    if postfix:
        r = postfix
        bb = f"{r['blackbox_ms']:.1f} ms ({r['blackbox_ok']} ok)" if r["blackbox_ms"] else "n/a"
        print(f"STARTTLS session against Postfix (median of {r['sessions']}; mean; median CPU): "
              f"smtpmon {r['smtpmon_ms']:.2f} ms ({r['smtpmon_mean_ms']:.2f}; "
              f"{r['smtpmon_cpu_ms']:.2f}), smtplib {r['smtplib_ms']:.2f} ms "
              f"({r['smtplib_mean_ms']:.2f}; {r['smtplib_cpu_ms']:.2f}), blackbox {bb}; "
              f"sessions over {STALL_SECONDS * 1000:.0f} ms: smtpmon {r['smtpmon_stalls']}, "
              f"smtplib {r['smtplib_stalls']}, blackbox {r['blackbox_stalls']}\n")
    print("Time per part: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))


async def main_async(args) -> None:
    quick = args.quick
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else (
        [10, 1000] if quick else [10, 1000, 10000])
    timings: dict[str, float] = {}
    daemon, probe, isolation, postfix = [], [], None, None
    if "daemon" not in args.skip:
        for n in sizes:
            interval = INTERVALS.get(n, 10.0)
            measure = (20.0 if quick else 60.0) if n < 10000 else (30.0 if quick else 90.0)
            begun = time.monotonic()
            daemon.append(await daemon_phase(n, interval, measure))
            timings[f"daemon N={n}"] = time.monotonic() - begun
    if "probe" not in args.skip:
        begun = time.monotonic()
        probe = await probe_phase(4.0 if quick else 10.0, 2 if quick else 5)
        timings["probe mode"] = time.monotonic() - begun
    if "isolation" not in args.skip:
        begun = time.monotonic()
        isolation = await isolation_phase(1000, 20.0 if quick else 60.0)
        timings["isolation"] = time.monotonic() - begun
    if "postfix" not in args.skip:
        begun = time.monotonic()
        postfix = await postfix_phase(50 if quick else 200)
        timings["postfix"] = time.monotonic() - begun
    print_tables(daemon, probe, isolation, postfix, timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 10 and 1,000, short windows (~3 min)")
    parser.add_argument("--sizes", help="comma-separated target counts for the daemon phase")
    parser.add_argument("--skip", nargs="*", default=[], choices=["daemon", "probe", "isolation", "postfix"])
    args = parser.parse_args()
    h.raise_fd_limit(65536)
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
