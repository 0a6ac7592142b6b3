"""A DomainResult as text, for people: the MX table with the DNS verdicts, each address's
session (its transcript, or one summary line), and one verdict line. The command line prints
it; `/probe?domain=...&debug=true` shows it above the metrics.

    example.org: DNS ok (MX records: 2), 2 MX hosts, 3 addresses
      pref  MX host                 state  addresses
        10  mx1.example.org         ok     2001:db8::25, 192.0.2.25
        20  mx2.example.org         ok     192.0.2.26
"""

from __future__ import annotations

from smtpmon.domains import policy_report
from smtpmon.domains.results import DomainResult
from smtpmon.smtp import transcript


def mx_table(result: DomainResult) -> str:
    resolution = result.resolution
    shown = resolution.domain
    if resolution.domain_unicode != resolution.domain:
        shown += f" ({resolution.domain_unicode})"
    cached = " (from the cache)" if resolution.from_cache else ""
    stale = " (STALE: a lookup failed, the last good answer is used)" if resolution.stale else ""
    lines = [f"{shown}: DNS {resolution.state}{cached}{stale}, "
             f"{len(resolution.mx_hosts)} MX host{'s' * (len(resolution.mx_hosts) != 1)}, "
             f"{len(resolution.addresses)} address{'es' * (len(resolution.addresses) != 1)}, "
             f"resolved in {resolution.duration_seconds:.3f}s"]
    if resolution.mx_hosts:
        width = max(len(host.name) for host in resolution.mx_hosts)
        lines.append(f"  {'pref':>5}  {'MX host':<{width}}  {'state':<10}  addresses")
        for host in resolution.mx_hosts:
            addresses = ", ".join(address.ip for address in host.addresses) or "-"
            if host.capped:
                addresses += f" (of {host.address_count})"
            name = "(implicit MX) " + host.name if host.implicit else host.name
            lines.append(f"  {host.preference:>5}  {name:<{width}}  {host.state:<10}  {addresses}")
    lines += [f"  note: {note}" for note in (*resolution.notes, *result.notes)]
    return "\n".join(lines) + "\n"


def session_lines(result: DomainResult, *, brief: bool, annotate: bool = True) -> str:
    """Each address's session: its annotated transcript under a heading, or (brief) one
    summary line per address."""
    out = []
    for probe in result.probes:
        heading = f"{probe.mx.name} [{probe.address.ip}] (MX {probe.mx.preference})"
        if brief:
            verdict = "accepts" if probe.accepts else f"FAILS at {probe.result.failed_stage} ({probe.result.reason})"
            out.append(f"  {heading}: {verdict}, {probe.result.duration_seconds:.3f}s"
                       + ("" if probe.accepts or not probe.result.detail else f": {probe.result.detail}"))
        else:
            out.append(f"--- {heading}")
            out.append(transcript.render(probe.result, annotate=annotate).rstrip("\n"))
    return "\n".join(out) + ("\n" if out else "")


def verdict_line(result: DomainResult) -> str:
    """One line: the verdict and the counts behind it."""
    ipv4, ipv6 = (f"{result.accepting(f)}/{result.addresses(f)}" for f in ("ipv4", "ipv6"))
    preferred = "yes" if result.most_preferred_accepts else "no"
    return (f"{result.name}: {result.verdict}: deliverable {'yes' if result.deliverable else 'no'}, "
            f"{result.accepting()}/{len(result.probes)} addresses accept (IPv4 {ipv4}, IPv6 {ipv6}), "
            f"most preferred MX accepts: {preferred}, DNS {result.resolution.state}, "
            f"{result.duration_seconds:.3f}s")


def render(result: DomainResult, *, brief: bool = False, annotate: bool = True) -> str:
    return (mx_table(result) + "\n" + session_lines(result, brief=brief, annotate=annotate)
            + policy_report.render(result) + verdict_line(result) + "\n")
