"""Results → Prometheus text exposition (format 0.0.4), for `/metrics` and `/probe`.

The names, types and labels are the contract in docs/metrics.md. Rendering is built for many
targets: `render_target` turns one target's state into finished exposition lines, one chunk per
metric family, and the store keeps those chunks from one probe to the next (see store.py), so a
scrape only joins bytes family by family instead of walking every result. Knows nothing of
sockets, schedules or HTTP.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.utils import floatToGoString

from smtpmon.smtp.replycodes import (
    ENHANCED_CLASS_NAMES,
    PROTOCOL_ERROR,
    code_label,
    reply_category,
    reply_class,
)
from smtpmon.smtp.results import Capabilities, ProbeResult, Reply, TlsInfo

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Family(NamedTuple):
    name: str
    type: str  # "gauge", "counter" or "histogram"
    help: str

    @property
    def header(self) -> bytes:
        help_text = self.help.replace("\\", r"\\").replace("\n", r"\n")
        return f"# HELP {self.name} {help_text}\n# TYPE {self.name} {self.type}\n".encode()


# Per (target, module), in the order of docs/metrics.md.
TARGET_FAMILIES: tuple[Family, ...] = (
    Family("smtpmon_probe_success", "gauge", "1 if the last probe succeeded, else 0."),
    Family("smtpmon_probe_duration_seconds", "gauge", "Duration of the last probe, all stages."),
    Family("smtpmon_probe_stage_duration_seconds", "gauge",
           "Duration of each stage the last probe ran."),
    Family("smtpmon_probe_stage_reply_code", "gauge",
           "The last reply code of each stage the last probe got a reply in "
           "(0 for an unparseable reply)."),
    Family("smtpmon_probe_stage_reply_info", "gauge",
           "Constant 1: the last reply of each stage, described."),
    Family("smtpmon_probe_failure_info", "gauge",
           "Constant 1 while the last probe failed: where and why."),
    Family("smtpmon_probe_address_info", "gauge",
           "Constant 1: the IP address the last probe's session used, and its family."),
    Family("smtpmon_probe_last_timestamp_seconds", "gauge",
           "When the last probe finished (Unix time)."),
    Family("smtpmon_probes_total", "counter", "Probes run."),
    Family("smtpmon_probe_failures_total", "counter",
           "Failed probes by the stage that failed and the reason."),
    Family("smtpmon_replies_total", "counter",
           "Every reply received, by stage, code, class and category."),
    Family("smtpmon_enhanced_status_codes_total", "counter",
           "Every reply that carried an RFC 3463 enhanced status code."),
    Family("smtpmon_probe_skipped_total", "counter",
           "Scheduled runs skipped because the previous probe of the target was still running."),
    Family("smtpmon_tls_info", "gauge",
           "Constant 1: the TLS version and cipher of the last probe that reached TLS."),
    Family("smtpmon_tls_certificate_not_after_timestamp_seconds", "gauge",
           "The server certificate's expiry (Unix time)."),
    Family("smtpmon_tls_certificate_not_before_timestamp_seconds", "gauge",
           "The server certificate's start of validity (Unix time)."),
    Family("smtpmon_tls_certificate_verified", "gauge",
           "1 if the certificate chain and host name verified, else 0."),
    Family("smtpmon_tls_certificate_verify_failure_info", "gauge",
           "Constant 1 while the last certificate failed verification: why."),
    Family("smtpmon_starttls_offered", "gauge", "1 if the plain EHLO advertised STARTTLS, else 0."),
    Family("smtpmon_ehlo_extension_info", "gauge",
           "Constant 1 for each extension keyword an EHLO advertised (unknown ones as other)."),
    Family("smtpmon_ehlo_size_limit_bytes", "gauge", "The SIZE limit an EHLO advertised."),
)
_TARGET_INDEX = {family.name: index for index, family in enumerate(TARGET_FAMILIES)}
_TARGET_HEADERS = tuple(family.header for family in TARGET_FAMILIES)  # built once, sent often

# Keywords kept as `extension` label values: the IANA SMTP service extensions registry plus
# common vendor ones. Anything else is "other", so a server cannot grow the label set.
KNOWN_EHLO_EXTENSIONS: frozenset[str] = frozenset({
    "8BITMIME", "ATRN", "AUTH", "BINARYMIME", "BURL", "CHECKPOINT", "CHUNKING", "CONNEG",
    "CONPERM", "DELIVERBY", "DSN", "ENHANCEDSTATUSCODES", "ETRN", "EXPN", "FUTURERELEASE",
    "HELP", "LIMITS", "MT-PRIORITY", "MTRK", "NO-SOLICITING", "ONEX", "PIPELINING", "REQUIRETLS",
    "RRVS", "SAML", "SEND", "SIZE", "SMTPUTF8", "SOML", "STARTTLS", "SUBMITTER", "TURN",
    "UTF8SMTP", "VERB", "VRFY", "X-EXPS", "X-LINK2STATE", "XCLIENT", "XEXCH50", "XFORWARD",
    "XOORG", "XUSR",
})
OTHER_EXTENSION = "other"

FAILURE_LABELS = ("stage", "reason")
ADDRESS_LABELS = ("address", "family")
REPLY_LABELS = ("stage", "code", "class", "category")
ENHANCED_LABELS = ("stage", "enhanced_code", "class")

_ENHANCED_CLASS_BY_DIGIT = {str(digit): name for digit, name in ENHANCED_CLASS_NAMES.items()}


def escape_label_value(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def reply_key(stage: str, reply: Reply) -> tuple[str, str, str, str]:
    """The REPLY_LABELS values of a reply: an unparseable one is "000" / protocol_error."""
    return _reply_key(stage, reply.code)


@functools.lru_cache(maxsize=4096)  # (stage, code) pairs: a bounded vocabulary
def _reply_key(stage: str, code: int | None) -> tuple[str, str, str, str]:
    return (stage, code_label(code), reply_class(code), reply_category(code))


def enhanced_class(enhanced: str) -> str:
    """RFC 3463 class name of an enhanced code ("5.1.1" → "permanent_failure")."""
    return _ENHANCED_CLASS_BY_DIGIT.get(enhanced[:1], PROTOCOL_ERROR)


def extension_label(keyword: str) -> str:
    keyword = keyword.upper()
    return keyword if keyword in KNOWN_EHLO_EXTENSIONS else OTHER_EXTENSION


@dataclass(slots=True)
class TargetCounts:
    """Cumulative counters of one (target, module): what each probe result adds to them.

    Not thread-safe by itself: the store guards it with its lock.
    """

    probes: int = 0
    failures: Counter[tuple[str, str]] = field(default_factory=Counter)
    replies: Counter[tuple[str, str, str, str]] = field(default_factory=Counter)
    enhanced: Counter[tuple[str, str, str]] = field(default_factory=Counter)

    def add(self, result: ProbeResult) -> None:
        self.probes += 1
        if not result.success:
            self.failures[_failure_key(result)] += 1
        for stage in result.stages:
            for reply in stage.replies:
                self.replies[reply_key(stage.stage, reply)] += 1
                if reply.enhanced:
                    key = (stage.stage, reply.enhanced, enhanced_class(reply.enhanced))
                    self.enhanced[key] += 1

    def copy(self) -> TargetCounts:
        return TargetCounts(
            self.probes, Counter(self.failures), Counter(self.replies), Counter(self.enhanced)
        )


def _failure_key(result: ProbeResult) -> tuple[str, str]:
    # The probe engine always names both; the fallbacks keep a malformed result countable.
    return (result.failed_stage or "", result.reason or "internal_error")


# Label sets come from bounded vocabularies, so they repeat across targets and probes:
# caching their rendering more than halves the cost of `render_target`.
@functools.lru_cache(maxsize=4096)
def label_pairs(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    """',name="value"' for each label: the text that follows a sample's fixed labels."""
    return "".join(f',{name}="{escape_label_value(value)}"' for name, value in zip(names, values))


