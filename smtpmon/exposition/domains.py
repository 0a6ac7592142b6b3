"""Mail domains in the exposition: the latest DomainResult of each (domain, module), the
counters of each of its addresses, and their rendered lines.

Each address session is rendered by the same code as a host target (metrics.render_target:
the same families, labels `target` and `module`), with `domain`, `mx` and `address` added, so
that one set of rules and panels reads both. The counters of an address live as long as DNS
names it: an address gone from the MX set takes its series with it. The domain's own
families (DOMAIN_FAMILIES: verdicts, counts by family, DNS state) follow, one row per domain.

Rows are rendered when a result is recorded (by the probe's session), so a scrape only joins
bytes; the policy's lines only when what they show changed (exposition.policy.PolicyState).
One lock guards everything; the daemon keeps one store for the schedule and a bounded one for
`/probe?domain=`.

For the status page each entry also keeps a copy of itself (DomainSnapshot), made when it
changes and shared by every view until the next change: since when the domain has had its
verdict, and since when each address has been accepting or failing.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from smtpmon.dns import DOMAIN_STATES
from smtpmon.domains import FAMILIES, VERDICTS, DomainResult
from smtpmon.exposition.metrics import (
    Family,
    TargetCounts,
    escape_label_value,
    label_pairs,
    render_target,
    sample_value,
)
from smtpmon.exposition.policy import POLICY_FAMILIES, PolicyState, policy_state, render_policy
from smtpmon.exposition.store import SNAPSHOT_CHUNK, slim_result
from smtpmon.smtp.results import TlsInfo

_OWN_FAMILIES: tuple[Family, ...] = (
    Family("smtpmon_domain_success", "gauge",
           "1 if the domain's verdict is ok (every MX address accepts, DNS is clean), or it "
           "publishes a null MX and no mail is expected; else 0."),
    Family("smtpmon_domain_deliverable", "gauge",
           "1 if a sender following RFC 5321 would deliver now: some address of some MX accepts."),
    Family("smtpmon_domain_expect_mail", "gauge",
           "1 if the domain is expected to receive mail (expect_mail), else 0."),
    Family("smtpmon_domain_verdict", "gauge",
           "1 for the verdict of the last probe of the domain, 0 for the others."),
    Family("smtpmon_domain_dns_state", "gauge",
           "1 for what DNS said about the domain in its last resolution, 0 for the other states."),
    Family("smtpmon_domain_mx_hosts", "gauge", "MX hosts resolved (after max_mx_hosts)."),
    Family("smtpmon_domain_mx_info", "gauge",
           "Constant 1 for each MX host resolved: its preference and DNS state."),
    Family("smtpmon_domain_addresses", "gauge",
           "Addresses of the MX hosts probed, by family (after the caps)."),
    Family("smtpmon_domain_addresses_accepting", "gauge",
           "Addresses whose session succeeded, by family."),
    Family("smtpmon_domain_most_preferred_accepting", "gauge",
           "1 if every address of the most preferred MX hosts accepts, else 0."),
    Family("smtpmon_domain_capped", "gauge",
           "1 if max_mx_hosts or max_addresses_per_host cut what DNS gave, else 0."),
    Family("smtpmon_domain_dns_lookup_duration_seconds", "gauge",
           "How long the last resolution of the domain took (0 when answered from the cache)."),
    Family("smtpmon_domain_dns_stale", "gauge",
           "1 if a lookup failed and the last good answer was used (within the grace time)."),
    Family("smtpmon_domain_probe_duration_seconds", "gauge",
           "Duration of the last probe of the domain: resolution and every session."),
    Family("smtpmon_domain_probe_last_timestamp_seconds", "gauge",
           "When the last probe of the domain finished (Unix time)."),
    Family("smtpmon_domain_probes_total", "counter", "Probes of the domain run."),
    Family("smtpmon_domain_probe_skipped_total", "counter",
           "Scheduled runs skipped because the previous probe of the domain was still running."),
    Family("smtpmon_domain_info", "gauge", "Constant 1: the domain's Unicode form."),
)
DOMAIN_FAMILIES: tuple[Family, ...] = _OWN_FAMILIES + POLICY_FAMILIES
_HEADERS = tuple(family.header for family in DOMAIN_FAMILIES)
_INDEX = {family.name: index for index, family in enumerate(_OWN_FAMILIES)}


def _address_key(probe) -> tuple[str, str]:
    return (probe.mx.name, probe.address.ip)


@dataclass(slots=True)
class _Address:
    counts: TargetCounts = field(default_factory=TargetCounts)
    tls: TlsInfo | None = None
    accepts: bool | None = None  # the last session's outcome
    since: float | None = None  # when the current run of successes or failures began


@dataclass(frozen=True, slots=True)
class DomainSnapshot:
    """A copy of one entry, safe to read without the lock (for the status page)."""

    name: str  # the A-label
    module: str
    unicode: str
    expect_mail: bool
    latest: DomainResult | None
    skipped: int | None  # None for /probe?domain= entries: on-demand runs are never skipped
    since: float | None  # when the current run of the same verdict began (Unix time)
    # (MX host, address) -> when its current run of successes or failures began
    address_since: Mapping[tuple[str, str], float]


@dataclass(slots=True)
class _StoredDomain:
    name: str  # the A-label: the `domain` label
    module: str
    unicode: str
    expect_mail: bool
    latest: DomainResult | None = None
    probes: int = 0
    skipped: int | None = 0
    since: float | None = None
    addresses: dict[tuple[str, str], _Address] = field(default_factory=dict)
    address_rows: tuple[tuple[bytes, ...], ...] = ()
    row: tuple[bytes, ...] = ()
    view: DomainSnapshot | None = None
    # The policy's lines as last rendered, and the state they show: rendered again only
    # when the state changes.
    policy: PolicyState | None = None
    policy_lines: tuple[bytes, ...] | None = None

    def add(self, result: DomainResult) -> None:
        if self.latest is None or self.latest.verdict != result.verdict:
            self.since = result.started_at
        self.latest = result
        self.probes += 1
        kept: dict[tuple[str, str], _Address] = {}
        for probe in result.probes:
            key = _address_key(probe)
            address = kept[key] = self.addresses.get(key) or _Address()
            address.counts.add(probe.result)
            if probe.result.tls is not None:
                address.tls = probe.result.tls
            if address.accepts != probe.accepts:
                address.accepts, address.since = probe.accepts, probe.result.started_at
        self.addresses = kept  # an address DNS no longer names loses its series
        self.render()

    def snapshot(self) -> DomainSnapshot:
        if self.view is None:
            self.view = DomainSnapshot(
                self.name, self.module, self.unicode, self.expect_mail, self.latest,
                self.skipped, self.since,
                {key: address.since for key, address in self.addresses.items()
                 if address.since is not None})
        return self.view

    def render(self) -> None:
        rows = []
        if self.latest is not None:
            for probe in self.latest.probes:
                address = self.addresses[_address_key(probe)]
                labels = (("domain", self.name), ("mx", probe.mx.name), ("address", probe.address.ip))
                rows.append(render_target(probe.result.target, self.module, probe.result,
                                          address.counts, address.tls, None, labels))
        self.address_rows = tuple(rows)
        policy = policy_state(self.latest)
        if self.policy_lines is None or policy != self.policy:
            self.policy = policy
            self.policy_lines = render_policy(_label_base(self.name, self.module), policy)
        self.row = render_domain(self.name, self.module, self.unicode, self.expect_mail,
                                 self.latest, self.probes, self.skipped, self.policy_lines)
        # The page's copy is made now, under the lock the change holds anyway, so that a
        # view of every domain copies references (see DomainStore.snapshot).
        self.view = None
        self.snapshot()


def render_domain(name: str, module: str, unicode: str, expect_mail: bool,
                  latest: DomainResult | None, probes: int, skipped: int | None = None,
                  policy_lines: tuple[bytes, ...] | None = None) -> tuple[bytes, ...]:
    """The domain's own lines, one chunk per DOMAIN_FAMILIES entry. Before its first probe:
    the series known to exist, at zero. `skipped` is None on `/probe?domain=`, where runs are
    never skipped and the family is left out. `policy_lines`: the policy's chunks already
    rendered for `latest` (exposition.policy.render_policy), else rendered here."""
    base = _label_base(name, module)
    lines: list[list[str]] = [[] for _ in _OWN_FAMILIES]

    def add(family: str, value: float, labels: str = "") -> None:
        lines[_INDEX[family]].append(f"{family}{base}{labels}}} {sample_value(value)}\n")

    add("smtpmon_domain_info", 1, label_pairs(("domain_unicode",), (unicode,)))
    add("smtpmon_domain_expect_mail", expect_mail)
    add("smtpmon_domain_probes_total", probes)
    if skipped is not None:
        add("smtpmon_domain_probe_skipped_total", skipped)
    add("smtpmon_domain_success", latest is not None and latest.success)
    add("smtpmon_domain_deliverable", latest is not None and latest.deliverable)
    if latest is not None:
        _add_latest(add, latest)
    if policy_lines is None:
        policy_lines = render_policy(base, policy_state(latest))
    return tuple("".join(chunk).encode() for chunk in lines) + policy_lines


def _label_base(name: str, module: str) -> str:
    """What opens every domain sample's label set (without the closing brace)."""
    return f'{{domain="{escape_label_value(name)}",module="{escape_label_value(module)}"'


