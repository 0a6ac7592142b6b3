"""`--web.config.file`: TLS, client certificates and basic auth on the daemon's real HTTP server,
driven by real TLS clients on 127.0.0.1, and the messages a broken file gets."""

from __future__ import annotations

import base64
import contextlib
import http.client
import os
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from daemon_process import RunningDaemon

from smtpmon.config.load import default_config
from smtpmon.config.webconfig import (
    WWW_AUTHENTICATE,
    WebConfigError,
    WebConfigFile,
    load_web_config,
)
from smtpmon.runtime.daemon import Daemon, web_server_options
from smtpmon.web.server import Server

REPO = Path(__file__).resolve().parent.parent
NETWORK_TIMEOUT = 2.0
PASSWORD = "correct horse battery staple"


@dataclass(frozen=True)
class Pki:
    directory: Path  # server.crt, server.key, client-ca.pem: the web config names them relatively
    server_ca: trustme.CA
    client_cert: trustme.LeafCert  # signed by the client CA
    stranger_cert: trustme.LeafCert  # signed by a CA the server does not trust
    bcrypt_hash: str


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    directory = tmp_path_factory.mktemp("webconfig")
    server_ca, client_ca = trustme.CA(), trustme.CA()
    server_cert = server_ca.issue_cert("127.0.0.1", "localhost")
    server_cert.cert_chain_pems[0].write_to_path(str(directory / "server.crt"))
    server_cert.private_key_pem.write_to_path(str(directory / "server.key"))
    client_ca.cert_pem.write_to_path(str(directory / "client-ca.pem"))
    # Cost 4, the minimum, keeps the tests fast; real files use 10 or more.
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    return Pki(directory, server_ca, client_ca.issue_cert("prometheus"),
               trustme.CA().issue_cert("prometheus"), hashed)


def write_web_config(pki: Pki, text: str, name: str = "web.yml") -> str:
    path = pki.directory / name
    path.write_text(text)
    return str(path)


@contextlib.contextmanager
def serving(web_config_file: str, **limits):
    """The daemon's HTTP server, wired exactly as `smtpmon run --web.config.file` wires it."""
    server = Server(("127.0.0.1", 0), Daemon(default_config(), None),
                    **web_server_options(WebConfigFile(web_config_file)), connection_timeout=NETWORK_TIMEOUT,
                    **limits)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(NETWORK_TIMEOUT)


def client_context(pki: Pki, client_cert: trustme.LeafCert | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    pki.server_ca.configure_trust(context)
    if client_cert is not None:
        client_cert.configure_cert(context)
    return context


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def https_get(port: int, context: ssl.SSLContext, headers: dict[str, str] | None = None,
              path: str = "/-/healthy") -> http.client.HTTPResponse:
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context,
                                             timeout=NETWORK_TIMEOUT)
    connection.request("GET", path, headers=headers or {})
    response = connection.getresponse()
    response.body = response.read()
    connection.close()
    return response


# -- TLS and basic auth ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def tls_basic_auth(pki):
    path = write_web_config(pki, f"""\
tls_server_config:
  cert_file: server.crt
  key_file: server.key
basic_auth_users:
  prometheus: {pki.bcrypt_hash}
""", "tls-basic-auth.yml")
    with serving(path) as port:
        yield port


def test_right_password_gets_200(pki, tls_basic_auth):
    response = https_get(tls_basic_auth, client_context(pki), basic("prometheus", PASSWORD))
    assert (response.status, response.body) == (200, b"Healthy\n")


def test_metrics_are_served_behind_tls_and_auth(pki, tls_basic_auth):
    response = https_get(tls_basic_auth, client_context(pki), basic("prometheus", PASSWORD),
                         path="/metrics")
    assert response.status == 200
    assert b"smtpmon_" in response.body


@pytest.mark.parametrize("headers", [
    pytest.param(basic("prometheus", "wrong"), id="wrong password"),
    pytest.param(basic("mallory", PASSWORD), id="unknown user"),
    pytest.param({}, id="no credentials"),
    pytest.param({"Authorization": "Bearer abc"}, id="not basic auth"),
    pytest.param({"Authorization": "Basic !!!not-base64"}, id="malformed"),
])
def test_without_the_right_credentials_gets_401_and_a_basic_challenge(pki, tls_basic_auth, headers):
    response = https_get(tls_basic_auth, client_context(pki), headers)
    assert response.status == 401
    assert response.getheader("WWW-Authenticate") == WWW_AUTHENTICATE
    assert b"Healthy" not in response.body


