"""DANE for SMTP (RFC 7672, with RFC 6698 and RFC 7671), as a DANE-validating sender sees it.

Two steps, matching the two places a sender decides:
1. `lookup_tlsa(...)` per MX host: is there a DNSSEC-secure TLSA record set for
   `_PORT._tcp.<mx host>`? (`TlsaLookup.state`, one of TLSA_STATES.)
2. `check_address(...)` per MX address, after its SMTP session: does the chain it presented
   match a usable record? (`DaneCheck.verdict`, one of DANE_VERDICTS.)

Security comes from the AD bit of the validating resolver named in the configuration, asked
through smtpmon.dns (DO bit, AD read, a CD re-ask to tell bogus from unreachable). Only that
resolver is asked: a fallback to a non-validating nameserver would turn every "insecure"
verdict into a lie, so its CachedResolver must name it alone.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from smtpmon.dns.cached import CachedResolver, absolute_name
from smtpmon.dns.names import name_matches, name_text
from smtpmon.dns.resolver import Answer
from smtpmon.smtp.chain import certificate_validity

# Per MX host: what the TLSA lookup found.
#   secure          DNSSEC-secure TLSA records: DANE applies to every address of this host
#   insecure        TLSA records without DNSSEC: ignored, as senders ignore them (RFC 7672 2.2)
#   none            no TLSA records (securely or insecurely denied): no DANE for this host
#   bogus           validation failed (SERVFAIL; the data is visible with CD): senders defer
#   lookup_failed   no usable answer (SERVFAIL without data, timeout): senders defer too
#   mx_insecure     the domain's MX answer is not secure: DANE does not apply (RFC 7672 2.2.1)
TLSA_STATES = ("secure", "insecure", "none", "bogus", "lookup_failed", "mx_insecure")

# Per MX address: the DANE verdict.
#   match             a usable secure record authenticates the presented chain
#   mismatch          usable secure records, none authenticates the chain (or no TLS): senders
#                     defer all mail to this address
#   unusable          secure records, but none with a DANE usage (2, 3) and known parameters
#                     (e.g. only PKIX-TA/PKIX-EE): senders fall back to unauthenticated TLS
#   starttls_missing  usable secure records, but the server does not offer STARTTLS: senders
#                     defer (TLS is mandatory under DANE)
#   bogus             the TLSA lookup failed validation: senders defer
#   lookup_failed     the TLSA lookup got no usable answer: senders defer
#   not_applicable    no secure TLSA records (none, insecure, or an insecure MX lookup)
DANE_VERDICTS = ("match", "mismatch", "unusable", "starttls_missing", "bogus", "lookup_failed",
                 "not_applicable")

USAGE_NAMES = {0: "PKIX-TA", 1: "PKIX-EE", 2: "DANE-TA", 3: "DANE-EE"}
DANE_USAGES = (2, 3)  # RFC 7672 3.1.3: PKIX-TA and PKIX-EE are not usable for SMTP
_SELECTORS = (0, 1)  # full certificate, SubjectPublicKeyInfo
_MATCHING = {0: None, 1: hashlib.sha256, 2: hashlib.sha512}


@dataclass(frozen=True)
class TlsaRecord:
    usage: int
    selector: int
    matching_type: int
    data: bytes

    @property
    def usable(self) -> bool:
        """A record a DANE SMTP client uses (RFC 7672 3.1); others are ignored."""
        return (self.usage in DANE_USAGES and self.selector in _SELECTORS
                and self.matching_type in _MATCHING)

    def __str__(self) -> str:
        return f"{self.usage} {self.selector} {self.matching_type} {self.data.hex()}"

    def matches(self, der: bytes) -> bool:
        """Whether this record's data is the association data of the certificate `der`."""
        return self.usable and association_data(der, self.selector, self.matching_type) == self.data


@dataclass(frozen=True)
class TlsaLookup:
    mx_host: str  # lower case, no final dot
    port: int
    qname: str  # _PORT._tcp.<mx host>
    state: str  # one of TLSA_STATES
    records: tuple[TlsaRecord, ...]  # every record seen (for bogus: as seen with CD)
    ttl: float
    from_cache: bool
    detail: str

    @property
    def usable_records(self) -> tuple[TlsaRecord, ...]:
        return tuple(record for record in self.records if record.usable)

    @property
    def dane_applies(self) -> bool:
        """Whether the session must collect the presented chain (smtp.chain.presented_chain,
        run_probe(want_chain=True)) and judge it with check_address: secure records, at least
        one of them usable."""
        return self.state == "secure" and bool(self.usable_records)


