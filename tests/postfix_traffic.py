"""Mail traffic through a real Postfix that makes it log the replies smtpmon's log parser reads.

`start_logging_postfix()` starts the private Postfix of tests/postfix.py with restrictions
that reject at every stage Postfix logs (an access map per stage; `smtpd_delay_reject = no`
so client, HELO and sender rejects happen where they are asked, not at RCPT; 501 and 503
through an invalid HELO name and unauthorized pipelining, which Postfix logs, unlike a plain
syntax error or a bad sequence), and with a transport map that relays the test domains to loopback SMTP servers scripted to refuse in
each way a remote server does. The `drive_*` functions make the traffic with smtplib and
return what they drove: the expected counts come from here, never from reading the log.
Deferred mail is not retried while a test runs (the queue manager's first retry is minutes
away), so each message is exactly one delivery attempt.

Used by tests/test_maillog_postfix.py and by benchmarks/maillog_parse.py (which captures
the lines this traffic produces and replicates them into a large log).
"""

from __future__ import annotations

import smtplib
import socket
import time
from collections import Counter
from dataclasses import dataclass, field

import pytest
from postfix import HOSTNAME, PostfixInstance, require_postfix, start_postfix
from smtpservers import (
    BANNER,
    EHLO_OK,
    AiosmtpdServer,
    ScriptedHandler,
    ScriptedServer,
    Send,
    Sleep,
    reply,
)

NETWORK_TIMEOUT = 5
SMTPD_TIMEOUT_SECONDS = 2  # smtpd_timeout: how long an idle client is kept (timeout after X)
REMOTE_TIMEOUT_SECONDS = 2  # smtp_*_timeout: how long Postfix waits for a silent remote server

# Client addresses Postfix tells apart (any 127.x address works without set-up).
RELAY_CLIENT = "127.0.0.2"  # in mynetworks: may relay to the remote test domains
REJECTED_CLIENT = "127.0.0.5"  # 554 at CONNECT by the client access map
PLAIN_CLIENT = "127.0.0.7"  # an ordinary Internet client

LOCAL_USER = f"root@{HOSTNAME}"  # exists: accepted (and discarded)
SENDER = LOCAL_USER  # bounces of outbound mail go back here, and are discarded

# Remote test domains, each routed to its own scripted server (or a dead port).
DOMAIN_REPLIES = "replies.remote.test"  # aiosmtpd: per-recipient replies at RCPT
DOMAIN_DATA_REJECT = "content.remote.test"  # aiosmtpd: 554 5.7.1 after the message
DOMAIN_THROTTLE = "busy.remote.test"  # 421 4.7.0 greeting
DOMAIN_GREETING_REJECT = "closed.remote.test"  # 554 5.7.1 greeting
DOMAIN_REFUSED = "refused.remote.test"  # nothing listens: connection refused
DOMAIN_SILENT = "silent.remote.test"  # accepts the connection, never speaks
DOMAIN_MAIL_REJECT = "sender.remote.test"  # 550 5.7.1 to MAIL FROM (our address blocklisted)

RCPT_REPLIES = {
    f"greylist@{DOMAIN_REPLIES}": "450 4.2.0 Greylisted, please try again later",
    f"nouser@{DOMAIN_REPLIES}": "550 5.1.1 No such user here",
    f"full@{DOMAIN_REPLIES}": "552 5.2.2 Mailbox full",
}

