"""Fixtures: SMTP servers on 127.0.0.1 port 0 and trustme certificates.

`smtp_server(...)` and `scripted_server(...)` are factories: a test builds the server it
needs, and every server started is stopped at teardown.
"""

from __future__ import annotations

import datetime
import socket

import pytest
import trustme
from smtpservers import SERVER_NAME, AiosmtpdServer, ScriptedServer, server_tls_context

# The session-scoped `postfix` fixture (a private, real Postfix on loopback), `logging_postfix`
# (tests/postfix_traffic.py), and the `knot` and `bad_resolvers` fixtures (tests/dns_server.py),
# for any test module.
pytest_plugins = ["postfix", "postfix_traffic", "dns_server"]


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    """The CA the probe trusts (passed as module.tls_ca_file)."""
    return trustme.CA()


@pytest.fixture(scope="session")
def ca_file(ca, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture(scope="session")
def tls_contexts(ca):
    """Server TLS contexts by kind: trusted, untrusted (unknown CA), self_signed, expired,
    wrong_host (valid, but for another name)."""
    stranger = trustme.CA()
    now = datetime.datetime.now(datetime.UTC)
    names = ("127.0.0.1", "localhost", SERVER_NAME)
    return {
        "trusted": server_tls_context(ca.issue_cert(*names)),
        "untrusted": server_tls_context(stranger.issue_cert(*names)),
        "self_signed": server_tls_context(stranger),  # a CA certificate is signed by itself
        "expired": server_tls_context(
            ca.issue_cert(*names, not_before=now - datetime.timedelta(days=400), not_after=now - datetime.timedelta(days=30))
        ),
        "wrong_host": server_tls_context(ca.issue_cert("mx.elsewhere.example")),
        # expires in 7 days: for the CLI's --warn-days / --crit-days
        "expiring": server_tls_context(ca.issue_cert(*names, not_after=now + datetime.timedelta(days=7))),
    }


@pytest.fixture
def smtp_server():
    servers: list[AiosmtpdServer] = []

    def start(*args, **kwargs) -> AiosmtpdServer:
        server = AiosmtpdServer(*args, **kwargs).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def smtp_target():
    """A healthy aiosmtpd server shared by a test module (e.g. by its one daemon): its target."""
    server = AiosmtpdServer().start()
    yield server.target
    server.stop()


@pytest.fixture
def scripted_server():
    servers: list[ScriptedServer] = []

    def start(script, **kwargs) -> ScriptedServer:
        server = ScriptedServer(script, **kwargs).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture()
def no_system_resolver(monkeypatch):
    """Fails the test if anything in this process hands a name (not an address literal) to
    getaddrinfo: every test name must go to the loopback DNS servers only."""
    names = []
    real = socket.getaddrinfo

    def watched(host, *args, **kwargs):
        try:
            socket.inet_pton(socket.AF_INET6 if ":" in str(host) else socket.AF_INET, str(host))
        except (OSError, TypeError):
            if host is not None:
                names.append(host)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", watched)
    yield
    assert names == [], f"names given to the system resolver: {names}"
