"""The HTTP side, in process: routes, /probe input checks, concurrency, and no tracebacks.

A real Daemon (config, store, scheduler) behind a real server on 127.0.0.1 port 0; probes go
to real SMTP servers on loopback.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time

import pytest
from smtpservers import BANNER, EHLO_OK, QUIT_OK, Send, Sleep

from smtpmon.config.load import parse_config
from smtpmon.exposition.store import ResultStore
from smtpmon.runtime.daemon import Daemon
from smtpmon.web.server import Server

CONFIG = """
global:
  interval: 1m
  timeout: 2s
probe_allow:
  - "localhost:*"
modules:
  plain:
    tls: none
  slow:
    tls: none
    timeout: 5s
targets:
  - address: "{healthy}"
    module: plain
"""


class Client:
    def __init__(self, port: int):
        self.port = port

    def request(self, method: str, path: str, headers=None, timeout: float = 10.0):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.request(method, path, headers=headers or {})
            response = connection.getresponse()
            return response.status, response.getheader("Content-Type"), response.read().decode()
        finally:
            connection.close()

    def get(self, path: str, **kwargs):
        return self.request("GET", path, **kwargs)


@pytest.fixture
def servers(scripted_server):
    healthy = scripted_server([BANNER, EHLO_OK, QUIT_OK])
    tarpit = scripted_server([Sleep(30)])
    return healthy, tarpit


def via_allow_list(server) -> str:
    """The server's address as a target that only the probe_allow pattern admits."""
    return f"localhost:{server.port}"


@pytest.fixture
def serve():
    """serve(daemon, **Server options) -> a client of it; every server stops at teardown."""
    started: list[Server] = []

    def start(daemon: Daemon, **kwargs) -> Client:
        server = Server(("127.0.0.1", 0), daemon, **kwargs)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        started.append(server)
        return Client(server.server_address[1])

    start.started = started
    yield start
    for server in started:
        server.shutdown()
        server.server_close()


@pytest.fixture
def daemon(servers):
    """A Daemon for CONFIG, its scheduler not started."""
    return Daemon(parse_config(CONFIG.format(healthy=servers[0].target), "test"), None)


@pytest.fixture
def exporter(servers, daemon, serve):
    """(daemon, client, healthy server, tarpit server), the daemon started."""
    healthy, tarpit = servers
    daemon.start()
    client = serve(daemon)
    yield daemon, client, healthy, tarpit
    daemon.scheduler.stop(1.0)


def test_probe_a_configured_target(exporter):
    daemon, client, healthy, _ = exporter
    status, content_type, body = client.get(f"/probe?target={healthy.target}&module=plain")
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    assert f'smtpmon_probe_success{{target="{healthy.target}",module="plain"}} 1.0' in body
    assert (f'smtpmon_replies_total{{target="{healthy.target}",module="plain",stage="banner",'
            'code="220",class="positive_completion",category="connections"} 1.0') in body


def test_probe_counters_grow_from_request_to_request(exporter, scripted_server):
    """rate() over /probe counters must work as in daemon mode: they count every /probe of the
    same target and module, each (target, module) on its own, apart from the daemon's store."""
    daemon, client, healthy, _ = exporter
    other = via_allow_list(scripted_server([BANNER, EHLO_OK, QUIT_OK]))
    bodies = [client.get(f"/probe?target={target}&module=plain")[2]
              for target in (healthy.target, healthy.target, other)]
    assert f'smtpmon_probes_total{{target="{healthy.target}",module="plain"}} 1.0' in bodies[0]
    assert f'smtpmon_probes_total{{target="{healthy.target}",module="plain"}} 2.0' in bodies[1]
    assert (f'smtpmon_replies_total{{target="{healthy.target}",module="plain",stage="banner",'
            'code="220",class="positive_completion",category="connections"} 2.0') in bodies[1]
    assert f'smtpmon_probes_total{{target="{other}",module="plain"}} 1.0' in bodies[2]
    assert healthy.target not in bodies[2]  # one answer, one target
    _, _, metrics = client.get("/metrics")
    assert other not in metrics  # /probe results stay out of daemon mode's /metrics