def test_plain_http_to_the_tls_port_fails(tls_basic_auth):
    connection = http.client.HTTPConnection("127.0.0.1", tls_basic_auth, timeout=NETWORK_TIMEOUT)
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        connection.request("GET", "/-/healthy", headers=basic("prometheus", PASSWORD))
        connection.getresponse()
    connection.close()


def test_a_client_that_does_not_trust_the_certificate_fails(tls_basic_auth):
    with pytest.raises(ssl.SSLCertVerificationError):
        https_get(tls_basic_auth, ssl.create_default_context(), basic("prometheus", PASSWORD))


def test_a_verified_password_is_cached_and_a_wrong_one_still_fails(pki):
    # Cost 12: a check takes hundreds of milliseconds, so a cached answer stands out clearly.
    hashed = bcrypt.hashpw(b"slow", bcrypt.gensalt(rounds=12)).decode()
    web = load_web_config(write_web_config(pki, f"basic_auth_users:\n  alice: {hashed}\n",
                                           "slow-hash.yml"))
    header = basic("alice", "slow")["Authorization"]
    started = time.monotonic()
    assert web.check_authorization(header)
    first = time.monotonic() - started
    started = time.monotonic()
    assert web.check_authorization(header)
    second = time.monotonic() - started
    assert second < first / 10, f"first check {first:.3f}s, second {second:.3f}s"
    assert not web.check_authorization(basic("alice", "slow!")["Authorization"])
    assert not web.check_authorization(basic("bob", "slow")["Authorization"])


def median_seconds(check, times: int = 5) -> float:
    durations = []
    for _ in range(times):
        started = time.monotonic()
        assert not check()
        durations.append(time.monotonic() - started)
    return statistics.median(durations)


def test_a_failure_costs_the_same_whether_or_not_the_user_exists(pki):
    """Users with hashes of different costs: an unknown user, and a wrong password for the user
    with the cheap hash, take as long as a wrong password at the highest cost (else timing
    tells which users exist)."""
    cheap = bcrypt.hashpw(b"cheap", bcrypt.gensalt(rounds=4)).decode()
    dear = bcrypt.hashpw(b"dear", bcrypt.gensalt(rounds=11)).decode()
    web = load_web_config(write_web_config(pki, f"basic_auth_users:\n  cheap: {cheap}\n  dear: {dear}\n",
                                           "mixed-costs.yml"))
    wrong_for_dear = median_seconds(lambda: web.check_authorization(basic("dear", "nope")["Authorization"]))
    unknown = median_seconds(lambda: web.check_authorization(basic("mallory", "nope")["Authorization"]))
    wrong_for_cheap = median_seconds(lambda: web.check_authorization(basic("cheap", "nope")["Authorization"]))

    assert 0.6 * wrong_for_dear < unknown < 1.6 * wrong_for_dear + 0.05, (unknown, wrong_for_dear)
    assert 0.6 * wrong_for_dear < wrong_for_cheap < 1.6 * wrong_for_dear + 0.05, (wrong_for_cheap, wrong_for_dear)
    assert web.check_authorization(basic("cheap", "cheap")["Authorization"])