def _add_latest(add, result: DomainResult) -> None:
    resolution = result.resolution
    verdict = result.verdict
    for word in VERDICTS:
        add("smtpmon_domain_verdict", word == verdict, label_pairs(("verdict",), (word,)))
    for state in DOMAIN_STATES:
        add("smtpmon_domain_dns_state", state == resolution.state, label_pairs(("state",), (state,)))
    add("smtpmon_domain_mx_hosts", len(resolution.mx_hosts))
    for host in resolution.mx_hosts:
        add("smtpmon_domain_mx_info", 1, label_pairs(
            ("mx", "preference", "state"), (host.name, str(host.preference), host.state)))
    for family in FAMILIES:
        family_label = label_pairs(("family",), (family,))
        add("smtpmon_domain_addresses", result.addresses(family), family_label)
        add("smtpmon_domain_addresses_accepting", result.accepting(family), family_label)
    add("smtpmon_domain_most_preferred_accepting", result.most_preferred_accepts)
    capped = resolution.mx_hosts_capped or any(host.capped for host in resolution.mx_hosts)
    add("smtpmon_domain_capped", capped)
    add("smtpmon_domain_dns_lookup_duration_seconds", resolution.duration_seconds)
    add("smtpmon_domain_dns_stale", resolution.stale)
    add("smtpmon_domain_probe_duration_seconds", result.duration_seconds)
    add("smtpmon_domain_probe_last_timestamp_seconds", result.started_at + result.duration_seconds)


