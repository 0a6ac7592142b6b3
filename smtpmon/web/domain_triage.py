"""What the status page decides about mail domains before it draws them: each domain's state,
the order a person reads them in, the filter, the page, the summary (no HTML here; that is
domains_page.py).

A domain's state on the page follows its verdict (smtpmon.domains.VERDICTS): `undeliverable`
and `invalid` are failing; `degraded` (an MX or an address down while others work, an IP
family broken, an MX record misconfigured) is the page's warning; `ok` and `no_mail` (a null
MX where none is expected) are healthy. So the page's one `?state=` vocabulary (triage.STATES)
filters targets and domains alike, and `?q=` matches a domain, its module, an MX host, an
address, the DNS state, a failure reason or a TLS policy verdict (`DANE mismatch`).

Built for 1,000 domains of four addresses on every view: the domains' copies come from the
store (one per change), the walk over their sessions for the summary makes no object per
session, and only the shown page's rows are made.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from smtpmon.domains import FAMILIES, DomainResult
from smtpmon.domains.policy import findings
from smtpmon.exposition.domains import DomainSnapshot
from smtpmon.web.triage import (
    FAILING,
    HEALTHY,
    PENDING,
    STATES,
    WARNING,
    Page,
    PageQuery,
    in_buckets,
    page_of,
)

# Fewer than the targets' 100: a domain is a block of rows (its MX hosts and addresses).
DOMAIN_PAGE_SIZE = 50

_STATE_OF_VERDICT = {"undeliverable": FAILING, "invalid": FAILING, "degraded": WARNING,
                     "ok": HEALTHY, "no_mail": HEALTHY}


@dataclass(frozen=True, slots=True)
class DomainSummary:
    total: int
    by_state: Mapping[str, int]
    addresses: int  # MX addresses probed, over every domain probed
    failing_addresses: int
    failing_by_reason: Sequence[tuple[str, int]]  # the addresses' failure reasons, most first
    by_dns_state: Sequence[tuple[str, int]]  # DNS states other than `ok`, most first


def state_of(snapshot: DomainSnapshot) -> str:
    """By the verdict, made worse by the TLS policy (smtpmon.domains.policy.findings): an
    address that senders honouring DANE or an enforced MTA-STS policy will not deliver to
    fails the domain, a testing policy's failure degrades it."""
    latest = snapshot.latest
    if latest is None:
        return PENDING
    state = _STATE_OF_VERDICT.get(latest.verdict, FAILING)
    if state != FAILING and latest.policy is not None:
        found = findings(latest.policy)
        if any(finding.severity == "critical" for finding in found):
            return FAILING
        if found:
            return WARNING
    return state


def triage(snapshots: Iterable[DomainSnapshot]) -> dict[str, list[DomainSnapshot]]:
    """The domains by state, each state by domain (A-label) then module: failing first, then
    degraded, healthy, not probed yet; a domain stays in place from one refresh to the next."""
    return in_buckets(snapshots, state_of, _name)


def _name(snapshot: DomainSnapshot) -> str:
    return snapshot.name


def summarize(buckets: Mapping[str, Sequence[DomainSnapshot]]) -> DomainSummary:
    reasons: Counter[str] = Counter()
    dns_states: Counter[str] = Counter()
    addresses = failing = 0
    for bucket in buckets.values():
        for snapshot in bucket:
            latest = snapshot.latest
            if latest is None:
                continue
            if latest.resolution.state != "ok":
                dns_states[latest.resolution.state] += 1
            for probe in latest.probes:
                addresses += 1
                if not probe.result.success:
                    failing += 1
                    reasons[probe.result.reason or "unknown"] += 1
    return DomainSummary(
        sum(map(len, buckets.values())), {state: len(buckets[state]) for state in STATES},
        addresses, failing, _most_first(reasons), _most_first(dns_states))


def _most_first(counts: Counter[str]) -> list[tuple[str, int]]:
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def matches(snapshot: DomainSnapshot, state: str, query: PageQuery) -> bool:
    """The filter: `state`; `reason` a DNS state or an address's failure reason; `q` a part of
    the domain (either form), its module, an MX host, an address, the DNS state or a reason."""
    if query.state is not None and state != query.state:
        return False
    latest = snapshot.latest
    if query.reason is not None:
        if latest is None or not (latest.resolution.state == query.reason or any(
                probe.result.reason == query.reason for probe in latest.probes)):
            return False
    if query.text:
        needle = query.text.casefold()
        return any(needle in value.casefold() for value in _haystack(snapshot))
    return True


def _haystack(snapshot: DomainSnapshot) -> Iterator[str]:
    yield snapshot.name
    yield snapshot.unicode
    yield snapshot.module
    latest = snapshot.latest
    if latest is None:
        return
    yield latest.resolution.state
    for host in latest.mx_hosts:
        yield host.name
        yield host.unicode_name
        for address in host.addresses:
            yield address.ip
    for probe in latest.probes:
        if probe.result.reason:
            yield probe.result.reason
    if latest.policy is not None:
        for address in latest.policy.addresses:
            yield f"DANE {address.dane}"
            if address.sts is not None:
                yield f"MTA-STS {address.sts.verdict}"


def paginate(buckets: Mapping[str, Sequence[DomainSnapshot]], query: PageQuery) -> Page:
    """The query's page (`query.domain_page`) of the domains that match it."""
    return page_of(buckets, query, matches, query.domain_page, DOMAIN_PAGE_SIZE)


def problems(result: DomainResult) -> list[str]:
    """Why a domain that a sender can deliver to is degraded (or what else is worth a look),
    in words: the addresses failing, an IP family broken while the other works, the most
    preferred MX not accepting, MX records that are misconfigured, a stale DNS answer, the TLS
    policy's findings (DANE, MTA-STS)."""
    words = []
    failing = sum(1 for probe in result.probes if not probe.accepts)
    if failing and result.probes:
        words.append(f"{failing} of {len(result.probes)} MX addresses failing")
    for family in FAMILIES:
        other = "ipv6" if family == "ipv4" else "ipv4"
        if (result.addresses(family) and not result.accepting(family)
                and result.accepting(other)):
            words.append(f"{_FAMILY_WORDS[family]} broken ({_FAMILY_WORDS[other]} works)")
    if result.deliverable and not result.most_preferred_accepts:
        words.append("the most preferred MX does not accept: senders fall back")
    for host in result.mx_hosts:
        if host.state != "ok":
            words.append(f"MX {host.name}: {host.state}")
    if result.resolution.stale:
        words.append("a DNS lookup failed: the last good answer was used")
    if result.resolution.mx_hosts_capped or any(host.capped for host in result.mx_hosts):
        words.append("capped: not every MX host or address DNS gave is probed")
    words += [_POLICY_WORDS[finding.severity] + str(finding) for finding in findings(result.policy)]
    return words


# What a policy finding costs, said before it.
_POLICY_WORDS = {"critical": "senders that check the TLS policy do not deliver: ",
                 "warning": "TLS policy: "}


_FAMILY_WORDS = {"ipv4": "IPv4", "ipv6": "IPv6"}


def family_words(family: str) -> str:
    return _FAMILY_WORDS.get(family, family)
