"""Mail domains with DANE and MTA-STS on, against the same domains with them off.

    .venv/bin/python benchmarks/mail_tls.py [--domains 1000] [--interval 60] [--measure 120] [--rounds 1]

A private knotd signs a generated zone: domain dN.bench.test has `MX 10 mxa-dN.mx` and
`MX 20 mxb-dN.mx`, each with two A records (127.60.0.1 onwards), a DANE-EE `3 1 1` TLSA record
per MX host for the key the SMTP server presents (a certificate for `*.mx.bench.test` from a
test CA), an `_mta-sts` record and a TLS-RPT record. A validating unbound trusts the zone
(tests/validating_resolver.py) and is smtpmon's only resolver (`dns.nameservers` and
`dns.validating_resolver`), a new one for each phase, so both start with an empty resolver
cache and see the same TTLs. nginx on 127.61.0.80:443 serves every domain's enforce policy with
one certificate. The benchmark SMTP server (smtpserver.py) offers STARTTLS on every address.

Two phases, the same module (opportunistic TLS, verified against the test CA) and domains:
`dane: false, mta_sts: false`, then `dane: true, mta_sts: true` (domains.run_phase: warm-up
for one interval plus a bit, then `--measure` seconds, /metrics scraped every 15 s), `--rounds`
times, alternating, each figure the mean of its phase's runs. Printed:
CPU per SMTP session of each and their ratio, DNS queries per minute (smtpmon_dns_queries_total)
against what the TTLs allow, policy fetches, lag p99 and RSS. The figures go to
benchmarks/README.md. Needs root (nginx binds port 443).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import domains as bench  # noqa: E402
import harness as h  # noqa: E402
import trustme  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from dns_server import KnotServer, Zone, start_knot  # noqa: E402
from https_server import NginxServer, Site  # noqa: E402
from validating_resolver import UnboundResolver  # noqa: E402

ZONE = "bench.test"
TTL = 300
UNBOUND = "127.61.0.54"
HTTPS = "127.61.0.80"
POLICY = b"version: STSv1\nmode: enforce\nmx: *.mx.bench.test\nmax_age: 86400\n"


def zone_records(domains: int, port: int, tlsa: str) -> str:
    lines = []
    for n in range(domains):
        lines += [f"d{n} MX 10 mxa-d{n}.mx", f"d{n} MX 20 mxb-d{n}.mx",
                  f'_mta-sts.d{n} TXT "v=STSv1; id=1"', f"mta-sts.d{n} A {HTTPS}",
                  f'_smtp._tls.d{n} TXT "v=TLSRPTv1; rua=mailto:tlsrpt@d{n}.bench.test"']
        for host, first in (("mxa", 4 * n), ("mxb", 4 * n + 2)):
            name = f"{host}-d{n}.mx"
            lines += [f"{name} A {bench.address(first)}", f"{name} A {bench.address(first + 1)}",
                      f"_{port}._tcp.{name} TLSA {tlsa}"]
    return "\n".join(lines) + "\n"


def config(path: Path, domains: int, port: int, resolver: str, interval: float, ca_file: str,
           policy: bool) -> None:
    switches = f"dane: {str(policy).lower()}, mta_sts: {str(policy).lower()}, mta_sts_ca_file: '{ca_file}'"
    lines = [
        "global:",
        f"  interval: {interval}s",
        f"  timeout: {min(10.0, interval / 2):g}s",
        f"  max_concurrency: {bench.MAX_CONCURRENCY}",
        "  ehlo_name: bench.example.org",
        "modules:",
        f"  mx: {{tls: opportunistic, tls_ca_file: '{ca_file}'}}",
        "dns:",
        f"  nameservers: ['{resolver}']",
        f"  validating_resolver: '{resolver}'",
        "domains:",
    ]
    lines += [f"  - {{domain: d{n}.{ZONE}, module: mx, port: {port}, {switches}}}" for n in range(domains)]
    path.write_text("\n".join(lines) + "\n")


@dataclass
class World:
    """The benchmark's parts but the resolver; stop() stops what was started."""

    certs: h.Certificates
    port: int  # every address's SMTP port
    knot: KnotServer | None = None
    nginx: NginxServer | None = None

    def stop(self) -> None:
        for part in (self.knot, self.nginx):
            if part is not None:
                part.stop()