def domain_chunks(rows: Sequence[tuple[bytes, ...]]) -> list[bytes]:
    """Each domain family once, its header then every domain's samples (empty ones left out)."""
    parts: list[bytes] = []
    for index, header in enumerate(_HEADERS):
        samples = [row[index] for row in rows if row[index]]
        if samples:
            parts.append(header)
            parts += samples
    return parts


class DomainStore:
    def __init__(self, max_entries: int | None = None) -> None:
        """`max_entries` bounds the entries `record_on_demand` creates (/probe?domain=)."""
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], _StoredDomain] = {}
        self._max_entries = max_entries

    def register(self, name: str, module: str, unicode: str, expect_mail: bool) -> None:
        """Make the domain's always-present series exist; an entry that exists keeps its
        result and counters (a reload does not reset an unchanged domain)."""
        with self._lock:
            entry = self._entries.get((name, module))
            if entry is None:
                entry = self._entries[(name, module)] = _StoredDomain(name, module, unicode,
                                                                      expect_mail)
                entry.render()
            elif entry.expect_mail != expect_mail:
                entry.expect_mail = expect_mail
                entry.render()

    def record_skip(self, name: str, module: str) -> bool:
        """Count a scheduled run skipped because the previous probe was still running."""
        with self._lock:
            entry = self._entries.get((name, module))
            if entry is None or entry.skipped is None:
                return False
            entry.skipped += 1
            entry.render()
            return True

    def record(self, result: DomainResult) -> bool:
        """Store a finished domain probe; False (dropped) when the domain is not registered
        (removed by a reload while it ran)."""
        with self._lock:
            entry = self._entries.get((result.name, result.module))
            if entry is None:
                return False
            entry.add(result)
            return True

    def record_on_demand(self, result: DomainResult) -> tuple[tuple[tuple[bytes, ...], ...], tuple[bytes, ...]]:
        """Store and count a `/probe?domain=` result, creating its entry (the least recently
        probed goes when the store is full); its address rows and domain row."""
        key = (result.name, result.module)
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is None:
                entry = _StoredDomain(result.name, result.module,
                                      result.resolution.domain_unicode, result.expect_mail,
                                      skipped=None)
                if self._max_entries is not None and len(self._entries) >= self._max_entries:
                    del self._entries[next(iter(self._entries))]
            entry.expect_mail = result.expect_mail
            self._entries[key] = entry
            # Kept as a /probe target's result is (exposition.store): no transcript, replies
            # cut to a line, so a thousand entries of hostile servers stay small.
            entry.add(replace(result, probes=tuple(replace(probe, result=slim_result(probe.result))
                                                   for probe in result.probes)))
            return entry.address_rows, entry.row

    def remove(self, name: str, module: str) -> None:
        with self._lock:
            self._entries.pop((name, module), None)

    def latest(self, name: str, module: str) -> DomainResult | None:
        with self._lock:
            entry = self._entries.get((name, module))
            return None if entry is None else entry.latest

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def snapshot(self) -> list[DomainSnapshot]:
        """Every entry as it is now, in registration order (for /probe?domain= entries: least
        recently probed first). Each entry's copy is made when it changes, so a view copies
        references, holding the lock for SNAPSHOT_CHUNK entries at a time (a probe finishing
        meanwhile waits for one chunk, never for the whole store)."""
        with self._lock:
            entries = list(self._entries.items())
        snapshots: list[DomainSnapshot] = []
        for start in range(0, len(entries), SNAPSHOT_CHUNK):
            with self._lock:
                for key, entry in entries[start:start + SNAPSHOT_CHUNK]:
                    if self._entries.get(key) is entry:  # else removed meanwhile
                        snapshots.append(entry.snapshot())
        return snapshots

    def snapshot_entry(self, name: str, module: str) -> DomainSnapshot | None:
        with self._lock:
            entry = self._entries.get((name, module))
            return None if entry is None else entry.snapshot()

    def address_rows(self) -> list[tuple[bytes, ...]]:
        """Every address session's rendered row (the target families), domain by domain."""
        with self._lock:
            return [row for entry in self._entries.values() for row in entry.address_rows]

    def domain_rows(self) -> list[tuple[bytes, ...]]:
        with self._lock:
            return [entry.row for entry in self._entries.values()]