def sample_value(value: float) -> str:
    """floatToGoString, without its general path for the values nearly every sample has:
    counts, codes and flags (small ints, bools) and durations (small positive floats)."""
    kind = value.__class__
    if kind is bool:
        return "1.0" if value else "0.0"
    if kind is int and 0 <= value < 1_000_000:  # Go switches to an exponent from 1e6 on
        return f"{value}.0"
    if kind is float and 0.0 <= value < 1e6:  # neither NaN nor ±Inf
        return repr(value)
    return floatToGoString(value)


class _Lines:
    """Collects sample lines of one target, grouped by family."""

    __slots__ = ("_base", "_lines", "labelled_address")

    def __init__(self, target: str, module: str, labels: tuple[tuple[str, str], ...] = ()) -> None:
        # A mail domain's address session has `address` on every sample already.
        self.labelled_address = any(name == "address" for name, _ in labels)
        self._base = (f'{{target="{escape_label_value(target)}",module="{escape_label_value(module)}"'
                      + "".join(f',{name}="{escape_label_value(value)}"' for name, value in labels))
        self._lines: list[list[str] | None] = [None] * len(TARGET_FAMILIES)

    def add(self, family: str, value: float, extra_labels: str = "") -> None:
        line = f"{family}{self._base}{extra_labels}}} {sample_value(value)}\n"
        index = _TARGET_INDEX[family]
        lines = self._lines[index]
        if lines is None:
            self._lines[index] = [line]
        else:
            lines.append(line)

    def row(self) -> tuple[bytes, ...]:
        """One chunk per TARGET_FAMILIES entry, in that order (b"" for a family with no sample)."""
        return tuple(b"" if lines is None else "".join(lines).encode() for lines in self._lines)


