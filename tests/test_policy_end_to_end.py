"""DANE and MTA-STS end to end, as users see them: `smtpmon run` scraped over HTTP
(tests/daemon_process.py), `/probe?domain=`, and `smtpmon probe --mx` as a subprocess, against
tests/mail_policy_world.py (knotd with a signed zone, a validating unbound, nginx with an
MTA-STS policy, SMTP servers on 127.18.4.x). Every part is named by its loopback address:
the validating resolver is both `dns.nameservers` and `dns.validating_resolver`, so no test
name reaches the system resolver."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from daemon_process import start_daemon
from helpers import sample_value
from mail_policy_world import PolicyWorld, start_world

DOMAINS = ("good", "changed", "selfsigned", "sts")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> PolicyWorld:
    world = start_world(tmp_path_factory.mktemp("policy"))
    yield world
    world.stop()


def config(world: PolicyWorld) -> str:
    domains = "".join(
        f"  - {{domain: {name}.pol.test, module: mx, port: {world.port}, "
        f'mta_sts_ca_file: "{world.ca_file}"}}\n' for name in DOMAINS)
    return f"""\
global: {{interval: 3s, timeout: 2500ms}}
modules:
  mx: {{tls: opportunistic, tls_ca_file: "{world.ca_file}"}}
domains:
{domains}dns:
  nameservers: ["{world.validating_resolver}"]
  validating_resolver: "{world.validating_resolver}"
