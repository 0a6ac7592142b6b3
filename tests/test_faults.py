"""The fault matrix: hostile and broken SMTP servers on loopback, one row per misbehaviour.

Each row names the stage that must fail, the reason, and how the probe must end: at once
(a 4xx/5xx, a broken reply, a closed or reset connection: well under the timeout) or at the
timeout (a silent or trickling server: at the deadline, within 10%, never later). The same
servers then go to a running daemon next to healthy ones, which must not notice.

(tests/test_probe.py has the engine's basic cases; this file is the catalogue of misbehaviour.)
"""

from __future__ import annotations

import socket
import ssl
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import trustme
from daemon_process import start_daemon
from helpers import run_probe_at, sample_value
from probe_engines import ENGINES
from smtpservers import (
    BANNER,
    EHLO_OK,
    LOOPBACK,
    QUIT_OK,
    SERVER_NAME,
    Close,
    Expect,
    Receive,
    Repeat,
    Reset,
    Send,
    Sleep,
    StartTls,
    Trickle,
    reply,
)

from smtpmon.smtp.client import MAX_LINE_BYTES, MAX_REPLY_LINES
from smtpmon.smtp.module import Module
from smtpmon.smtp.results import FAILURE_REASONS

TIMEOUT = 1.0
FAST = 0.5 * TIMEOUT  # "at once": a failure that must not wait for the deadline
LATE = 1.1 * TIMEOUT  # a silent server ends the probe at the deadline, within 10%
PASSWORD_ENV = "SMTPMON_FAULTS_PASSWORD"
CA_FILE = object()  # in a row's options: the test CA's file, filled in at run time

# The script building blocks of a session that goes further than EHLO.
EHLO_STARTTLS = reply(r"EHLO ", b"250-mx.test.example\r\n250 STARTTLS\r\n")
EHLO_AUTH = reply(r"EHLO ", b"250-mx.test.example\r\n250 AUTH PLAIN LOGIN\r\n")
STARTTLS_GO = reply(r"STARTTLS", b"220 2.0.0 Ready to start TLS\r\n")
MAIL_OK = reply(r"MAIL FROM:", b"250 2.1.0 Ok\r\n")
RCPT_OK = reply(r"RCPT TO:", b"250 2.1.5 Ok\r\n")
DATA_GO = reply(r"DATA", b"354 End data with <CR><LF>.<CR><LF>\r\n")
SERVICE_CLOSING = b"421 4.3.2 mx.test.example Service not available, closing channel\r\n"
# A TLS record header announcing a 64-byte handshake message, and only 11 bytes of it.
TRUNCATED_SERVER_HELLO = b"\x16\x03\x03\x00\x40\x02\x00\x00\x3c\x03\x03" + b"\x00" * 6

SEND_MAIL = dict(mail_from="probe@test.example", rcpt_to=("user@test.example",))
SEND_DATA = dict(SEND_MAIL, data=True)
STARTTLS_VERIFIED = dict(tls="starttls", tls_ca_file=CA_FILE)
AUTH_PLAIN = dict(tls="none", auth_mechanism="PLAIN", auth_username="probe", auth_password_env=PASSWORD_ENV)

# Allocations while probing servers that send without end must stay under this.
MEMORY_LIMIT_BYTES = 1_000_000
ONE_MEGABYTE_LINE = b"220 " + b"a" * 1_048_576 + b"\r\n"


@dataclass
class Kit:
    """What a row may need to build its server: test certificates and a place for servers."""

    tls_contexts: dict
    ca: trustme.CA
    ca_file: str
    smtp_server: Callable
    scripted_server: Callable

    def implicit_tls(self, script: list) -> str:
        return self.scripted_server(script, implicit_tls_context=self.tls_contexts["trusted"]).target

    def refused_port(self) -> str:
        with socket.socket() as placeholder:
            placeholder.bind((LOOPBACK, 0))
            return f"{LOOPBACK}:{placeholder.getsockname()[1]}"

    def chain_without_intermediate(self) -> str:
        """A leaf signed by an intermediate CA that the server never sends: no client can build
        the chain to the root it trusts, however often it tries."""
        leaf = self.ca.create_child_ca().issue_cert(LOOPBACK, SERVER_NAME)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with tempfile.NamedTemporaryFile(suffix=".pem") as pem:
            pem.write(leaf.private_key_pem.bytes() + leaf.cert_chain_pems[0].bytes())
            pem.flush()
            context.load_cert_chain(pem.name)
        return self.smtp_server(starttls_context=context).target


