"""`smtpmon probe` as a Nagios/Icinga plugin: the documented check commands work as written
(docs/troubleshooting.md) against IPv4 and IPv6 addresses with STARTTLS, a 4xx is WARNING and
a 5xx CRITICAL, and --json carries what the annotations say."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from smtpservers import SERVER_NAME, AiosmtpdServer, ScriptedHandler

REPO = Path(__file__).resolve().parent.parent
TROUBLESHOOTING = REPO / "docs" / "troubleshooting.md"
INSTALLED_COMMAND = "/usr/local/bin/smtpmon"
# The console script of the smtpmon under test (the documented command's installed path).
SMTPMON = str(Path(sys.executable).parent / "smtpmon")


def code_blocks() -> list[str]:
    blocks = re.findall(r"^```(\w*)\n(.*?)^```", TROUBLESHOOTING.read_text(encoding="utf-8"), flags=re.M | re.S)
    return [text for _, text in blocks]


def ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


FAMILIES = ["ipv4", pytest.param("ipv6", marks=pytest.mark.skipif(
    not ipv6_loopback_available(), reason="no IPv6 loopback (::1) on this machine"))]


@pytest.fixture(scope="module")
def servers(tls_contexts):
    """A STARTTLS server with a certificate for SERVER_NAME, on IPv4 and on IPv6 loopback."""
    hosts = {"ipv4": "127.0.0.1", **({"ipv6": "::1"} if ipv6_loopback_available() else {})}
    started = {family: AiosmtpdServer(starttls_context=tls_contexts["trusted"], host=host).start()
               for family, host in hosts.items()}
    yield started
    for server in started.values():
        server.stop()


def trusting(ca_file: str) -> dict[str, str]:
    """The environment of a check whose system CAs include the test CA (OpenSSL reads
    SSL_CERT_FILE for its default verify paths), as a real server's CA is."""
    return {**os.environ, "SSL_CERT_FILE": ca_file}


# -- Nagios ---------------------------------------------------------------------------------------
def nagios_example() -> tuple[str, list[str]]:
    """The documented command_line and the check_command's arguments ($ARG1$, $ARG2$...)."""
    (block,) = [block for block in code_blocks() if "define command" in block]
    command_line = re.search(r"^\s*command_line\s+(.*)$", block, re.M)[1]
    check_command = re.search(r"^\s*check_command\s+(.*)$", block, re.M)[1]
    return command_line, check_command.split("!")[1:]


@pytest.mark.parametrize("family", FAMILIES)
def test_documented_nagios_command_works_for_ipv4_and_ipv6_with_starttls(servers, ca_file, family):
    server = servers[family]
    command_line, arguments = nagios_example()
    assert arguments[0] == "25"
    macros = {"$HOSTADDRESS$": server.host, "$HOSTNAME$": SERVER_NAME,
              "$ARG1$": str(server.port), "$ARG2$": arguments[1]}  # the port swapped for the test's
    for macro, value in macros.items():
        command_line = command_line.replace(macro, value)
    assert "$" not in command_line and command_line.startswith(INSTALLED_COMMAND + " ")
    command_line = SMTPMON + command_line[len(INSTALLED_COMMAND):]

    # Nagios runs a command line through /bin/sh.
    checked = subprocess.run(["/bin/sh", "-c", command_line], capture_output=True, text=True,
                             env=trusting(ca_file), timeout=30)

    assert checked.returncode == 0, checked.stdout + checked.stderr
    shown = f"[{server.host}]:{server.port}" if family == "ipv6" else f"{server.host}:{server.port}"
    assert checked.stdout.startswith(f"SMTP OK - {shown}: success in ")
    assert "certificate verified" in checked.stdout and checked.stdout.count("\n") == 1


# -- Icinga 2 -------------------------------------------------------------------------------------
def icinga_command(host: dict[str, str], **service_vars: str) -> list[str]:
    """The argv Icinga 2 builds from the documented CheckCommand and Service for `host`
    (address, address6, name), with `service_vars` set on the service: arguments in order
    (`order` first by its value), one whose macros resolve to nothing left out, `skip_key`
    without its key."""
    (block,) = [block for block in code_blocks() if "object CheckCommand" in block]
    command = re.findall(r'"([^"]*)"', re.search(r"command = \[(.*?)\]", block)[1])
    variables = dict(re.findall(r'^\s*vars\.(\w+) = "?([^"\n]*)"?$', block, re.M))
    variables.update(service_vars)
    macros = {"address": host["address"], "address6": host["address6"], "host.name": host["name"]}

    def resolve(text: str) -> str:
        for _ in range(3):  # vars refer to host macros
            text = re.sub(r"\$([\w.]+)\$", lambda m: str(variables.get(m[1], macros.get(m[1], ""))), text)
        return text

    body = re.search(r"arguments = \{(.*)\n  \}", block, re.S)[1]
    arguments = []
    for key, value in re.findall(r'^    "([^"]+)" = "([^"]*)"$', body, re.M):
        arguments.append((0, key, resolve(value), False))
    for key, inner in re.findall(r'^    "([^"]+)" = \{(.*?)^    \}', body, re.M | re.S):
        value = re.search(r'value = "([^"]*)"', inner)[1]
        order = int(re.search(r"order = (-?\d+)", inner)[1])
        arguments.append((order, key, resolve(value), "skip_key = true" in inner))
    argv = list(command)
    for _, key, value, skip_key in sorted(arguments, key=lambda item: item[0]):
        if value:
            argv += [value] if skip_key else [key, value]
    return argv