probe_allow_domains: ["*.pol.test"]
"""


@pytest.fixture(scope="module")
def daemon(world, tmp_path_factory):
    running = start_daemon(tmp_path_factory.mktemp("daemon"), config(world))
    try:
        running.wait_for(lambda text: all(
            (sample_value(text, "smtpmon_domain_probes_total", domain=f"{name}.pol.test") or 0) >= 1
            for name in DOMAINS), timeout=30)
        yield running
    finally:
        running.stop()


def value(text: str, name: str, domain: str, **labels) -> float | None:
    return sample_value(text, name, domain=f"{domain}.pol.test", module="mx", **labels)


def test_the_daemon_reports_dane_per_mx_host_and_address(daemon, world):
    text = daemon.metrics()
    assert value(text, "smtpmon_domain_dane_mx_secure", "good") == 1
    assert value(text, "smtpmon_domain_tlsa_state", "good", mx="mx.good.pol.test", state="secure") == 1
    assert value(text, "smtpmon_domain_tlsa_state", "good", mx="mx.good.pol.test", state="bogus") == 0
    good = dict(mx="mx.good.pol.test", address="127.18.4.1")
    assert value(text, "smtpmon_domain_dane_verdict", "good", verdict="match", **good) == 1
    assert value(text, "smtpmon_domain_dane_match_info", "good", usage="3", selector="1",
                 matching_type="1", **good) == 1
    assert value(text, "smtpmon_domain_dane_rollover_ready", "good", **good) == 0
    changed = dict(mx="mx.changed.pol.test", address="127.18.4.2")
    assert value(text, "smtpmon_domain_dane_verdict", "changed", verdict="mismatch", **changed) == 1
    assert value(text, "smtpmon_domain_dane_verdict", "changed", verdict="match", **changed) == 0
    assert value(text, "smtpmon_domain_dane_unmatched_records", "changed", **changed) == 1
    # A self-signed DANE-EE certificate: DANE matches, PKIX is reported apart, the session passes.
    selfsigned = dict(mx="mx.selfsigned.pol.test", address="127.18.4.3")
    assert value(text, "smtpmon_domain_dane_verdict", "selfsigned", verdict="match", **selfsigned) == 1
    assert sample_value(text, "smtpmon_probe_success", domain="selfsigned.pol.test", **selfsigned) == 1
    assert sample_value(text, "smtpmon_tls_certificate_verified", domain="selfsigned.pol.test",
                        **selfsigned) == 0


def test_the_daemon_reports_an_enforced_sts_policy_missing_one_mx(daemon):
    text = daemon.metrics()
    assert value(text, "smtpmon_domain_mta_sts_record_state", "sts", state="present") == 1
    assert value(text, "smtpmon_domain_mta_sts_policy_mode", "sts", mode="enforce") == 1
    assert value(text, "smtpmon_domain_mta_sts_policy_mode", "sts", mode="no_policy") == 0
    assert value(text, "smtpmon_domain_mta_sts_fetch_failing", "sts") == 0
    assert value(text, "smtpmon_domain_mta_sts_max_age_seconds", "sts") == 86400
    assert value(text, "smtpmon_domain_mta_sts_policy_changed_timestamp_seconds", "sts") > 1.7e9
    assert value(text, "smtpmon_domain_mta_sts_mx_verdict", "sts", mx="mx1.sts.pol.test",
                 address="127.18.4.4", verdict="ok") == 1
    assert value(text, "smtpmon_domain_mta_sts_mx_verdict", "sts", mx="mx2.sts.pol.test",
                 address="127.18.4.5", verdict="mx_not_listed") == 1
    assert value(text, "smtpmon_domain_tlsrpt_state", "sts", state="present") == 1
    assert value(text, "smtpmon_domain_mta_sts_record_state", "good", state="absent") == 1
    assert value(text, "smtpmon_domain_tlsa_state", "sts", mx="mx2.sts.pol.test", state="none") == 1


def test_probe_domain_answers_with_the_same_names(daemon):
    status, text = daemon.get("/probe?domain=changed.pol.test&module=mx")
    assert status == 200
    assert value(text, "smtpmon_domain_dane_verdict", "changed", mx="mx.changed.pol.test",
                 address="127.18.4.2", verdict="mismatch") == 1


def test_promtool_finds_the_policy_metrics_clean(daemon):
    from prometheus_tools import require_tool

    promtool = require_tool("promtool")
    done = subprocess.run([promtool, "check", "metrics"], input=daemon.metrics(), capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr


def cli(world: PolicyWorld, domain: str, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "smtpmon", "probe", "--mx", f"{domain}.pol.test",
               "--dns-server", world.validating_resolver, "--validating-resolver", world.validating_resolver,
               "--mta-sts-ca-file", world.ca_file, "--ca-file", world.ca_file, "--port", str(world.port),
               "--timeout", "8", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


def test_the_command_line_shows_the_dane_lookup_and_a_match(world):
    done = cli(world, "good", "--brief")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "DNS   good.pol.test MX: ok, DNSSEC-secure (AD)" in done.stdout
    assert f"DNS   _{world.port}._tcp.mx.good.pol.test TLSA: secure" in done.stdout
    assert world.tlsa["mx.good.pol.test"] in done.stdout
    assert "mx.good.pol.test [127.18.4.1]: DANE match (DANE-EE 3 1 1 matches the leaf)" in done.stdout


def test_the_command_line_says_critical_for_a_dane_mismatch(world):
    done = cli(world, "changed", "--brief")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "mx.changed.pol.test [127.18.4.2]: DANE mismatch" in done.stdout
    assert done.stdout.splitlines()[-1].startswith("SMTP CRITICAL")


def test_the_command_line_shows_the_policy_and_the_mx_it_misses(world):
    done = cli(world, "sts", "--brief")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "HTTPS https://mta-sts.sts.pol.test/.well-known/mta-sts.txt at 127.18.5.80" in done.stdout
    assert "mode: enforce" in done.stdout and "mx: mx1.sts.pol.test" in done.stdout
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("  mx2.sts.pol.test [127.18.4.5]: ")]
    assert "MTA-STS mx_not_listed [critical]" in line and "DANE not_applicable" in line
    assert "_smtp._tls.sts.pol.test TXT: present" in done.stdout
    tree = json.loads(cli(world, "sts", "--json").stdout)
    assert tree["policy"]["lookups"]["sts"]["policy"]["mode"] == "enforce"
    assert [a["sts"]["verdict"] for a in tree["policy"]["addresses"]] == ["ok", "mx_not_listed"]


def test_the_status_page_fails_a_domain_by_its_tls_policy(daemon):
    """A domain every session of which passes, but whose MX a DANE sender (or an enforced
    MTA-STS policy) refuses, is failing on the page, first, with the verdict at the address."""
    status, page = daemon.get("/")
    assert status == 200
    order = re.findall(r'<tbody class="domain (\w+)" data-domain="([^"]+)"', page)
    assert order == [("failing", "changed.pol.test"), ("failing", "sts.pol.test"),
                     ("healthy", "good.pol.test"), ("healthy", "selfsigned.pol.test")]
    changed = page[page.index('data-domain="changed.pol.test"'):page.index('data-domain="sts.pol.test"')]
    assert '<span class="badge failing">FAILING</span>' in changed  # deliverable, but not to DANE senders
    assert '<span class="policy bad">DANE mismatch</span>' in changed
    assert ("senders that check the TLS policy do not deliver: mx.changed.pol.test [127.18.4.2]: "
            "DANE mismatch") in changed
    sts = page[page.index('data-domain="sts.pol.test"'):page.index('data-domain="good.pol.test"')]
    assert '<span class="policy bad">MTA-STS mx_not_listed</span>' in sts
    assert '<span class="policy">MTA-STS ok</span>' in sts
    good = page[page.index('data-domain="good.pol.test"'):]
    assert '<span class="policy">DANE match</span>' in good
    # The filter finds a verdict by its words.
    _, filtered = daemon.get("/?q=DANE+mismatch")
    assert re.findall(r'data-domain="([^"]+)"', filtered) == ["changed.pol.test"]


def test_the_domain_page_shows_the_tls_policy_as_the_command_line_does(daemon, world):
    status, page = daemon.get("/domain?domain=changed.pol.test&module=mx")
    assert status == 200
    assert "<h2>TLS policy</h2>" in page
    assert f"DNS   _{world.port}._tcp.mx.changed.pol.test TLSA: secure" in page
    assert "mx.changed.pol.test [127.18.4.2]: DANE mismatch" in page
