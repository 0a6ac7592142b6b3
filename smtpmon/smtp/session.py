"""The probe engine: `run_probe(target, host, port, module) -> ProbeResult`.

Walks the stages a module asks for (smtpmon.smtp.results.STAGES), times each one and keeps every
reply. It never raises: a failure is a result naming the stage and a reason from
results.FAILURE_REASONS. Sockets and TLS live in smtpmon.smtp.client; this module decides what
to send and what a reply means for the session.

Rules worth knowing:
- A stage passes on the codes `module.expect[stage]` names, otherwise only on the codes that
  mean it succeeded (RFC 5321 4.3.2, RFC 3207, RFC 4954: SUCCESS_CODES, with 334 and 354 as the
  intermediate replies of AUTH and DATA). Any other reply fails it: 4xx/5xx as a rejection,
  anything else (a 221 that closes the session, a stray 2xx or 3xx) as `unexpected_code`. A
  stage that passed on an expected 4xx/5xx (say RCPT expecting 550) ends the session there:
  only QUIT follows.
- A rejection ends the session at once with QUIT; the QUIT stage is recorded but never
  changes the verdict. After a transport failure (timeout, closed connection, protocol error,
  TLS failure) nothing more is sent.
- Implicit TLS (port 465) records its handshake as the `tls` stage, right after connect; a
  STARTTLS command and its handshake are the `starttls` stage.
"""

from __future__ import annotations

import base64
import dataclasses
import email.utils
import functools
import socket
import ssl
import time
from collections.abc import Callable

from smtpmon.net.hub import Hub
from smtpmon.smtp.chain import PkixUnjudged, known_pkix_problem, pkix_problem
from smtpmon.smtp.client import (
    LOOKUPS,
    CertificateError,
    SessionError,
    SmtpConnection,
    Transcript,
    fetch_unverified_tls_info,
    make_tls_context,
    open_unverified_tls,
    prepare_tls,
    printable,
    resolve,
)
from smtpmon.smtp.module import Module, PasswordUnavailable
from smtpmon.smtp.results import Capabilities, ProbeResult, Reply, StageResult, TlsInfo

SMTP_PORT = 25
SUBMISSIONS_PORT = 465  # implicit TLS (RFC 8314)
# QUIT is a courtesy: a server that never answers it must not hold the result back. After a
# rejection the verdict is already known, so the courtesy gets only a moment.
QUIT_WAIT_SECONDS = 2.0
QUIT_AFTER_FAILURE_WAIT_SECONDS = 0.25
# EHLO replies up to this size (real ones are a few hundred bytes) share parsed Capabilities.
CACHED_EHLO_BYTES = 2048
CACHED_EHLO_REPLIES = 4096
_FAMILIES = {"any": socket.AF_UNSPEC, "ip4": socket.AF_INET, "ip6": socket.AF_INET6}
_FAMILY_NAMES = {socket.AF_INET: "ipv4", socket.AF_INET6: "ipv6"}
# The replies that mean a stage succeeded (RFC 5321 4.3.2; STARTTLS: RFC 3207; AUTH: RFC 4954).
# QUIT's 221 is a courtesy: another reply is recorded on the quit stage, never in the verdict.
SUCCESS_CODES: dict[str, tuple[int, ...]] = {
    "banner": (220,),
    "ehlo": (250,),
    "ehlo_tls": (250,),
    "starttls": (220,),
    "auth": (235,),
    "mail": (250,),
    "rcpt": (250, 251),
    "data": (250,),
    "quit": (221,),
}
# The replies that ask for more within a stage: AUTH's challenges, DATA's go-ahead.
CONTINUE_CODES: dict[str, int] = {"auth": 334, "data": 354}
# Replies after which the server closes the channel (RFC 5321 3.8, 4.2.2): nothing more is sent.
_CLOSING_CODES = (221, 421)
_REJECTION_REASONS = {
    "banner": "banner_rejected",
    "ehlo": "ehlo_rejected",
    "ehlo_tls": "ehlo_rejected",
    "starttls": "starttls_rejected",
    "auth": "auth_failed",
    "mail": "mail_rejected",
    "rcpt": "rcpt_rejected",
    "data": "data_rejected",
}


def module_default_port(module: Module) -> int:
    """The port a target without one gets: 465 for implicit TLS (RFC 8314), else 25."""
    return SUBMISSIONS_PORT if module.tls == "implicit" else SMTP_PORT


