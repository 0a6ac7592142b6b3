"""A mail domain's TLS policy (smtpmon.domains.policy: DANE, MTA-STS, TLS-RPT) in the
exposition: families rendered into the domain's row, with `mx` (per MX host) and `mx`,
`address` (per MX address) where the verdict is theirs. Every state of a fixed vocabulary is
present with 0 or 1, so a rule can read `== 1` for the bad ones and a panel can show which.

Rendered only for domains whose policy was checked (`dane` or `mta_sts` on): a domain with
neither has none of these series, as it has nothing to say about them. The lines are rendered
from a PolicyState, the values they show and nothing more, so that the store can keep them
while a domain's state stays the same (exposition.domains).
"""

from __future__ import annotations

from typing import NamedTuple

from smtpmon.domains import DomainResult
from smtpmon.domains.policy import ADDRESS_DANE_VERDICTS, ADDRESS_STS_VERDICTS, AddressPolicy
from smtpmon.exposition.metrics import Family, label_pairs, sample_value
from smtpmon.mailtls.dane import TLSA_STATES
from smtpmon.mailtls.mtasts import MODES, STS_FETCH_ERRORS, STS_RECORD_STATES
from smtpmon.mailtls.tlsrpt import TLSRPT_STATES

# The policy in use: a mode, or none fetched (yet) / none published.
POLICY_MODES: tuple[str, ...] = MODES + ("no_policy",)

POLICY_FAMILIES: tuple[Family, ...] = (
    Family("smtpmon_domain_dane_checked", "gauge",
           "1 if DANE is checked for the domain (dane on and a validating resolver), else 0."),
    Family("smtpmon_domain_dane_mx_secure", "gauge",
           "1 if the validating resolver's MX answer for the domain is DNSSEC-secure (AD): "
           "DANE can apply (RFC 7672 2.2.1), else 0."),
    Family("smtpmon_domain_tlsa_state", "gauge",
           "1 for what the TLSA lookup of the MX host found, 0 for the other states."),
    Family("smtpmon_domain_tlsa_records", "gauge",
           "TLSA records published for the MX host (as seen, also when not secure)."),
    Family("smtpmon_domain_dane_verdict", "gauge",
           "1 for the DANE verdict of the MX address, 0 for the others."),
    Family("smtpmon_domain_dane_match_info", "gauge",
           "Constant 1 for the TLSA record that authenticated the MX address's chain: its "
           "usage, selector and matching type."),
    Family("smtpmon_domain_dane_unmatched_records", "gauge",
           "Usable secure TLSA records of the MX host that match no certificate the address "
           "presented (a prepared rollover next to a match, or stale records)."),
    Family("smtpmon_domain_dane_rollover_ready", "gauge",
           "1 if the address matches a record and another usable record is published "
           "beside it (a key change will not break DANE), else 0."),
    Family("smtpmon_domain_mta_sts_record_state", "gauge",
           "1 for the state of the domain's _mta-sts TXT record, 0 for the others."),
    Family("smtpmon_domain_mta_sts_policy_mode", "gauge",
           "1 for the mode of the MTA-STS policy in use (no_policy: none), 0 for the others."),
    Family("smtpmon_domain_mta_sts_fetch_failing", "gauge",
           "1 if the record says a policy exists and the last fetch of it failed, else 0."),
    Family("smtpmon_domain_mta_sts_fetch_error", "gauge",
           "1 for why the last policy fetch failed, 0 for the other reasons (all 0: it worked)."),
    Family("smtpmon_domain_mta_sts_max_age_seconds", "gauge",
           "max_age of the MTA-STS policy in use."),
    Family("smtpmon_domain_mta_sts_policy_changed_timestamp_seconds", "gauge",
           "When the policy id in use was first seen (Unix time)."),
    Family("smtpmon_domain_mta_sts_mx_verdict", "gauge",
           "1 for the MTA-STS verdict of the MX address under the policy in use, 0 for the "
           "others."),
    Family("smtpmon_domain_tlsrpt_state", "gauge",
           "1 for the state of the domain's _smtp._tls TXT record (TLS-RPT), 0 for the others."),
)

_INDEX = {family.name: index for index, family in enumerate(POLICY_FAMILIES)}


class TlsaState(NamedTuple):
    mx_host: str
    state: str
    records: int


class AddressDaneState(NamedTuple):
    mx_host: str
    address: str
    verdict: str
    matched: tuple[int, int, int] | None  # usage, selector, matching type of the matched record
    unmatched_records: int
    rollover_ready: bool


class DaneState(NamedTuple):
    mx_secure: bool
    tlsa: tuple[TlsaState, ...]
    addresses: tuple[AddressDaneState, ...]


class StsState(NamedTuple):
    record_state: str
    mode: str  # POLICY_MODES
    fetch_failing: bool
    fetch_error: str | None
    max_age: int | None
    policy_changed_at: float | None
    addresses: tuple[tuple[str, str, str], ...]  # (MX host, address, verdict)