def start_world(procs: h.Processes, workdir: Path, domains: int, world: list[World]) -> World:
    """The SMTP server (4 addresses a domain), nginx serving the policies and knotd signing
    `domains` domains; the world goes into `world` before anything starts, so that the
    caller's `finally` stops what did."""
    ca = trustme.CA()
    leaf = ca.issue_cert("*.mx.bench.test")
    certs = h.Certificates(str(workdir / "ca.pem"), str(workdir / "cert.pem"), str(workdir / "key.pem"))
    ca.cert_pem.write_to_path(certs.ca_file)
    leaf.cert_chain_pems[0].write_to_path(certs.cert_file)
    leaf.private_key_pem.write_to_path(certs.key_file)
    key = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).public_key()
    tlsa = "3 1 1 " + hashlib.sha256(key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).hexdigest()
    started = World(certs, h.free_port())
    world.append(started)
    server = h.start_smtp_server(procs, certs, [f"ok@{bench.address(i)}" for i in range(4 * domains)],
                                 port=started.port)
    assert server.ports and all(p == started.port for p in server.ports), "listeners not on one port"
    names = [f"mta-sts.d{n}.{ZONE}" for n in range(domains)]
    started.nginx = NginxServer(Path(tempfile.mkdtemp(dir=workdir)), HTTPS)
    started.nginx.add(Site(" ".join(names), ca.issue_cert(*names), {"/.well-known/mta-sts.txt": POLICY}))
    started.nginx.start()
    bench.log(f"knotd: {domains} signed domains, {4 * domains} addresses")
    started.knot = start_knot([Zone(ZONE, zone_records(domains, started.port, tlsa), dnssec_signing=True,
                                    ttl=TTL, negative_ttl=TTL)], workdir=workdir / "knot")
    return started


def start_unbound(directory: Path, knot: KnotServer) -> UnboundResolver:
    """A validating unbound with an empty cache, trusting the signed zone."""
    return UnboundResolver(directory, UNBOUND, stubs={f"{ZONE}.": f"{knot.address}@{knot.port}"},
                           trust_anchors=knot.ds(ZONE)).start()


def stop_all(unbound: UnboundResolver | None, world: list[World]) -> None:
    """Stop the resolver and the world's parts, whichever were started."""
    if unbound is not None:
        unbound.stop()
    for part in world:
        part.stop()


def mean_figures(runs: list[dict]) -> dict:
    """Each figure's mean over the runs of one phase."""
    return {key: sum(run[key] for run in runs) / len(runs) for key in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=60.0)
    parser.add_argument("--measure", type=float, default=120.0)
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the two phases this many times, alternating (off, on, off, on, "
                        "...), and give each figure's mean: a drift of the shared machine's speed "
                        "then weighs on both phases, not on the second one only")
    args = parser.parse_args()
    addresses = 4 * args.domains
    h.raise_fd_limit(addresses + 4096)
    workdir = h.workdir("smtpmon-bench-mailtls-")
    procs = h.Processes(workdir)
    world: list[World] = []
    unbound = None
    try:
        started = start_world(procs, workdir, args.domains, world)
        runs: dict[str, list[dict]] = {"off": [], "on": []}
        for name, policy in [("off", False), ("on", True)] * args.rounds:
            # A new unbound for each phase: one resolver's cache kept from the phase before
            # would answer with TTLs already counted down, and the second phase would refresh
            # its answers more often than the first.
            unbound = start_unbound(workdir / f"unbound-{name}-{len(runs[name])}", started.knot)
            path = workdir / f"{name}.yml"
            config(path, args.domains, started.port, f"{unbound.address}:{unbound.port}", args.interval,
                   started.certs.ca_file, policy=policy)
            runs[name].append(bench.run_phase(procs, path, f"smtpmon-policy-{name}", args.interval,
                                              args.measure))
            unbound.stop()
            unbound = None
        without, with_policy = mean_figures(runs["off"]), mean_figures(runs["on"])
    finally:
        procs.close()
        stop_all(unbound, world)
    # Off: MX, and A + AAAA of two hosts (5 names). On: also the MX with DO, two TLSA, the
    # _mta-sts and _smtp._tls TXT and the policy host's A and AAAA (7 more): 12 per TTL.
    print(f"\n{args.domains} domains × 2 MX × 2 addresses ({addresses} sessions per "
          f"{args.interval:g} s interval), opportunistic TLS, measured over {args.measure:g} s "
          "after one interval of warm-up\n")
    print("| figure | DANE and MTA-STS off | on |")
    print("|---|---:|---:|")
    for title, key, form in (
        ("SMTP sessions per second", "sessions_per_second", "{:.1f}"),
        ("CPU per session (ms)", "cpu_per_session_ms", "{:.3f}"),
        ("CPU (share of one core)", "cpu_share", "{:.2f}"),
        ("schedule lag p99 (s)", "lag_p99", "{:.3f}"),
        ("DNS queries per minute", "queries_per_minute", "{:.0f}"),
        ("DNS queries per minute since the start", "queries_since_start_per_minute", "{:.0f}"),
        ("addresses failing at the end", "failed", "{:.0f}"),
        ("RSS at the end (MB)", "rss_mb", "{:.0f}"),
    ):
        print(f"| {title} | {form.format(without[key])} | {form.format(with_policy[key])} |")
    if args.rounds > 1:
        print("\nCPU per session (ms) of each run, in the order run: " + "; ".join(
            f"{name} " + ", ".join(f"{run['cpu_per_session_ms']:.3f}" for run in runs[name])
            for name in ("off", "on")))
    ratio = with_policy["cpu_per_session_ms"] / without["cpu_per_session_ms"]
    print(f"\nCPU per session, on / off: {ratio:.2f}; DNS queries per minute allowed by the TTLs "
          f"({TTL} s): off {5 * args.domains * 60 / TTL:.0f}, on {12 * args.domains * 60 / TTL:.0f}")


if __name__ == "__main__":
    main()
