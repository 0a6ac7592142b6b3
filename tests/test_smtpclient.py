"""The SMTP connection: deadlines on every read, framing, dot-stuffing, TLS facts."""

from __future__ import annotations

import socket
import ssl
import time
import uuid

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from helpers import run_probe_at
from probe_engines import ENGINES, call_on_engine
from smtpservers import BANNER, Expect, FullBacklogListener, Send, Sleep, Trickle, reply

from smtpmon.smtp.client import (
    MAX_LINE_BYTES,
    REPLIES,
    ReplyCache,
    SessionError,
    SmtpConnection,
    Transcript,
    certificate_facts,
    make_tls_context,
    printable,
    resolve,
)
from smtpmon.smtp.module import Module


def connect(server, timeout: float = 5.0) -> SmtpConnection:
    now = time.monotonic()
    connection = SmtpConnection(now + timeout, Transcript(now, time.monotonic))
    connection.connect(socket.AF_INET, ("127.0.0.1", server.port))
    return connection


def test_each_read_gets_only_the_time_left_even_against_a_trickle(scripted_server):
    server = scripted_server([Trickle(b"220-" + b"x" * 100, 0.05)])
    connection = connect(server, timeout=0.5)
    begun = time.monotonic()
    with pytest.raises(SessionError) as raised:
        connection.read_reply()
    assert raised.value.reason == "timeout"
    assert 0.45 <= time.monotonic() - begun < 0.55
    connection.close()


@pytest.mark.parametrize("stage", ["connect", "banner"])
def test_a_long_timeout_ends_on_time_without_a_hub(stage, scripted_server):
    """The kernel rounds a socket timeout of seconds up to a coarse slot (a 5 s one ended 0.2 -
    0.25 s late here), and a /probe has only 0.5 s before its scrape gives up: the blocking
    path must end at its deadline all the same."""
    listener = FullBacklogListener() if stage == "connect" else None
    try:
        if listener is not None:
            time.sleep(0.05)  # let the fillers' handshakes fill the queue
        target = listener.target if listener is not None else scripted_server([Sleep(30)]).target
        begun = time.monotonic()
        # A connect timeout past the deadline: the deadline is what ends the connect here.
        result = run_probe_at(target, Module(tls="none", timeout_seconds=5.0, connect_timeout_seconds=60.0))
        elapsed = time.monotonic() - begun
    finally:
        if listener is not None:
            listener.close()

    assert (result.failed_stage, result.reason) == (stage, "connect_timeout" if stage == "connect" else "timeout")
    assert 5.0 <= result.duration_seconds < 5.05 and elapsed < 5.1


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_a_server_that_stops_reading_ends_the_send_at_the_deadline(scripted_server, engine):
    server = scripted_server([Sleep(30)])  # accepts, never reads

    def session(hub):
        now = time.monotonic()
        connection = SmtpConnection(now + 0.5, Transcript(now, time.monotonic), hub=hub)
        connection.connect(socket.AF_INET, ("127.0.0.1", server.port))
        try:
            with pytest.raises(SessionError) as raised:
                connection.send_message(["x" * 1000] * 20_000)  # 20 MB: more than any buffer
            return raised.value, time.monotonic() - now
        finally:
            connection.close()

    error, elapsed = call_on_engine(engine, session)
    assert error.reason == "timeout" and "stopped reading" in error.detail
    assert 0.45 <= elapsed < 0.8


def test_within_bounds_one_reply_below_the_deadline(scripted_server):
    server = scripted_server([Sleep(30)])
    connection = connect(server, timeout=30)
    begun = time.monotonic()
    with pytest.raises(SessionError, match="no complete reply"):
        connection.read_reply(within=0.2)
    assert time.monotonic() - begun < 0.4
    connection.close()


def test_replies_split_across_packets_and_bare_lf_are_framed(scripted_server):
    server = scripted_server([Send(b"250-first\r\n25"), Sleep(0.05), Send(b"0 second\n")])
    connection = connect(server)
    reply = connection.read_reply()
    assert reply.code == 250 and reply.lines == ("first", "second") and reply.bare_lf
    connection.close()