def test_a_correct_login_is_answered_promptly_under_a_flood_of_wrong_ones(pki):
    """32 clients of one address send wrong passwords (cost 11: ~0.12 s a check, one check at a
    time, so ~4 s of queue); a correct login from another address, not cached yet, waits for
    at most a check or two, not for the flood's queue."""
    hashed = bcrypt.hashpw(b"right", bcrypt.gensalt(rounds=11)).decode()
    path = write_web_config(pki, f"basic_auth_users:\n  prometheus: {hashed}\n", "flooded.yml")
    stop = threading.Event()

    def get(port: int, source: str, password: str, timeout: float = NETWORK_TIMEOUT) -> int:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout,
                                                source_address=(source, 0))
        try:
            connection.request("GET", "/-/healthy", headers=basic("prometheus", password))
            return connection.getresponse().status
        finally:
            connection.close()

    def flood(port: int) -> None:
        while not stop.is_set():
            try:
                assert get(port, "127.0.0.2", "wrong", timeout=10) == 401
            except (OSError, http.client.HTTPException):
                return  # the server stopped at the end of the test

    with serving(path) as port:
        attackers = [threading.Thread(target=flood, args=(port,), daemon=True) for _ in range(32)]
        for attacker in attackers:
            attacker.start()
        try:
            time.sleep(1.0)  # the flood's queue is full
            started = time.monotonic()
            assert get(port, "127.0.0.3", "right") == 200
            took = time.monotonic() - started
        finally:
            stop.set()
            for attacker in attackers:
                attacker.join(NETWORK_TIMEOUT)
    assert took < 1.5, f"a correct login took {took:.2f} s under the flood"


def test_the_web_config_is_re_read_when_it_changes_and_on_sighup_and_reload(tmp_path):
    """As exporter-toolkit does: a user removed from the file loses access at the next request
    (the file's modification time and size changed), a broken edit keeps the file in force,
    and SIGHUP and POST /-/reload read it again even when its time and size look the same."""
    hashes = {user: bcrypt.hashpw(user.encode(), bcrypt.gensalt(rounds=4)).decode()
              for user in ("alice", "bob", "eve")}
    web = tmp_path / "web.yml"

    def write(*users: str, keep_stamp: bool = False) -> None:
        before = web.stat() if keep_stamp else None
        web.write_text("basic_auth_users:\n" + "".join(f"  {user}: {hashes[user]}\n" for user in users))
        if keep_stamp:
            os.utime(web, ns=(before.st_atime_ns, before.st_mtime_ns))
            assert web.stat().st_size == before.st_size

    def status(user: str, method: str = "GET", path: str = "/-/healthy") -> int:
        return running.request(method, path, headers=basic(user, user))[0]

    write("alice", "bob")
    config = tmp_path / "smtpmon.yml"
    config.write_text("modules: {plain: {tls: none}}\n")
    running = RunningDaemon(config, tmp_path / "daemon.log", args=["--web.config.file", str(web)])
    try:
        deadline = time.monotonic() + 10
        while True:  # /-/ready needs credentials here: wait for any answer
            try:
                assert status("alice") == 200
                break
            except OSError:
                assert time.monotonic() < deadline and running.process.poll() is None, running.log()
                time.sleep(0.05)
        assert status("bob") == 200
        write("alice")
        assert status("bob") == 401 and status("alice") == 200
        web.write_text("basic_auth_users: [not, a, mapping]\n")
        assert status("alice") == 200 and status("bob") == 401  # the last good file stays
        assert 'msg="web config re-read failed; keeping the previous one"' in running.log()
        write("alice", "bob")
        assert status("bob") == 200  # read, and its time and size noted
        write("alice", "eve", keep_stamp=True)  # same size, same time: not noticed by a request
        assert status("eve") == 401 and status("bob") == 200
        running.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while status("eve") != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert status("eve") == 200 and status("bob") == 401
        write("alice", "bob", keep_stamp=True)
        assert status("alice", "POST", "/-/reload") == 200
        assert status("bob") == 200 and status("eve") == 401
    finally:
        running.stop()


def test_htpasswd_style_2y_hashes_are_accepted(pki):
    hashed = "$2y$" + pki.bcrypt_hash[4:]  # htpasswd -B writes $2y$; the hash is the same
    web = load_web_config(write_web_config(pki, f"basic_auth_users:\n  bob: '{hashed}'\n",
                                           "2y.yml"))
    assert web.check_authorization(basic("bob", PASSWORD)["Authorization"])
    assert not web.check_authorization(basic("bob", "nope")["Authorization"])


def test_tls_without_users_needs_no_credentials(pki):
    path = write_web_config(pki, "tls_server_config: {cert_file: server.crt, key_file: server.key}\n",
                            "tls-only.yml")
    with serving(path) as port:
        assert https_get(port, client_context(pki)).status == 200


