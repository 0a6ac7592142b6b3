"""The probe engine against real SMTP servers on 127.0.0.1: every stage, code and reason.

Rejections must come back well before the timeout (FAST), never by waiting for it.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time

import pytest
from daemon_process import free_port
from helpers import run_probe_at
from probe_engines import ENGINES, call_on_engine
from smtpservers import (
    BANNER,
    EHLO_OK,
    QUIT_OK,
    SERVER_NAME,
    AiosmtpdServer,
    Close,
    FullBacklogListener,
    ScriptedHandler,
    Send,
    Sleep,
    StartTls,
    Trickle,
    on_a_loopback_address_of_its_own,
    password_authenticator,
    reply,
)

from smtpmon.smtp.client import MAX_REPLY_LINES, SessionError, SmtpConnection, Transcript
from smtpmon.smtp.module import Module
from smtpmon.smtp.replycodes import reply_category, reply_class
from smtpmon.smtp.results import FAILURE_REASONS
from smtpmon.smtp.session import connect_first, default_ehlo_name, module_default_port

TIMEOUT = 5.0
FAST = 1.0  # a rejection must end the probe well before TIMEOUT


@pytest.fixture(autouse=True, params=sorted(ENGINES))
def engine(request, monkeypatch):
    """Every case runs blocking on this thread and as a session on a hub, as the daemon runs it."""
    monkeypatch.setitem(globals(), "run_probe_at", ENGINES[request.param])
    return request.param


def probe(target: str, **options):
    options.setdefault("timeout_seconds", TIMEOUT)
    return run_probe_at(target, Module(**options))


def stage_names(result) -> list[str]:
    return [stage.stage for stage in result.stages]


def assert_reply(reply, code, cls, category, enhanced=None):
    assert reply.code == code, reply
    assert reply_class(reply.code) == cls
    assert reply_category(reply.code) == category
    assert reply.enhanced == enhanced


def assert_failed(result, stage, reason, *, code=None, cls=None, category=None, enhanced=None):
    """The probe failed at `stage` for `reason`, on the reply given, and quickly."""
    assert not result.success
    assert (result.failed_stage, result.reason) == (stage, reason), result.detail
    assert reason in FAILURE_REASONS
    assert result.detail
    failed = result.stage(stage)
    assert failed is not None and not failed.ok and failed.reason == reason
    if code is not None:
        assert_reply(failed.reply, code, cls, category, enhanced)
    assert result.duration_seconds < FAST


# -- a normal session ---------------------------------------------------------------------------
def test_normal_session_walks_every_stage_and_delivers_the_test_message(smtp_server):
    server = smtp_server()
    result = probe(server.target, tls="none", mail_from="probe@example.org", rcpt_to=("postmaster@example.org",), data=True)

    assert result.success and result.reason is None and result.failed_stage is None
    assert stage_names(result) == ["resolve", "connect", "banner", "ehlo", "mail", "rcpt", "data", "quit"]
    assert all(stage.ok and stage.duration_seconds >= 0 for stage in result.stages)
    assert result.address == "127.0.0.1"
    assert_reply(result.stage("banner").reply, 220, "positive_completion", "connections")
    assert_reply(result.stage("mail").reply, 250, "positive_completion", "mail_system", "2.1.0")
    assert_reply(result.stage("rcpt").reply, 250, "positive_completion", "mail_system", "2.1.5")
    data_replies = result.stage("data").replies
    assert [reply.code for reply in data_replies] == [354, 250]
    assert_reply(data_replies[0], 354, "positive_intermediate", "mail_system")
    assert_reply(result.stage("quit").reply, 221, "positive_completion", "connections")
    assert result.ehlo.size_limit == 33554432
    assert {"SIZE", "8BITMIME"} <= result.ehlo.extensions and not result.ehlo.used_helo
    (message,) = server.handler.messages
    for header in (b"Date: ", b"From: <probe@example.org>", b"To: <postmaster@example.org>", b"Subject: ", b"Message-ID: <"):
        assert header in message
    texts = [(line.direction, line.text) for line in result.transcript]
    assert ("C", "MAIL FROM:<probe@example.org>") in texts and ("C", "QUIT") in texts
    offsets = [line.offset_seconds for line in result.transcript]
    assert offsets == sorted(offsets)


def test_multi_line_banner_like_postscreen(scripted_server):
    server = scripted_server([
        Send(b"220-mx.test.example ESMTP\r\n220-please wait while we check you\r\n220 mx.test.example ESMTP\r\n"),
        EHLO_OK,
        QUIT_OK,
    ])
    result = probe(server.target, tls="none")

    assert result.success, result.detail
    banner = result.stage("banner").reply
    assert_reply(banner, 220, "positive_completion", "connections")
    assert len(banner.lines) == 3 and banner.lines[1] == "please wait while we check you"
    assert {"PIPELINING", "8BITMIME"} == result.ehlo.extensions


@pytest.mark.parametrize(
    "banner, code, cls, category, enhanced",
    [
        (b"421 4.3.2 mx.test.example Service shutting down\r\n", 421, "transient_negative", "connections", "4.3.2"),
        (b"554 5.7.1 Service unavailable; client [127.0.0.1] blocked using zen.spamhaus.org\r\n", 554, "permanent_negative", "mail_system", "5.7.1"),
    ],
    ids=["421", "554"],
)
def test_rejecting_banner_fails_at_once(scripted_server, banner, code, cls, category, enhanced):
    server = scripted_server([Send(banner), QUIT_OK])
    result = probe(server.target)

    assert_failed(result, "banner", "banner_rejected", code=code, cls=cls, category=category, enhanced=enhanced)
    if code == 421:  # RFC 5321 3.8: 421 closes the channel, so nothing more is sent
        assert server.received == []
        assert stage_names(result) == ["resolve", "connect", "banner"]
    else:  # nothing but a polite QUIT after the rejection
        assert server.received == ["QUIT"]
        assert stage_names(result) == ["resolve", "connect", "banner", "quit"]


def test_421_banner_and_close_still_fails_as_banner_rejected(scripted_server):
    server = scripted_server([Send(b"421 4.7.0 Too many connections\r\n"), Close()])
    result = probe(server.target)

    assert_failed(result, "banner", "banner_rejected", code=421, cls="transient_negative", category="connections", enhanced="4.7.0")
    assert result.stage("quit") is None


def test_a_rejection_does_not_wait_for_an_unanswered_quit(scripted_server):
    server = scripted_server([Send(b"554 5.7.1 go away\r\n"), Sleep(10)])
    started = time.monotonic()
    result = probe(server.target, timeout_seconds=5.0)

    assert_failed(result, "banner", "banner_rejected", code=554, cls="permanent_negative", category="mail_system", enhanced="5.7.1")
    assert time.monotonic() - started < 0.6  # the courtesy QUIT gets a moment, not the timeout
    assert not result.stage("quit").ok
    # ... and says so: the session's deadline is still seconds away.
    assert [line.text for line in result.transcript][-1] == "no complete reply within 0.25 s"


# -- EHLO and HELO ------------------------------------------------------------------------------
def test_ehlo_refused_falls_back_to_helo(smtp_server):
    server = smtp_server(ScriptedHandler(ehlo_reply=["502 5.5.2 Error: command not recognized"]))
    result = probe(server.target)

    assert result.success, result.detail
    ehlo = result.stage("ehlo")
    assert [reply.code for reply in ehlo.replies] == [502, 250]
    assert_reply(ehlo.replies[0], 502, "permanent_negative", "syntax", "5.5.2")
    assert result.ehlo.used_helo and result.ehlo.extensions == frozenset()
    assert "starttls" not in stage_names(result)  # opportunistic: nothing offered after HELO


def test_ehlo_refused_without_helo_fallback_fails(smtp_server):
    server = smtp_server(ScriptedHandler(ehlo_reply=["502 5.5.2 Error: command not recognized"]))
    result = probe(server.target, helo_fallback=False)

    assert_failed(result, "ehlo", "ehlo_rejected", code=502, cls="permanent_negative", category="syntax", enhanced="5.5.2")
    assert len(result.stage("ehlo").replies) == 1


# -- STARTTLS -----------------------------------------------------------------------------------
def test_starttls_required_but_not_offered(smtp_server):
    server = smtp_server()
    result = probe(server.target, tls="starttls")

    assert_failed(result, "starttls", "starttls_not_offered")
    assert result.stage("starttls").replies == ()
    assert result.stage("quit").ok  # QUIT after the failure, on the still-open connection
    assert result.tls is None


def test_opportunistic_tls_not_offered_is_fine(smtp_server):
    result = probe(smtp_server().target, tls="opportunistic")

    assert result.success
    assert "starttls" not in stage_names(result) and result.tls is None and result.ehlo_tls is None


def test_starttls_answered_454(scripted_server):
    server = scripted_server([
        BANNER,
        reply(r"EHLO ", b"250-mx.test.example\r\n250 STARTTLS\r\n"),
        reply(r"STARTTLS", b"454 4.7.0 TLS not available due to local problem\r\n"),
        QUIT_OK,
    ])
    result = probe(server.target, tls="starttls")

    assert_failed(result, "starttls", "starttls_rejected", code=454, cls="transient_negative", category="mail_system", enhanced="4.7.0")
    assert server.received[-1] == "QUIT"


def test_starttls_answered_with_another_2xx_is_not_a_handshake(scripted_server):
    server = scripted_server([
        BANNER,
        reply(r"EHLO ", b"250-mx.test.example\r\n250 STARTTLS\r\n"),
        reply(r"STARTTLS", b"250 2.0.0 whatever\r\n"),
        QUIT_OK,
    ])
    result = probe(server.target, tls="starttls")

    assert_failed(result, "starttls", "unexpected_code", code=250, cls="positive_completion", category="mail_system", enhanced="2.0.0")
    assert result.tls is None and result.stage("ehlo_tls") is None


def test_bytes_after_starttls_reply_are_a_protocol_error(scripted_server):
    """Command injection: a reply smuggled before the handshake must not be read as if over TLS."""
    server = scripted_server([
        BANNER,
        reply(r"EHLO ", b"250-mx.test.example\r\n250 STARTTLS\r\n"),
        reply(r"STARTTLS", b"220 2.0.0 Ready to start TLS\r\n250 injected\r\n"),
    ])
    result = probe(server.target, tls="starttls")

    assert_failed(result, "starttls", "protocol_error")
    assert result.tls is None
    assert ("S", "250 injected\\x0d\\x0a (unsolicited)") in [(line.direction, line.text) for line in result.transcript]


def test_trusted_certificate(smtp_server, tls_contexts, ca_file):
    server = smtp_server(starttls_context=tls_contexts["trusted"])
    result = probe(server.target, tls="starttls", tls_ca_file=ca_file)

    assert result.success, result.detail
    assert stage_names(result) == ["resolve", "connect", "banner", "ehlo", "starttls", "ehlo_tls", "quit"]
    assert_reply(result.stage("starttls").reply, 220, "positive_completion", "connections")
    tls = result.tls
    assert tls.verified and tls.verify_error is None
    assert tls.version in ("TLSv1.2", "TLSv1.3") and tls.cipher
    assert "IP:127.0.0.1" in tls.sans and f"DNS:{SERVER_NAME}" in tls.sans
    assert tls.not_before < time.time() < tls.not_after
    assert "STARTTLS" in result.ehlo.extensions and "STARTTLS" not in result.ehlo_tls.extensions


@pytest.mark.parametrize(
    "kind, server_name, reason, words",
    [
        ("untrusted", None, "certificate_untrusted", "unable to get local issuer"),
        ("self_signed", None, "certificate_untrusted", "self-signed"),
        ("expired", None, "certificate_expired", "expired"),
        ("wrong_host", SERVER_NAME, "certificate_hostname_mismatch", "hostname mismatch"),
        ("wrong_host", None, "certificate_hostname_mismatch", "ip address mismatch"),
    ],
)
def test_bad_certificates_fail_and_are_still_reported(smtp_server, tls_contexts, ca_file, kind, server_name, reason, words):
    server = smtp_server(starttls_context=tls_contexts[kind])
    result = probe(server.target, tls="starttls", tls_ca_file=ca_file, tls_server_name=server_name)

    assert_failed(result, "starttls", reason)
    tls = result.tls
    assert not tls.verified and words in tls.verify_error.lower()
    # the certificate facts, read over a second connection without verification
    assert tls.subject and tls.issuer and tls.not_after is not None and tls.version
    if kind == "expired":
        assert tls.not_after < time.time()
    if kind == "wrong_host":
        assert tls.sans == ("DNS:mx.elsewhere.example",)
    assert any(words in line.text.lower() for line in result.transcript)


class SlowEhlo(ScriptedHandler):
    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        await asyncio.sleep(0.3)
        return await super().handle_EHLO(server, session, envelope, hostname, responses)


def test_the_second_connection_that_reads_a_bad_certificate_is_not_the_handshakes_time(smtp_server, tls_contexts, ca_file):
    server = smtp_server(SlowEhlo(), starttls_context=tls_contexts["untrusted"])
    result = probe(server.target, tls="starttls", tls_ca_file=ca_file)

    assert_failed(result, "starttls", "certificate_untrusted")
    assert result.tls.subject  # read over the second connection, whose EHLO took 0.3 s
    assert result.stage("starttls").duration_seconds < 0.15
    assert result.duration_seconds >= 0.6  # the probe did take both EHLOs' time


@pytest.mark.parametrize("kind", ["untrusted", "self_signed", "expired", "wrong_host"])
def test_without_verification_bad_certificates_pass_and_are_reported(smtp_server, tls_contexts, kind):
    server = smtp_server(starttls_context=tls_contexts[kind])
    result = probe(server.target, tls="starttls", tls_verify=False)

    assert result.success, result.detail
    tls = result.tls
    assert not tls.verified and tls.verify_error is None
    assert tls.subject and tls.issuer and tls.not_before is not None and tls.not_after is not None
    assert result.ehlo_tls is not None


def test_implicit_tls(smtp_server, tls_contexts, ca_file):
    server = smtp_server(implicit_tls_context=tls_contexts["trusted"])
    result = probe(server.target, tls="implicit", tls_ca_file=ca_file)

    assert result.success, result.detail
    assert stage_names(result) == ["resolve", "connect", "tls", "banner", "ehlo", "quit"]
    assert result.tls.verified and result.ehlo_tls is None
    assert "STARTTLS" not in result.ehlo.extensions


def test_implicit_tls_with_expired_certificate(smtp_server, tls_contexts, ca_file):
    server = smtp_server(implicit_tls_context=tls_contexts["expired"])
    result = probe(server.target, tls="implicit", tls_ca_file=ca_file)

    assert_failed(result, "tls", "certificate_expired")
    assert result.tls.not_after < time.time() and result.stage("banner") is None


def test_implicit_tls_against_plain_smtp_fails_the_handshake(smtp_server):
    result = probe(smtp_server().target, tls="implicit")

    assert_failed(result, "tls", "tls_handshake_failed")


def test_implicit_tls_default_port_is_465():
    assert module_default_port(Module(tls="implicit")) == 465
    assert {module_default_port(Module(tls=mode)) for mode in ("none", "starttls", "opportunistic")} == {25}


# -- AUTH ---------------------------------------------------------------------------------------
@pytest.fixture
def auth_server(smtp_server, tls_contexts):
    return smtp_server(starttls_context=tls_contexts["trusted"], authenticator=password_authenticator("probe", "s3cret-pw"))


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_auth_succeeds_and_secrets_stay_out_of_the_transcript(auth_server, ca_file, monkeypatch, mechanism):
    monkeypatch.setenv("SMTPMON_TEST_PASSWORD", "s3cret-pw")
    result = probe(auth_server.target, tls="starttls", tls_ca_file=ca_file, auth_mechanism=mechanism,
                   auth_username="probe", auth_password_env="SMTPMON_TEST_PASSWORD")

    assert result.success, result.detail
    assert_reply(result.stage("auth").reply, 235, "positive_completion", "unspecified", "2.7.0")
    assert result.ehlo_tls.auth_mechanisms == ("LOGIN", "PLAIN") and result.ehlo.auth_mechanisms == ()
    sent = [line.text for line in result.transcript if line.direction == "C"]
    if mechanism == "PLAIN":
        assert "AUTH PLAIN ********" in sent
    else:
        assert sent.count("********") == 2
    everything = repr(result)
    assert "s3cret-pw" not in everything and "czNjcmV0LXB3" not in everything  # nor its base64


def test_auth_535_wrong_password(auth_server, ca_file, tmp_path):
    password_file = tmp_path / "password"
    password_file.write_text("wrong\n")
    result = probe(auth_server.target, tls="starttls", tls_ca_file=ca_file, auth_mechanism="PLAIN",
                   auth_username="probe", auth_password_file=str(password_file))

    assert_failed(result, "auth", "auth_failed", code=535, cls="permanent_negative", category="unspecified", enhanced="5.7.8")


def test_auth_538_encryption_required(smtp_server, tmp_path):
    # AUTH advertised over plain text, but the server wants TLS for it.
    server = smtp_server(ScriptedHandler(ehlo_extra=["AUTH PLAIN LOGIN"]), authenticator=password_authenticator("probe", "pw"))
    password_file = tmp_path / "password"
    password_file.write_text("pw")
    result = probe(server.target, tls="none", auth_mechanism="PLAIN", auth_username="probe", auth_password_file=str(password_file))

    assert_failed(result, "auth", "auth_failed", code=538, cls="permanent_negative", category="unspecified", enhanced="5.7.11")


def test_auth_not_offered(smtp_server, tmp_path):
    password_file = tmp_path / "password"
    password_file.write_text("pw")
    result = probe(smtp_server().target, auth_mechanism="PLAIN", auth_username="probe", auth_password_file=str(password_file))

    assert_failed(result, "auth", "auth_not_offered")


# -- MAIL, RCPT, DATA ---------------------------------------------------------------------------
def test_mail_451(smtp_server):
    server = smtp_server(ScriptedHandler(mail_reply="451 4.3.0 Error: queue file write error"))
    result = probe(server.target, mail_from="probe@example.org", rcpt_to=("a@example.org",))

    assert_failed(result, "mail", "mail_rejected", code=451, cls="transient_negative", category="mail_system", enhanced="4.3.0")
    assert result.stage("rcpt") is None and result.stage("quit").ok


@pytest.mark.parametrize(
    "answer, code, cls, enhanced",
    [
        ("450 4.2.0 <a@example.org>: Recipient address rejected: Greylisted", 450, "transient_negative", "4.2.0"),
        ("550 5.1.1 <a@example.org>: Recipient address rejected: User unknown", 550, "permanent_negative", "5.1.1"),
        ("552 5.2.2 <a@example.org>: Mailbox full", 552, "permanent_negative", "5.2.2"),
    ],
)
def test_rcpt_rejections(smtp_server, answer, code, cls, enhanced):
    server = smtp_server(ScriptedHandler(rcpt_replies={"a@example.org": answer}))
    result = probe(server.target, mail_from="probe@example.org", rcpt_to=("a@example.org",), data=True)

    assert_failed(result, "rcpt", "rcpt_rejected", code=code, cls=cls, category="mail_system", enhanced=enhanced)
    assert result.stage("data") is None and result.stage("quit").ok


def test_rcpt_stops_at_the_first_rejected_recipient(smtp_server):
    server = smtp_server(ScriptedHandler(rcpt_replies={"b@example.org": "550 5.1.1 no such user"}))
    result = probe(server.target, mail_from="probe@example.org", rcpt_to=("a@example.org", "b@example.org", "c@example.org"))

    assert_failed(result, "rcpt", "rcpt_rejected", code=550, cls="permanent_negative", category="mail_system", enhanced="5.1.1")
    assert [reply.code for reply in result.stage("rcpt").replies] == [250, 550]


def test_expected_550_is_success_and_ends_the_session(smtp_server):
    server = smtp_server(ScriptedHandler(rcpt_replies={"nobody@example.org": "550 5.1.1 User unknown"}))
    result = probe(server.target, mail_from="probe@example.org", rcpt_to=("nobody@example.org",), data=True,
                   expect={"rcpt": (550,)})

    assert result.success, result.detail
    assert_reply(result.stage("rcpt").reply, 550, "permanent_negative", "mail_system", "5.1.1")
    assert stage_names(result)[-2:] == ["rcpt", "quit"]  # no DATA after the expected rejection


def test_250_where_550_expected_is_unexpected_code(smtp_server):
    result = probe(smtp_server().target, mail_from="probe@example.org", rcpt_to=("someone@example.org",), expect={"rcpt": (550,)})

    assert_failed(result, "rcpt", "unexpected_code", code=250, cls="positive_completion", category="mail_system", enhanced="2.1.5")
    assert "550" in result.detail


def test_control_characters_from_the_server_are_escaped(scripted_server):
    server = scripted_server([Send(b"554 5.7.1 \x1b[2Jgo away\r\n"), QUIT_OK])
    result = probe(server.target)

    assert_failed(result, "banner", "banner_rejected", code=554, cls="permanent_negative", category="mail_system", enhanced="5.7.1")
    assert "\x1b" not in result.detail and "\\x1b[2Jgo away" in result.detail
    assert all("\x1b" not in line.text for line in result.transcript)


def test_data_rejected_after_the_message(smtp_server):
    server = smtp_server(ScriptedHandler(data_reply="554 5.7.1 Message rejected as spam"))
    result = probe(server.target, mail_from="probe@example.org", rcpt_to=("a@example.org",), data=True)

    assert_failed(result, "data", "data_rejected", code=554, cls="permanent_negative", category="mail_system", enhanced="5.7.1")
    assert [reply.code for reply in result.stage("data").replies] == [354, 554]


def test_data_command_rejected(scripted_server):
    server = scripted_server([
        BANNER, EHLO_OK,
        reply(r"MAIL FROM:<probe@example.org>", b"250 2.1.0 Ok\r\n"),
        reply(r"RCPT TO:<a@example.org>", b"250 2.1.5 Ok\r\n"),
        reply(r"DATA", b"554 5.5.1 Error: no valid recipients\r\n"),
        QUIT_OK,
    ])
    result = probe(server.target, mail_from="probe@example.org", rcpt_to=("a@example.org",), data=True)

    assert_failed(result, "data", "data_rejected", code=554, cls="permanent_negative", category="mail_system", enhanced="5.5.1")
    assert server.received[-1] == "QUIT"


# -- only the replies that mean success pass (RFC 5321 4.3.2) --------------------------------------
AUTH_EHLO = reply(r"EHLO ", b"250-mx.test.example\r\n250 AUTH PLAIN LOGIN\r\n")
MAIL_OK = reply(r"MAIL FROM:<probe@example.org>", b"250 2.1.0 Ok\r\n")
RCPT_OK = reply(r"RCPT TO:<a@example.org>", b"250 2.1.5 Ok\r\n")
SENDS_MAIL = {"mail_from": "probe@example.org", "rcpt_to": ("a@example.org",)}
AUTHENTICATES = {"auth_mechanism": "PLAIN", "auth_username": "probe", "auth_password_env": "SMTPMON_TEST_PASSWORD"}


@pytest.mark.parametrize(
    "script, options, stage, code",
    [
        pytest.param([Send(b"250 mx.test.example hello\r\n"), QUIT_OK], {}, "banner", 250, id="banner-250"),
        pytest.param([BANNER, reply(r"EHLO ", b"221 2.0.0 mx.test.example closing connection\r\n"), Close()],
                     {}, "ehlo", 221, id="ehlo-221"),
        pytest.param([BANNER, reply(r"EHLO ", b"550 5.7.1 go away\r\n"), reply(r"HELO ", b"221 2.0.0 closing\r\n"), Close()],
                     {}, "ehlo", 221, id="ehlo-550-then-helo-221"),
        pytest.param([BANNER, reply(r"EHLO ", b"252 2.0.0 maybe\r\n"), QUIT_OK], {}, "ehlo", 252, id="ehlo-252"),
        pytest.param([BANNER, AUTH_EHLO, reply(r"AUTH PLAIN ", b"250 2.0.0 fine\r\n"), QUIT_OK],
                     AUTHENTICATES, "auth", 250, id="auth-250"),
        pytest.param([BANNER, AUTH_EHLO, reply(r"AUTH LOGIN", b"354 go ahead\r\n"), QUIT_OK],
                     {**AUTHENTICATES, "auth_mechanism": "LOGIN"}, "auth", 354, id="auth-login-354"),
        pytest.param([BANNER, EHLO_OK, reply(r"MAIL FROM:", b"221 2.0.0 Bye\r\n"), Close()], SENDS_MAIL, "mail", 221, id="mail-221"),
        pytest.param([BANNER, EHLO_OK, MAIL_OK, reply(r"RCPT TO:", b"252 2.1.5 cannot verify\r\n"), QUIT_OK],
                     SENDS_MAIL, "rcpt", 252, id="rcpt-252"),
        pytest.param([BANNER, EHLO_OK, MAIL_OK, RCPT_OK, reply(r"DATA", b"250 2.0.0 Ok\r\n"), QUIT_OK],
                     {**SENDS_MAIL, "data": True}, "data", 250, id="data-250-not-354"),
        pytest.param([BANNER, EHLO_OK, MAIL_OK, RCPT_OK, reply(r"DATA", b"334 what\r\n"), QUIT_OK],
                     {**SENDS_MAIL, "data": True}, "data", 334, id="data-334-not-354"),
    ],
)
def test_a_reply_that_does_not_mean_success_is_an_unexpected_code(scripted_server, monkeypatch, script, options, stage, code):
    monkeypatch.setenv("SMTPMON_TEST_PASSWORD", "pw")
    server = scripted_server(script)
    result = probe(server.target, tls="none", **options)

    assert_failed(result, stage, "unexpected_code")
    assert result.stage(stage).reply.code == code
    if code == 221:  # the server closes the session: no QUIT follows
        assert result.stage("quit") is None and not any(line.upper().startswith("QUIT") for line in server.received)
    assert not server.mismatches


def test_end_of_data_answered_221_is_an_unexpected_code(smtp_server):
    server = smtp_server(ScriptedHandler(data_reply="221 2.0.0 Bye"))
    result = probe(server.target, **SENDS_MAIL, data=True)

    assert_failed(result, "data", "unexpected_code", code=221, cls="positive_completion", category="connections", enhanced="2.0.0")
    assert [reply.code for reply in result.stage("data").replies] == [354, 221]


def test_rcpt_251_is_success_and_quit_other_than_221_is_recorded_but_not_the_verdict(scripted_server):
    server = scripted_server([
        BANNER, EHLO_OK, MAIL_OK,
        reply(r"RCPT TO:", b"251 2.1.5 User not local; will forward\r\n"),
        reply(r"QUIT", b"250 2.0.0 Ok\r\n"),
    ])
    result = probe(server.target, tls="none", **SENDS_MAIL)

    assert result.success, result.detail
    assert result.stage("rcpt").reply.code == 251
    quit = result.stage("quit")
    assert not quit.ok and quit.reason == "unexpected_code"


# -- misbehaviour -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "script",
    [
        pytest.param([Sleep(30)], id="silent"),
        pytest.param([Trickle(b"220 " + b"x" * 200, 0.1)], id="trickle"),
    ],
)
def test_tarpit_ends_at_the_deadline(scripted_server, script):
    server = scripted_server(script)
    begun = time.monotonic()
    result = probe(server.target, timeout_seconds=1.0)
    elapsed = time.monotonic() - begun

    assert (result.failed_stage, result.reason) == ("banner", "timeout")
    assert 1.0 <= elapsed < 1.1 and 1.0 <= result.duration_seconds < 1.1
    assert result.stage("quit") is None and server.received == []  # nothing sent after a timeout


def test_silence_after_ehlo_is_a_timeout_at_ehlo(scripted_server):
    server = scripted_server([BANNER, Sleep(30)])
    result = probe(server.target, timeout_seconds=1.0)

    assert (result.failed_stage, result.reason) == ("ehlo", "timeout")
    assert 1.0 <= result.duration_seconds < 1.1


def test_garbage_line_is_a_protocol_error(scripted_server):
    server = scripted_server([Send(b"HTTP/1.1 400 Bad Request\r\n")])
    result = probe(server.target)

    assert_failed(result, "banner", "protocol_error", code=None, cls="protocol_error", category="protocol_error")
    assert "three-digit code" in result.detail
    assert server.received == []  # no QUIT into a stream that is not SMTP


def test_disagreeing_codes_are_a_protocol_error(scripted_server):
    server = scripted_server([BANNER, reply(r"EHLO ", b"250-mx.test.example\r\n251 PIPELINING\r\n")])
    result = probe(server.target)

    assert_failed(result, "ehlo", "protocol_error")
    assert "disagree" in result.detail


def test_connection_closed_mid_reply(scripted_server):
    server = scripted_server([BANNER, reply(r"EHLO ", b"250-mx.test.example\r\n250-PIPELI"), Close()])
    result = probe(server.target)

    assert_failed(result, "ehlo", "connection_closed")
    assert any(line.text == "250-PIPELI (incomplete)" for line in result.transcript)


def test_over_long_line_is_a_protocol_error(scripted_server):
    server = scripted_server([Send(b"220 " + b"a" * 100_000 + b"\r\n")])
    result = probe(server.target)

    assert_failed(result, "banner", "protocol_error", code=None, cls="protocol_error", category="protocol_error")
    assert "longer than" in result.detail


def test_endless_continuation_lines_are_a_protocol_error(scripted_server):
    server = scripted_server([Send(b"220-mx.test.example waiting\r\n" * (MAX_REPLY_LINES + 50))])
    result = probe(server.target)

    assert_failed(result, "banner", "protocol_error")
    assert len(result.stage("banner").reply.lines) == MAX_REPLY_LINES


def test_connect_refused():
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
    result = probe(f"127.0.0.1:{port}")

    assert_failed(result, "connect", "connect_refused")
    assert result.address is None


def test_a_timeout_of_weeks_is_only_a_long_timeout(smtp_server):
    """poll() takes milliseconds in a C int: 25 days do not fit, and must not crash a probe."""
    result = probe(smtp_server().target, timeout_seconds=2_200_000.0)

    assert result.success, result.detail


def test_connect_timeout_ends_at_the_deadline():
    listener = FullBacklogListener()
    try:
        time.sleep(0.05)  # let the fillers' handshakes fill the queue
        result = probe(listener.target, timeout_seconds=1.0)
    finally:
        listener.close()

    assert (result.failed_stage, result.reason) == ("connect", "connect_timeout")
    assert 1.0 <= result.duration_seconds < 1.1


def test_connect_timeout_is_per_address_not_the_whole_deadline():
    listener = FullBacklogListener()
    try:
        time.sleep(0.05)
        result = probe(listener.target, timeout_seconds=5.0, connect_timeout_seconds=0.3)
    finally:
        listener.close()

    assert (result.failed_stage, result.reason) == ("connect", "connect_timeout")
    assert 0.3 <= result.duration_seconds < 0.5
    assert "no TCP connection within 0.30s" in result.detail


def test_several_addresses_are_tried_in_turn_as_an_mta_does(engine, smtp_server):
    """RFC 5321 5.1: a silent address (connect timeout) and a refusing one are passed over,
    each attempt noted, and the session goes on with the first that answers."""
    silent = FullBacklogListener()
    refused_port = free_port()
    server = smtp_server()
    addresses = [(socket.AF_INET, ("127.0.0.1", silent.port)), (socket.AF_INET, ("127.0.0.1", refused_port)),
                 (socket.AF_INET, ("127.0.0.1", server.port))]

    def attempt(hub):
        transcript = Transcript(time.monotonic(), time.monotonic)
        deadline = time.monotonic() + 5.0
        connection = SmtpConnection(deadline, transcript, hub=hub)
        begun = time.monotonic()
        try:
            used = connect_first(connection, addresses, transcript, 0.3, deadline)
            banner = connection.read_reply()
        finally:
            connection.close()
        return used, banner, time.monotonic() - begun, [line.text for line in transcript.lines]

    try:
        time.sleep(0.05)
        used, banner, took, lines = call_on_engine(engine, attempt)
    finally:
        silent.close()

    assert used == addresses[2] and banner.code == 220
    assert 0.3 <= took < 1.0
    assert lines[:7] == [
        f"connecting to 127.0.0.1 port {silent.port}", "no TCP connection within 0.30s",
        "trying the next address (2 of 3)", f"connecting to 127.0.0.1 port {refused_port}",
        "connection failed: Connection refused",
        "trying the next address (3 of 3)", f"connecting to 127.0.0.1 port {server.port}",
    ]


def test_when_no_address_answers_the_failure_lists_every_attempt(engine):
    ports = [free_port(), free_port()]
    addresses = [(socket.AF_INET, ("127.0.0.1", port)) for port in ports]

    def attempt(hub):
        transcript = Transcript(time.monotonic(), time.monotonic)
        connection = SmtpConnection(time.monotonic() + 5.0, transcript, hub=hub)
        try:
            connect_first(connection, addresses, transcript, 0.3, time.monotonic() + 5.0)
        except SessionError as error:
            return error
        finally:
            connection.close()

    error = call_on_engine(engine, attempt)
    assert error.reason == "connect_refused"
    assert error.detail == ("no address took the connection: "
                            f"127.0.0.1:{ports[0]}: connection failed: Connection refused; "
                            f"127.0.0.1:{ports[1]}: connection failed: Connection refused")


def test_the_result_names_the_address_used_and_its_family(smtp_server):
    result = probe(smtp_server().target)
    assert result.success and (result.address, result.address_family) == ("127.0.0.1", "ipv4")


def ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 loopback (::1) on this machine")
def test_ipv6_target(scripted_server):
    server = scripted_server([BANNER, EHLO_OK, QUIT_OK], host="::1")
    result = probe(server.target, ip_protocol="ip6")

    assert result.success, result.detail
    assert (result.address, result.address_family) == ("::1", "ipv6")
    # without a dotted host name, the EHLO name is the IPv6 address literal of RFC 5321
    assert ("C", f"EHLO {default_ehlo_name('::1')}") in [(line.direction, line.text) for line in result.transcript]
    assert default_ehlo_name("::1") in (socket.gethostname(), "[IPv6:::1]")


def test_address_family_mismatch_is_a_dns_failure():
    result = probe("127.0.0.1:25", ip_protocol="ip6")

    assert_failed(result, "resolve", "dns_failure")
    assert stage_names(result) == ["resolve"]


def test_an_unusable_module_gives_a_result_not_an_exception(smtp_server, tls_contexts, tmp_path):
    server = smtp_server(starttls_context=tls_contexts["trusted"])
    result = probe(server.target, tls="starttls", tls_ca_file=str(tmp_path / "missing.pem"))

    assert (result.failed_stage, result.reason) == ("starttls", "internal_error")
    assert "missing.pem" in result.detail



# -- opportunistic TLS: judged as sending MTAs judge it ---------------------------------------
@pytest.mark.parametrize(
    "kind, reason, words",
    [
        ("untrusted", "certificate_untrusted", "unable to get local issuer"),
        ("self_signed", "certificate_untrusted", "self-signed"),
        ("expired", "certificate_expired", "expired"),
        ("wrong_host", "certificate_hostname_mismatch", "ip address mismatch"),
    ],
)
def test_opportunistic_tls_reports_an_unverifiable_certificate_and_goes_on(smtp_server, tls_contexts, ca_file,
                                                                           kind, reason, words):
    """RFC 3207 / RFC 7435: a sending MTA delivers over TLS whatever the certificate; so does
    the probe, and the failed verification is a reported fact."""
    server = smtp_server(starttls_context=tls_contexts[kind])
    result = probe(server.target, tls="opportunistic", tls_ca_file=ca_file, mail_from="probe@example.org",
                   rcpt_to=("ok@example.org",), data=True)

    assert result.success, result.detail
    assert stage_names(result) == ["resolve", "connect", "banner", "ehlo", "starttls", "ehlo_tls", "mail",
                                   "rcpt", "data", "quit"]
    tls = result.tls
    assert (tls.verified, tls.verify_reason) == (False, reason)
    assert words in tls.verify_error.lower() and tls.subject and tls.version
    assert result.ehlo_tls is not None and len(server.handler.messages) == 1
    notes = [line.text for line in result.transcript if line.direction == "*"]
    assert any(note.startswith("opportunistic TLS goes on without verification") for note in notes)
    assert any(note.startswith("certificate NOT verified: ") and note.endswith("(opportunistic TLS: reported, not a failure)")
               for note in notes)


def test_opportunistic_tls_with_a_verified_certificate_makes_one_connection(smtp_server, tls_contexts, ca_file):
    server = smtp_server(starttls_context=tls_contexts["trusted"])
    result = probe(server.target, tls="opportunistic", tls_ca_file=ca_file)

    assert result.success and result.tls.verified and result.tls.verify_reason is None
    assert not any("reconnecting" in line.text for line in result.transcript)


def test_opportunistic_tls_fails_when_the_server_refuses_the_second_connection(scripted_server, tls_contexts):
    """Going on needs a second connection: a server that refuses it fails the probe, saying why."""
    ehlo = reply(r"EHLO ", b"250-mx.test.example\r\n250 STARTTLS\r\n")
    server = scripted_server([BANNER, ehlo, reply(r"STARTTLS", b"220 go ahead\r\n"), StartTls(tls_contexts["untrusted"]),
                              reply(r"EHLO ", b"250 mx.test.example\r\n"), QUIT_OK],
                             later=[Send(b"554 5.3.2 one connection at a time\r\n"), Close()])
    result = probe(server.target, tls="opportunistic")

    assert_failed(result, "starttls", "unexpected_code")
    assert "going on without verification over a new connection failed" in result.detail
    assert result.tls.verify_reason == "certificate_untrusted"


# -- a plain probe of a TLS port ----------------------------------------------------------------
def test_tls_bytes_where_the_banner_belongs_fail_at_once_suggesting_implicit_tls(scripted_server):
    """A TLS record holds no line end: without looking at it, the probe would wait for one
    until the deadline."""
    alert = b"\x15\x03\x03\x00\x02\x02\x32"  # a TLS fatal alert record
    server = scripted_server([Send(alert), Sleep(30)])
    result = probe(server.target, tls="opportunistic")

    assert_failed(result, "banner", "protocol_error")
    assert "speaks TLS from the first byte" in result.detail and "--tls implicit" in result.detail
    assert any(line.text.startswith("15 03 03 00 02 ... (7 bytes of a TLS record)") for line in result.transcript)


def test_plain_probe_of_port_465_times_out_at_the_banner_suggesting_implicit_tls(tls_contexts):
    """An SMTPS server waits for the client's handshake: the plain probe's banner timeout says
    why and what to do. Port 465 on a loopback address of its own (binding it needs root)."""
    server = on_a_loopback_address_of_its_own(
        lambda host: AiosmtpdServer(implicit_tls_context=tls_contexts["trusted"], host=host, port=465).start())
    try:
        result = probe(server.target, tls="opportunistic", timeout_seconds=0.5)
    finally:
        server.stop()

    assert (result.failed_stage, result.reason) == ("banner", "timeout")
    assert "port 465 is SMTPS" in result.detail and "--tls implicit" in result.detail


# -- the test message's size ----------------------------------------------------------------------
def test_message_size_pads_the_test_message_and_keeps_the_transcript_short(smtp_server):
    server = smtp_server()
    result = probe(server.target, mail_from="probe@example.org", rcpt_to=("ok@example.org",), data=True,
                   message_size=200_000)

    assert result.success, result.detail
    (message,) = server.handler.messages
    # aiosmtpd keeps the message with its line ends as received, less the final dot line.
    assert len(message) == 200_000
    notes = [line.text for line in result.transcript if line.direction == "*"]
    assert any(re.fullmatch(r"\(\d+ more lines, \d+ bytes, not shown\)", note) for note in notes)
    assert len(result.transcript) < 40


def test_a_message_over_the_servers_size_limit_fails_at_data_with_552(smtp_server):
    server = smtp_server(data_size_limit=100_000)
    small = probe(server.target, mail_from="probe@example.org", rcpt_to=("ok@example.org",), data=True,
                  message_size=90_000)
    large = probe(server.target, mail_from="probe@example.org", rcpt_to=("ok@example.org",), data=True,
                  message_size=150_000)

    assert small.success, small.detail
    assert_failed(large, "data", "data_rejected", code=552, cls="permanent_negative", category="mail_system")
    assert "the end of the message answered 552" in large.detail