@dataclass(frozen=True)
class Fault:
    id: str
    server: list | Callable[[Kit], str]  # a ScriptedServer script, or kit -> target
    stage: str
    reason: str
    ends: str  # "fast" or "timeout"
    options: dict = field(default_factory=dict)
    code: int | None = None  # the reply code the failed stage must show
    words: str | None = None  # in the failure detail (lower case)
    shows: str | None = None  # a line of the transcript (what the server sent, made printable)


def fast(id, server, stage, reason, **kwargs) -> Fault:
    return Fault(id, server, stage, reason, "fast", **kwargs)


def silent(id, server, stage, **kwargs) -> Fault:
    return Fault(id, server, stage, "timeout", "timeout", **kwargs)


def rejected_with_421(stage: str, script: list, reason: str, **options) -> Fault:
    return fast(f"421 at {stage}", script + [Send(SERVICE_CLOSING), QUIT_OK], stage, reason,
                options=options, code=421)


FAULTS = [
    # -- silence and trickles: the deadline, not the server, ends the probe ---------------------
    silent("tarpit before the banner", [Sleep(30)], "banner"),
    silent("tarpit mid-reply in the banner", [Send(b"220-mx.test.example ESMTP\r\n"), Sleep(30)], "banner"),
    silent("tarpit mid-reply in EHLO", [BANNER, Expect(r"EHLO "), Send(b"250-mx.test.example\r\n250-PIPELI"), Sleep(30)],
           "ehlo", shows="250-PIPELI (incomplete)"),
    # What arrived is shown even when the deadline passes between two bytes, not during a read.
    silent("slowloris banner, a byte every 0.1 s", [Trickle(b"220 " + b"x" * 200 + b"\r\n", 0.1)], "banner",
           shows="(incomplete)"),
    silent("slowloris continuation lines, each complete",
           [Trickle(b"220-please wait\r\n" * 200, 0.01)], "banner"),
    silent("TLS server on a plain port", lambda kit: kit.implicit_tls([BANNER, EHLO_OK, QUIT_OK]), "banner",
           options=dict(tls="opportunistic")),
    silent("STARTTLS answered 220, then no handshake", [BANNER, EHLO_STARTTLS, STARTTLS_GO, Sleep(30)], "starttls",
           options=STARTTLS_VERIFIED),
    silent("silence after the message", [BANNER, EHLO_OK, MAIL_OK, RCPT_OK, DATA_GO, Sleep(30)], "data",
           options=SEND_DATA),
    # -- broken replies: a protocol error at once, memory bounded ---------------------------------
    fast("a reply line of 1 MB", [Send(ONE_MEGABYTE_LINE)], "banner", "protocol_error",
         words=f"longer than {MAX_LINE_BYTES} bytes"),
    fast("endless continuation lines", [BANNER, Expect(r"EHLO "), Repeat(b"250-PIPELINING\r\n")], "ehlo",
         "protocol_error", words=f"longer than {MAX_REPLY_LINES} lines"),
    fast("lines that disagree on the code", [Send(b"220-mx.test.example ESMTP\r\n554 5.7.1 go away\r\n")],
         "banner", "protocol_error", words="disagree"),
    fast("non-UTF-8 bytes in the reply text", [Send(b"554 5.7.1 \xff\xfe\xc0 blocked\r\n"), QUIT_OK], "banner",
         "banner_rejected", code=554),
    fast("non-UTF-8 bytes instead of a code", [BANNER, Expect(r"EHLO "), Send(b"\xff\xfe\xfd\xfc\r\n")], "ehlo",
         "protocol_error", words="three-digit code"),
    fast("a NUL byte in the banner", [Send(b"220 mx.test.example\x00ESMTP\r\n")], "banner", "protocol_error",
         words="nul byte"),
    fast("a code outside 100-599", [Send(b"600 mx.test.example ESMTP\r\n")], "banner", "protocol_error",
         words="outside 100-599"),
    # -- connections that end badly ---------------------------------------------------------------
    fast("accepts and closes at once", [Close()], "banner", "connection_closed", words="closed the connection"),
    fast("connection reset before the banner", [Reset()], "banner", "connection_closed", words="reset"),
    fast("connection reset after EHLO", [BANNER, Expect(r"EHLO "), Reset()], "ehlo", "connection_closed",
         words="reset"),
    fast("closed in the middle of the TLS handshake",
         [BANNER, EHLO_STARTTLS, STARTTLS_GO, Receive(), Send(TRUNCATED_SERVER_HELLO), Close()], "starttls",
         "tls_handshake_failed", options=STARTTLS_VERIFIED),
    fast("closed in the middle of an implicit TLS handshake", [Receive(), Close()], "tls",
         "tls_handshake_failed", options=dict(tls="implicit", tls_ca_file=CA_FILE)),
    fast("plain SMTP on a TLS port", [BANNER, Sleep(30)], "tls", "tls_handshake_failed",
         options=dict(tls="implicit", tls_ca_file=CA_FILE)),
    fast("STARTTLS answered 220, then plaintext",
         [BANNER, EHLO_STARTTLS, STARTTLS_GO, Receive(), Send(b"250 2.0.0 plaintext, not TLS\r\n"), Sleep(30)],
         "starttls", "tls_handshake_failed", options=STARTTLS_VERIFIED),
    fast("a certificate chain that never verifies", Kit.chain_without_intermediate, "starttls",
         "certificate_untrusted", options=STARTTLS_VERIFIED, words="unable to get local issuer certificate"),
    fast("refused connection", Kit.refused_port, "connect", "connect_refused", words="refused"),
    # getaddrinfo would ask the machine's resolver (off loopback) about "x.invalid"; a label of 64
    # characters cannot be a DNS name, so the lookup fails before any query can be sent.
    fast("an address that does not resolve", lambda kit: "x" * 64 + ".invalid:25", "resolve", "dns_failure",
         words="cannot resolve"),
    # -- answers before the client speaks (no PIPELINING was negotiated, none was used) ----------
    fast("the EHLO reply before EHLO", [Send(b"220 mx.test.example ESMTP\r\n250 mx.test.example\r\n"), EHLO_OK],
         "ehlo", "protocol_error", words="pipelining violation"),
    fast("two replies to one command",
         [BANNER, reply(r"EHLO ", b"250 mx.test.example\r\n250 2.1.0 Ok\r\n"), MAIL_OK, RCPT_OK, QUIT_OK],
         "mail", "protocol_error", options=SEND_MAIL, words="pipelining violation"),
    # -- 421 at every stage: ends the probe at once -------------------------------------------------
    rejected_with_421("banner", [], "banner_rejected"),
    rejected_with_421("ehlo", [BANNER, Expect(r"EHLO ")], "ehlo_rejected"),
    rejected_with_421("starttls", [BANNER, EHLO_STARTTLS, Expect(r"STARTTLS")], "starttls_rejected",
                      **STARTTLS_VERIFIED),
    fast("421 at ehlo_tls", lambda kit: kit.scripted_server([
        BANNER, EHLO_STARTTLS, STARTTLS_GO, StartTls(kit.tls_contexts["trusted"]),
        Expect(r"EHLO "), Send(SERVICE_CLOSING), QUIT_OK]).target,
         "ehlo_tls", "ehlo_rejected", options=STARTTLS_VERIFIED, code=421),
    rejected_with_421("auth", [BANNER, EHLO_AUTH, Expect(r"AUTH PLAIN ")], "auth_failed", **AUTH_PLAIN),
    rejected_with_421("mail", [BANNER, EHLO_OK, Expect(r"MAIL FROM:")], "mail_rejected", **SEND_MAIL),
    rejected_with_421("rcpt", [BANNER, EHLO_OK, MAIL_OK, Expect(r"RCPT TO:")], "rcpt_rejected", **SEND_MAIL),
    rejected_with_421("data", [BANNER, EHLO_OK, MAIL_OK, RCPT_OK, Expect(r"DATA")], "data_rejected", **SEND_DATA),
]