def test_basic_auth_without_tls(pki):
    path = write_web_config(pki, f"basic_auth_users:\n  prometheus: {pki.bcrypt_hash}\n",
                            "auth-only.yml")
    with serving(path) as port:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=NETWORK_TIMEOUT)
        connection.request("GET", "/-/healthy")
        assert connection.getresponse().status == 401
        connection.close()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=NETWORK_TIMEOUT)
        connection.request("GET", "/-/healthy", headers=basic("prometheus", PASSWORD))
        assert connection.getresponse().status == 200
        connection.close()


def test_min_version_tls13_refuses_a_tls12_client(pki):
    path = write_web_config(pki, """\
tls_server_config: {cert_file: server.crt, key_file: server.key, min_version: TLS13}
""", "tls13.yml")
    with serving(path) as port:
        assert https_get(port, client_context(pki)).status == 200
        tls12_only = client_context(pki)
        tls12_only.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises(ssl.SSLError):
            https_get(port, tls12_only)


def test_a_tls_handshake_trickling_a_byte_at_a_time_is_cut_off_at_the_head_deadline(pki):
    path = write_web_config(pki, "tls_server_config: {cert_file: server.crt, key_file: server.key}\n",
                            "tls-trickle.yml")
    client_hello = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(160)
    with serving(path, head_timeout=1.0) as port:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.settimeout(0.3)
            begun = time.monotonic()
            for byte in client_hello:
                try:
                    sock.send(bytes([byte]))
                    closed = sock.recv(1024) == b""
                except TimeoutError:
                    continue
                except ConnectionError:
                    closed = True
                if closed:
                    break
            elapsed = time.monotonic() - begun
        assert 0.9 <= elapsed <= 1.5, f"a trickled handshake lasted {elapsed:.1f} s"
        assert https_get(port, client_context(pki)).status == 200


# -- response headers -----------------------------------------------------------------------

HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "deny",
    "Content-Security-Policy": "default-src 'none'",
}


def raw_answer(port: int, data: bytes) -> http.client.HTTPResponse:
    """The answer to bytes sent as they are (for what http.client would not send)."""
    with socket.create_connection(("127.0.0.1", port), timeout=NETWORK_TIMEOUT) as sock:
        sock.sendall(data)
        response = http.client.HTTPResponse(sock)
        response.begin()
        response.body = response.read()
    return response


def test_configured_headers_come_with_every_answer(pki):
    path = write_web_config(pki, f"""\
http_server_config:
  headers:
    X-Content-Type-Options: nosniff
    X-Frame-Options: deny
    Content-Security-Policy: "default-src 'none'"
basic_auth_users:
  prometheus: {pki.bcrypt_hash}
""", "headers.yml")
    authorized = "Authorization: " + basic("prometheus", PASSWORD)["Authorization"]
    with serving(path, max_connections=2) as port:
        answers = {
            "metrics": raw_answer(port, f"GET /metrics HTTP/1.1\r\n{authorized}\r\n\r\n".encode()),
            "no credentials": raw_answer(port, b"GET /metrics HTTP/1.1\r\n\r\n"),
            "unknown path": raw_answer(port, f"GET /nothing HTTP/1.1\r\n{authorized}\r\n\r\n".encode()),
            "garbage (http.server's own error)": raw_answer(port, b"GARBAGE\r\n\r\n"),
        }
        with socket.create_connection(("127.0.0.1", port)), socket.create_connection(("127.0.0.1", port)):
            answers["beyond max_connections"] = raw_answer(port, b"GET /metrics HTTP/1.1\r\n\r\n")

    assert {name: answer.status for name, answer in answers.items()} == {
        "metrics": 200, "no credentials": 401, "unknown path": 404,
        "garbage (http.server's own error)": 400, "beyond max_connections": 503,
    }
    assert b"smtpmon_" in answers["metrics"].body
    for name, answer in answers.items():
        assert {header: answer.getheader(header) for header in HEADERS} == HEADERS, name


# -- client certificates --------------------------------------------------------------------

@pytest.fixture(scope="module")
def mutual_tls(pki):
    path = write_web_config(pki, """\
tls_server_config:
  cert_file: server.crt
  key_file: server.key
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: client-ca.pem
""", "mtls.yml")
    with serving(path) as port:
        yield port