def test_probe_debug_returns_the_transcript_and_the_metrics(exporter):
    daemon, client, healthy, _ = exporter
    status, content_type, body = client.get(f"/probe?target={healthy.target}&module=plain&debug=true")
    assert status == 200 and content_type.startswith("text/plain")
    assert "S: 220 mx.test.example ESMTP scripted" in body
    assert "C: EHLO" in body
    assert "smtpmon_probe_success{" in body


def test_probe_allow_pattern_admits_an_unconfigured_target(exporter, scripted_server):
    other = scripted_server([BANNER, EHLO_OK, QUIT_OK])
    status, _, body = exporter[1].get(f"/probe?target={via_allow_list(other)}&module=plain")
    assert status == 200, body
    assert f'smtpmon_probe_success{{target="localhost:{other.port}",module="plain"}} 1.0' in body


@pytest.mark.parametrize(
    "query, status, reason",
    [
        ("", 400, "missing parameter 'target'"),
        ("target=", 400, "missing parameter 'target'"),
        ("target={healthy}", 400, "missing parameter 'module'; known: plain, slow"),
        ("target={healthy}&module=nope", 400, "unknown module 'nope'; known: plain, slow"),
        ("target={healthy}&target={healthy}&module=plain", 400, "given more than once"),
        ("target={healthy}&module=plain&module=plain", 400, "given more than once"),
        ("target=127.0.0.1:70000&module=plain", 400, "port must be 1-65535, got 70000"),
        ("target=127.0.0.1:0&module=plain", 400, "port must be 1-65535, got 0"),
        ("target=127.0.0.1&module=plain", 400, "missing port"),
        ("target=::1:25&module=plain", 400, "an IPv6 address must be in brackets"),
        ("target=[::1&module=plain", 400, 'missing "]"'),
        ("target=127.0.0.1:25%0d%0aRCPT&module=plain", 400, "whitespace or control characters"),
        ("target=mx%0a.example.org:25&module=plain", 400, "whitespace or control characters"),
        ("target=" + "a" * 400 + ":25&module=plain", 400, "longer than 300 characters"),
        ("target=%ff:25&module=plain", 400, "percent-encoded UTF-8"),
        ("target={healthy}&module=plain&debug=yes", 400, "'debug' must be true or false"),
        ("target=127.0.0.2:25&module=plain", 403, "must not become a port scanner"),
        ("target=[::1]:25&module=plain", 403, "must not become a port scanner"),
        ("target=mail.example.org:25&module=plain", 403, "must not become a port scanner"),
    ],
)
def test_probe_rejects_bad_and_forbidden_requests(exporter, query, status, reason):
    daemon, client, healthy, _ = exporter
    got_status, content_type, body = client.get("/probe?" + query.format(healthy=healthy.target))
    assert (got_status, content_type) == (status, "text/plain; charset=utf-8")
    assert reason in body
    assert "Traceback" not in body


def test_probe_rejects_a_bad_scrape_timeout_header(exporter):
    daemon, client, healthy, _ = exporter
    status, _, body = client.get(f"/probe?target={healthy.target}&module=plain",
                                 headers={"X-Prometheus-Scrape-Timeout-Seconds": "soon"})
    assert status == 400 and "X-Prometheus-Scrape-Timeout-Seconds" in body


def test_probe_deadline_comes_from_the_scrape_timeout_header(exporter):
    daemon, client, _, tarpit = exporter  # module "slow" would wait 5 s
    target = via_allow_list(tarpit)
    begun = time.monotonic()
    status, _, body = client.get(f"/probe?target={target}&module=slow",
                                 headers={"X-Prometheus-Scrape-Timeout-Seconds": "1.5"})
    elapsed = time.monotonic() - begun
    assert status == 200
    assert f'smtpmon_probe_success{{target="{target}",module="slow"}} 0.0' in body
    assert 'reason="timeout"' in body
    assert 0.9 <= elapsed <= 1.4  # 1.5 s less the 0.5 s offset