def test_the_matrix_has_at_least_20_misbehaviours():
    assert len(FAULTS) >= 20
    assert len({fault.id for fault in FAULTS}) == len(FAULTS)
    assert {fault.reason for fault in FAULTS} <= set(FAILURE_REASONS)


@pytest.fixture
def kit(tls_contexts, ca, ca_file, smtp_server, scripted_server, monkeypatch) -> Kit:
    monkeypatch.setenv(PASSWORD_ENV, "not-a-real-password")
    return Kit(tls_contexts, ca, ca_file, smtp_server, scripted_server)


def serve(fault: Fault, kit: Kit) -> str:
    if isinstance(fault.server, list):
        return kit.scripted_server(fault.server).target
    return fault.server(kit)


def module_for(fault: Fault, kit: Kit) -> Module:
    options = {name: kit.ca_file if setting is CA_FILE else setting for name, setting in fault.options.items()}
    options.setdefault("tls", "none")
    return Module(timeout_seconds=TIMEOUT, **options)


@pytest.mark.parametrize("engine", sorted(ENGINES))
@pytest.mark.parametrize("fault", FAULTS, ids=[fault.id for fault in FAULTS])
def test_misbehaviour_fails_the_right_stage_for_the_right_reason_in_time(fault, engine, kit):
    target = serve(fault, kit)
    module = module_for(fault, kit)
    begun = time.monotonic()
    result = ENGINES[engine](target, module)
    elapsed = time.monotonic() - begun

    assert not result.success
    assert (result.failed_stage, result.reason) == (fault.stage, fault.reason), result.detail
    failed = result.stage(fault.stage)
    assert failed is not None and not failed.ok and failed.reason == fault.reason
    if fault.code is not None:
        assert failed.reply.code == fault.code
    if fault.words is not None:
        assert fault.words in result.detail.lower()
    if fault.shows is not None:
        assert any(line.text.endswith(fault.shows) for line in result.transcript if line.direction == "S")
    if fault.ends == "timeout":
        assert TIMEOUT <= elapsed < LATE and TIMEOUT <= result.duration_seconds < LATE
    else:
        assert elapsed < FAST and result.duration_seconds < FAST
    # Whatever the server sent, what reaches a log or a terminal is printable and small.
    shown = [line.text for line in result.transcript] + [result.detail]
    assert all(char.isprintable() for text in shown for char in text.replace("\t", " "))
    assert sum(len(text) for text in shown) < 64_000