def parse_capabilities(reply: Reply, *, used_helo: bool = False) -> Capabilities:
    """What an EHLO reply advertised: its lines after the first, keyword first."""
    lines = reply.lines[1:]
    capabilities = _CAPABILITIES.get((lines, used_helo))
    if capabilities is None:
        capabilities = _capabilities(lines, used_helo)
        if sum(map(len, lines)) <= CACHED_EHLO_BYTES:  # a hostile reply must not fill it
            if len(_CAPABILITIES) >= CACHED_EHLO_REPLIES:
                _CAPABILITIES.pop(next(iter(_CAPABILITIES)), None)  # the oldest makes room
            _CAPABILITIES[(lines, used_helo)] = capabilities
    return capabilities


def _capabilities(lines: tuple[str, ...], used_helo: bool) -> Capabilities:
    extensions: set[str] = set()
    size_limit = None
    mechanisms: list[str] = []
    for line in lines:
        words = line.replace("=", " ", 1).split() if line.upper().startswith("AUTH=") else line.split()
        if not words:
            continue
        keyword = words[0].upper()
        extensions.add(keyword)
        if keyword == "SIZE" and len(words) > 1 and words[1].isdigit() and int(words[1]) > 0:
            size_limit = int(words[1])
        elif keyword == "AUTH":
            mechanisms += [word.upper() for word in words[1:] if word.upper() not in mechanisms]
    return Capabilities(frozenset(extensions), size_limit, tuple(mechanisms), used_helo)


# A server advertises the same extensions on every probe, and many servers the same ones: one
# shared (immutable) Capabilities per distinct reply (after its first line, the server's name)
# instead of a frozenset per probe. At most CACHED_EHLO_REPLIES, oldest out first.
_CAPABILITIES: dict[tuple[tuple[str, ...], bool], Capabilities] = {}


