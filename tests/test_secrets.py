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
from daemon_process import REPO, probed, start_daemon
from helpers import sample_value
from smtpservers import (
    BANNER,
    EHLO_OK,
    QUIT_OK,
    Close,
    Expect,
    Send,
    Sleep,
    StartTls,
    password_authenticator,
    reply,
)

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


# -- a password that cannot be read -------------------------------------------------------------
def test_daemon_starts_without_a_readable_password_and_fails_that_module_at_auth(tmp_path, auth_server,
                                                                                 ca_file):
    """Outside the service ($CREDENTIALS_DIRECTORY unset) the daemon still runs: the module
    needing the password fails at auth with a named reason and sends no AUTH, the others run,
    and the log says why at start."""
    target = auth_server.target
    config = (
        "global: {interval: 1s, timeout: 800ms}\n"
        "modules:\n"
        f"  plain: {{tls: starttls, tls_ca_file: {ca_file}}}\n"
        f"  submission: {{tls: starttls, tls_ca_file: {ca_file}, auth: {{username: {USERNAME}, "
        "password_file: $CREDENTIALS_DIRECTORY/submission-password}}\n"
        "targets:\n"
        f'  - {{address: "{target}", module: plain}}\n'
        f'  - {{address: "{target}", module: submission}}\n'
    )
    running = start_daemon(tmp_path, config, env={"CREDENTIALS_DIRECTORY": None})
    try:
        metrics = running.wait_for(lambda text: all(
            sample_value(text, "smtpmon_probes_total", target=target, module=name) for name in ("plain", "submission")))
        query = urllib.parse.urlencode({"target": target, "module": "submission"})
        transcript = running.get(f"/transcript?{query}")[1]
    finally:
        running.stop()
    log = running.log()

    assert sample_value(metrics, "smtpmon_probe_success", target=target, module="plain") == 1
    assert sample_value(metrics, "smtpmon_probe_failure_info", target=target, module="submission", stage="auth",
                 reason="auth_password_unavailable") == 1
    assert "C: AUTH" not in transcript
    assert ("cannot read the AUTH password: $CREDENTIALS_DIRECTORY/submission-password: "
            "$CREDENTIALS_DIRECTORY is not set") in transcript
    assert ('level=warn msg="AUTH password not readable: this module\'s probes fail at auth '
            '(auth_password_unavailable) until it is"') in log
    assert "problem=\"modules.submission.auth.password_file: $CREDENTIALS_DIRECTORY/submission-password:" in log


# Where a server's words are cut (an over-long line shown by its head, a line the connection
# ended in the middle of, a line whose code runs into the secret), the secret is masked in the
# whole line first: not even its beginning shows.
HEAD_SHOWN_BYTES = 60  # how much of an over-long line the transcript shows
_BEFORE_THE_CUT = HEAD_SHOWN_BYTES - 6  # the password starts 6 bytes before the cut
CUT_REPLIES = {
    "over-long-line": [Send(b"535 " + b"x" * (_BEFORE_THE_CUT - 4) + PASSWORD.encode() + b"y" * 5000), Close()],
    "closed-mid-secret": [Send(f"535 5.7.8 bad password {PASSWORD[:10]}".encode()), Close()],
    "timeout-mid-secret": [Send(f"535 5.7.8 bad password {PASSWORD[:10]}".encode()), Sleep(10)],
    "secret-after-the-code": [Send(f"535{PASSWORD}\r\n".encode()), QUIT_OK],
    "code-then-secret-prefix": [Send(f"535 {PASSWORD[:5]}\r\n".encode()), Close()],
}


@pytest.mark.parametrize("shape", sorted(CUT_REPLIES))
def test_a_secret_cut_by_a_limit_or_a_close_shows_no_part_of_itself(scripted_server, tls_contexts, ca_file,
                                                                     tmp_path, shape):
    server = scripted_server([BANNER, EHLO_STARTTLS, STARTTLS_GO, StartTls(tls_contexts["trusted"]),
                              EHLO_AUTH, Expect(r"AUTH PLAIN "), *CUT_REPLIES[shape]])
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD)
    command = [sys.executable, "-m", "smtpmon", "probe", server.target, "--tls", "starttls",
               "--ca-file", ca_file, "--timeout", "2",
               "--auth", "PLAIN", "--user", USERNAME, "--password-file", str(password_file)]

    for argv in (command, command + ["--json"]):
        output = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=30)
        assert output.returncode == 2, output.stdout + output.stderr
        shown = output.stdout + output.stderr
        assert "auth" in shown
        assert PASSWORD[:5] not in shown, f"{' '.join(argv[3:])} shows the password's beginning"


# -- a module's password goes only where the module is configured --------------------------------
def test_probe_uses_a_module_with_a_password_only_against_its_configured_targets(
        tmp_path, auth_server, scripted_server, ca_file, password_files):
    """The shipped example's shape: probe_allow admits a whole pattern, and a submission module
    logs in. /probe must not send that password to any other allowed target (403 with the
    reason, not even a connection), nor to a configured target of another module; modules
    without a password keep every allowed target, and a module's own probe_allow admits more."""
    elsewhere = scripted_server([BANNER, EHLO_OK, QUIT_OK])
    other_module_target = scripted_server([BANNER, EHLO_OK, QUIT_OK])
    config = (
        "global: {interval: 1m, timeout: 2s}\n"
        'probe_allow: ["127.0.0.1:*"]\n'
        "modules:\n"
        "  plain: {tls: none}\n"
        f"  submission: {{tls: starttls, tls_ca_file: {ca_file}, "
        f"auth: {{username: {USERNAME}, password_file: {password_files['right']}}}}}\n"
        f"  other: {{tls: starttls, tls_ca_file: {ca_file}, "
        f"auth: {{username: {USERNAME}, password_file: {password_files['right']}}}, "
        f"probe_allow: [\"127.0.0.1:{elsewhere.port}\"]}}\n"
        "targets:\n"
        f'  - {{address: "{auth_server.target}", module: submission}}\n'
        f'  - {{address: "{other_module_target.target}", module: plain}}\n'
    )
    running = start_daemon(tmp_path, config)
    try:
        running.wait_for(probed(other_module_target.target))  # its own scheduled probe
        scheduled = other_module_target.connections
        for target in (elsewhere.target, other_module_target.target, f"127.0.0.1:0{elsewhere.port}"):
            status, body = running.get(f"/probe?module=submission&target={target}")
            assert status == 403, body
            assert body == (f"module submission sends an AUTH password, so /probe uses it only against the "
                            f"targets configured with it and its own probe_allow; "
                            f"127.0.0.1:{int(target.rpartition(':')[2])} is neither\n")
        assert (elsewhere.connections, other_module_target.connections) == (0, scheduled)  # nothing sent
        status, body = running.get(f"/probe?module=submission&target={auth_server.target}")
        assert status == 200 and sample_value(body, "smtpmon_probe_success") == 1
        assert running.get(f"/probe?module=plain&target={elsewhere.target}")[0] == 200
        assert running.get(f"/probe?module=other&target={elsewhere.target}")[0] == 200
        assert running.get(f"/probe?module=other&target={auth_server.target}")[0] == 403
    finally:
        running.stop()