def test_a_slow_probe_does_not_block_metrics(exporter):
    daemon, client, _, tarpit = exporter
    slow = threading.Thread(target=client.get,
                            args=(f"/probe?target={via_allow_list(tarpit)}&module=slow",),
                            kwargs={"headers": {"X-Prometheus-Scrape-Timeout-Seconds": "2"}})
    slow.start()
    time.sleep(0.2)
    begun = time.monotonic()
    status, _, body = client.get("/metrics")
    assert status == 200 and time.monotonic() - begun < 1.0
    assert "smtpmon_probes_in_flight 1.0" in body  # the /probe counts as in flight
    slow.join(10)


@pytest.mark.parametrize("path", ["/metrics", "/probe?target=127.0.0.1:25&module=plain"],
                         ids=["thread", "hub"])
def test_a_silent_client_does_not_block_metrics_and_is_dropped(daemon, serve, path):
    client = serve(daemon, connection_timeout=0.5)
    idle = [socket.create_connection(("127.0.0.1", client.port)) for _ in range(20)]
    half = socket.create_connection(("127.0.0.1", client.port))
    half.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n".encode())  # headers never finished
    status, _, _ = client.get("/metrics", timeout=2)
    assert status == 200
    half.settimeout(3)
    assert half.recv(1024) == b""  # closed by the server after its connection timeout
    for sock in idle + [half]:
        sock.close()


@pytest.mark.parametrize(
    "method, path, status",
    [
        ("GET", "/nothing-here", 404),
        ("GET", "/-/reload", 405),
        ("PUT", "/metrics", 405),
        ("DELETE", "/", 405),
        ("POST", "/metrics", 405),
        ("GET", "/-/healthy", 200),
        ("HEAD", "/-/healthy", 200),
        ("GET", "/-/ready", 200),
    ],
)
def test_routes_and_methods(exporter, method, path, status):
    got, content_type, _ = exporter[1].request(method, path)
    assert got == status
    assert content_type == "text/plain; charset=utf-8"


def test_ready_only_once_the_scheduler_runs(daemon, serve):
    client = serve(daemon)
    assert client.get("/-/ready")[0] == 503
    assert client.get("/-/healthy")[0] == 200
    daemon.start()
    assert client.get("/-/ready")[0] == 200
    daemon.scheduler.stop(1.0)
    assert client.get("/-/ready")[0] == 503


def test_landing_page_shows_each_target_escaped(scripted_server, serve):
    hostile = scripted_server([Send(b"554 5.7.1 <script>alert(1)</script> go away\r\n")])
    config = parse_config(f"""
global: {{interval: 1s, timeout: 500ms}}
modules: {{plain: {{tls: none}}}}
targets:
  - {{address: "{hostile.target}", module: plain}}
""", "test")
    daemon = Daemon(config, None)
    daemon.start()
    client = serve(daemon)
    try:
        deadline = time.monotonic() + 5
        while daemon.store.latest(hostile.target, "plain") is None and time.monotonic() < deadline:
            time.sleep(0.05)
        status, content_type, page = client.get("/")
        assert status == 200 and content_type == "text/html; charset=utf-8"
        assert hostile.target in page
        assert "FAILING" in page and "banner_rejected" in page
        assert '<code class="code c5" title="5.7.1 &lt;script&gt;alert(1)&lt;/script&gt; go away">554 5.7.1</code>' in page
        assert "<script>alert" not in page and "&lt;script&gt;" in page
        link = f"/target?target=127.0.0.1%3A{hostile.port}&amp;module=plain"
        assert link in page
        status, _, target_page = client.get(link.replace("&amp;", "&"))
        assert status == 200 and "S: 554 5.7.1 &lt;script&gt;" in target_page
        assert "<script>alert" not in target_page
        status, _, text = client.get(link.replace("&amp;", "&").replace("/target", "/transcript"))
        assert status == 200 and "S: 554 5.7.1 <script>" in text
    finally:
        daemon.scheduler.stop(1.0)


