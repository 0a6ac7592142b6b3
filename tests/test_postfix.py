"""Probing a real Postfix: Debian's package, a private instance on 127.0.0.1 (tests/postfix.py).

The first tests check the instance itself with the standard library's smtplib, so a broken
fixture is told apart from a broken probe engine; the rest probe it with smtpmon.
"""

from __future__ import annotations

import smtplib
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
from postfix import HOSTNAME, SIZE_LIMIT, require_postfix, start_postfix

REPO = Path(__file__).resolve().parent.parent
UNKNOWN_USER = f"nosuchuser@{HOSTNAME}"
KNOWN_USER = f"root@{HOSTNAME}"  # in passwd: accepted at RCPT (and discarded if ever sent)
MAIL_FROM = "probe@smtpmon.test"
NETWORK_TIMEOUT = 5
STARTUP_BUDGET_SECONDS = 5


def starttls_session(instance) -> smtplib.SMTP:
    client = smtplib.SMTP(instance.host, instance.port, local_hostname="probe.smtpmon.test",
                          timeout=NETWORK_TIMEOUT)
    client.starttls(context=ssl.create_default_context(cafile=instance.ca_file))
    return client


# The instance itself, seen through smtplib.

def test_instance_starts_within_budget(postfix):
    assert postfix.startup_seconds < STARTUP_BUDGET_SECONDS


def test_instance_greets_with_220_and_advertises_starttls(postfix):
    with smtplib.SMTP(timeout=NETWORK_TIMEOUT) as client:
        code, banner = client.connect(postfix.host, postfix.port)
        assert (code, banner.decode()) == (220, f"{HOSTNAME} ESMTP Postfix")
        code, _ = client.ehlo("probe.smtpmon.test")
        assert code == 250
        assert client.has_extn("starttls")
        assert client.esmtp_features["size"] == str(SIZE_LIMIT)


def test_instance_certificate_verifies_for_its_hostname(postfix):
    with starttls_session(postfix) as client:
        certificate = client.sock.getpeercert()
        assert ("DNS", HOSTNAME) in certificate["subjectAltName"]
        assert client.sock.version() in ("TLSv1.2", "TLSv1.3")


def test_instance_rejects_unknown_local_user_only(postfix):
    with starttls_session(postfix) as client:
        client.ehlo("probe.smtpmon.test")
        assert client.mail(MAIL_FROM)[0] == 250
        code, text = client.rcpt(UNKNOWN_USER)
        assert code == 550
        assert text.decode().startswith("5.1.1 ")
        assert "User unknown in local recipient table" in text.decode()
        assert client.rcpt(KNOWN_USER)[0] == 250


def test_stop_releases_port_and_removes_workdir():
    require_postfix()
    instance = start_postfix()
    workdir = Path(instance.workdir)
    instance.stop()
    assert not workdir.exists()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((instance.host, instance.port), timeout=NETWORK_TIMEOUT).close()
    instance.stop()  # idempotent


# smtpmon's probe engine against it.

def starttls_module(**options):
    from smtpmon.smtp.module import Module

    return Module(tls="starttls", tls_ca_file=options.pop("tls_ca_file"),
                  tls_server_name=options.pop("tls_server_name", HOSTNAME),
                  ehlo_name="probe.smtpmon.test", timeout_seconds=NETWORK_TIMEOUT, **options)


def test_probe_starttls_session(postfix):
    from helpers import run_probe_at

    result = run_probe_at(postfix.target, starttls_module(tls_ca_file=postfix.ca_file))

    assert result.success, (result.failed_stage, result.reason, result.detail)
    assert result.stage("banner").reply.code == 220
    advertised = {"PIPELINING", "SIZE", "STARTTLS", "8BITMIME", "ENHANCEDSTATUSCODES"}
    assert advertised <= result.ehlo.extensions
    assert result.ehlo.size_limit == SIZE_LIMIT
    assert result.stage("starttls").reply.code == 220
    assert result.ehlo_tls is not None
    assert "STARTTLS" not in result.ehlo_tls.extensions  # RFC 3207: not offered again
    tls = result.tls
    assert tls.version in ("TLSv1.2", "TLSv1.3")
    assert tls.verified and tls.verify_error is None
    assert HOSTNAME in tls.subject
    assert tls.not_after > time.time()


def test_ehlo_after_starttls_carries_no_delayed_ack_stall(postfix):
    """Postfix's TLS session tickets cross our EHLO after the handshake; with a delayed ACK on
    our side, Nagle on Postfix's holds its reply ~40 ms (a third of the probes did, before
    TCP_QUICKACK). A stage duration must show the server, not that artefact. Normal: ~0.3 ms."""
    from helpers import run_probe_at

    module = starttls_module(tls_ca_file=postfix.ca_file)
    durations = []
    for _ in range(60):
        result = run_probe_at(postfix.target, module)
        assert result.success, (result.failed_stage, result.reason, result.detail)
        durations.append(result.stage("ehlo_tls").duration_seconds)
    stalled = [round(seconds * 1000, 1) for seconds in durations if seconds > 0.030]
    assert len(stalled) <= 2, f"ehlo_tls over 30 ms in {len(stalled)} of 60 probes: {stalled} ms"


def test_probe_expecting_550_for_unknown_user_succeeds(postfix):
    from helpers import run_probe_at

    module = starttls_module(tls_ca_file=postfix.ca_file, mail_from=MAIL_FROM,
                             rcpt_to=(UNKNOWN_USER,), expect={"rcpt": (550,)})
    result = run_probe_at(postfix.target, module)

    assert result.success, (result.failed_stage, result.reason, result.detail)
    rcpt = result.stage("rcpt").reply
    assert (rcpt.code, rcpt.enhanced) == (550, "5.1.1")


def test_probe_fails_at_rcpt_for_unknown_user(postfix):
    from helpers import run_probe_at

    module = starttls_module(tls_ca_file=postfix.ca_file, mail_from=MAIL_FROM,
                             rcpt_to=(UNKNOWN_USER,))
    result = run_probe_at(postfix.target, module)

    assert not result.success
    assert (result.failed_stage, result.reason) == ("rcpt", "rcpt_rejected")
    assert result.stage("rcpt").reply.code == 550
    assert result.duration_seconds < NETWORK_TIMEOUT / 2  # a rejection never waits for the timeout


def test_probe_reports_hostname_mismatch(postfix):
    from helpers import run_probe_at

    result = run_probe_at(postfix.target, starttls_module(tls_ca_file=postfix.ca_file,
                                                       tls_server_name="mx.example.org"))

    assert not result.success
    assert (result.failed_stage, result.reason) == ("starttls", "certificate_hostname_mismatch")
    assert HOSTNAME in result.tls.subject  # the certificate is still reported


def test_cli_probe_starttls_exits_ok(postfix):
    command = [sys.executable, "-m", "smtpmon", "probe", postfix.target, "--tls", "starttls",
               "--ca-file", postfix.ca_file, "--server-name", HOSTNAME]
    run = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=30)

    assert run.returncode == 0, run.stdout + run.stderr
    assert f"220 {HOSTNAME} ESMTP Postfix" in run.stdout
