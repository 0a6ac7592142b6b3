"""What a mail domain's TLS policy costs per domain run, in-process, part by part.

    .venv/bin/python benchmarks/policy_parts.py   # ~1 min, as root (nginx binds port 443)

mail_tls.py's world with four domains (knotd signing, a validating unbound, nginx serving the
MTA-STS policy, the benchmark SMTP server with STARTTLS): after a first probe fills the caches,
each part of a domain run with DANE and MTA-STS on is timed (timeit, best of three): the MX
resolution and the policy lookups from the caches, the verdicts per address (`judge`), and the
domain's exposition row with and without the policy. Then whole domain runs on a hub, policy
off and on alternating, with the process's CPU per SMTP session of each. mail_tls.py measures
the daemon; this shows where a run's own CPU goes.
"""

from __future__ import annotations

import resource
import sys
import time
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import harness as h  # noqa: E402
import mail_tls  # noqa: E402

from smtpmon.dns import DnsCache, MxResolver, Resolver, ResolverSettings  # noqa: E402
from smtpmon.dns.cached import CachedResolver  # noqa: E402
from smtpmon.domains import probe_domain  # noqa: E402
from smtpmon.domains.policy import PolicyChecker, PolicySwitches, judge  # noqa: E402
from smtpmon.domains.probe import run_on_hub  # noqa: E402
from smtpmon.exposition.domains import render_domain  # noqa: E402
from smtpmon.net.hub import Hub  # noqa: E402
from smtpmon.smtp.module import Module  # noqa: E402

DOMAINS = 4
TIMED = 3000  # calls per timing
RUNS = 400  # domain runs per whole-run round
ROUNDS = 4


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def microseconds(call) -> float:
    return min(timeit.repeat(call, number=TIMED, repeat=3)) / TIMED * 1e6


def main() -> None:
    workdir = h.workdir("smtpmon-bench-policyparts-")
    procs = h.Processes(workdir)
    world: list[mail_tls.World] = []
    unbound = None
    try:
        started = mail_tls.start_world(procs, workdir, DOMAINS, world)
        unbound = mail_tls.start_unbound(workdir / "unbound", started.knot)
        port = started.port
        resolver = Resolver(ResolverSettings(nameservers=((unbound.address, unbound.port),), timeout_seconds=2.0))
        cache = DnsCache()
        cached = CachedResolver(resolver, cache)
        mx, checker = MxResolver(resolver, cache), PolicyChecker(cached, cached)
        module = Module(tls="opportunistic", tls_ca_file=started.certs.ca_file, timeout_seconds=10)
        switches = PolicySwitches(dane=True, mta_sts=True, mta_sts_ca_file=started.certs.ca_file)
        domain = f"d0.{mail_tls.ZONE}"
        for _ in range(2):  # the first fills the caches and judges the chain
            on = probe_domain(domain, module, mx, port=port, policy=checker, switches=switches)
        off = probe_domain(domain, module, mx, port=port)
        assert {(a.dane, a.sts.verdict) for a in on.policy.addresses} == {("match", "ok")}, on.policy
        resolution, lookups = on.resolution, on.policy.lookups
        rows_on = render_domain(domain, "mx", domain, True, on, 5, 0)
        rows_off = render_domain(domain, "mx", domain, True, off, 5, 0)
        print(f"\nOne domain run (2 MX × 2 addresses), DANE and MTA-STS on, answers cached; "
              f"timeit, best of 3 × {TIMED}\n")
        print("| part | µs |\n|---|---:|")
        for title, call in (
            ("MX resolution from the cache (policy off too)",
             lambda: mx.resolve(domain, deadline=time.monotonic() + 5, cached_only=True)),
            ("policy lookups from the caches", lambda: checker.look_up(
                resolution.domain, resolution.mx_hosts, port, switches, time.monotonic() + 5, cached_only=True)),
            ("verdicts per address (judge)", lambda: judge(lookups, on.probes)),
            ("the domain's row, policy on", lambda: render_domain(domain, "mx", domain, True, on, 5, 0)),
            ("the domain's row, policy off", lambda: render_domain(domain, "mx", domain, True, off, 5, 0)),
        ):
            print(f"| {title} | {microseconds(call):.1f} |")
        print(f"\nThe domain's row: {sum(map(len, rows_on))} bytes with the policy, "
              f"{sum(map(len, rows_off))} without")

        def round_of(policy_on: bool) -> float:
            hub = Hub()
            done, sessions = [0], [0]

            def worker(first: int) -> None:
                for index in range(first, RUNS, DOMAINS):
                    name = f"d{index % DOMAINS}.{mail_tls.ZONE}"
                    result = probe_domain(name, module, mx, port=port, hub=hub, run_sessions=run_on_hub(hub),
                                          policy=checker if policy_on else None,
                                          switches=switches if policy_on else PolicySwitches())
                    render_domain(name, "mx", name, True, result, 5, 0)
                    sessions[0] += len(result.probes)
                    done[0] += 1

            started = cpu_seconds()
            for first in range(DOMAINS):
                hub.spawn(worker, first)
            while done[0] < RUNS:
                hub.run_once(1.0)
            hub.close()
            return (cpu_seconds() - started) / sessions[0] * 1e3

        round_of(False)
        print(f"\nWhole domain runs on a hub ({RUNS} runs a round, rounds alternating): CPU per "
              "SMTP session (ms)\n\n| round | policy off | on | on / off |\n|---:|---:|---:|---:|")
        for number in range(1, ROUNDS + 1):
            without, with_policy = round_of(False), round_of(True)
            print(f"| {number} | {without:.3f} | {with_policy:.3f} | {with_policy / without:.2f} |")
    finally:
        procs.close()
        if unbound is not None:
            unbound.stop()
        for part in world:
            part.stop()


if __name__ == "__main__":
    main()