def test_transcript_before_any_probe_is_404(exporter):
    status, _, body = exporter[1].get("/transcript?target=nowhere:25&module=plain")
    assert status == 404 and "no probe result" in body
    assert exporter[1].get("/transcript?target=nowhere:25")[0] == 400


def test_an_internal_failure_is_a_plain_503(servers, serve):
    healthy, tarpit = servers

    class BrokenStore(ResultStore):
        def record_on_demand(self, result):
            raise RuntimeError("secret internals")

    config = parse_config(CONFIG.format(healthy=healthy.target), "test")
    daemon = Daemon(config, None)
    daemon.probe_store = BrokenStore()
    client = serve(daemon)
    status, _, body = client.get(f"/probe?target={healthy.target}&module=plain")
    assert status == 503
    assert "secret internals" not in body and "Traceback" not in body
    assert client.get("/-/healthy")[0] == 200  # and the server carries on


def test_authorize_hook_guards_every_route(exporter, serve):
    daemon = exporter[0]
    client = serve(daemon, authorize=lambda headers, client: headers.get("Authorization") == "ok")
    assert client.get("/metrics")[0] == 401
    assert client.get("/-/healthy")[0] == 401
    assert client.get("/metrics", headers={"Authorization": "ok"})[0] == 200


def test_request_headers_are_read_as_http_server_would(exporter, serve):
    """Names in any case; the first of a repeated field counts; a folded line continues its
    field; `Connection: close` closes after the answer."""
    daemon = exporter[0]
    client = serve(daemon, authorize=lambda headers, client: headers.get("authorization") == "a b")
    head = (b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nAUTHORIZATION: a\r\n b\r\n"
            b"Authorization: other\r\nConnection: close\r\n\r\n")
    with socket.create_connection(("127.0.0.1", client.port), timeout=5) as sock:
        sock.sendall(head)
        answer = b""
        while chunk := sock.recv(65536):  # ends only because the server closes
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"Healthy\n")


