"""AUTH passwords never leave smtpmon: every output path, run with a known secret, searched for it.

The paths: `smtpmon probe` (text and --json), the daemon's log at debug level, /metrics, the
landing page, /transcript and /probe?debug=true; with the password from a file and from an
environment variable; AUTH PLAIN and LOGIN, accepted (235) and refused (535). Each output is
searched for the password, its base64 (what AUTH LOGIN sends) and the AUTH PLAIN blob
(base64 of NUL user NUL password), and must show the auth stage, so that a path producing
nothing cannot pass.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import urllib.parse

import pytest
from daemon_process import REPO, start_daemon
from helpers import sample_value
from smtpservers import BANNER, QUIT_OK, Expect, Send, StartTls, password_authenticator, reply

USERNAME = "probe-user"
# Letters, digits and "-" only: no output format (HTML, JSON, logfmt) escapes them, so a leak
# cannot hide behind an escaped spelling.
PASSWORD = "pw-9Kq2xVb7Lm4Zt"
WRONG_PASSWORD = "pw-Wr0ngButSecretToo"
PASSWORD_ENV = "SMTPMON_TEST_SECRET"
WRONG_PASSWORD_ENV = "SMTPMON_TEST_WRONG_SECRET"
EHLO_AUTH = reply(r"EHLO ", b"250-mx.test.example\r\n250 AUTH PLAIN LOGIN\r\n")


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def secret_forms(password: str) -> list[str]:
    return [password, _b64(password), _b64(f"\0{USERNAME}\0{password}")]


def assert_no_secret(output: str, where: str) -> None:
    for password in (PASSWORD, WRONG_PASSWORD):
        for form in secret_forms(password):
            assert form not in output, f"{where} shows {form!r}"


@pytest.fixture
def auth_server(smtp_server, tls_contexts):
    return smtp_server(starttls_context=tls_contexts["trusted"],
                       authenticator=password_authenticator(USERNAME, PASSWORD))


@pytest.fixture
def password_files(tmp_path) -> dict[str, str]:
    files = {}
    for name, password in (("right", PASSWORD), ("wrong", WRONG_PASSWORD)):
        path = tmp_path / f"{name}-password"
        path.write_text(password + "\n")
        files[name] = str(path)
    return files


# -- smtpmon probe ------------------------------------------------------------------------------
@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
@pytest.mark.parametrize("source", ["file", "env"])
@pytest.mark.parametrize("outcome", ["accepted", "refused"])
def test_probe_command_output_never_shows_the_password(auth_server, ca_file, password_files,
                                                       mechanism, source, outcome):
    which = "right" if outcome == "accepted" else "wrong"
    if source == "file":
        password_args = ["--password-file", password_files[which]]
    else:
        password_args = ["--password-env", PASSWORD_ENV]
    environment = {"PATH": "/usr/bin:/bin", PASSWORD_ENV: PASSWORD if which == "right" else WRONG_PASSWORD}
    command = [sys.executable, "-m", "smtpmon", "probe", auth_server.target, "--tls", "starttls",
               "--ca-file", ca_file, "--timeout", "5", "--auth", mechanism, "--user", USERNAME, *password_args]
    code = 235 if outcome == "accepted" else 535

    text = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=30)
    as_json = subprocess.run(command + ["--json"], cwd=REPO, env=environment, capture_output=True, text=True,
                             timeout=30)

    assert text.returncode == as_json.returncode == (0 if outcome == "accepted" else 2), text.stdout + text.stderr
    assert_no_secret(text.stdout + text.stderr, "smtpmon probe")
    assert_no_secret(as_json.stdout + as_json.stderr, "smtpmon probe --json")
    # The auth stage ran and is shown, masked.
    assert f"C: AUTH {mechanism}" in text.stdout and f"S: {code} " in text.stdout
    assert "********" in text.stdout
    auth = next(stage for stage in json.loads(as_json.stdout)["stages"] if stage["stage"] == "auth")
    assert auth["replies"][-1]["code"] == code


# -- the daemon ---------------------------------------------------------------------------------
MODULES = {
    # module: (mechanism, password source, final AUTH reply code)
    "plain_file": ("PLAIN", "right file", 235),
    "login_env": ("LOGIN", "right env", 235),
    "plain_wrong_env": ("PLAIN", "wrong env", 535),
    "login_wrong_file": ("LOGIN", "wrong file", 535),
}


def daemon_config(target: str, ca_file: str, password_files: dict[str, str]) -> str:
    lines = ["global: {interval: 1s, timeout: 800ms}", "modules:"]
    for name, (mechanism, source, _) in MODULES.items():
        which, kind = source.split()
        if kind == "file":
            password = f"password_file: {password_files[which]}"
        else:
            password = f"password_env: {PASSWORD_ENV if which == 'right' else WRONG_PASSWORD_ENV}"
        lines.append(f"  {name}: {{tls: starttls, tls_ca_file: {ca_file}, "
                     f"auth: {{mechanism: {mechanism}, username: {USERNAME}, {password}}}}}")
    lines.append("targets:")
    lines += [f'  - {{address: "{target}", module: {name}}}' for name in MODULES]
    return "\n".join(lines) + "\n"


def test_daemon_outputs_never_show_the_password(tmp_path, auth_server, ca_file, password_files):
    target = auth_server.target
    running = start_daemon(tmp_path, daemon_config(target, ca_file, password_files),
                           env={PASSWORD_ENV: PASSWORD, WRONG_PASSWORD_ENV: WRONG_PASSWORD})
    try:
        metrics = running.wait_for(lambda text: all(
            sample_value(text, "smtpmon_probes_total", target=target, module=name) for name in MODULES), timeout=10)
        outputs = {"/metrics": metrics, "/": running.get("/")[1]}
        for name in MODULES:
            query = urllib.parse.urlencode({"target": target, "module": name})
            outputs[f"/transcript {name}"] = running.get(f"/transcript?{query}")[1]
            outputs[f"/target {name}"] = running.get(f"/target?{query}")[1]
            outputs[f"/probe?debug=true {name}"] = running.get(f"/probe?{query}&debug=true")[1]
            outputs[f"/probe {name}"] = running.get(f"/probe?{query}")[1]
    finally:
        running.stop()
    outputs["log"] = running.log()

    for where, output in outputs.items():
        assert_no_secret(output, where)
    # Every path showed the auth stage.
    for name, (mechanism, _, code) in MODULES.items():
        assert sample_value(outputs["/metrics"], "smtpmon_replies_total", target=target, module=name, stage="auth",
                     code=str(code)) >= 1
        assert sample_value(outputs[f"/probe {name}"], "smtpmon_replies_total", module=name, stage="auth",
                     code=str(code)) >= 1
        for path in ("/transcript", "/target", "/probe?debug=true"):
            shown = outputs[f"{path} {name}"]
            assert f"C: AUTH {mechanism}" in shown and f"S: {code} " in shown and "********" in shown, shown
    row = {name: next(r for r in outputs["/"].split("<tr class=") if f"module={name}" in r)
           for name in MODULES}
    for name, (_, _, code) in MODULES.items():
        auth_codes = re.search(r'<span class="stage">auth</span>(.*?)</span>', row[name]).group(1)
        assert re.search(rf">{code}[ <]", auth_codes), auth_codes
    log = outputs["log"]
    for name, (_, _, code) in MODULES.items():
        if code == 235:
            assert f"target={target} module={name}" in log
        else:
            assert f"module={name} stage=auth reason=auth_failed" in log


# -- a server that echoes what it was sent ------------------------------------------------------
EHLO_STARTTLS = reply(r"EHLO ", b"250-mx.test.example\r\n250 STARTTLS\r\n")
STARTTLS_GO = reply(r"STARTTLS", b"220 2.0.0 Ready to start TLS\r\n")
ECHOING_REPLIES = {
    "PLAIN": [EHLO_AUTH, Expect(r"AUTH PLAIN "),
              Send(f"535 5.7.8 Authentication failed for {_b64(chr(0) + USERNAME + chr(0) + PASSWORD)}\r\n".encode()),
              QUIT_OK],
    "LOGIN": [EHLO_AUTH, reply(r"AUTH LOGIN", b"334 VXNlcm5hbWU6\r\n"),
              reply(r".", b"334 UGFzc3dvcmQ6\r\n"), Expect(r"."),
              Send(f"535 5.7.8 bad password {PASSWORD} ({_b64(PASSWORD)})\r\n".encode()), QUIT_OK],
}


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_a_server_echoing_the_secret_cannot_put_it_in_any_output(scripted_server, tls_contexts, ca_file,
                                                                 tmp_path, mechanism):
    """Servers may quote what they could not accept (a 535 or 501 with the client's line):
    the secret is masked wherever the server's words go (replies, transcript, details)."""
    server = scripted_server([BANNER, EHLO_STARTTLS, STARTTLS_GO, StartTls(tls_contexts["trusted"]),
                              *ECHOING_REPLIES[mechanism]])
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD)
    command = [sys.executable, "-m", "smtpmon", "probe", server.target, "--tls", "starttls",
               "--ca-file", ca_file, "--timeout", "5",
               "--auth", mechanism, "--user", USERNAME, "--password-file", str(password_file)]

    text = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=30)
    as_json = subprocess.run(command + ["--json"], cwd=REPO, capture_output=True, text=True, timeout=30)

    assert text.returncode == as_json.returncode == 2
    assert_no_secret(text.stdout + text.stderr, "smtpmon probe")
    assert_no_secret(as_json.stdout + as_json.stderr, "smtpmon probe --json")
    assert "S: 535 5.7.8 " in text.stdout and "failed at auth (auth_failed)" in text.stdout