def connect_first(
    connection: SmtpConnection,
    addresses: list[tuple[int, tuple]],
    transcript: Transcript,
    connect_timeout: float,
    deadline: float,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[int, tuple]:
    """Connect to the first of `addresses` that takes the connection, as a sending MTA does
    (RFC 5321 5.1): a refusal, an unreachable route or a connect timeout (`connect_timeout`
    each, `deadline` at the latest) moves on to the next one. Every attempt is noted in the
    transcript. The (family, sockaddr) connected to; SessionError when none took it."""
    failures: list[str] = []
    error: SessionError | None = None
    for number, (family, sockaddr) in enumerate(addresses, 1):
        if number > 1:
            transcript.note(f"trying the next address ({number} of {len(addresses)})")
        transcript.note(f"connecting to {sockaddr[0]} port {sockaddr[1]}")
        try:
            connection.connect(family, sockaddr, clock() + connect_timeout)
        except SessionError as failed:
            error = failed
            failures.append(f"{_shown_address(sockaddr)}: {failed.detail}")
            if clock() >= deadline:
                break  # the session's deadline is gone: no time for another address
            continue
        transcript.note(f"connected to {sockaddr[0]} port {sockaddr[1]}")
        return family, sockaddr
    assert error is not None
    if len(failures) > 1:
        raise SessionError(error.reason, f"no address took the connection: {'; '.join(failures)}")
    raise error


def default_ehlo_name(local_address: str | None) -> str:
    """This host's name when it is a domain, else an address literal ("[192.0.2.1]").

    RFC 5321 wants a fully qualified name or an address literal; a bare "myhost" gets
    rejected by servers that check (reject_non_fqdn_helo_hostname). socket.getfqdn() is not
    used: it can block on reverse DNS well past the probe's deadline.
    """
    name = socket.gethostname()
    if "." in name.strip("."):
        return name
    if local_address is None:
        return "localhost"
    if ":" in local_address:
        return f"[IPv6:{local_address}]"
    return f"[{local_address}]"


def run_probe(
    target: str,
    host: str,
    port: int,
    module: Module,
    *,
    deadline: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    module_name: str = "default",
    hub: Hub | None = None,
    server_name: str | None = None,
    want_chain: bool = False,
) -> ProbeResult:
    """Run one SMTP session against host:port as module says. Never raises.

    `target` is the name the result carries (the address as configured or asked for); `host`
    and `port` are what it was parsed into (smtpmon.config.addresses), taken as they are.
    `server_name` is the name TLS sends (SNI) and checks the certificate against, before the
    module's `tls_server_name` and `host`: a sending MTA connects to an MX host's address and
    checks the MX host's name (smtpmon.domains). With a hub (called from a session the hub
    spawned) it waits by parking on the hub instead of blocking its thread; `clock` must then
    be time.monotonic.

    `want_chain` (a DANE-checked MX address, smtpmon.domains): the TLS handshake is made
    without verification, so that it completes whatever PKIX says, and the result's
    `tls.chain` holds the presented chain; PKIX is then judged from that chain
    (smtp.chain.pkix_problem) into `tls.verified` / `verify_error`. An opportunistic session
    goes on either way (a DANE sender does not care for PKIX; MTA-STS reads the verdict); a
    module that requires TLS and verification fails the starttls stage as usual. Without it
    (every host target), nothing of this is done."""
    session = _Session(target, host, port, module, module_name, deadline, clock, hub, server_name,
                       want_chain)
    try:
        session.run()
    except Exception as error:  # noqa: BLE001 - the engine's promise: a result, not a crash
        session.internal_error(error)
    finally:
        session.close()
    return session.result()


class _StageRecord:
    def __init__(self) -> None:
        self.replies: list[Reply] = []
        self.reason: str | None = None
        self.detail: str | None = None
        self.ended: float | None = None  # when the stage ended, if before its body returned

    def fail(self, reason: str, detail: str) -> None:
        self.reason, self.detail = reason, detail


class _Session:
    def __init__(self, target, host, port, module, module_name, deadline, clock, hub,
                 server_name=None, want_chain=False):
        self.target = target
        self.host = host
        self.server_name = server_name
        self.want_chain = want_chain
        self.port = port
        self.hub = hub
        self.module = module
        self.module_name = module_name
        self.clock = clock
        # Opportunistic TLS is set up once STARTTLS is offered (wants_starttls), so that a
        # daemon whose servers never offer it does not load the parser and CA bundle for nothing.
        self.tls_context = self.prepare_tls() if module.tls in ("starttls", "implicit") else None
        self.started_at = time.time()
        self.start = clock()
        self.deadline = self.start + module.timeout_seconds if deadline is None else deadline
        self.transcript = Transcript(self.start, clock)
        self.connection = SmtpConnection(self.deadline, self.transcript, clock, hub)
        self.stages: list[StageResult] = []
        self.current_stage = "resolve"
        self.failure: tuple[str, str, str] | None = None  # (stage, reason, detail)
        self.connection_usable = False  # True while a QUIT may still be sent
        self.finished_early = False  # a stage passed on an expected rejection
        self.addresses: list[tuple[int, tuple]] = []
        self.address: tuple[int, tuple] | None = None
        self.ehlo_name = module.ehlo_name or ""
        self.ehlo: Capabilities | None = None
        self.ehlo_tls: Capabilities | None = None
        self.tls: TlsInfo | None = None

    # -- the session -----------------------------------------------------------------------
    def run(self) -> None:
        module = self.module
        implicit = module.tls == "implicit"
        sends_mail = module.mail_from is not None
        steps = (
            ("resolve", self.resolve, lambda: True),
            ("connect", self.connect, lambda: True),
            ("tls", self.implicit_tls, lambda: implicit),
            ("banner", self.banner, lambda: True),
            ("ehlo", lambda record: self.greet(record, "ehlo"), lambda: True),
            ("starttls", self.starttls, self.wants_starttls),
            ("ehlo_tls", lambda record: self.greet(record, "ehlo_tls"), lambda: self.tls is not None and not implicit),
            ("auth", self.auth, lambda: module.auth_mechanism is not None),
            ("mail", self.mail, lambda: sends_mail),
            ("rcpt", self.rcpt, lambda: sends_mail and bool(module.rcpt_to)),
            ("data", self.data, lambda: sends_mail and bool(module.rcpt_to) and module.data),
        )
        for name, body, wanted in steps:
            if wanted() and (not self.run_stage(name, body) or self.finished_early):
                break
        if self.connection_usable:
            self.quit()

    def wants_starttls(self) -> bool:
        """starttls: always (not offered fails the stage); opportunistic: only when offered."""
        if self.module.tls == "starttls":
            return True
        offered = self.module.tls == "opportunistic" and self.ehlo is not None and "STARTTLS" in self.ehlo.extensions
        if offered:
            self.tls_context = self.prepare_tls()  # between stages: not in the starttls stage
        return offered

    def prepare_tls(self) -> ssl.SSLContext | None:
        module = self.module
        try:
            return prepare_tls(verify=module.tls_verify, ca_file=module.tls_ca_file,
                               min_version=module.tls_min_version)
        except Exception:  # noqa: BLE001 - outside any stage: the handshake meets it again and says what
            return None

    def run_stage(self, name: str, body: Callable[[_StageRecord], None]) -> bool:
        """Run and record one stage; False when the session must stop."""
        self.current_stage = name
        record = _StageRecord()
        begun = self.clock()
        try:
            body(record)
        except SessionError as error:  # already in the transcript
            record.fail(error.reason, error.detail)
            self.connection_usable = False
        ended = self.clock() if record.ended is None else record.ended
        self.stages.append(
            StageResult(name, ended - begun, record.reason is None, tuple(record.replies), record.reason)
        )
        if record.reason is not None:
            self.failure = (name, record.reason, record.detail or record.reason)
            return False
        return True

    # -- reply checks ----------------------------------------------------------------------
    def final(self, record: _StageRecord, stage: str, reply: Reply, what: str, *, mid_exchange: bool = False) -> bool:
        """Check a reply that completes a step: expected codes, else the stage's success codes.

        mid_exchange: the reply came where a continuation (334, 354) was due, so no success
        code can complete the stage there."""
        record.replies.append(reply)
        if reply.code is None:
            self.connection_usable = False  # the stream is out of step with the protocol
            record.fail("protocol_error", f"{what}: {reply.error}")
            return False
        expected = self.module.expect.get(stage)
        if expected:
            if reply.code in expected:
                self.finished_early = self.finished_early or reply.code >= 400
                return True
        elif reply.code in SUCCESS_CODES[stage] and not mid_exchange:
            return True
        self.reject(record, stage, reply, what, expected)
        return False

    def intermediate(self, record: _StageRecord, stage: str, reply: Reply, what: str) -> bool:
        """Check a reply that asks for more (334, 354): True to go on with the exchange."""
        if reply.code == CONTINUE_CODES[stage]:
            record.replies.append(reply)
            return True
        self.final(record, stage, reply, what, mid_exchange=True)
        return False

    def reject(self, record, stage, reply, what, expected) -> None:
        if reply.code in _CLOSING_CODES:
            self.connection_usable = False  # the server is closing the channel: no QUIT
        reason = _REJECTION_REASONS[stage] if reply.code >= 400 else "unexpected_code"
        wanted = f" (expected {'/'.join(map(str, expected))})" if expected else ""
        first_line = printable(reply.lines[0]) if reply.lines else ""  # detail reaches terminals
        record.fail(reason, f"{what} answered {reply.code} {first_line}".rstrip() + wanted)

    # -- stages ----------------------------------------------------------------------------
    def resolve(self, record: _StageRecord) -> None:
        family = _FAMILIES[self.module.ip_protocol]
        try:
            self.addresses = resolve(self.host, self.port, family, self.deadline - self.clock(), self.hub)
        except SessionError as error:
            self.transcript.note(error.detail)
            raise

    def connect(self, record: _StageRecord) -> None:
        self.address = connect_first(self.connection, self.addresses, self.transcript,
                                     self.module.connect_timeout_seconds, self.deadline, self.clock)
        self.connection_usable = True
        if not self.ehlo_name:
            self.ehlo_name = default_ehlo_name(self.connection.local_address)

    def implicit_tls(self, record: _StageRecord) -> None:
        self.handshake(record)

    def banner(self, record: _StageRecord) -> None:
        try:
            reply = self.connection.read_reply()
        except SessionError as error:
            if error.reason == "timeout" and self.port == SUBMISSIONS_PORT and self.module.tls != "implicit":
                # An SMTPS server says nothing until the client's TLS handshake.
                hint = ("; port 465 is SMTPS (RFC 8314), where the server waits for a TLS handshake "
                        "before its banner: probe it with --tls implicit (tls: implicit)")
                self.transcript.note(hint[2:])
                raise SessionError(error.reason, error.detail + hint) from None
            raise
        self.final(record, "banner", reply, "the banner")

    def greet(self, record: _StageRecord, stage: str) -> None:
        reply = self.connection.command(f"EHLO {self.ehlo_name}")
        used_helo = False
        refused = reply.code is not None and reply.code // 100 == 5
        if refused and self.module.helo_fallback and reply.code not in self.module.expect.get(stage, ()):
            record.replies.append(reply)
            reply = self.connection.command(f"HELO {self.ehlo_name}")
            used_helo = True
        if not self.final(record, stage, reply, "HELO" if used_helo else "EHLO"):
            return
        capabilities = parse_capabilities(reply, used_helo=used_helo) if reply.code // 100 == 2 else None
        if stage == "ehlo":
            self.ehlo = capabilities
        else:
            self.ehlo_tls = capabilities

    def starttls(self, record: _StageRecord) -> None:
        if self.ehlo is None or "STARTTLS" not in self.ehlo.extensions:
            said = ("HELO was used, so no extensions" if self.ehlo and self.ehlo.used_helo
                    else "EHLO did not offer STARTTLS")
            record.fail("starttls_not_offered", f"STARTTLS is required but {said}")
            return
        reply = self.connection.command("STARTTLS")
        if not self.final(record, "starttls", reply, "STARTTLS") or self.finished_early:
            return
        if reply.code != 220:  # RFC 3207: only 220 starts the handshake
            record.fail("unexpected_code", f"STARTTLS answered {reply.code}, not 220")
            return
        self.handshake(record)

    def handshake(self, record: _StageRecord) -> None:
        module = self.module
        server_name = self.server_name or module.tls_server_name or self.host
        if self.want_chain:
            self.handshake_for_chain(server_name)
            return
        context = self.tls_context or make_tls_context(  # the latter says why there is none
            verify=module.tls_verify, ca_file=module.tls_ca_file, min_version=module.tls_min_version
        )
        try:
            self.tls = self.connection.start_tls(context, server_name)
        except CertificateError as error:
            # The stage is the server's handshake: a second connection, made to show the
            # certificate or to go on without verification, counts in the probe's duration
            # but not in this stage's.
            record.ended = self.clock()
            self.connection_usable = False
            self.connection.close()  # before the second connection: a server may allow one
            if module.tls == "opportunistic":
                self.go_on_unverified(error, server_name)
                return
            self.transcript.note("reading the certificate over a second connection, without verification, to report it")
            self.tls = fetch_unverified_tls_info(
                *self.address,
                implicit_tls=module.tls == "implicit",
                ehlo_name=self.ehlo_name,
                server_name=server_name,
                min_version=module.tls_min_version,
                verify_error=error.verify_error,
                verify_reason=error.reason,
                deadline=self.deadline,
                clock=self.clock,
                hub=self.hub,
            ) or TlsInfo(verified=False, verify_error=error.verify_error, verify_reason=error.reason)
            self.note_tls()
            raise
        self.note_tls()

    def go_on_unverified(self, error: CertificateError, server_name: str) -> None:
        """Opportunistic TLS, as sending MTAs do it (RFC 3207, RFC 7435): a certificate that
        does not verify is a fact to report, not a reason to stop. The session goes on over an
        unverified TLS session on a new connection (see open_unverified_tls)."""
        self.transcript.note(
            "opportunistic TLS goes on without verification, as sending MTAs do: "
            f"reconnecting to {self.address[1][0]} port {self.address[1][1]} "
            "(banner, EHLO and STARTTLS again, not shown)")
        try:
            connection, info = open_unverified_tls(
                *self.address,
                implicit_tls=False,
                ehlo_name=self.ehlo_name,
                server_name=server_name,
                min_version=self.module.tls_min_version,
                deadline=self.deadline,
                clock=self.clock,
                hub=self.hub,
            )
        except SessionError as failed:
            self.tls = TlsInfo(verified=False, verify_error=error.verify_error, verify_reason=error.reason)
            self.note_tls()
            detail = f"{error.detail}; going on without verification over a new connection failed: {failed.detail}"
            self.transcript.note(detail)
            raise SessionError(failed.reason, detail) from None
        connection.record_into(self.transcript)
        self.connection = connection
        self.connection_usable = True
        self.tls = dataclasses.replace(info, verified=False, verify_error=error.verify_error,
                                       verify_reason=error.reason)
        self.note_tls()

    def handshake_for_chain(self, server_name: str) -> None:
        """The handshake of a session that must read the presented chain (want_chain)."""
        module = self.module
        context = make_tls_context(verify=False, min_version=module.tls_min_version)
        info = self.connection.start_tls(context, server_name, want_chain=True)
        chain = info.chain
        self.transcript.note(f"presented chain: {len(chain)} certificate(s), read for DANE")
        problem = self.judge_pkix(chain, server_name) if module.tls_verify else None
        if problem is None:
            self.tls = dataclasses.replace(info, chain=chain, verified=module.tls_verify)
        else:
            self.tls = dataclasses.replace(info, chain=chain, verified=False,
                                           verify_error=problem[1], verify_reason=problem[0])
        self.note_tls()
        if problem is not None and module.tls in ("starttls", "implicit"):
            self.connection_usable = False
            raise CertificateError(problem[0], f"certificate verification failed: {problem[1]}",
                                   problem[1])

    def judge_pkix(self, chain: tuple[bytes, ...], server_name: str) -> tuple[str, str] | None:
        """The chain's PKIX verdict: a known one at once (judged within the hour), else
        pkix_problem on the lookup pool: it runs the openssl command, which must not hold the
        hub's thread (every session of the daemon) meanwhile; sessions judging the same chain
        at once share one run."""
        ca_file = self.module.tls_ca_file
        known, problem = known_pkix_problem(chain, server_name, ca_file)
        if known:
            return problem
        judge = functools.partial(pkix_problem, chain, server_name, ca_file)
        until = time.monotonic() + max(0.0, self.deadline - self.clock())
        answered, outcome = LOOKUPS.run(("pkix", chain, server_name, ca_file), judge, until, self.hub)
        if isinstance(outcome, Exception) and not isinstance(outcome, PkixUnjudged):
            raise outcome
        if answered and not isinstance(outcome, PkixUnjudged):
            return outcome  # type: ignore[return-value]
        error = (SessionError("internal_error", f"cannot judge the certificate chain: {outcome}") if answered
                 else SessionError("timeout", "the certificate chain was not judged before the deadline"))
        self.transcript.note(error.detail)  # as the connection notes its own errors
        raise error

    def note_tls(self) -> None:
        tls = self.tls
        if tls.version:
            self.transcript.note(f"TLS {tls.version}, cipher {tls.cipher}")
        if tls.subject is not None:
            self.transcript.note(f"certificate subject: {tls.subject}")
            self.transcript.note(f"certificate issuer: {tls.issuer}")
            self.transcript.note(f"certificate names: {', '.join(tls.sans) or '(none)'}")
            self.transcript.note(f"certificate valid: {_day(tls.not_before)} to {_day(tls.not_after)}")
        if tls.verified:
            self.transcript.note("certificate verified")
        elif tls.verify_error:
            going_on = " (opportunistic TLS: reported, not a failure)" if self.module.tls == "opportunistic" else ""
            self.transcript.note(f"certificate NOT verified: {tls.verify_error}{going_on}")
        else:
            self.transcript.note("certificate not verified (verification is switched off)")

    def auth(self, record: _StageRecord) -> None:
        module = self.module
        mechanism = module.auth_mechanism.upper()
        offered = (self.ehlo_tls or self.ehlo or Capabilities()).auth_mechanisms
        if mechanism not in offered:
            said = f"offers {' '.join(offered)}" if offered else "does not advertise AUTH"
            record.fail("auth_not_offered", f"AUTH {mechanism} wanted but the server {said}")
            return
        try:
            password = module.read_password()
        except PasswordUnavailable as error:
            record.fail("auth_password_unavailable", f"cannot read the AUTH password: {error}")
            return
        if password is None:
            record.fail("internal_error", "AUTH needs a password file or environment variable")
            return
        username = module.auth_username or ""
        blob = _b64(f"\0{username}\0{password}")
        self.connection.hide(blob, _b64(password), password)  # the longest first
        send = self.connection.command
        if mechanism == "PLAIN":
            self.final(record, "auth", send(f"AUTH PLAIN {blob}", "AUTH PLAIN ********"), "AUTH PLAIN")
            return
        if not self.intermediate(record, "auth", send("AUTH LOGIN"), "AUTH LOGIN"):
            return
        if not self.intermediate(record, "auth", send(_b64(username), "********"), "AUTH LOGIN username"):
            return
        self.final(record, "auth", send(_b64(password), "********"), "AUTH LOGIN")

    def mail(self, record: _StageRecord) -> None:
        command = f"MAIL FROM:<{self.module.mail_from}>"
        self.final(record, "mail", self.connection.command(command), command)

    def rcpt(self, record: _StageRecord) -> None:
        for recipient in self.module.rcpt_to:
            command = f"RCPT TO:<{recipient}>"
            if not self.final(record, "rcpt", self.connection.command(command), command):
                return

    def data(self, record: _StageRecord) -> None:
        if not self.intermediate(record, "data", self.connection.command("DATA"), "DATA"):
            return
        lines = self.test_message()
        self.connection.send_message(lines, message_padding(lines, self.module.message_size))
        self.final(record, "data", self.connection.read_reply(), "the end of the message")

    def test_message(self) -> list[str]:
        sender = self.module.mail_from or f"smtpmon@{self.ehlo_name.strip('[]')}"
        domain = sender.rpartition("@")[2] or "smtpmon.invalid"
        return [
            f"Date: {email.utils.formatdate(usegmt=True)}",
            f"From: <{sender}>",
            f"To: {', '.join(f'<{address}>' for address in self.module.rcpt_to)}",
            "Subject: smtpmon probe",
            f"Message-ID: {email.utils.make_msgid('smtpmon', domain=domain)}",
            "Auto-Submitted: auto-generated",
            "",
            "A test message from smtpmon, an SMTP monitor. It can be discarded.",
        ]

    def quit(self) -> None:
        """QUIT politely; whatever happens here, the verdict stays as it was."""
        self.current_stage = "quit"
        begun = self.clock()
        replies: tuple[Reply, ...] = ()
        reason = None
        try:
            self.connection.send_line("QUIT")
            wait = QUIT_WAIT_SECONDS if self.failure is None else QUIT_AFTER_FAILURE_WAIT_SECONDS
            reply = self.connection.read_reply(within=wait)
            replies = (reply,)
            if reply.code is None or reply.code not in (self.module.expect.get("quit") or SUCCESS_CODES["quit"]):
                reason = "protocol_error" if reply.code is None else "unexpected_code"
        except SessionError as error:
            reason = error.reason
        self.stages.append(StageResult("quit", self.clock() - begun, reason is None, replies, reason))

    # -- the result ------------------------------------------------------------------------
    def internal_error(self, error: Exception) -> None:
        detail = f"{type(error).__name__}: {error}"
        self.transcript.note(f"internal error: {detail}")
        if self.failure is None:
            self.failure = (self.current_stage, "internal_error", detail)

    def close(self) -> None:
        self.connection.close()

    def result(self) -> ProbeResult:
        stage, reason, detail = self.failure or (None, None, None)
        return ProbeResult(
            target=self.target,
            module=self.module_name,
            success=self.failure is None,
            started_at=self.started_at,
            duration_seconds=self.clock() - self.start,
            stages=tuple(self.stages),
            failed_stage=stage,
            reason=reason,
            detail=detail,
            address=self.address[1][0] if self.address else None,
            address_family=_FAMILY_NAMES.get(self.address[0]) if self.address else None,
            ehlo=self.ehlo,
            ehlo_tls=self.ehlo_tls,
            tls=self.tls,
            transcript=tuple(self.transcript.lines),
        )


# A padding line: 78 characters and CRLF, the length RFC 5322 2.1.1 recommends.
_PADDING_LINE = b"smtpmon test message padding, to probe the server's message size limit. " + b"x" * 6 + b"\r\n"


def message_padding(lines: list[str], size: int | None) -> bytes:
    """Body lines that bring the message (`lines` as sent, CRLF after each) to `size` bytes
    (one more when a lone CRLF is all that is missing but a byte), or b"" when it is that big
    already or no size is asked. Its last line may be shorter."""
    if not size:
        return b""
    missing = size - sum(len(line.encode("utf-8")) + 2 for line in lines)
    if missing <= 0:
        return b""
    whole, rest = divmod(missing, len(_PADDING_LINE))
    tail = b"x" * max(rest - 2, 0) + b"\r\n" if rest else b""
    return _PADDING_LINE * whole + tail


def _shown_address(sockaddr: tuple) -> str:
    host, port = sockaddr[0], sockaddr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _day(timestamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp)) if timestamp else "?"