def test_pipelined_answers_are_never_taken_for_the_next_command(scripted_server):
    """A reply sent ahead of its command is shown as unsolicited; nothing more is sent."""
    server = scripted_server([Send(b"220 mx.test.example ESMTP\r\n250 mx.test.example\r\n"), EHLO_OK])
    result = run_probe_at(server.target, Module(tls="none", timeout_seconds=TIMEOUT))

    assert result.stage("banner").ok and result.stage("banner").reply.code == 220
    assert result.stage("ehlo").replies == ()  # the early 250 is not recorded as EHLO's answer
    assert ("S", "250 mx.test.example\\x0d\\x0a (unsolicited)") in [(line.direction, line.text) for line in result.transcript]
    assert server.received == []  # no EHLO into a stream that is out of step, and no QUIT


# -- memory -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "script",
    [
        pytest.param([Send(ONE_MEGABYTE_LINE)], id="1 MB line"),
        pytest.param([Send(b"220 " + b"b" * 8_000_000)], id="8 MB without a line end"),
        pytest.param([BANNER, Expect(r"EHLO "), Repeat(b"250-PIPELINING\r\n")], id="endless continuation"),
        pytest.param([BANNER, Expect(r"EHLO "), Repeat(b"250-" + b"c" * (MAX_LINE_BYTES - 10) + b"\r\n")],
                     id="endless long continuation lines"),
    ],
)
def test_memory_stays_bounded_however_much_the_server_sends(scripted_server, script):
    server = scripted_server(script)
    tracemalloc.start()
    try:
        result = run_probe_at(server.target, Module(tls="none", timeout_seconds=TIMEOUT))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert result.reason == "protocol_error", result.detail
    assert peak < MEMORY_LIMIT_BYTES, f"{peak} bytes allocated at the peak"