@dataclass(frozen=True)
class DaneCheck:
    verdict: str  # one of DANE_VERDICTS
    matched: TlsaRecord | None  # the record that authenticated the chain
    matched_depth: int | None  # its certificate's place in the chain (0: the leaf)
    unmatched: tuple[TlsaRecord, ...]  # usable records matching no presented certificate
    ignored: tuple[TlsaRecord, ...]  # records a DANE client does not use (PKIX usages, unknown)
    detail: str

    @property
    def rollover_ready(self) -> bool:
        """A match, and another usable record published beside it: the next key (a prepared
        rollover) or a stale one; either way a key change will not break delivery if the
        other record is the new key."""
        return self.verdict == "match" and bool(self.unmatched)


def tlsa_qname(mx_host: str, port: int) -> str:
    return name_text(absolute_name(f"_{port}._tcp.{mx_host.rstrip('.')}"))


def mx_secure(validating: CachedResolver, domain: str, *, deadline: float) -> Answer:
    """The domain's MX answer from the validating resolver (its `authenticated` says whether
    DANE can apply at all, RFC 7672 2.2.1), whatever resolver found the MX hosts for the
    probes."""
    return validating.ask(domain, "MX", deadline=deadline, dnssec=True)


def lookup_tlsa(
    validating: CachedResolver,
    mx_host: str,
    port: int = 25,
    *,
    mx_is_secure: bool,
    deadline: float,
) -> TlsaLookup:
    """The TLSA record set of one MX host, judged as RFC 7672 2.2 says. Never raises."""
    mx_host = mx_host.rstrip(".").lower()
    qname = tlsa_qname(mx_host, port)

    def result(state: str, answer: Answer | None, detail: str) -> TlsaLookup:
        records = tuple(_record(rdata) for rdata in answer.records) if answer else ()
        return TlsaLookup(mx_host, port, qname, state, records, answer.ttl_seconds if answer else 0,
                          bool(answer and answer.from_cache), detail)

    if not mx_is_secure:
        return result("mx_insecure", None, "the MX answer is not DNSSEC-secure: DANE does not apply")
    answer = validating.ask(qname, "TLSA", deadline=deadline, dnssec=True)
    if answer.state == "ok":
        if answer.authenticated:
            return result("secure", answer, f"{len(answer.records)} secure TLSA record(s)")
        return result("insecure", answer, "TLSA records without DNSSEC (not validated): ignored by senders")
    if answer.state in ("nodata", "nxdomain"):
        return result("none", answer, f"no TLSA records at {qname}")
    if answer.rcode == "SERVFAIL":
        # A validating resolver answers SERVFAIL both for a failed validation and for
        # servers it cannot reach. With CD it skips validation: data (or a denial) then means
        # the signatures were the problem.
        unchecked = validating.ask(qname, "TLSA", deadline=deadline, dnssec=True, checking_disabled=True)
        if unchecked.is_answer:
            return result("bogus", unchecked, "DNSSEC validation failed (SERVFAIL; the data is visible with CD)")
        return result("lookup_failed", None, f"SERVFAIL, also with CD: {unchecked.detail}")
    return result("lookup_failed", None, answer.detail)


def _record(rdata) -> TlsaRecord:
    return TlsaRecord(int(rdata.usage), int(rdata.selector), int(rdata.mtype), bytes(rdata.cert))


# A server presents the same chain at every probe: its certificates are parsed and hashed once.
@functools.lru_cache(maxsize=1024)
def association_data(der: bytes, selector: int, matching_type: int) -> bytes:
    """What a TLSA record holds for this certificate (RFC 6698 2.1). ValueError when `der` is
    not a certificate."""
    if selector == 0:
        selected = der
    else:
        from cryptography.hazmat.primitives import serialization

        selected = _load(der).public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    digest = _MATCHING[matching_type]
    return selected if digest is None else digest(selected).digest()


def check_address(
    lookup: TlsaLookup,
    *,
    starttls_offered: bool,
    chain: Sequence[bytes] | None,
    now: datetime.datetime | None = None,
) -> DaneCheck:
    """The DANE verdict for one MX address, from its host's TLSA lookup and what the address
    showed: whether it offered STARTTLS and the chain it presented (None or empty when the
    handshake did not complete). The reference identifier is the MX host name."""
    ignored = tuple(record for record in lookup.records if not record.usable)

    def verdict(name: str, detail: str, unmatched=(), matched=None, depth=None) -> DaneCheck:
        return DaneCheck(name, matched, depth, tuple(unmatched), ignored, detail)

    if lookup.state in ("none", "insecure", "mx_insecure"):
        return verdict("not_applicable", lookup.detail)
    if lookup.state in ("bogus", "lookup_failed"):
        return verdict(lookup.state, lookup.detail)
    usable = lookup.usable_records
    if not usable:
        kinds = ", ".join(sorted({USAGE_NAMES.get(r.usage, f"usage {r.usage}") for r in lookup.records}))
        return verdict("unusable", f"no TLSA record usable for SMTP (only {kinds})")
    if not starttls_offered:
        return verdict("starttls_missing", "secure TLSA records, but the server does not offer STARTTLS")
    if not chain:
        return verdict("mismatch", "secure TLSA records, but no TLS handshake completed", usable)
    try:
        certificates = [_load(der) for der in chain]
    except ValueError:
        return verdict("mismatch", "the server presented something that is not an X.509 certificate", usable)
    now = now or datetime.datetime.now(datetime.UTC)
    unmatched = []
    matched: tuple[TlsaRecord, int] | None = None
    problems = []
    for record in usable:
        depths = [0] if record.usage == 3 else range(len(chain))
        hits = [depth for depth in depths if record.matches(chain[depth])]
        if not hits:
            unmatched.append(record)
            continue
        if matched is not None:
            continue
        if record.usage == 3:  # DANE-EE: the key is the authentication; name and dates ignored
            matched = (record, 0)
            continue
        problem = _trust_anchor_problem(certificates, hits, lookup.mx_host, now)
        if problem is None:
            matched = (record, hits[0])
        else:
            problems.append(f"{record.usage} {record.selector} {record.matching_type}: {problem}")
    if matched is not None:
        record, depth = matched
        where = "the leaf" if depth == 0 else f"certificate {depth} of the chain"
        return verdict("match", f"{USAGE_NAMES[record.usage]} {record.usage} {record.selector} "
                       f"{record.matching_type} matches {where}", unmatched, record, depth)
    detail = "; ".join(problems) if problems else "no TLSA record matches the presented chain"
    return verdict("mismatch", detail, unmatched)


