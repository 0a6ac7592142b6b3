"""Plain values that flow from the probe engine to the store and the exposition.

Everything here is frozen: a result, once made, is never changed, so it can be handed between
threads without locks. The store of latest results and counters is smtpmon/exposition/store.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The stages of a session, in the order they run. A probe walks a prefix of this list (some
# stages are skipped by the module's options); the metrics and the docs use the same names.
STAGES: tuple[str, ...] = (
    "resolve",
    "connect",
    "tls",  # implicit TLS (port 465): the handshake before the banner; STARTTLS is `starttls`
    "banner",
    "ehlo",
    "starttls",
    "ehlo_tls",
    "auth",
    "mail",
    "rcpt",
    "data",
    "quit",
)

# Why a probe failed: a fixed vocabulary, so it can be a label value.
FAILURE_REASONS: tuple[str, ...] = (
    "dns_failure",
    "connect_refused",
    "connect_timeout",
    "timeout",
    "banner_rejected",
    "ehlo_rejected",
    "starttls_not_offered",
    "starttls_rejected",
    "tls_handshake_failed",
    "certificate_expired",
    "certificate_untrusted",
    "certificate_hostname_mismatch",
    "auth_not_offered",
    "auth_password_unavailable",
    "auth_failed",
    "mail_rejected",
    "rcpt_rejected",
    "data_rejected",
    "unexpected_code",
    "protocol_error",
    "connection_closed",
    "internal_error",
)


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply, possibly multi-line, as the server framed it.

    `code` is None when the reply could not be parsed at all; `error` then says why, and the
    reply counts as a protocol error. `lines` hold the text after the code and separator.
    """

    code: int | None
    lines: tuple[str, ...] = ()
    enhanced: str | None = None  # "5.1.1" when the first line starts with an enhanced code
    bare_lf: bool = False  # a line ended in LF without CR (tolerated, but flagged)
    error: str | None = None  # protocol problem found while parsing, if any

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@dataclass(frozen=True, slots=True)
class StageResult:
    """A stage of the session: how long it took and every reply it got.

    Most stages get one reply; `data` gets two (354 to DATA, then the end-of-message reply),
    `rcpt` one per recipient, `auth` one per challenge round.
    """

    stage: str
    duration_seconds: float
    ok: bool
    replies: tuple[Reply, ...] = ()
    reason: str | None = None  # one of FAILURE_REASONS when not ok

    @property
    def reply(self) -> Reply | None:
        """The last reply of the stage: the one that decided it."""
        return self.replies[-1] if self.replies else None


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What an EHLO reply advertised. `extensions` holds upper-case keywords."""

    extensions: frozenset[str] = frozenset()
    size_limit: int | None = None  # SIZE parameter in bytes; None when absent or unlimited
    auth_mechanisms: tuple[str, ...] = ()
    used_helo: bool = False  # EHLO was refused and HELO was used instead


@dataclass(frozen=True, slots=True)
class TlsInfo:
    """What the TLS handshake and the server's certificate showed.

    Filled in also when verification failed or was switched off: the certificate is parsed
    from its DER form.
    """

    version: str | None = None  # "TLSv1.3"
    cipher: str | None = None  # "TLS_AES_256_GCM_SHA384"
    subject: str | None = None  # RFC 4514 string
    issuer: str | None = None
    sans: tuple[str, ...] = ()
    not_before: float | None = None  # Unix time
    not_after: float | None = None
    verified: bool = False
    verify_error: str | None = None  # OpenSSL's words when verification failed
    # Why verification failed, when it did: certificate_untrusted, certificate_expired or
    # certificate_hostname_mismatch (a label value, so from that fixed list).
    verify_reason: str | None = None
    # The certificates the server presented, leaf first (DER), only for a session asked for
    # them (run_probe's want_chain: DANE needs more than the leaf); () otherwise.
    chain: tuple[bytes, ...] = field(default=(), repr=False)


@dataclass(frozen=True, slots=True)
class TranscriptLine:
    """A line of the session as a person at a telnet prompt would have seen it.

    direction: "C" sent by smtpmon, "S" received from the server, "*" a note (connected,
    TLS established, timeout...). Secrets are masked before a line is made.
    """

    offset_seconds: float  # since the probe started
    direction: str
    text: str


@dataclass(frozen=True, slots=True)
class ProbeResult:
    target: str  # "host:port" as configured
    module: str
    success: bool
    started_at: float  # Unix time
    duration_seconds: float
    stages: tuple[StageResult, ...] = ()
    failed_stage: str | None = None
    reason: str | None = None  # one of FAILURE_REASONS when not success
    detail: str | None = None  # human words on the failure: for logs and the transcript only
    address: str | None = None  # the IP address the session used (of those the host has)
    address_family: str | None = None  # "ipv4" or "ipv6", with `address`
    ehlo: Capabilities | None = None  # before TLS (or the only EHLO, for implicit TLS)
    ehlo_tls: Capabilities | None = None  # after STARTTLS
    tls: TlsInfo | None = None
    transcript: tuple[TranscriptLine, ...] = field(default=(), repr=False)

    def stage(self, name: str) -> StageResult | None:
        for stage in self.stages:
            if stage.stage == name:
                return stage
        return None
