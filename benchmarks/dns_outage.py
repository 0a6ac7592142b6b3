"""The daemon while its resolver has stopped answering: threads, memory, /metrics.

    sudo .venv/bin/python benchmarks/dns_outage.py [--targets 1000] [--seconds 60] [--code DIR]

Every target is a host name, and the resolver swallows every query: a UDP socket on
127.0.0.1:53 that reads and never answers, which the daemon is given as its only name server
(`/etc/resolv.conf` bind-mounted over in a mount namespace of its own: needs root and
`unshare`). Nothing leaves loopback; the host's own resolver is untouched. Each lookup then
takes glibc's timeouts (here 5 s, twice) while the probes give up at their 2 s deadline.

Prints, every 5 s, the daemon's threads, resident memory and the time of a /metrics scrape,
then the probes done and how they failed. `--code DIR` runs the smtpmon package found in DIR
(a checkout of an older commit, say) instead of this one's.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as h  # noqa: E402

RESOLV_CONF = "nameserver 127.0.0.1\noptions timeout:5 attempts:2\n"


def swallow_dns_queries(counter: list[int]) -> None:
    """A name server that never answers: reads each query and drops it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 53))

    def loop() -> None:
        while True:
            sock.recv(4096)
            counter[0] += 1

    threading.Thread(target=loop, daemon=True).start()


def threads_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("Threads:"))


def scrape(port: int) -> tuple[float, bytes]:
    started = time.monotonic()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as answer:
        body = answer.read()
    return time.monotonic() - started, body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--max-concurrency", type=int, default=128)
    parser.add_argument("--code", type=Path, default=h.ROOT, help="where the smtpmon package is")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root: the daemon gets a resolv.conf of its own in a mount namespace")

    queries = [0]
    swallow_dns_queries(queries)
    wd = h.workdir("smtpmon-dns-outage-")
    procs = h.Processes(wd)
    try:
        resolv = wd / "resolv.conf"
        resolv.write_text(RESOLV_CONF)
        config = wd / "smtpmon.yml"
        config.write_text("\n".join([
            f"global: {{interval: 10s, timeout: 2s, max_concurrency: {args.max_concurrency}}}",
            "modules: {plain: {tls: none}}",
            "targets:",
            *(f"  - {{address: 'mx{i}.outage.test:25', module: plain}}"
              for i in range(args.targets)),
        ]) + "\n")
        port = h.free_port()
        daemon = procs.spawn(
            ["unshare", "-m", "--", "sh", "-c", 'mount --bind "$0" /etc/resolv.conf && exec "$@"',
             str(resolv), h.PYTHON, "-m", "smtpmon", "run", "--config.file", str(config),
             "--web.listen-address", f"127.0.0.1:{port}"],
            log_name="smtpmon.log", cwd=args.code,
            env={**os.environ, "PYTHONPATH": str(args.code)},
        )
        h.wait_http(port, "/-/ready", daemon)
        print(f"code: {args.code}; {args.targets} host-name targets every 10 s, timeout 2 s, "
              f"max_concurrency {args.max_concurrency}; the resolver never answers")
        print(f"{'s':>4} {'threads':>8} {'RSS MB':>7} {'/metrics ms':>12}")
        most_threads, scrape_times = 0, []
        started = time.monotonic()
        body = b""
        while time.monotonic() - started < args.seconds:
            time.sleep(5)
            took, body = scrape(port)
            scrape_times.append(took)
            threads = threads_of(daemon.pid)
            most_threads = max(most_threads, threads)
            print(f"{time.monotonic() - started:>4.0f} {threads:>8} "
                  f"{h.rss_bytes(daemon.pid) / 1e6:>7.1f} {took * 1000:>12.1f}", flush=True)
        failures = sum(value for _, value in h.samples(body, "smtpmon_probe_failures_total"))
        probes = sum(value for _, value in h.samples(body, "smtpmon_probes_total"))
        skipped = sum(value for _, value in h.samples(body, "smtpmon_probe_skipped_total"))
        print(f"most threads {most_threads}; /metrics max {max(scrape_times) * 1000:.1f} ms; "
              f"probes {probes:.0f}, failed {failures:.0f}, skipped runs {skipped:.0f}; "
              f"DNS queries swallowed {queries[0]}")
    finally:
        procs.close()


if __name__ == "__main__":
    main()