def render_target(
    target: str,
    module: str,
    latest: ProbeResult | None,
    counts: TargetCounts,
    tls: TlsInfo | None,
    skipped: int | None,
    labels: tuple[tuple[str, str], ...] = (),
) -> tuple[bytes, ...]:
    """The exposition lines of one (target, module), one chunk per TARGET_FAMILIES entry.

    `tls` is the TLS state to report (the store keeps the last one a probe reached);
    `skipped` is None on `/probe`, where runs are never skipped and the family is left out.
    `labels` follow `target` and `module` on every sample: a mail domain's address sessions
    carry `domain`, `mx` and `address` (smtpmon.exposition.domains).
    """
    out = _Lines(target, module, labels)
    out.add("smtpmon_probe_success", latest is not None and latest.success)
    out.add("smtpmon_probes_total", counts.probes)
    if skipped is not None:
        out.add("smtpmon_probe_skipped_total", skipped)
    for key, count in counts.failures.items():
        out.add("smtpmon_probe_failures_total", count, label_pairs(FAILURE_LABELS, key))
    for key, count in counts.replies.items():
        out.add("smtpmon_replies_total", count, label_pairs(REPLY_LABELS, key))
    for key, count in counts.enhanced.items():
        out.add("smtpmon_enhanced_status_codes_total", count, label_pairs(ENHANCED_LABELS, key))
    if latest is not None:
        _add_last_probe(out, latest)
    if tls is not None:
        _add_tls(out, tls)
    return out.row()


def _add_last_probe(out: _Lines, result: ProbeResult) -> None:
    out.add("smtpmon_probe_duration_seconds", result.duration_seconds)
    out.add("smtpmon_probe_last_timestamp_seconds", result.started_at + result.duration_seconds)
    if not result.success:
        out.add("smtpmon_probe_failure_info", 1, label_pairs(FAILURE_LABELS, _failure_key(result)))
    if result.address is not None:
        if out.labelled_address:  # the row's own `address` label names it; a second is invalid
            out.add("smtpmon_probe_address_info", 1, label_pairs(("family",), (result.address_family or "",)))
        else:
            out.add("smtpmon_probe_address_info", 1,
                    label_pairs(ADDRESS_LABELS, (result.address, result.address_family or "")))
    for stage in result.stages:
        stage_label = label_pairs(("stage",), (stage.stage,))
        out.add("smtpmon_probe_stage_duration_seconds", stage.duration_seconds, stage_label)
        reply = stage.reply
        if reply is None:
            continue
        code, info_labels = _reply_samples(stage.stage, reply.code, reply.enhanced)
        out.add("smtpmon_probe_stage_reply_code", code, stage_label)
        out.add("smtpmon_probe_stage_reply_info", 1, info_labels)
    if result.ehlo is not None:
        out.add("smtpmon_starttls_offered", "STARTTLS" in result.ehlo.extensions)
    _add_ehlo(out, "plain", result.ehlo)
    _add_ehlo(out, "tls", result.ehlo_tls)


