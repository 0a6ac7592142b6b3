"""TLS-RPT (RFC 8460): the `_smtp._tls.<domain>` TXT record that tells senders where to
report TLS failures (DANE and MTA-STS ones included)."""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass

from smtpmon.dns.cached import CachedResolver

# The `_smtp._tls` TXT record.
#   present        one valid `v=TLSRPTv1; rua=...` record
#   absent         no TLSRPTv1 record
#   invalid        a TLSRPTv1 record that does not parse (no rua, a URI that is neither
#                  mailto: nor https:, a malformed field)
#   multiple       more than one TLSRPTv1 record: senders send no reports (RFC 8460 3)
#   lookup_failed  the TXT lookup got no answer
TLSRPT_STATES = ("present", "absent", "invalid", "multiple", "lookup_failed")
RUA_SCHEMES = ("mailto", "https")

_FIELD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")


@dataclass(frozen=True)
class ReportUri:
    scheme: str  # "mailto" or "https"
    target: str  # the mail address, or the URL
    uri: str  # as published


@dataclass(frozen=True)
class TlsRptRecord:
    state: str  # one of TLSRPT_STATES
    rua: tuple[ReportUri, ...]
    text: str | None
    detail: str


def parse_record(texts: list[str]) -> TlsRptRecord:
    """The TLS-RPT record among a name's TXT records (each as one joined string)."""
    candidates = [text for text in texts if re.match(r"v=TLSRPTv1\s*(;|$)", text)]
    if not candidates:
        return TlsRptRecord("absent", (), None, "no v=TLSRPTv1 TXT record")
    if len(candidates) > 1:
        return TlsRptRecord("multiple", (), candidates[0],
                            f"{len(candidates)} v=TLSRPTv1 records: senders report nowhere")
    text = candidates[0]
    fields = [field.strip() for field in text.split(";")]
    if fields[-1] == "":
        fields.pop()
    rua: tuple[ReportUri, ...] | None = None
    for field in fields[1:]:
        name, equals, value = field.partition("=")
        if not equals or not _FIELD_NAME.fullmatch(name) or not value:
            return TlsRptRecord("invalid", (), text, f"not a name=value field: {field!r}")
        if name == "rua" and rua is None:
            parsed = [parse_uri(uri.strip()) for uri in value.split(",")]
            bad = [uri.strip() for uri, ok in zip(value.split(","), parsed) if ok is None]
            if bad:
                return TlsRptRecord("invalid", (), text, f"rua {bad[0]!r} is not a mailto: or https: URI")
            rua = tuple(parsed)
    if not rua:
        return TlsRptRecord("invalid", (), text, "no rua= field")
    return TlsRptRecord("present", rua, text, "reports to " + ", ".join(uri.uri for uri in rua))


def parse_uri(uri: str) -> ReportUri | None:
    parts = urllib.parse.urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme == "mailto":
        address = urllib.parse.unquote(parts.path)
        local, at, domain = address.rpartition("@")
        if at and local and "." in domain and not parts.netloc:
            return ReportUri(scheme, address, uri)
    elif scheme == "https" and parts.hostname:
        return ReportUri(scheme, uri, uri)
    return None


def lookup(resolver: CachedResolver, domain: str, *, deadline: float) -> TlsRptRecord:
    answer = resolver.ask(f"_smtp._tls.{domain.rstrip('.')}.", "TXT", deadline=deadline)
    if answer.state in ("nodata", "nxdomain"):
        return TlsRptRecord("absent", (), None, answer.detail or f"no TXT record at {answer.name}")
    if answer.state != "ok":
        return TlsRptRecord("lookup_failed", (), None, answer.detail)
    return parse_record([b"".join(rdata.strings).decode("utf-8", errors="replace") for rdata in answer.records])
