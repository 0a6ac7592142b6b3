"""A domain's TLS policy as text, for people (the command line's `probe --mx`, and
`/probe?domain=...&debug=true`): the lookups as they were made (the validating resolver's MX
and TLSA answers, the MTA-STS record, the policy fetch, the TLS-RPT record), then the DANE
and MTA-STS verdicts per MX address.

    TLS policy lookups:
      DNS  good.example MX: ok, DNSSEC-secure (AD)
      DNS  _25._tcp.mx.good.example TLSA: secure, 1 record(s)
             3 1 1 8f0e...
      DNS  _mta-sts.good.example TXT: present, policy id 20261203
      HTTPS https://mta-sts.good.example/.well-known/mta-sts.txt at 192.0.2.80: 200, mode enforce, ...
    TLS policy verdicts:
      mx.good.example [192.0.2.25]: DANE match (DANE-EE 3 1 1 matches the leaf); MTA-STS ok
"""

from __future__ import annotations

from smtpmon.domains.results import DomainResult
from smtpmon.mailtls.mtasts import POLICY_PATH


def lookup_lines(result: DomainResult) -> list[str]:
    policy = result.policy
    if policy is None:
        return []
    lookups = policy.lookups
    lines = ["TLS policy lookups:"]
    if lookups.mx_lookup_state:
        security = "DNSSEC-secure (AD)" if lookups.mx_secure else "not DNSSEC-secure: DANE does not apply"
        lines.append(f"  DNS   {result.name} MX: {lookups.mx_lookup_state}, {security}")
        for tlsa in lookups.tlsa:
            cached = " (from the cache)" if tlsa.from_cache else ""
            lines.append(f"  DNS   {tlsa.qname} TLSA: {tlsa.state}{cached}: {tlsa.detail}")
            lines += [f"          {record}" for record in tlsa.records]
    elif lookups.switches.dane:
        lines.append("  DANE: not checked (no validating resolver)")
    sts = lookups.sts
    if sts is not None:
        lines.append(f"  DNS   _mta-sts.{result.name} TXT: {sts.record.state}: {sts.record.detail}")
        if sts.record.text:
            lines.append(f"          {sts.record.text}")
        fetch = sts.fetch
        url = f"https://mta-sts.{result.name}{POLICY_PATH}"
        if fetch is not None:
            where = f" at {fetch.address}" if fetch.address else ""
            how = "fetched now" if sts.fetched else "the last fetch"
            outcome = f"FAILED ({fetch.error}): {fetch.detail}" if fetch.error else fetch.detail
            status = f"{fetch.http_status}, " if fetch.http_status else ""
            lines.append(f"  HTTPS {url}{where} ({how}): {status}{outcome}")
        if sts.policy is not None:
            lines.append(f"        policy in use (id {sts.policy.id}):")
            lines += [f"          {line}" for line in sts.policy.text.strip("\n").split("\n")]
    if lookups.tlsrpt is not None:
        record = lookups.tlsrpt
        lines.append(f"  DNS   _smtp._tls.{result.name} TXT: {record.state}: {record.detail}")
    return lines


def verdict_lines(result: DomainResult) -> list[str]:
    policy = result.policy
    if policy is None:
        return []
    lines = ["TLS policy verdicts:"]
    for address in policy.addresses:
        words = []
        if policy.lookups.mx_lookup_state:
            detail = address.dane_check.detail if address.dane_check else ""
            dane = f"DANE {address.dane}" + (f" ({detail})" if detail else "")
            if address.dane_check is not None and address.dane_check.rollover_ready:
                dane += ", rollover ready"
            words.append(dane)
        if address.sts is not None:
            sts = f"MTA-STS {address.sts.verdict}"
            if address.sts.verdict not in ("ok", "not_applicable"):
                sts += f" [{address.sts.severity}] ({address.sts.detail})"
            words.append(sts)
        pkix = "PKIX valid" if address.pkix_valid else "PKIX NOT valid"
        lines.append(f"  {address.mx_host} [{address.address}]: {'; '.join(words)}; {pkix}")
    return lines


def render(result: DomainResult) -> str:
    lines = lookup_lines(result) + verdict_lines(result)
    return "\n".join(lines) + "\n" if lines else ""