MAIN_CF_EXTRA = """
mynetworks = 127.0.0.2/32
smtpd_delay_reject = no
smtpd_helo_required = yes
smtpd_timeout = {smtpd_timeout}s
smtpd_client_restrictions = check_client_access texthash:{{config_dir}}/client_access
smtpd_helo_restrictions = check_helo_access texthash:{{config_dir}}/helo_access,
    reject_invalid_helo_hostname
smtpd_data_restrictions = reject_unauth_pipelining
smtpd_sender_restrictions = check_sender_access texthash:{{config_dir}}/sender_access
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_recipient_restrictions = check_recipient_access texthash:{{config_dir}}/recipient_access
smtpd_restriction_classes = tls_required
tls_required = reject_plaintext_session
plaintext_reject_code = 530
transport_maps = texthash:{{config_dir}}/transport
smtp_connect_timeout = {remote_timeout}s
smtp_helo_timeout = {remote_timeout}s
smtp_mail_timeout = {remote_timeout}s
smtp_rcpt_timeout = {remote_timeout}s
smtp_data_init_timeout = {remote_timeout}s
smtp_data_done_timeout = {remote_timeout}s
smtp_tls_security_level = none
# One attempt per message: no second MX, no connection cache muddling which reply was whose.
smtp_connection_cache_on_demand = no
"""


@dataclass
class RemoteServers:
    """The loopback servers Postfix relays to; stop() stops them all."""

    replies: AiosmtpdServer
    data_reject: AiosmtpdServer
    throttle: ScriptedServer
    greeting_reject: ScriptedServer
    silent: ScriptedServer
    mail_reject: ScriptedServer
    refused: socket.socket  # bound, never listening: a connect gets a reset
    transport_map: str = ""

    def stop(self) -> None:
        for server in (self.replies, self.data_reject, self.throttle, self.greeting_reject,
                       self.silent, self.mail_reject):
            server.stop()
        self.refused.close()


def start_remote_servers() -> RemoteServers:
    replies = AiosmtpdServer(ScriptedHandler(rcpt_replies=dict(RCPT_REPLIES))).start()
    data_reject = AiosmtpdServer(
        ScriptedHandler(data_reply="554 5.7.1 Message rejected as spam")).start()
    throttle = ScriptedServer([Send(b"421 4.7.0 Too many connections, slow down\r\n")]).start()
    greeting_reject = ScriptedServer([Send(b"554 5.7.1 No SMTP service for you\r\n")]).start()
    silent = ScriptedServer([Sleep(REMOTE_TIMEOUT_SECONDS * 5)]).start()
    mail_reject = ScriptedServer([
        BANNER, EHLO_OK,
        reply(r"MAIL FROM", b"550 5.7.1 Service unavailable; client blocked using rbl.remote.test\r\n"),
        reply(r"QUIT", b"221 2.0.0 Bye\r\n"),
    ]).start()
    refused = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    refused.bind(("127.0.0.1", 0))
    servers = RemoteServers(replies, data_reject, throttle, greeting_reject, silent, mail_reject,
                            refused)
    routes = {
        DOMAIN_REPLIES: replies.port,
        DOMAIN_DATA_REJECT: data_reject.port,
        DOMAIN_THROTTLE: throttle.port,
        DOMAIN_GREETING_REJECT: greeting_reject.port,
        DOMAIN_SILENT: silent.port,
        DOMAIN_MAIL_REJECT: mail_reject.port,
        DOMAIN_REFUSED: refused.getsockname()[1],
    }
    servers.transport_map = "".join(
        f"{domain} smtp:[127.0.0.1]:{port}\n" for domain, port in routes.items())
    return servers


def start_logging_postfix(servers: RemoteServers) -> PostfixInstance:
    """A private Postfix that rejects by the maps below and relays to `servers`."""
    return start_postfix(
        main_cf_extra=MAIN_CF_EXTRA.format(smtpd_timeout=SMTPD_TIMEOUT_SECONDS,
                                           remote_timeout=REMOTE_TIMEOUT_SECONDS),
        config_files={
            "client_access": f"{REJECTED_CLIENT} REJECT\n",
            "helo_access": "bad.helo.test REJECT Go away\n",
            "sender_access": "spammer@bad.test REJECT\n",
            "recipient_access": (
                f"greylist@{HOSTNAME} 450 4.2.0 Greylisted, try again later\n"
                f"tlsonly@{HOSTNAME} tls_required\n"
            ),
            "transport": servers.transport_map,
        },
    )


