"""`smtpmon probe`: what a person (or Nagios) sees, and the exit codes."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from smtpservers import (
    BANNER,
    EHLO_OK,
    QUIT_OK,
    Expect,
    ScriptedHandler,
    Send,
    Sleep,
    password_authenticator,
)

from smtpmon.cli import main

SECRET = "correct horse battery staple"
SECRET_PLAIN_BLOB = "AHByb2JlAGNvcnJlY3QgaG9yc2UgYmF0dGVyeSBzdGFwbGU="  # base64("\0probe\0" + SECRET)
ROOT = Path(__file__).resolve().parent.parent


def probe_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["probe", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def status_line(out: str) -> str:
    return out.rstrip("\n").splitlines()[-1]


def test_transcript_with_annotations_and_status_line(smtp_server, capsys):
    server = smtp_server()
    code, out, err = probe_cli(capsys, server.target, "--mail-from", "probe@example.org", "--rcpt", "a@example.org")

    assert code == 0 and err == ""
    lines = out.splitlines()
    banner = next(index for index, line in enumerate(lines) if "S: 220 mx.test.example" in line)
    assert lines[banner].startswith("[  0.0")
    assert lines[banner + 1].strip() == "# 220: positive completion, connections: service ready"
    ehlo_end = next(index for index, line in enumerate(lines) if line.endswith("S: 250 HELP"))
    assert lines[ehlo_end - 1].endswith("S: 250-8BITMIME")  # no annotation inside a multi-line reply
    assert lines[ehlo_end + 1].strip().startswith("# 250: positive completion, mail system")
    assert any(line.endswith("C: MAIL FROM:<probe@example.org>") for line in lines)
    assert "# 2.1.5: success, addressing: destination address valid" in out
    last = status_line(out)
    assert last.startswith(f"SMTP OK - {server.target}: success in ")
    summary, perfdata = last.split(" | ")
    assert perfdata.startswith("time=") and " banner=" in perfdata and " rcpt=" in perfdata
    assert all(item.split("=")[1].split(";")[0].endswith("s") for item in perfdata.split())


def test_rejection_is_critical_and_explained(smtp_server, capsys):
    server = smtp_server(ScriptedHandler(rcpt_replies={"bob@example.org": "550 5.1.1 <bob@example.org>: Recipient address rejected: User unknown"}))
    code, out, _ = probe_cli(capsys, server.target, "--mail-from", "probe@example.org", "--rcpt", "bob@example.org")

    assert code == 2
    assert "# 550: permanent negative, mail system: requested action not taken" in out
    assert "# 5.1.1: permanent failure, addressing: bad destination mailbox address" in out
    assert status_line(out).startswith(f"SMTP CRITICAL - {server.target}: failed at rcpt (rcpt_rejected)")


def test_garbage_is_annotated_as_a_protocol_error(scripted_server, capsys):
    server = scripted_server([Send(b"SSH-2.0-OpenSSH_9.2\r\n")])
    code, out, _ = probe_cli(capsys, server.target)

    assert code == 2
    assert "S: SSH-2.0-OpenSSH_9.2\n" in out
    assert "# protocol error: not a reply line: expected a three-digit code" in out
    assert "failed at banner (protocol_error)" in status_line(out)


def test_a_session_the_server_closes_at_ehlo_is_critical_not_ok(scripted_server, capsys):
    server = scripted_server([BANNER, Expect(r"EHLO "), Send(b"221 2.0.0 mx.test.example closing connection\r\n")])
    code, out, _ = probe_cli(capsys, server.target, "--tls", "none")

    assert code == 2
    assert status_line(out).startswith(f"SMTP CRITICAL - {server.target}: failed at ehlo (unexpected_code)")


def test_expected_rejection_is_ok(smtp_server, capsys):
    server = smtp_server(ScriptedHandler(rcpt_replies={"bob@example.org": "550 5.1.1 User unknown"}))
    code, out, _ = probe_cli(capsys, server.target, "--mail-from", "", "--rcpt", "bob@example.org", "--expect", "rcpt=550,551")

    assert code == 0, out
    assert "C: MAIL FROM:<>" in out


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_auth_secret_never_printed(smtp_server, tls_contexts, ca_file, tmp_path, capsys, mechanism):
    server = smtp_server(starttls_context=tls_contexts["trusted"], authenticator=password_authenticator("probe", SECRET))
    password_file = tmp_path / "password"
    password_file.write_text(SECRET + "\n")
    code, out, err = probe_cli(capsys, server.target, "--tls", "starttls", "--ca-file", ca_file, "--auth", mechanism.lower(),
                               "--user", "probe", "--password-file", str(password_file))

    assert code == 0, out
    assert "235 2.7.0 Authentication successful" in out
    assert ("C: AUTH PLAIN ********" in out) if mechanism == "PLAIN" else (out.count("C: ********") == 2)
    for shown in (out, err):
        assert SECRET not in shown and SECRET_PLAIN_BLOB not in shown


def test_json_is_the_whole_result(smtp_server, tls_contexts, ca_file, capsys):
    server = smtp_server(starttls_context=tls_contexts["trusted"])
    code, out, _ = probe_cli(capsys, server.target, "--ca-file", ca_file, "--json")

    assert code == 0
    result = json.loads(out)
    assert result["success"] is True and result["target"] == server.target and result["module"] == "cli"
    assert [stage["stage"] for stage in result["stages"]] == ["resolve", "connect", "banner", "ehlo", "starttls", "ehlo_tls", "quit"]
    assert result["stages"][2]["replies"][0]["code"] == 220
    assert result["ehlo"]["extensions"] == sorted(result["ehlo"]["extensions"]) and "STARTTLS" in result["ehlo"]["extensions"]
    assert result["tls"]["verified"] is True and "IP:127.0.0.1" in result["tls"]["sans"]
    assert any(line["direction"] == "S" for line in result["transcript"])


def test_json_and_status_line_of_opportunistic_tls_over_an_unverifiable_certificate(smtp_server, tls_contexts,
                                                                                    capsys):
    server = smtp_server(starttls_context=tls_contexts["self_signed"])
    code, out, _ = probe_cli(capsys, server.target, "--json")
    result = json.loads(out)
    assert code == 0 and result["success"] is True
    assert (result["tls"]["verified"], result["tls"]["verify_reason"]) == (False, "certificate_untrusted")
    assert (result["address"], result["address_family"]) == ("127.0.0.1", "ipv4")

    code, out, _ = probe_cli(capsys, server.target, "--status-only")
    assert code == 0
    assert out.startswith(f"SMTP OK - {server.target}: success in ")
    assert "certificate NOT verified: certificate_untrusted" in out


def test_certificate_expiring_soon_is_a_warning_then_critical(smtp_server, tls_contexts, ca_file, capsys):
    server = smtp_server(starttls_context=tls_contexts["expiring"])  # 7 days left

    code, out, _ = probe_cli(capsys, server.target, "--ca-file", ca_file)
    assert code == 1
    assert status_line(out).startswith("SMTP WARNING - ") and "certificate expires within 14 days" in status_line(out)

    code, out, _ = probe_cli(capsys, server.target, "--ca-file", ca_file, "--crit-days", "10")
    assert code == 2 and status_line(out).startswith("SMTP CRITICAL - ")

    code, out, _ = probe_cli(capsys, server.target, "--ca-file", ca_file, "--warn-days", "5")
    assert code == 0


def test_slow_session_is_a_warning(scripted_server, capsys):
    server = scripted_server([Sleep(0.3), BANNER, EHLO_OK, QUIT_OK])
    code, out, _ = probe_cli(capsys, server.target, "--warning", "0.2", "--status-only")

    assert code == 1
    assert out.count("\n") == 1 and out.startswith("SMTP WARNING - ") and "slower than 0.2s" in out
    assert "time=" in out and ";0.2;;0" in out


@pytest.mark.parametrize(
    "argv, words",
    [
        (["127.0.0.1:70000"], "port must be 1-65535"),
        (["127.0.0.1", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["127.0.0.1", "--auth", "PLAIN", "--user", "u", "--password-file", "/nonexistent/pw"], "--password-file: file not found: /nonexistent/pw"),
        (["127.0.0.1", "--auth", "LOGIN", "--user", "u", "--password-env", "SMTPMON_TEST_UNSET"], "SMTPMON_TEST_UNSET"),
        (["127.0.0.1", "--expect", "rcpt=5x0"], "codes must be numbers"),
        (["127.0.0.1", "--expect", "bogus=250"], "STAGE one of"),
        (["127.0.0.1", "--rcpt", "a@example.org"], "--rcpt needs --mail-from"),
        (["127.0.0.1", "--timeout", "0"], "positive number of seconds"),
        (["127.0.0.1", "--tls", "sometimes"], "invalid choice"),
        (["127.0.0.1", "--mail-from", "", "--rcpt", "a@example.org", "--message-size", "10MB"],
         "--message-size needs --data"),
        (["127.0.0.1", "--message-size", "ten"], 'invalid size "ten"'),
        (["127.0.0.1", "--connect-timeout", "0"], "positive number of seconds"),
    ],
)
def test_bad_usage_is_unknown_with_one_clear_line(capsys, monkeypatch, argv, words):
    monkeypatch.delenv("SMTPMON_TEST_UNSET", raising=False)
    code, out, err = probe_cli(capsys, *argv)

    assert code == 3
    assert out == ""
    assert err.count("\n") == 1 and words in err


@pytest.mark.parametrize("tls", ["opportunistic", "none"])
def test_auth_without_certain_tls_is_refused_before_connecting(capsys, tmp_path, tls):
    """As in the config file: with "opportunistic" a server that stops offering STARTTLS
    would be sent the password in clear."""
    password_file = tmp_path / "password"
    password_file.write_text("s3cret")
    code, out, err = probe_cli(capsys, "127.0.0.1:9", "--tls", tls, "--auth", "PLAIN", "--user", "u",
                               "--password-file", str(password_file))

    assert code == 3 and out == ""
    assert err == f"smtpmon probe: error: --auth needs --tls starttls or implicit, so the password never crosses the network in clear; got --tls {tls}\n"


def test_real_process_exit_code_on_failure():
    """The exit code reaches the shell (Nagios reads it from there)."""
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
    process = subprocess.run(
        [sys.executable, "-m", "smtpmon", "probe", f"127.0.0.1:{port}", "--timeout", "2"],
        capture_output=True, text=True, timeout=20, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert process.returncode == 2, process.stderr
    assert process.stdout.splitlines()[-1].startswith(f"SMTP CRITICAL - 127.0.0.1:{port}: failed at connect (connect_refused)")


def test_a_fresh_process_times_the_handshake_not_its_own_tls_setup(smtp_server, tls_contexts, ca, tmp_path):
    """`smtpmon probe` is always a process's first TLS session: loading the CA bundle and the
    certificate parser (tens of ms) must not be reported as the server's time, in its starttls
    stage or in the session's (opportunistic TLS, the default, here)."""
    bundle = tmp_path / "bundle.pem"  # as large as the system's, so that loading it takes time
    system = ssl.get_default_verify_paths().cafile
    bundle.write_bytes((Path(system).read_bytes() if system and Path(system).exists() else b"") + ca.cert_pem.bytes())
    server = smtp_server(starttls_context=tls_contexts["trusted"])
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.run(
        [sys.executable, "-m", "smtpmon", "probe", server.target, "--ca-file", str(bundle), "--json"],
        capture_output=True, text=True, timeout=30, cwd=ROOT, env=environment,
    )
    assert process.returncode == 0, process.stderr
    result = json.loads(process.stdout)
    starttls = next(stage for stage in result["stages"] if stage["stage"] == "starttls")

    # What the set-up costs a fresh process on this machine, now. A stage that included it
    # took about as long (61 ms against 68 here); the handshake alone takes a tenth of it.
    setup = subprocess.run(
        [sys.executable, "-c",
         "import ssl, sys, time; started = time.perf_counter(); from cryptography import x509; "
         "ssl.create_default_context(cafile=sys.argv[1]); print(time.perf_counter() - started)",
         str(bundle)],
        capture_output=True, text=True, timeout=30, env=environment, check=True,
    )
    assert starttls["duration_seconds"] < float(setup.stdout) / 2
    assert result["duration_seconds"] < float(setup.stdout) / 2  # nor between two stages