def test_over_long_line_is_a_reply_without_a_code(scripted_server):
    server = scripted_server([Send(b"250-ok\r\n250 " + b"y" * (2 * MAX_LINE_BYTES))])
    connection = connect(server)
    reply = connection.read_reply()
    assert reply.code is None and "longer than" in reply.error
    assert reply.lines[0] == "ok"
    connection.close()


def test_message_is_dot_stuffed_and_ended_by_a_lone_dot(scripted_server):
    server = scripted_server([Send(b"354 go ahead\r\n"), Expect(r"Subject: x"), Expect(r""), Expect(r"\.\.leading dot"), Expect(r"\.$"), Send(b"250 queued\r\n")])
    connection = connect(server)
    assert connection.read_reply().code == 354
    connection.send_message(["Subject: x", "", ".leading dot"])
    assert connection.read_reply().code == 250
    connection.close()
    assert server.received == ["Subject: x", "", "..leading dot", "."] and server.mismatches == []


def test_masked_command_is_sent_in_clear_but_recorded_masked(scripted_server):
    server = scripted_server([reply(r"AUTH PLAIN AHVzZXIAcHc=", b"235 2.7.0 ok\r\n")])
    now = time.monotonic()
    transcript = Transcript(now, time.monotonic)
    connection = SmtpConnection(now + 5, transcript)
    connection.connect(socket.AF_INET, ("127.0.0.1", server.port))
    assert connection.command("AUTH PLAIN AHVzZXIAcHc=", "AUTH PLAIN ********").code == 235
    connection.close()
    assert [line.text for line in transcript.lines if line.direction == "C"] == ["AUTH PLAIN ********"]
    assert server.mismatches == []


def test_server_closing_before_replying(scripted_server):
    server = scripted_server([BANNER])  # then reads until the client closes; no reply to NOOP
    connection = connect(server)
    assert connection.read_reply().code == 220
    server.stop()
    with pytest.raises(SessionError) as raised:
        connection.command("NOOP")
    assert raised.value.reason == "connection_closed"
    connection.close()


def read_one_reply(server, hide: str | None = None):
    """(reply, transcript texts) of the first reply a fresh connection reads."""
    now = time.monotonic()
    transcript = Transcript(now, time.monotonic)
    connection = SmtpConnection(now + 5, transcript)
    connection.connect(socket.AF_INET, ("127.0.0.1", server.port))
    if hide:
        connection.hide(hide)
    try:
        return connection.read_reply(), [line.text for line in transcript.lines if line.direction == "S"]
    finally:
        connection.close()


def test_a_repeated_reply_is_taken_from_the_cache_unchanged(scripted_server):
    banner = f"220-2.0.0 mx.test.example ESMTP {uuid.uuid4().hex}\r\n220 ready\r\n".encode()
    first, first_lines = read_one_reply(scripted_server([Send(banner)]))
    assert REPLIES.get(banner) is None  # seen once: it may never come again
    second, second_lines = read_one_reply(scripted_server([Send(banner)]))
    assert REPLIES.get(banner) is not None
    third, third_lines = read_one_reply(scripted_server([Send(banner)]))
    assert third is second  # the cached object: no third parse
    assert third == first and (third.code, third.enhanced, third.lines[1]) == (220, "2.0.0", "ready")
    assert third_lines == second_lines == first_lines == [line.decode() for line in banner.splitlines()]


def test_a_reply_with_bytes_after_it_is_not_cached(scripted_server):
    token = uuid.uuid4().hex
    data = f"220 {token}\r\n250 unasked\r\n".encode()
    reply_, _ = read_one_reply(scripted_server([Send(data)]))
    assert reply_.code == 220
    assert REPLIES.get(data) is None and REPLIES.get(f"220 {token}\r\n".encode()) is None