@dataclass
class Driven:
    """What the traffic was: the log events Postfix must have written for it, as
    (direction, stage, code, enhanced code) -> count for replies, and (stage, kind) -> count
    for sessions that ended without QUIT."""

    replies: Counter = field(default_factory=Counter)
    session_ends: Counter = field(default_factory=Counter)
    deliveries: Counter = field(default_factory=Counter)  # (status, reason) -> count
    accepted: int = 0  # messages Postfix took in for delivery


@pytest.fixture(scope="module")
def logging_postfix():
    """A logging Postfix relaying to the remote servers, for the tests of one module (a plugin
    fixture: conftest.py lists this file)."""
    require_postfix()
    servers = start_remote_servers()
    try:
        with start_logging_postfix(servers) as mx:
            yield mx
    finally:
        servers.stop()


def _client(source: str, helo: str = "client.smtpmon.test") -> smtplib.SMTP:
    client = smtplib.SMTP(timeout=NETWORK_TIMEOUT, local_hostname=helo,
                          source_address=(source, 0))
    return client


def drive_inbound(mx: PostfixInstance) -> Driven:
    """Clients that Postfix refuses at each stage; returns what Postfix was made to log."""
    driven = Driven()

    # 554 5.7.1 at CONNECT: the client access map rejects the client's address. With
    # smtpd_delay_reject = no the reply comes before the greeting is accepted.
    client = _client(REJECTED_CLIENT)
    client.connect(mx.host, mx.port)
    client.ehlo()
    client.close()
    driven.replies["inbound", "connect", "554", "5.7.1"] += 1
    driven.session_ends["connect", "lost_connection"] += 1  # closed without QUIT

    client = _client(PLAIN_CLIENT, helo="bad.helo.test")
    client.connect(mx.host, mx.port)
    code, _ = client.ehlo()
    assert code == 554, code
    client.close()
    driven.replies["inbound", "ehlo", "554", "5.7.1"] += 1
    driven.session_ends["ehlo", "lost_connection"] += 1

    # 501 5.5.2 to an EHLO name that is no host name (reject_invalid_helo_hostname).
    with _client(PLAIN_CLIENT, helo="not_a[host]name") as client:
        client.connect(mx.host, mx.port)
        assert client.ehlo()[0] == 501
        driven.replies["inbound", "ehlo", "501", "5.5.2"] += 1

    # 503 5.5.0 to DATA sent ahead of the replies by a client that never saw PIPELINING
    # offered (HELO, not EHLO): reject_unauth_pipelining.
    with socket.create_connection((mx.host, mx.port), timeout=NETWORK_TIMEOUT,
                                  source_address=(PLAIN_CLIENT, 0)) as raw:
        replies = raw.makefile("rb")
        replies.readline()
        raw.sendall(b"HELO client.smtpmon.test\r\n")
        replies.readline()
        raw.sendall(f"MAIL FROM:<ok@sender.test>\r\nRCPT TO:<{LOCAL_USER}>\r\nDATA\r\n".encode())
        answers = [replies.readline()[:3] for _ in range(3)]
        assert answers == [b"250", b"250", b"503"], answers
        raw.sendall(b"QUIT\r\n")
        replies.readline()
        driven.replies["inbound", "data", "503", "5.5.0"] += 1

    with _client(PLAIN_CLIENT) as client:
        client.connect(mx.host, mx.port)
        client.ehlo()
        assert client.mail("spammer@bad.test")[0] == 554
        driven.replies["inbound", "mail", "554", "5.7.1"] += 1
        # RFC 1870 SIZE above message_size_limit: 552 5.3.4 to MAIL FROM.
        assert client.mail("ok@sender.test", ["SIZE=999999999"])[0] == 552
        driven.replies["inbound", "mail", "552", "5.3.4"] += 1
        client.rset()
        assert client.mail("ok@sender.test")[0] == 250
        assert client.rcpt(f"nosuchuser@{HOSTNAME}")[0] == 550
        driven.replies["inbound", "rcpt", "550", "5.1.1"] += 1
        assert client.rcpt("someone@elsewhere.test")[0] == 554
        driven.replies["inbound", "rcpt", "554", "5.7.1"] += 1
        assert client.rcpt(f"greylist@{HOSTNAME}")[0] == 450
        driven.replies["inbound", "rcpt", "450", "4.2.0"] += 1
        assert client.rcpt(f"tlsonly@{HOSTNAME}")[0] == 530
        driven.replies["inbound", "rcpt", "530", "5.7.1"] += 1  # Postfix makes the DSN 5.x.x
        assert client.rcpt(f"nosuchuser@{HOSTNAME}")[0] == 550
        driven.replies["inbound", "rcpt", "550", "5.1.1"] += 1

    # Lost connection after RCPT: the client vanishes mid-transaction.
    client = _client(PLAIN_CLIENT)
    client.connect(mx.host, mx.port)
    client.ehlo()
    client.mail("ok@sender.test")
    client.rcpt(LOCAL_USER)
    client.sock.close()
    driven.session_ends["rcpt", "lost_connection"] += 1

    # Timeout after EHLO: the client says nothing more until smtpd_timeout passes.
    client = _client(PLAIN_CLIENT)
    client.connect(mx.host, mx.port)
    client.ehlo()
    deadline = time.monotonic() + SMTPD_TIMEOUT_SECONDS + NETWORK_TIMEOUT
    client.sock.settimeout(NETWORK_TIMEOUT)
    while time.monotonic() < deadline and client.sock.recv(4096):
        pass  # Postfix says 421 4.4.2 on timeout, then closes
    client.sock.close()
    driven.session_ends["ehlo", "timeout"] += 1
    return driven