@functools.lru_cache(maxsize=4096)  # stages × codes × enhanced codes seen: bounded in practice
def _reply_samples(stage: str, code: int | None, enhanced: str | None) -> tuple[int, str]:
    """A stage's last reply as the value of stage_reply_code ("000" → 0: an unparseable reply
    still shows that the stage got an answer) and the labels of stage_reply_info."""
    described = _reply_key(stage, code) + (enhanced or "",)
    return int(code_label(code)), label_pairs(REPLY_LABELS + ("enhanced_code",), described)


@functools.lru_cache(maxsize=1024)  # a server's extension set repeats from one probe to the next
def _extension_labels(phase: str, extensions: frozenset[str]) -> tuple[str, ...]:
    return tuple(label_pairs(("phase", "extension"), (phase, extension))
                 for extension in sorted({extension_label(keyword) for keyword in extensions}))


def _add_ehlo(out: _Lines, phase: str, capabilities: Capabilities | None) -> None:
    if capabilities is None:
        return
    for labels in _extension_labels(phase, capabilities.extensions):
        out.add("smtpmon_ehlo_extension_info", 1, labels)
    if capabilities.size_limit is not None:
        out.add("smtpmon_ehlo_size_limit_bytes", capabilities.size_limit,
                label_pairs(("phase",), (phase,)))


def _add_tls(out: _Lines, tls: TlsInfo) -> None:
    if tls.version or tls.cipher:
        out.add("smtpmon_tls_info", 1,
                label_pairs(("tls_version", "cipher"), (tls.version or "", tls.cipher or "")))
    if tls.not_after is not None:
        out.add("smtpmon_tls_certificate_not_after_timestamp_seconds", tls.not_after)
    if tls.not_before is not None:
        out.add("smtpmon_tls_certificate_not_before_timestamp_seconds", tls.not_before)
    out.add("smtpmon_tls_certificate_verified", tls.verified)
    if tls.verify_reason is not None:
        out.add("smtpmon_tls_certificate_verify_failure_info", 1, label_pairs(("reason",), (tls.verify_reason,)))


def _family_chunks(rows: Sequence[tuple[bytes, ...]]) -> list[bytes]:
    """Each family once: its header, then the samples of every row, as chunks in order (not
    joined). Empty families are left out. `promtool check metrics` requires a family's
    samples to be together."""
    parts: list[bytes] = []
    for index, header in enumerate(_TARGET_HEADERS):
        samples = [row[index] for row in rows if row[index]]
        if samples:
            parts.append(header)
            parts += samples
    return parts


# process_* and python_* from prometheus_client, in a registry of their own so that nothing
# registered elsewhere in the process leaks into /metrics.
_RUNTIME_REGISTRY = CollectorRegistry(auto_describe=False)
ProcessCollector(registry=_RUNTIME_REGISTRY)
PlatformCollector(registry=_RUNTIME_REGISTRY)
GCCollector(registry=_RUNTIME_REGISTRY)


class SelfMetrics(Protocol):
    """The exporter's own metrics (smtpmon.exposition.state.ExporterState)."""

    def render(self) -> bytes: ...


def metrics_chunks(rows: Sequence[tuple[bytes, ...]], state: SelfMetrics,
                   more: Sequence[bytes] = (), *, maillog: bytes = b"") -> list[bytes]:
    """The whole `/metrics` page (every target's row, from ResultStore.rows(), and every mail
    domain address's; `more`: the mail domains' own families; the mail log's families,
    smtpmon.exposition.maillog; the exporter itself; process and Python) as chunks to write
    one after the other: at 10,000 targets the page is some 30 MB, and joining it would hold
    it twice more in memory."""
    parts = _family_chunks(rows)
    parts += more
    if maillog:
        parts.append(maillog)
    parts.append(state.render())
    parts.append(generate_latest(_RUNTIME_REGISTRY))
    return parts


def render_probe_rows(rows: Sequence[tuple[bytes, ...]], more: Sequence[bytes] = ()) -> bytes:
    """A `/probe?domain=` page: every address session's row, then the domain's own families."""
    return b"".join(_family_chunks(rows) + list(more))


def render_probe(row: tuple[bytes, ...]) -> bytes:
    """The `/probe` page: one target's row (what ResultStore.record_on_demand returns: the
    result with the counters of every /probe of the same target and module, as daemon mode
    counts)."""
    return b"".join(_family_chunks([row]))