def test_a_cached_reply_is_still_masked_once_a_secret_is_known(scripted_server):
    secret = uuid.uuid4().hex
    echo = f"535 5.7.8 bad credentials {secret}\r\n".encode()
    for _ in range(2):
        read_one_reply(scripted_server([Send(echo)]))
    assert REPLIES.get(echo) is not None  # cached by sessions that knew no secret
    reply_, lines = read_one_reply(scripted_server([Send(echo)]), hide=secret)
    assert reply_.code == 535 and secret not in reply_.text and "********" in reply_.text
    assert not any(secret in line for line in lines)


def test_reply_cache_is_bounded_oldest_out_first_and_admits_on_the_second_sighting():
    replies = [(bytes([65 + i]) * 100, reply_for(i)) for i in range(25)]
    entry_cost = ReplyCache(1)._cost(replies[0][0], replies[0][1], ())
    cache = ReplyCache(max_bytes=10 * entry_cost)
    for raw, parsed in replies:
        cache.put(raw, parsed, ())
    assert len(cache) == 0  # each seen once
    for raw, parsed in replies:
        cache.put(raw, parsed, ())
    assert len(cache) == 10
    assert cache.get(replies[0][0]) is None and cache.get(replies[-1][0])[0] is replies[-1][1]
    cache.put(b"2" * 5000, reply_for(99), ())
    cache.put(b"2" * 5000, reply_for(99), ())
    assert cache.get(b"2" * 5000) is None  # longer than one read: it could never be hit


def reply_for(i: int):
    from smtpmon.smtp.results import Reply
    return Reply(code=250, lines=(f"line {i}",))


def test_printable_escapes_terminal_control_characters():
    assert printable("220 \x1b[31mred\x1b[0m\x07") == "220 \\x1b[31mred\\x1b[0m\\x07"
    assert printable("250 ok\tfine é") == "250 ok\tfine é"


def test_resolve_ip_literals_without_lookup_and_honours_the_family():
    assert resolve("127.0.0.1", 25, socket.AF_UNSPEC, 1.0) == [(socket.AF_INET, ("127.0.0.1", 25))]
    assert resolve("::1", 25, socket.AF_INET6, 1.0) == [(socket.AF_INET6, ("::1", 25, 0, 0))]
    with pytest.raises(SessionError, match="not an IPv4 address") as raised:
        resolve("::1", 25, socket.AF_INET, 1.0)
    assert raised.value.reason == "dns_failure"


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_resolve_looks_names_up_on_a_thread_and_reports_what_fails(engine):
    # Both names are settled on this machine: localhost by /etc/hosts, the other before any
    # query (it cannot be encoded), so no lookup leaves loopback.
    def lookups(hub):
        found = resolve("localhost", 25, socket.AF_INET, 2.0, hub)
        with pytest.raises(SessionError, match="cannot resolve") as raised:
            resolve("mx\udcff.example", 25, socket.AF_UNSPEC, 2.0, hub)
        return found, raised.value.reason

    found, reason = call_on_engine(engine, lookups)
    assert found == [(socket.AF_INET, ("127.0.0.1", 25))]
    assert reason == "dns_failure"


def test_certificate_facts_from_der(ca):
    leaf = ca.issue_cert("mx.example.org", "192.0.2.25")
    der = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).public_bytes(Encoding.DER)
    facts = certificate_facts(der)
    assert facts["sans"] == ("DNS:mx.example.org", "IP:192.0.2.25")
    assert "trustme" in facts["subject"] and "Testing CA" in facts["issuer"]
    assert facts["not_before"] < time.time() < facts["not_after"]
    assert certificate_facts(b"not a certificate") == {}


def test_tls_context_verifies_by_default_and_honours_min_version():
    verifying = make_tls_context(verify=True, min_version="TLSv1.2")
    assert verifying.verify_mode == ssl.CERT_REQUIRED and verifying.check_hostname
    assert verifying.minimum_version == ssl.TLSVersion.TLSv1_2
    relaxed = make_tls_context(verify=False)
    assert relaxed.verify_mode == ssl.CERT_NONE and not relaxed.check_hostname