def test_a_client_certificate_from_the_client_ca_gets_200(pki, mutual_tls):
    response = https_get(mutual_tls, client_context(pki, pki.client_cert))
    assert (response.status, response.body) == (200, b"Healthy\n")


@pytest.mark.parametrize("cert", ["none", "stranger"])
def test_without_a_trusted_client_certificate_the_connection_fails(pki, mutual_tls, cert):
    context = client_context(pki, None if cert == "none" else pki.stranger_cert)
    # TLS 1.3 finishes the client's side of the handshake first: the refusal arrives as an
    # alert on the first read, or as a reset.
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
        https_get(mutual_tls, context)


def test_verify_client_cert_if_given_admits_clients_without_one(pki):
    path = write_web_config(pki, """\
tls_server_config:
  cert_file: server.crt
  key_file: server.key
  client_auth_type: VerifyClientCertIfGiven
  client_ca_file: client-ca.pem
""", "optional-client-cert.yml")
    with serving(path) as port:
        assert https_get(port, client_context(pki)).status == 200
        assert https_get(port, client_context(pki, pki.client_cert)).status == 200
        with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
            https_get(port, client_context(pki, pki.stranger_cert))


# -- what a valid file yields -----------------------------------------------------------------

def test_a_full_file_loads(pki):
    web = load_web_config(write_web_config(pki, f"""\
tls_server_config:
  cert_file: server.crt
  key_file: server.key
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: client-ca.pem
  min_version: TLS12
  max_version: TLS13
  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_AES_128_GCM_SHA256]
  prefer_server_cipher_suites: false
http_server_config:
  http2: true
  headers:
    X-Frame-Options: deny
    X-Content-Type-Options: nosniff
    Strict-Transport-Security: max-age=31536000
    Content-Security-Policy: ""
basic_auth_users:
  prometheus: {pki.bcrypt_hash}
""", "full.yml"))
    assert dict(web.headers) == {
        "X-Frame-Options": "deny",
        "X-Content-Type-Options": "nosniff",
        "Strict-Transport-Security": "max-age=31536000",
    }
    context = web.context
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert (context.minimum_version, context.maximum_version) == (ssl.TLSVersion.TLSv1_2,
                                                                  ssl.TLSVersion.TLSv1_3)
    tls12_ciphers = {c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert tls12_ciphers == {"ECDHE-RSA-AES128-GCM-SHA256"}
    assert not context.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    assert str(pki.directory) in web.tls.cert_file  # relative to the file, not the cwd
    assert pki.bcrypt_hash not in repr(web)


def test_the_example_in_the_docs_loads_and_its_hash_matches_its_password(pki):
    docs = (REPO / "docs" / "web-config.md").read_text()
    example = docs.split("```yaml\n", 1)[1].split("```", 1)[0]
    for documented, ours in (("/etc/smtpmon/tls/smtpmon.crt", "server.crt"),
                             ("/etc/smtpmon/tls/smtpmon.key", "server.key"),
                             ("/etc/smtpmon/tls/prometheus-ca.crt", "client-ca.pem")):
        assert documented in example
        example = example.replace(documented, ours)
    web = load_web_config(write_web_config(pki, example, "docs-example.yml"))
    assert web.context.verify_mode == ssl.CERT_REQUIRED
    assert web.check_authorization(basic("prometheus", "example")["Authorization"])


def test_an_empty_file_means_plain_http_without_auth(pki):
    web = load_web_config(write_web_config(pki, "", "empty.yml"))
    assert web.context is None
    assert web.check_authorization(None)
    assert dict(web.headers) == {}


# -- broken files -------------------------------------------------------------------------------

TLS = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"

INVALID = [
    ("unknown top-level key", "tls_config: {}\n",
     "tls_config: unknown key; known: tls_server_config, http_server_config, basic_auth_users"),
    ("unknown tls key", TLS + "  certfile: x\n",
     "tls_server_config.certfile: unknown key; known: cert_file, key_file, client_auth_type, "
     "client_ca_file, client_ca, min_version, max_version, cipher_suites, "
     "prefer_server_cipher_suites"),
    ("missing cert file", "tls_server_config: {cert_file: /nonexistent/x.crt, key_file: server.key}\n",
     "tls_server_config.cert_file: file not found: /nonexistent/x.crt"),
    ("key without cert", "tls_server_config: {key_file: server.key}\n",
     "tls_server_config.cert_file: required when TLS is configured"),
    ("key that is a certificate", "tls_server_config: {cert_file: server.crt, key_file: server.crt}\n",
     "tls_server_config.key_file: no PEM private key in {dir}/server.crt"),
    ("bad client_auth_type", TLS + "  client_auth_type: RequireClientCertificate\n",
     'tls_server_config.client_auth_type: unknown value "RequireClientCertificate"; one of: '
     "NoClientCert, RequestClientCert, VerifyClientCertIfGiven, RequireAnyClientCert, "
     "RequireAndVerifyClientCert"),
    ("client CA without client auth", TLS + "  client_ca_file: client-ca.pem\n",
     "tls_server_config.client_auth_type: a client CA is set but client certificates are not "
     "requested; set client_auth_type: RequireAndVerifyClientCert"),
    ("client auth without client CA", TLS + "  client_auth_type: RequireAndVerifyClientCert\n",
     "tls_server_config.client_ca_file: required with client_auth_type "
     "RequireAndVerifyClientCert: every client certificate is verified against it"),
    ("min above max", TLS + "  min_version: TLS13\n  max_version: TLS12\n",
     "tls_server_config.min_version: TLS13 is above max_version TLS12"),
    ("unknown TLS version", TLS + "  min_version: TLSv1.2\n",
     'tls_server_config.min_version: unknown value "TLSv1.2"; one of: TLS10, TLS11, TLS12, TLS13'),
    ("unknown cipher suite", TLS + "  cipher_suites: [TLS_RSA_WITH_RC4_128_SHA]\n",
     'tls_server_config.cipher_suites[0]: unknown cipher suite "TLS_RSA_WITH_RC4_128_SHA"; '
     "one of: TLS_AES_128_GCM_SHA256, "),
    ("rate limit", "rate_limit: {interval: 1s, burst: 20}\n",
     "rate_limit: not supported by smtpmon; put a reverse proxy in front to rate-limit"),
    ("inline certificate", "tls_server_config: {cert: '-----BEGIN CERTIFICATE-----'}\n",
     "tls_server_config.cert: inline certificates are not supported by smtpmon; use cert_file"),
    ("header not allowed", "http_server_config: {headers: {Server: smtpmon}}\n",
     "http_server_config.headers.Server: this header cannot be configured; one of: "
     "Strict-Transport-Security, X-Content-Type-Options, X-Frame-Options, X-XSS-Protection, "
     "Content-Security-Policy"),
    ("bad X-Frame-Options", "http_server_config: {headers: {X-Frame-Options: allow}}\n",
     'http_server_config.headers.X-Frame-Options: must be one of: deny, sameorigin; got "allow"'),
    ("bad hash", "basic_auth_users: {prometheus: s3cret-in-clear}\n",
     "basic_auth_users.prometheus: not a bcrypt hash: want $2y$ (or $2a$, $2b$), a two-digit "
     "cost, $ and 53 characters; see docs/web-config.md"),
    ("colon in user", "basic_auth_users: {'a:b': '$2y$10$" + "a" * 53 + "'}\n",
     "basic_auth_users.a:b: a user name cannot contain ':' (basic auth separates the password "
     "with it)"),
    ("duplicate user", "basic_auth_users:\n  a: '$2y$10$" + "a" * 53 + "'\n  a: '$2y$10$"
     + "b" * 53 + "'\n", "line 3: duplicate key \"a\" (first on line 2)"),
    ("not a mapping", "- tls_server_config\n", "the file: must be a mapping of keys to values"),
    ("YAML syntax", "tls_server_config: [\n", "line 2, column 1: invalid YAML: "),
]


@pytest.mark.parametrize("text, expected", [pytest.param(t, e, id=i) for i, t, e in INVALID])
def test_invalid_files_name_the_key_and_the_reason(pki, text, expected):
    path = write_web_config(pki, text, "invalid.yml")
    with pytest.raises(WebConfigError) as raised:
        load_web_config(path)
    expected = expected.format(dir=pki.directory)
    assert any(error.startswith(expected) for error in raised.value.errors), raised.value.errors
    assert "s3cret-in-clear" not in str(raised.value)  # a bad hash is never echoed


def test_every_problem_is_reported_at_once(pki):
    path = write_web_config(pki, """\
tls_server_config: {cert_file: /nonexistent/x.crt, key_file: server.key, client_auth_type: Any}
basic_auth_users: {prometheus: nope}
""", "many.yml")
    with pytest.raises(WebConfigError) as raised:
        load_web_config(path)
    assert [error.split(":")[0] for error in raised.value.errors] == [
        "tls_server_config.cert_file", "tls_server_config.client_auth_type",
        "basic_auth_users.prometheus",
    ]


def test_a_key_that_does_not_match_the_certificate(pki):
    other = trustme.CA().issue_cert("127.0.0.1")
    other.private_key_pem.write_to_path(str(pki.directory / "other.key"))
    path = write_web_config(pki, "tls_server_config: {cert_file: server.crt, key_file: other.key}\n",
                            "mismatch.yml")
    with pytest.raises(WebConfigError) as raised:
        load_web_config(path)
    assert raised.value.errors == [
        f"tls_server_config.key_file: does not match the certificate in cert_file: "
        f"{pki.directory}/other.key"
    ]


def test_an_encrypted_key_is_refused_instead_of_prompting_for_a_passphrase(pki):
    key = serialization.load_pem_private_key((pki.directory / "server.key").read_bytes(), None)
    (pki.directory / "encrypted.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    ))
    path = write_web_config(pki, "tls_server_config: {cert_file: server.crt, key_file: encrypted.key}\n",
                            "encrypted.yml")
    with pytest.raises(WebConfigError) as raised:
        load_web_config(path)
    assert raised.value.errors == [
        "tls_server_config.key_file: the private key is encrypted; smtpmon needs it unencrypted "
        "(readable only by the service user)"
    ]


def test_a_missing_file_is_an_error(pki):
    with pytest.raises(WebConfigError) as raised:
        load_web_config(str(pki.directory / "absent.yml"))
    assert raised.value.errors == ["cannot read the file: No such file or directory"]


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "huge", "fifo-certificate"])
def test_what_is_not_a_regular_file_of_sane_size_is_refused_at_once(tmp_path, pki, kind):
    """A FIFO would block the reader until someone writes to it; /dev/zero or a huge file would
    take the memory. The web config file and the files it names alike."""
    path = tmp_path / "web.yml"
    if kind in ("fifo", "fifo-certificate"):
        os.mkfifo(tmp_path / "fifo")
    if kind == "fifo":
        path = tmp_path / "fifo"
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "huge":
        with open(path, "wb") as handle:
            handle.truncate(100 * 1024 * 1024)
    else:
        path.write_text(f"tls_server_config: {{cert_file: {tmp_path / 'fifo'}, key_file: {pki.directory / 'server.key'}}}\n")
    script = ("import sys\nfrom smtpmon.config.webconfig import load_web_config, WebConfigError\n"
              "try:\n    load_web_config(sys.argv[1])\nexcept WebConfigError as error:\n    print(error.errors)\n")
    result = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=5)
    expected = {
        "fifo": "['cannot read the file: not a regular file (a FIFO)']",
        "dev-zero": "['cannot read the file: not a regular file (a character device)']",
        "huge": "['the file is larger than 16 MB; is it the right file?']",
        "fifo-certificate": f"['tls_server_config.cert_file: not a regular file: {tmp_path / 'fifo'}']",
    }
    assert result.stdout.strip() == expected[kind], result.stderr


def test_smtpmon_run_exits_2_on_an_invalid_web_config(pki):
    path = write_web_config(pki, "tls_server_config: {cert_file: /nonexistent/x.crt, "
                                 "key_file: server.key}\n", "run-invalid.yml")
    process = subprocess.run(
        [sys.executable, "-m", "smtpmon", "run", "--web.listen-address", "127.0.0.1:0",
         "--web.config.file", path],
        capture_output=True, text=True, timeout=20, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert process.returncode == 2, process.stderr
    assert f"invalid web config file {path}:" in process.stderr
    assert "tls_server_config.cert_file: file not found: /nonexistent/x.crt" in process.stderr
