"""What a mail domain's TLS policy costs per domain run, in-process, part by part.

    .venv/bin/python benchmarks/policy_parts.py   # ~1 min, as root (nginx binds port 443)

mail_tls.py's world with four domains (knotd signing, a validating unbound, nginx serving the
MTA-STS policy, the benchmark SMTP server with STARTTLS): after a first probe fills the caches,
each part of a domain run with DANE and MTA-STS on is timed (timeit, best of three): the MX
resolution and the policy lookups from the caches, the verdicts per address (`judge`), the
domain's exposition row with and without the policy (and with the policy's lines kept, as the
store keeps them while the policy's state is unchanged), and a signed TLSA, TXT and MX answer
of the validating resolver read by smtpmon.dns.wire and by dnspython. Then whole domain runs
on a hub, recorded in a DomainStore, policy off and on alternating, with the process's CPU per
SMTP session of each. mail_tls.py measures the daemon; this shows where a run's own CPU goes.
"""

from __future__ import annotations

import resource
import socket
import sys
import time
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import dns.message  # noqa: E402
import dns.name  # noqa: E402
import harness as h  # noqa: E402
import mail_tls  # noqa: E402

from smtpmon.dns import DnsCache, MxResolver, Resolver, ResolverSettings, wire  # noqa: E402
from smtpmon.dns.cached import CachedResolver  # noqa: E402
from smtpmon.domains import probe_domain  # noqa: E402
from smtpmon.domains.policy import PolicyChecker, PolicySwitches, judge  # noqa: E402
from smtpmon.domains.probe import run_on_hub  # noqa: E402
from smtpmon.exposition.domains import DOMAIN_FAMILIES, DomainStore, render_domain  # noqa: E402
from smtpmon.exposition.policy import POLICY_FAMILIES, policy_state  # noqa: E402
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


def answer_readers(server: tuple[str, int], name: str, rdtype: str):
    """The validating resolver's signed answer to `name` `rdtype` (asked with the DO bit), and
    two calls that build the query and read that answer: smtpmon.dns.wire's, dnspython's."""
    qname = dns.name.from_text(name)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(wire.query_wire(qname, rdtype, 4711, 1232, dnssec=True), server)
        octets, _ = sock.recvfrom(65535)
    assert wire.read_answer(octets, 4711, qname, rdtype) is not None, "left to dnspython"

    def by_wire():
        wire.query_wire(qname, rdtype, 4711, 1232, dnssec=True)
        return wire.read_answer(octets, 4711, qname, rdtype)

    def by_dnspython():
        dns.message.make_query(qname, rdtype, use_edns=0, payload=1232, want_dnssec=True).to_wire()
        return dns.message.from_wire(octets).resolve_chaining()

    return by_wire, by_dnspython, len(octets)


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
        kept_state = policy_state(on)
        kept_lines = rows_on[len(DOMAIN_FAMILIES) - len(POLICY_FAMILIES):]
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
            ("the domain's row, policy on, rendered", lambda: render_domain(domain, "mx", domain, True, on, 5, 0)),
            ("the domain's row, policy on, its lines kept (state unchanged)", lambda: render_domain(
                domain, "mx", domain, True, on, 5, 0, kept_lines)),
            ("the policy's state, compared with the kept one", lambda: policy_state(on) == kept_state),
            ("the domain's row, policy off", lambda: render_domain(domain, "mx", domain, True, off, 5, 0)),
        ):
            print(f"| {title} | {microseconds(call):.1f} |")
        for name, rdtype in ((f"_{port}._tcp.mxa-d0.mx.{mail_tls.ZONE}", "TLSA"),
                             (f"_mta-sts.d0.{mail_tls.ZONE}", "TXT"), (domain, "MX")):
            read_by_wire, read_by_dnspython, size = answer_readers((unbound.address, unbound.port), name, rdtype)
            print(f"| a signed {rdtype} answer ({size} octets): query built, answer read, by "
                  f"smtpmon.dns.wire | {microseconds(read_by_wire):.1f} |")
            print(f"| the same by dnspython (make_query, to_wire, from_wire, resolve_chaining) | "
                  f"{microseconds(read_by_dnspython):.1f} |")
        print(f"\nThe domain's row: {sum(map(len, rows_on))} bytes with the policy, "
              f"{sum(map(len, rows_off))} without")

        def round_of(policy_on: bool) -> float:
            hub = Hub()
            done, sessions = [0], [0]
            store = DomainStore()  # recorded as the daemon records them
            for index in range(DOMAINS):
                store.register(f"d{index}.{mail_tls.ZONE}", "default", f"d{index}.{mail_tls.ZONE}", True)

            def worker(first: int) -> None:
                for index in range(first, RUNS, DOMAINS):
                    name = f"d{index % DOMAINS}.{mail_tls.ZONE}"
                    result = probe_domain(name, module, mx, port=port, hub=hub, run_sessions=run_on_hub(hub),
                                          policy=checker if policy_on else None,
                                          switches=switches if policy_on else PolicySwitches())
                    store.record(result)
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
        mail_tls.stop_all(unbound, world)


if __name__ == "__main__":
    main()
