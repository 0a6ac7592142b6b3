"""`smtpmon probe --mx DOMAIN` as a user runs it: a subprocess pointed at the loopback knotd
with --dns-server (never the system resolver), real SMTP servers on 127.0.57.x and ::1."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from dns_server import silent_server
from mail_domains import fqdn, mail_world

REPO_ARGS = [sys.executable, "-m", "smtpmon", "probe", "--mx"]


@pytest.fixture(scope="module")
def world(ca, ca_file):
    with mail_world(ca, ca_file) as world:
        yield world


def smtpmon_probe(world, domain: str, *args: str, port: int | None = None):
    command = [*REPO_ARGS, fqdn(domain), "--dns-server", world.nameserver,
               "--port", str(port or world.port), "--tls", "starttls", "--ca-file", world.ca_file,
               "--timeout", "5", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


def test_a_healthy_domain_prints_the_mx_table_every_transcript_and_exits_0(world):
    done = smtpmon_probe(world, "good")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "good.domains.test: DNS ok, 2 MX hosts, 3 addresses" in out
    assert "   10  mx1.good.domains.test  ok          ::1, 127.0.57.1" in out
    assert "   20  mx2.good.domains.test  ok          127.0.57.2" in out
    for heading in ("--- mx1.good.domains.test [::1] (MX 10)",
                    "--- mx1.good.domains.test [127.0.57.1] (MX 10)",
                    "--- mx2.good.domains.test [127.0.57.2] (MX 20)"):
        assert heading in out
    assert out.count("*  certificate verified") == 3  # each against its MX host's name
    assert "C: STARTTLS" in out
    last = out.strip().splitlines()[-1]
    assert last.startswith("SMTP OK - good.domains.test: ok: deliverable yes, 3/3 addresses accept "
                           "(IPv4 2/2, IPv6 1/1), most preferred MX accepts: yes")
    assert "| time=" in last and "accepting=3;;;0" in last


def test_brief_a_broken_first_mx_is_a_warning(world):
    done = smtpmon_probe(world, "half", "--brief")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "  mx1.half.domains.test [127.0.57.3] (MX 10): FAILS at connect (connect_refused)" in done.stdout
    assert "  mx2.good.domains.test [127.0.57.2] (MX 20): accepts" in done.stdout
    assert "C: EHLO" not in done.stdout  # no transcripts
    assert done.stdout.strip().splitlines()[-1].startswith(
        "SMTP WARNING - half.domains.test: degraded: deliverable yes, 1/2")


@pytest.mark.parametrize("domain, args, code, words", [
    ("dead", (), 2, "SMTP CRITICAL - dead.domains.test: undeliverable"),
    ("nullmx", (), 2, "SMTP CRITICAL - nullmx.domains.test: undeliverable"),
    ("nullmx", ("--no-mail-expected",), 0, "SMTP OK - nullmx.domains.test: no_mail"),
    ("misconf", (), 1, "SMTP WARNING - misconf.domains.test: degraded"),
])
def test_the_exit_code_follows_the_domain_verdict(world, domain, args, code, words):
    done = smtpmon_probe(world, domain, "--brief", *args)
    assert done.returncode == code, done.stdout + done.stderr
    assert done.stdout.strip().splitlines()[-1].startswith(words)


def test_json_gives_the_whole_tree(world):
    done = smtpmon_probe(world, "good", "--json")
    assert done.returncode == 0, done.stderr
    tree = json.loads(done.stdout)
    assert (tree["domain"], tree["verdict"], tree["deliverable"]) == ("good.domains.test", "ok", True)
    assert tree["addresses"] == {"ipv4": 2, "ipv6": 1}
    assert [host["name"] for host in tree["resolution"]["mx_hosts"]] == [
        "mx1.good.domains.test", "mx2.good.domains.test"]
    assert tree["resolution"]["mx_hosts"][0]["addresses"][0] == {"family": "ipv6", "ip": "::1"}
    assert [(p["address"], p["accepts"]) for p in tree["probes"]] == [
        ("::1", True), ("127.0.57.1", True), ("127.0.57.2", True)]
    assert tree["probes"][0]["result"]["tls"]["verified"] is True


def test_ipv4_only(world):
    done = smtpmon_probe(world, "good", "-4", "--brief")
    assert done.returncode == 0
    assert "::1" not in done.stdout and "(IPv4 2/2, IPv6 0/0)" in done.stdout


@pytest.mark.parametrize("args, words", [
    (["_dmarc.example.org"], "--mx: '_dmarc.example.org': the label '_dmarc'"),
    (["example.org", "--dns-server", "ns.example.org"], "an IP address, with an optional port"),
    (["example.org", "--port", "0"], "port must be 1-65535"),
])
def test_bad_usage_is_unknown(args, words):
    done = subprocess.run([*REPO_ARGS, *args], capture_output=True, text=True, timeout=30)
    assert done.returncode == 3 and words in done.stderr, done.stderr


def test_a_resolver_that_never_answers_is_critical_within_the_timeout(bad_resolvers):
    silent = bad_resolvers(silent_server())
    started = time.monotonic()
    done = subprocess.run([*REPO_ARGS, fqdn("good"), "--dns-server",
                           f"{silent.address}:{silent.port}", "--timeout", "2", "--brief"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2, done.stdout + done.stderr
    assert time.monotonic() - started < 5  # 1 s for DNS (half the timeout) plus start-up
    assert "good.domains.test: DNS timeout, 0 MX hosts" in done.stdout
    assert "did not answer" in done.stdout