@pytest.mark.parametrize(
    "raw, status",
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /metrics HTTP/9.9\r\n\r\n", 505),
        (b"GET /probe?target=" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 414),
        (b"GET /metrics HTTP/1.1\r\n" + b"X-A: b\r\n" * 200 + b"\r\n", 431),
        (b"GET /probe?target=%00:25&module=plain HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ],
)
def test_malformed_requests_get_a_4xx_and_no_traceback(exporter, raw, status):
    with socket.create_connection(("127.0.0.1", exporter[1].port), timeout=5) as sock:
        sock.sendall(raw)
        answer = b""
        while b"\r\n\r\n" not in answer and (chunk := sock.recv(65536)):
            answer += chunk
    assert answer.startswith(b"HTTP/1.") and f" {status} ".encode() in answer[:40]
    assert b"Traceback" not in answer


# -- limits: request head deadline, connections, concurrent /probe ------------------------------
def closed_after(sock: socket.socket, send: bytes, interval: float, limit: float) -> float | None:
    """Send `send` a byte every `interval` s; seconds until the server closed, None if it never
    did within `limit` (the server must not answer a request it never fully received)."""
    begun = time.monotonic()
    sock.settimeout(interval)
    for byte in send:
        if time.monotonic() - begun > limit:
            return None
        try:
            sock.send(bytes([byte]))
            data = sock.recv(1024)
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic() - begun
        assert data == b"", f"answered a request still being sent: {data[:80]!r}"
        return time.monotonic() - begun
    return None


SLOW_HEAD = b"GET /metrics HTTP/1.1\r\nHost: x\r\nUser-Agent: slowloris\r\nX-Padding: " + b"z" * 100
# The same, read by the hub's session to its end, not handed to a thread.
SLOW_PROBE_HEAD = SLOW_HEAD.replace(b"/metrics", b"/probe?target=127.0.0.1:25&module=plain")
SLOW_HEADS = pytest.mark.parametrize("slow_head", [SLOW_HEAD, SLOW_PROBE_HEAD], ids=["thread", "hub"])


@SLOW_HEADS
def test_a_head_trickling_a_byte_a_second_is_cut_off_at_the_head_deadline(daemon, serve, slow_head):
    """Each byte comes long before the 30 s read timeout; the whole head still gets 2 s."""
    client = serve(daemon, head_timeout=2.0)
    with socket.create_connection(("127.0.0.1", client.port)) as slow:
        elapsed = closed_after(slow, slow_head, interval=1.0, limit=6.0)
    assert elapsed is not None, "a head trickled for 6 s was never cut off"
    assert 1.9 <= elapsed <= 2.5
    assert client.get("/metrics", timeout=2)[0] == 200


@SLOW_HEADS
def test_a_kept_alive_connection_may_idle_but_its_next_head_gets_the_deadline(daemon, serve,
                                                                              slow_head):
    client = serve(daemon, head_timeout=1.0)
    connection = http.client.HTTPConnection("127.0.0.1", client.port, timeout=5)
    connection.request("GET", "/-/healthy")
    assert connection.getresponse().read() == b"Healthy\n"
    time.sleep(1.5)  # idle longer than the head deadline: an idle connection is not a head
    connection.request("GET", "/-/healthy")
    assert connection.getresponse().read() == b"Healthy\n"
    # The next head trickles: cut off 1 s after its first byte.
    elapsed = closed_after(connection.sock, slow_head, interval=0.4, limit=4.0)
    assert elapsed is not None and 0.9 <= elapsed <= 1.5
    connection.close()


def test_beyond_max_connections_a_connection_gets_503_at_once_until_a_slot_frees(daemon, serve):
    client = serve(daemon, max_connections=4)
    # Accepted in order: these four hold every slot before the next connection is accepted.
    idle = [socket.create_connection(("127.0.0.1", client.port)) for _ in range(4)]
    try:
        for _ in range(3):
            begun = time.monotonic()
            status, content_type, body = client.get("/metrics", timeout=2)
            assert time.monotonic() - begun < 0.5
            assert (status, content_type) == (503, "text/plain; charset=utf-8")
            assert body == "too many connections (limit 4); try again later\n"

        idle.pop().close()
        deadline = time.monotonic() + 2
        while (status := client.get("/metrics", timeout=2)[0]) == 503 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert status == 200, "a freed slot was not taken by the next client"
    finally:
        for sock in idle:
            sock.close()


def test_beyond_max_concurrent_probes_a_probe_gets_503_at_once(exporter, serve):
    daemon, _, healthy, tarpit = exporter
    client = serve(daemon, max_concurrent_probes=2)
    slow_path = f"/probe?target={via_allow_list(tarpit)}&module=slow"
    answers = []
    slow = [threading.Thread(target=lambda: answers.append(client.get(
                slow_path, headers={"X-Prometheus-Scrape-Timeout-Seconds": "2"})))
            for _ in range(2)]
    for thread in slow:
        thread.start()
    deadline = time.monotonic() + 2
    while "smtpmon_probes_in_flight 2.0" not in client.get("/metrics")[2]:
        assert time.monotonic() < deadline, "the two slow probes never ran together"
        time.sleep(0.05)

    begun = time.monotonic()
    status, _, body = client.get(f"/probe?target={healthy.target}&module=plain")
    assert time.monotonic() - begun < 0.5
    assert (status, body) == (503, "too many concurrent probes (limit 2); try again later\n")
    assert client.get("/metrics")[0] == 200  # other routes are not limited

    for thread in slow:
        thread.join(5)
    assert [status for status, _, _ in answers] == [200, 200]
    assert client.get(f"/probe?target={healthy.target}&module=plain")[0] == 200  # freed


# -- /probe on the serving thread's hub, everything else handed to a thread ------------------

def succeeded(server) -> str:
    return f'smtpmon_probe_success{{target="{server.target}",module="plain"}} 1.0'


def read_answers(sock: socket.socket, count: int) -> list[tuple[int, dict[str, str], bytes]]:
    """`count` answers read off one connection: (status, headers by lower-case name, body)."""
    reader = sock.makefile("rb")
    answers = []
    for _ in range(count):
        status = int(reader.readline().split()[1])
        headers = {}
        while (line := reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        answers.append((status, headers, reader.read(int(headers["content-length"]))))
    return answers


def test_one_kept_alive_connection_serves_probes_and_other_routes_in_turn(exporter):
    """A /probe on the hub, /metrics on the thread it hands the connection to, then a /probe
    on that thread: one connection, as Prometheus keeps it."""
    _, client, healthy, _ = exporter
    probe = f"/probe?target={healthy.target}&module=plain"
    connection = http.client.HTTPConnection("127.0.0.1", client.port, timeout=10)
    answers = []
    for path in (probe, "/metrics", probe, "/-/healthy"):
        connection.request("GET", path)
        response = connection.getresponse()
        answers.append((response.status, response.read().decode()))
    connection.close()
    assert [status for status, _ in answers] == [200, 200, 200, 200]
    assert succeeded(healthy) in answers[0][1] and succeeded(healthy) in answers[2][1]
    assert f'smtpmon_probes_total{{target="{healthy.target}",module="plain"}} 2.0' in answers[2][1]
    assert "# TYPE smtpmon_probes_in_flight gauge" in answers[1][1]  # the /metrics page
    assert answers[3][1] == "Healthy\n"


def test_pipelined_requests_are_answered_in_order(exporter):
    """Requests sent in one write: the hub reads past the first head; what it read of the
    next request goes with the connection to the thread that answers it."""
    _, client, healthy, _ = exporter
    probe = f"GET /probe?target={healthy.target}&module=plain HTTP/1.1\r\nHost: x\r\n\r\n"
    rest = "GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n" + probe.replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n")
    with socket.create_connection(("127.0.0.1", client.port), timeout=10) as sock:
        sock.sendall((probe + rest).encode())
        answers = read_answers(sock, 3)
        assert sock.recv(1) == b""  # closed as the last request asked
    assert [status for status, _, _ in answers] == [200, 200, 200]
    assert succeeded(healthy).encode() in answers[0][2]
    assert answers[1][2] == b"Healthy\n"
    assert succeeded(healthy).encode() in answers[2][2]


def test_probes_on_the_hub_wait_together_not_in_turn(scripted_server, serve):
    """Sixteen probes of a server that takes 0.5 s to greet finish in about 0.5 s, not 8 s."""
    slow = scripted_server([Sleep(0.5), BANNER, EHLO_OK, QUIT_OK])
    daemon = Daemon(parse_config(CONFIG.format(healthy=slow.target), "test"), None)
    client = serve(daemon)
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(
                   client.get(f"/probe?target={slow.target}&module=plain")))
               for _ in range(16)]
    begun = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    elapsed = time.monotonic() - begun
    assert [status for status, _, _ in answers] == [200] * 16
    assert all(succeeded(slow) in body for _, _, body in answers)
    assert elapsed < 2.5, f"16 probes took {elapsed:.1f} s: they waited in turn"