@pytest.mark.parametrize("family", FAMILIES)
def test_documented_icinga_check_command_works_for_ipv4_and_ipv6_with_starttls(servers, ca_file, family):
    server = servers[family]
    host = {"address": "127.0.0.1", "address6": "::1", "name": SERVER_NAME}
    assert icinga_command(host) == [INSTALLED_COMMAND, "probe", "--status-only", "--port", "25", "--server-name",
                                    SERVER_NAME, "--tls", "starttls", "127.0.0.1"]
    # The port swapped for the test server's; an IPv6-only host as the page says ($address6$).
    service_vars = {"smtpmon_port": str(server.port)}
    if family == "ipv6":
        service_vars["smtpmon_address"] = "$address6$"
    argv = icinga_command(host, **service_vars)
    assert argv[-1] == server.host
    argv[0] = SMTPMON  # the installed path

    checked = subprocess.run(argv, capture_output=True, text=True, env=trusting(ca_file), timeout=30)

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.startswith("SMTP OK - ") and "certificate verified" in checked.stdout


# -- the verdict ------------------------------------------------------------------------------------
def probe(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([SMTPMON, "probe", *argv], capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize(
    "reply, exit_code, status",
    [
        ("450 4.2.0 <a@example.org>: Recipient address rejected: Greylisted", 1, "WARNING"),
        ("421 4.3.2 Service shutting down", 1, "WARNING"),
        ("451 4.3.0 Temporary lookup failure", 1, "WARNING"),
        ("550 5.1.1 <a@example.org>: Recipient address rejected: User unknown", 2, "CRITICAL"),
        ("554 5.7.1 Relay access denied", 2, "CRITICAL"),
    ],
)
def test_a_4xx_is_warning_and_a_5xx_critical(smtp_server, reply, exit_code, status):
    server = smtp_server(ScriptedHandler(rcpt_replies={"a@example.org": reply}))
    checked = probe(server.target, "--tls", "none", "--mail-from", "probe@example.org", "--rcpt", "a@example.org",
                    "--status-only")

    assert checked.returncode == exit_code, checked.stdout + checked.stderr
    assert checked.stdout.startswith(f"SMTP {status} - {server.target}: failed at rcpt (rcpt_rejected)")
    if exit_code == 1:
        assert f"; temporary failure ({reply[:3]}): senders retry |" in checked.stdout


def test_no_connection_is_critical():
    from daemon_process import free_port
    checked = probe(f"127.0.0.1:{free_port()}", "--status-only")
    assert checked.returncode == 2 and "failed at connect (connect_refused)" in checked.stdout


def test_the_help_documents_the_mapping():
    helped = subprocess.run([SMTPMON, "probe", "--help"], capture_output=True, text=True, timeout=30)
    text = " ".join(helped.stdout.split())
    assert "1 WARNING: the probe failed on a 4xx reply" in text
    assert "2 CRITICAL: the probe failed on a 5xx reply, or without a reply" in text


def test_contradictory_flags_are_unknown():
    checked = probe("127.0.0.1", "--json", "--status-only")
    assert checked.returncode == 3 and checked.stdout == ""
    assert "argument --status-only: not allowed with argument --json" in checked.stderr


def test_json_gives_each_reply_its_class_category_and_meanings(smtp_server):
    server = smtp_server(ScriptedHandler(rcpt_replies={"bob@example.org": "550 5.1.1 <bob@example.org>: User unknown"}))
    checked = probe(server.target, "--tls", "none", "--mail-from", "probe@example.org", "--rcpt", "bob@example.org",
                    "--json")

    assert checked.returncode == 2
    stages = {stage["stage"]: stage for stage in json.loads(checked.stdout)["stages"]}
    (rcpt,) = stages["rcpt"]["replies"]
    assert {key: rcpt[key] for key in ("code", "enhanced", "class", "category", "meaning", "enhanced_class",
                                       "enhanced_subject", "enhanced_meaning")} == {
        "code": 550, "enhanced": "5.1.1", "class": "permanent_negative", "category": "mail_system",
        "meaning": "requested action not taken: mailbox unavailable (not found, no access, or the command "
                   "was rejected by local security policy)",
        "enhanced_class": "permanent_failure", "enhanced_subject": "addressing",
        "enhanced_meaning": "bad destination mailbox address"}
    (banner,) = stages["banner"]["replies"]
    assert (banner["class"], banner["category"], banner["meaning"], banner["enhanced_class"]) == (
        "positive_completion", "connections", "service ready", None)
