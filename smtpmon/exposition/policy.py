"""A mail domain's TLS policy (smtpmon.domains.policy: DANE, MTA-STS, TLS-RPT) in the
exposition: families rendered into the domain's row, with `mx` (per MX host) and `mx`,
`address` (per MX address) where the verdict is theirs. Every state of a fixed vocabulary is
present with 0 or 1, so a rule can read `== 1` for the bad ones and a panel can show which.

Rendered only for domains whose policy was checked (`dane` or `mta_sts` on): a domain with
neither has none of these series, as it has nothing to say about them.
"""

from __future__ import annotations

from smtpmon.domains import DomainResult
from smtpmon.domains.policy import ADDRESS_DANE_VERDICTS, ADDRESS_STS_VERDICTS
from smtpmon.exposition.metrics import Family, label_pairs
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


def add_policy(add, result: DomainResult) -> None:
    """The policy samples of one domain result through `add(family, value, labels)`."""
    policy = result.policy
    if policy is None:
        return
    lookups = policy.lookups
    if lookups.switches.dane:
        add("smtpmon_domain_dane_checked", bool(lookups.mx_lookup_state))
    if lookups.mx_lookup_state:
        add("smtpmon_domain_dane_mx_secure", lookups.mx_secure)
        for tlsa in lookups.tlsa:
            mx = label_pairs(("mx",), (tlsa.mx_host,))
            for state in TLSA_STATES:
                add("smtpmon_domain_tlsa_state", state == tlsa.state, mx + label_pairs(("state",), (state,)))
            add("smtpmon_domain_tlsa_records", len(tlsa.records), mx)
        for address in policy.addresses:
            where = label_pairs(("mx", "address"), (address.mx_host, address.address))
            for verdict in ADDRESS_DANE_VERDICTS:
                add("smtpmon_domain_dane_verdict", verdict == address.dane,
                    where + label_pairs(("verdict",), (verdict,)))
            check = address.dane_check
            if check is not None and check.matched is not None:
                record = check.matched
                add("smtpmon_domain_dane_match_info", 1, where + label_pairs(
                    ("usage", "selector", "matching_type"),
                    (str(record.usage), str(record.selector), str(record.matching_type))))
            add("smtpmon_domain_dane_unmatched_records", len(check.unmatched) if check else 0, where)
            add("smtpmon_domain_dane_rollover_ready", bool(check and check.rollover_ready), where)
    sts = lookups.sts
    if sts is not None:
        for state in STS_RECORD_STATES:
            add("smtpmon_domain_mta_sts_record_state", state == sts.record.state,
                label_pairs(("state",), (state,)))
        mode = sts.policy.mode if sts.policy is not None else "no_policy"
        for word in POLICY_MODES:
            add("smtpmon_domain_mta_sts_policy_mode", word == mode, label_pairs(("mode",), (word,)))
        add("smtpmon_domain_mta_sts_fetch_failing", sts.fetch_failing)
        error = sts.fetch.error if sts.fetch is not None else None
        for reason in STS_FETCH_ERRORS:
            add("smtpmon_domain_mta_sts_fetch_error", reason == error, label_pairs(("error",), (reason,)))
        if sts.policy is not None:
            add("smtpmon_domain_mta_sts_max_age_seconds", sts.policy.max_age)
        if sts.policy_changed_at is not None:
            add("smtpmon_domain_mta_sts_policy_changed_timestamp_seconds", sts.policy_changed_at)
        for address in policy.addresses:
            if address.sts is None:
                continue
            where = label_pairs(("mx", "address"), (address.mx_host, address.address))
            for verdict in ADDRESS_STS_VERDICTS:
                add("smtpmon_domain_mta_sts_mx_verdict", verdict == address.sts.verdict,
                    where + label_pairs(("verdict",), (verdict,)))
    if lookups.tlsrpt is not None:
        for state in TLSRPT_STATES:
            add("smtpmon_domain_tlsrpt_state", state == lookups.tlsrpt.state, label_pairs(("state",), (state,)))