def test_a_probe_is_answered_alike_on_the_hub_and_on_a_thread(exporter, serve):
    """With basic auth configured (here: anyone passes) every request is served on a thread;
    the answer is the same but for the date and the counters."""
    daemon, _, healthy, _ = exporter
    on_thread = serve(daemon, authorize=lambda headers, client: True, extra_headers={"X-Extra": "1"})
    on_hub_too = serve(daemon, extra_headers={"X-Extra": "1"})
    request = (f"GET /probe?target={healthy.target}&module=plain HTTP/1.1\r\n"
               "Host: x\r\nConnection: close\r\n\r\n").encode()
    answers = []
    for client in (on_hub_too, on_thread):
        with socket.create_connection(("127.0.0.1", client.port), timeout=10) as sock:
            sock.sendall(request)
            answers.extend(read_answers(sock, 1))
            assert sock.recv(1) == b""  # closed, as the request asked
    (hub_status, hub_headers, hub_body), (thread_status, thread_headers, thread_body) = answers
    assert hub_status == thread_status == 200
    assert hub_headers.keys() == thread_headers.keys()
    assert {k: v for k, v in hub_headers.items() if k not in ("date", "content-length")} == \
        {k: v for k, v in thread_headers.items() if k not in ("date", "content-length")}
    assert hub_headers["x-extra"] == "1"
    assert succeeded(healthy).encode() in hub_body and succeeded(healthy).encode() in thread_body