@functools.lru_cache(maxsize=256)
def _load(der: bytes):
    from cryptography import x509

    return x509.load_der_x509_certificate(der)


def _trust_anchor_problem(certificates: list, depths: list[int], mx_host: str,
                          now: datetime.datetime) -> str | None:
    """None when the chain leads from the leaf to one of the matched trust anchors (each
    certificate signed by the next one up to it), the leaf names the MX host, and every
    certificate below the anchor is within its validity period (RFC 7671 5.2.2, RFC 7672
    3.2.3); else what is wrong. The anchor's own dates are not checked (RFC 7671 5.2.2)."""
    problem = "no matched trust anchor above the leaf"
    for depth in depths:
        if depth == 0:  # a self-signed leaf matched as its own trust anchor
            problem = "the trust anchor is the leaf itself"
            continue
        problem = _path_problem(certificates[: depth + 1], now)
        if problem is None:
            break
    if problem is not None:
        return problem
    if not _names_host(certificates[0], mx_host):
        return f"the certificate does not name {mx_host.rstrip('.')}"
    return None


def _path_problem(path: list, now: datetime.datetime) -> str | None:
    for depth, (certificate, issuer) in enumerate(zip(path, path[1:])):
        problem = _issuer_problem(certificate, issuer)
        if problem is not None:
            return f"certificate {depth} " + problem.format(issuer=f"certificate {depth + 1}")
        not_before, not_after = certificate_validity(certificate)
        if not not_before <= now <= not_after:
            return f"certificate {depth} is outside its validity period"
    return None


def _issuer_problem(certificate, issuer) -> str | None:
    """None when `issuer` issued `certificate`: its subject is the certificate's issuer name and
    its key verifies the signature over the certificate's TBS bytes; else what is wrong, with
    {issuer} where the issuer is named.
    cryptography's Certificate.verify_directly_issued_by does this from version 40 only, and
    Debian 12 has 38. RSASSA-PSS signatures are refused: their parameters are readable only
    from cryptography 41 (no certificate authority in the WebPKI signs with them)."""
    from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric import (
        dsa,
        ec,
        ed448,
        ed25519,
        padding,
        rsa,
    )
    from cryptography.x509.oid import SignatureAlgorithmOID

    if certificate.issuer != issuer.subject:
        return "is not issued by {issuer}"
    if certificate.signature_algorithm_oid == SignatureAlgorithmOID.RSASSA_PSS:
        return "has an RSASSA-PSS signature (not supported) from {issuer}"
    key = issuer.public_key()
    signature, signed = certificate.signature, certificate.tbs_certificate_bytes
    try:
        digest = certificate.signature_hash_algorithm
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, signed, padding.PKCS1v15(), digest)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, signed, ec.ECDSA(digest))
        elif isinstance(key, dsa.DSAPublicKey):
            key.verify(signature, signed, digest)
        elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            key.verify(signature, signed)
        else:  # a key type that cannot sign (X25519, ...)
            return "is not signed by {issuer}'s key"
    except (InvalidSignature, TypeError, ValueError, UnsupportedAlgorithm):
        # TypeError/ValueError: a signature algorithm that does not fit the key
        return "is not signed by {issuer}'s key"
    return None


def _names_host(certificate, mx_host: str) -> bool:
    """RFC 7672 3.2.3 / RFC 6125: a DNS-ID in the SANs equal to the host, or a wildcard as
    the whole left-most label; the subject CN only when there are no DNS SANs."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    host = mx_host.rstrip(".").lower()
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
            .get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = [attribute.value for attribute in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return any(name_matches(str(name), host) for name in names)