class PolicyState(NamedTuple):
    """Everything a domain's policy series show, and nothing else: equal states render equal
    lines, so the store renders a domain's policy again only when this changes (its verdicts
    change far less often than the domain is probed, and the ~115 series of a DANE and
    MTA-STS domain cost more to render than the rest of its row)."""

    dane_checked: bool | None  # None: DANE is off for the domain
    dane: DaneState | None  # None: no MX lookup by the validating resolver
    sts: StsState | None
    tlsrpt_state: str | None


def policy_state(result: DomainResult | None) -> PolicyState | None:
    """What `render_policy` shows of `result`'s policy; None when it has none."""
    policy = result.policy if result is not None else None
    if policy is None:
        return None
    lookups = policy.lookups
    dane = None
    if lookups.mx_lookup_state:
        dane = DaneState(
            lookups.mx_secure,
            tuple(TlsaState(tlsa.mx_host, tlsa.state, len(tlsa.records)) for tlsa in lookups.tlsa),
            tuple(_address_dane(address) for address in policy.addresses))
    sts = None
    if lookups.sts is not None:
        found = lookups.sts
        sts = StsState(
            found.record.state,
            found.policy.mode if found.policy is not None else "no_policy",
            found.fetch_failing,
            found.fetch.error if found.fetch is not None else None,
            found.policy.max_age if found.policy is not None else None,
            found.policy_changed_at,
            tuple((address.mx_host, address.address, address.sts.verdict)
                  for address in policy.addresses if address.sts is not None))
    return PolicyState(
        bool(lookups.mx_lookup_state) if lookups.switches.dane else None, dane, sts,
        lookups.tlsrpt.state if lookups.tlsrpt is not None else None)


def _address_dane(address: AddressPolicy) -> AddressDaneState:
    check = address.dane_check
    record = check.matched if check is not None else None
    matched = (record.usage, record.selector, record.matching_type) if record is not None else None
    return AddressDaneState(address.mx_host, address.address, address.dane, matched,
                            len(check.unmatched) if check else 0,
                            bool(check and check.rollover_ready))


def render_policy(base: str, state: PolicyState | None) -> tuple[bytes, ...]:
    """The policy lines of one domain, one chunk per POLICY_FAMILIES entry; `base` opens
    every sample's label set (`{domain="...",module="..."`, without the closing brace)."""
    lines: list[list[str]] = [[] for _ in POLICY_FAMILIES]

    def add(family: str, value: float, labels: str = "") -> None:
        lines[_INDEX[family]].append(f"{family}{base}{labels}}} {sample_value(value)}\n")

    if state is not None:
        _add_policy(add, state)
    return tuple("".join(chunk).encode() for chunk in lines)


def _add_policy(add, state: PolicyState) -> None:
    if state.dane_checked is not None:
        add("smtpmon_domain_dane_checked", state.dane_checked)
    dane = state.dane
    if dane is not None:
        add("smtpmon_domain_dane_mx_secure", dane.mx_secure)
        for tlsa in dane.tlsa:
            mx = label_pairs(("mx",), (tlsa.mx_host,))
            for word in TLSA_STATES:
                add("smtpmon_domain_tlsa_state", word == tlsa.state, mx + label_pairs(("state",), (word,)))
            add("smtpmon_domain_tlsa_records", tlsa.records, mx)
        for address in dane.addresses:
            where = label_pairs(("mx", "address"), (address.mx_host, address.address))
            for verdict in ADDRESS_DANE_VERDICTS:
                add("smtpmon_domain_dane_verdict", verdict == address.verdict,
                    where + label_pairs(("verdict",), (verdict,)))
            if address.matched is not None:
                add("smtpmon_domain_dane_match_info", 1, where + label_pairs(
                    ("usage", "selector", "matching_type"), tuple(map(str, address.matched))))
            add("smtpmon_domain_dane_unmatched_records", address.unmatched_records, where)
            add("smtpmon_domain_dane_rollover_ready", address.rollover_ready, where)
    sts = state.sts
    if sts is not None:
        for word in STS_RECORD_STATES:
            add("smtpmon_domain_mta_sts_record_state", word == sts.record_state,
                label_pairs(("state",), (word,)))
        for word in POLICY_MODES:
            add("smtpmon_domain_mta_sts_policy_mode", word == sts.mode, label_pairs(("mode",), (word,)))
        add("smtpmon_domain_mta_sts_fetch_failing", sts.fetch_failing)
        for reason in STS_FETCH_ERRORS:
            add("smtpmon_domain_mta_sts_fetch_error", reason == sts.fetch_error,
                label_pairs(("error",), (reason,)))
        if sts.max_age is not None:
            add("smtpmon_domain_mta_sts_max_age_seconds", sts.max_age)
        if sts.policy_changed_at is not None:
            add("smtpmon_domain_mta_sts_policy_changed_timestamp_seconds", sts.policy_changed_at)
        for mx_host, address, verdict in sts.addresses:
            where = label_pairs(("mx", "address"), (mx_host, address))
            for word in ADDRESS_STS_VERDICTS:
                add("smtpmon_domain_mta_sts_mx_verdict", word == verdict,
                    where + label_pairs(("verdict",), (word,)))
    if state.tlsrpt_state is not None:
        for word in TLSRPT_STATES:
            add("smtpmon_domain_tlsrpt_state", word == state.tlsrpt_state, label_pairs(("state",), (word,)))