# -- the daemon carries on --------------------------------------------------------------------------
HOSTILE = {
    # name: (script, module, reason the daemon must export)
    "tarpit": ([Sleep(30)], "plain", "timeout"),
    "slowloris": ([Trickle(b"220 " + b"x" * 200 + b"\r\n", 0.1)], "plain", "timeout"),
    "megabyte_line": ([Send(ONE_MEGABYTE_LINE)], "plain", "protocol_error"),
    "endless_continuation": ([BANNER, Expect(r"EHLO "), Repeat(b"250-PIPELINING\r\n")], "plain", "protocol_error"),
    "reset": ([BANNER, Expect(r"EHLO "), Reset()], "plain", "connection_closed"),
    "plain_on_tls_port": ([BANNER, Sleep(30)], "smtps", "tls_handshake_failed"),
}


def test_daemon_with_hostile_targets_keeps_probing_the_healthy_ones_and_serving_metrics(
        tmp_path, smtp_server, scripted_server, tls_contexts):
    hostile = {name: scripted_server(script).target for name, (script, _, _) in HOSTILE.items()}
    tls_on_plain = scripted_server([BANNER, EHLO_OK, QUIT_OK], implicit_tls_context=tls_contexts["trusted"]).target
    healthy = [smtp_server().target, smtp_server().target]
    targets = [(target, HOSTILE[name][1]) for name, target in hostile.items()]
    targets += [(tls_on_plain, "plain")] + [(target, "plain") for target in healthy]
    config = "\n".join([
        "global: {interval: 1s, timeout: 800ms}",
        "modules:",
        "  plain: {tls: opportunistic}",
        "  smtps: {tls: implicit, tls_verify: false}",
        "targets:",
        *[f'  - {{address: "{target}", module: {module}}}' for target, module in targets],
    ]) + "\n"
    running = start_daemon(tmp_path, config)
    try:
        latencies = []
        samples = []
        stop_at = time.monotonic() + 4.5
        while time.monotonic() < stop_at:
            begun = time.monotonic()
            samples.append(running.metrics(timeout=5.0))
            latencies.append(time.monotonic() - begun)
            time.sleep(0.1)
        text = samples[-1]
    finally:
        running.stop()

    assert max(latencies) < 1.0, f"/metrics took up to {max(latencies):.3f} s"
    earlier = samples[len(samples) // 2]
    for target in healthy:
        assert sample_value(text, "smtpmon_probe_success", target=target) == 1
        assert sample_value(text, "smtpmon_probes_total", target=target) >= 3
        assert sample_value(text, "smtpmon_probes_total", target=target) > sample_value(earlier, "smtpmon_probes_total", target=target)
    expected = {hostile[name]: reason for name, (_, _, reason) in HOSTILE.items()}
    expected[tls_on_plain] = "timeout"
    for target, reason in expected.items():
        assert sample_value(text, "smtpmon_probe_success", target=target) == 0, target
        assert sample_value(text, "smtpmon_probe_failure_info", target=target, reason=reason) == 1, (target, reason)
        assert sample_value(text, "smtpmon_probe_failures_total", target=target, reason=reason) >= 1, (target, reason)