def send_outbound(mx: PostfixInstance, recipient: str) -> None:
    """Hand one message for `recipient` to Postfix from the relay client."""
    with _client(RELAY_CLIENT) as client:
        client.connect(mx.host, mx.port)
        client.ehlo()
        client.sendmail(SENDER, [recipient], f"From: <{SENDER}>\r\nTo: <{recipient}>\r\n"
                        "Subject: smtpmon log test\r\n\r\nhello\r\n")


def drive_outbound(mx: PostfixInstance) -> Driven:
    """One message per remote behaviour; returns the delivery attempts Postfix must log, as
    (status, stage, code, enhanced) -> count in `replies` and (status, reason) in `deliveries`."""
    driven = Driven()
    plan = [
        (f"ok@{DOMAIN_REPLIES}", ("sent", "end_of_data", "250", "2.0.0"), "delivered"),
        (f"greylist@{DOMAIN_REPLIES}", ("deferred", "rcpt", "450", "4.2.0"), "remote_reply"),
        (f"nouser@{DOMAIN_REPLIES}", ("bounced", "rcpt", "550", "5.1.1"), "remote_reply"),
        (f"full@{DOMAIN_REPLIES}", ("bounced", "rcpt", "552", "5.2.2"), "remote_reply"),
        (f"user@{DOMAIN_DATA_REJECT}", ("bounced", "end_of_data", "554", "5.7.1"), "remote_reply"),
        (f"user@{DOMAIN_THROTTLE}", ("deferred", "banner", "421", "4.7.0"), "remote_reply"),
        (f"user@{DOMAIN_GREETING_REJECT}", ("deferred", "banner", "554", "5.7.1"), "remote_reply"),
        (f"user@{DOMAIN_MAIL_REJECT}", ("bounced", "mail", "550", "5.7.1"), "remote_reply"),
        # No reply: the enhanced code is Postfix's own DSN for the failure.
        (f"user@{DOMAIN_REFUSED}", ("deferred", "connect", "000", "4.4.1"), "connection_refused"),
        (f"user@{DOMAIN_SILENT}", ("deferred", "banner", "000", "4.4.2"), "timeout"),
    ]
    for recipient, (status, stage, code, enhanced), reason in plan:
        send_outbound(mx, recipient)
        driven.accepted += 1
        driven.replies[("outbound", status, stage, code, enhanced)] += 1
        driven.deliveries[status, reason] += 1
    return driven