@pytest.mark.parametrize("version, connection", [("HTTP/1.0", ""), ("HTTP/1.1", "close"),
                                                 ("HTTP/1.0", "keep-alive"), ("HTTP/1.1", "")])
def test_a_probe_on_the_hub_keeps_the_connection_as_http_does(exporter, version, connection):
    _, client, healthy, _ = exporter
    fields = f"Connection: {connection}\r\n" if connection else ""
    request = f"GET /probe?target={healthy.target}&module=plain {version}\r\n{fields}\r\n"
    with socket.create_connection(("127.0.0.1", client.port), timeout=2) as sock:
        sock.sendall(request.encode())
        assert read_answers(sock, 1)[0][0] == 200
        sock.settimeout(0.5)
        try:
            kept = sock.recv(1) != b""
        except TimeoutError:
            kept = True
    assert kept == (connection == "keep-alive" or (version, connection) == ("HTTP/1.1", ""))


def test_a_head_with_a_bare_lf_line_is_answered_on_the_thread_path(exporter):
    """The hub reads CRLF heads only; one line ending in a bare LF sends the request to
    http.server's parser, which takes it, rather than leaving it to wait for a CRLF CRLF."""
    _, client, healthy, _ = exporter
    request = f"GET /probe?target={healthy.target}&module=plain HTTP/1.1\r\nHost: x\n\r\n"
    with socket.create_connection(("127.0.0.1", client.port), timeout=2) as sock:
        sock.sendall(request.encode())
        status, _, body = read_answers(sock, 1)[0]
    assert status == 200 and succeeded(healthy).encode() in body


def test_a_connection_handed_to_a_thread_is_no_longer_watched_by_the_hub(daemon, serve):
    """The thread closes it in the end; the hub must not take a late event of that fd number
    for a socket of its own that reuses it."""
    client = serve(daemon)
    server = serve.started[-1]
    with socket.create_connection(("127.0.0.1", client.port), timeout=5) as sock:
        time.sleep(0.2)  # the hub's session waits on the connection for its first bytes
        sock.sendall(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n")  # not /probe: a thread's
        assert read_answers(sock, 1)[0][2] == b"Healthy\n"
        watched = [watched for watched, _ in server.hub._registered.values()
                   if watched is not server.socket]
    assert watched == []


def test_a_thread_that_cannot_start_does_not_stop_the_server(daemon, serve, monkeypatch):
    """With basic auth every connection gets a thread; when one cannot be started, that
    connection is closed and the next one is served."""
    client = serve(daemon, authorize=lambda headers, client: True)
    start = threading.Thread.start
    failures = [RuntimeError("can't start new thread")]

    def start_or_fail(thread):
        if thread.name == "http-connection" and failures:
            raise failures.pop()
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", start_or_fail)
    with pytest.raises((ConnectionError, http.client.RemoteDisconnected)):
        client.get("/-/healthy", timeout=2)
    assert client.get("/-/healthy", timeout=2)[0] == 200
