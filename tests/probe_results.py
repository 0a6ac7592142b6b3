"""Probe results as the probe engine makes them, for the store and exposition tests.

Replies are parsed from the bytes a server would send (`replycodes.parse_reply`), so they
carry the same codes, enhanced codes and protocol errors a real session produces.
"""

from __future__ import annotations

import dataclasses

from smtpmon.smtp.replycodes import parse_reply
from smtpmon.smtp.results import Capabilities, ProbeResult, StageResult, TlsInfo

STARTED_AT = 1_700_000_000.0
NOT_BEFORE = 1_690_000_000.0
NOT_AFTER = 1_710_000_000.0
EXTENSIONS = frozenset({"PIPELINING", "SIZE", "STARTTLS", "ENHANCEDSTATUSCODES", "8BITMIME",
                        "X-VENDOR-MAGIC"})


def stage(name: str, *wire: bytes, reason: str | None = None, seconds: float = 0.001):
    return StageResult(name, seconds, reason is None, tuple(parse_reply(raw) for raw in wire),
                       reason)


def _session_start() -> tuple[StageResult, ...]:
    return (
        stage("resolve"),
        stage("connect", seconds=0.002),
        stage("banner", b"220 mx.example.org ESMTP\r\n", seconds=0.003),
        stage("ehlo", b"250-mx.example.org\r\n250-SIZE 10240000\r\n250 STARTTLS\r\n"),
        stage("starttls", b"220 2.0.0 Ready to start TLS\r\n", seconds=0.01),
        stage("ehlo_tls", b"250-mx.example.org\r\n250 AUTH PLAIN\r\n"),
    )


def _result(target, module, stages, *, reason=None, failed_stage=None, tls=True):
    return ProbeResult(
        target=target,
        module=module,
        success=reason is None,
        started_at=STARTED_AT,
        duration_seconds=sum(s.duration_seconds for s in stages),
        stages=stages,
        failed_stage=failed_stage,
        reason=reason,
        address="192.0.2.25",
        address_family="ipv4",
        ehlo=Capabilities(EXTENSIONS, size_limit=10240000) if tls else None,
        ehlo_tls=Capabilities(frozenset({"AUTH", "SIZE"}), size_limit=20480000) if tls else None,
        tls=TlsInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", not_before=NOT_BEFORE,
                    not_after=NOT_AFTER, verified=True) if tls else None,
    )


def healthy(target: str = "mx.example.org:25", module: str = "mx") -> ProbeResult:
    """Banner, EHLO, STARTTLS, EHLO again, QUIT: all good."""
    stages = _session_start() + (stage("quit", b"221 2.0.0 Bye\r\n"),)
    return _result(target, module, stages)


def opportunistic_unverified(target: str = "selfsigned.example.org:25", module: str = "mx") -> ProbeResult:
    """tls: opportunistic over a self-signed certificate: the session goes on and passes."""
    result = healthy(target, module)
    tls = dataclasses.replace(result.tls, verified=False, verify_reason="certificate_untrusted",
                              verify_error="self-signed certificate")
    return dataclasses.replace(result, tls=tls)


def banner_421(target: str = "busy.example.org:25", module: str = "mx") -> ProbeResult:
    stages = (
        stage("resolve"),
        stage("connect"),
        stage("banner", b"421 4.3.2 Service not available, try later\r\n",
              reason="banner_rejected"),
    )
    return _result(target, module, stages, reason="banner_rejected", failed_stage="banner",
                   tls=False)


def rcpt_450(target: str = "grey.example.org:25", module: str = "mx") -> ProbeResult:
    stages = _session_start() + (
        stage("mail", b"250 2.1.0 Ok\r\n"),
        stage("rcpt", b"450 4.2.0 <a@example.org>: Recipient address rejected: Greylisted\r\n",
              reason="rcpt_rejected"),
    )
    return _result(target, module, stages, reason="rcpt_rejected", failed_stage="rcpt")


def data_554(target: str = "spam.example.org:25", module: str = "mx") -> ProbeResult:
    """DATA gets two replies: 354 to the command, then 554 to the message."""
    stages = _session_start() + (
        stage("mail", b"250 2.1.0 Ok\r\n"),
        stage("rcpt", b"250 2.1.5 Ok\r\n"),
        stage("data", b"354 End data with <CR><LF>.<CR><LF>\r\n",
              b"554 5.7.1 Message rejected as spam\r\n", reason="data_rejected"),
    )
    return _result(target, module, stages, reason="data_rejected", failed_stage="data")


def protocol_error(target: str = "broken.example.org:25", module: str = "mx") -> ProbeResult:
    """The server answered the greeting with something that is not an SMTP reply."""
    stages = (
        stage("resolve"),
        stage("connect"),
        stage("banner", b"HTTP/1.1 400 Bad Request\r\n", reason="protocol_error"),
    )
    return _result(target, module, stages, reason="protocol_error", failed_stage="banner",
                   tls=False)
