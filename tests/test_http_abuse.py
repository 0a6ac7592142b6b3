"""Bad and abusive HTTP clients against the real daemon (a subprocess on loopback).

Bad input gets a 4xx with a reason in the body, never a 500 or a traceback; the exceptions are
the two answers RFC 9110 prescribes for what the server cannot speak at all: 501 for a method
it does not know (15.6.2) and 505 for an HTTP version it does not support (15.6.6). Slow and
idle clients cannot stop /metrics from answering; beyond `--web.max-connections` and
`--web.max-concurrent-probes`, clients get a 503 at once.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
from daemon_process import start_daemon
from helpers import sample_value
from smtpservers import LOOPBACK, Sleep

METRICS_WITHIN_SECONDS = 1.0


@pytest.fixture(scope="module")
def running(tmp_path_factory, smtp_target):
    config = (
        "global: {interval: 1m, timeout: 2s}\n"
        "modules:\n  plain: {tls: none}\n  other: {tls: opportunistic}\n"
        f'targets:\n  - {{address: "{smtp_target}", module: plain}}\n'
    )
    daemon = start_daemon(tmp_path_factory.mktemp("http-abuse"), config)
    yield daemon
    daemon.stop()


def assert_no_traceback(text: str) -> None:
    assert "Traceback" not in text and 'File "' not in text


def assert_log_clean(running) -> None:
    """No error, no exception logged, and the daemon still runs."""
    log = running.log()
    assert "level=error" not in log and "exception=" not in log and "Traceback" not in log
    assert running.process.poll() is None


# -- /probe parameters -------------------------------------------------------------------------
TARGET = "{target}"  # the configured SMTP server, filled in at run time

BAD_PROBE_QUERIES = [
    # (id, query string, status, words the reason must contain)
    ("no parameters", "", 400, "missing parameter 'target'"),
    ("missing target", "module=plain", 400, "missing parameter 'target'"),
    ("empty target", "target=&module=plain", 400, "missing parameter 'target'"),
    ("missing module", f"target={TARGET}", 400, "missing parameter 'module'; known: plain, other"),
    ("empty module", f"target={TARGET}&module=", 400, "missing parameter 'module'"),
    ("repeated target", f"target={TARGET}&target={TARGET}&module=plain", 400, "'target' given more than once"),
    ("repeated module", f"target={TARGET}&module=plain&module=other", 400, "'module' given more than once"),
    ("target of 1,000 characters", "target=" + "a" * 996 + ":25&module=plain", 400, "longer than 300 characters"),
    ("port out of range", "target=127.0.0.1:70000&module=plain", 400, "port must be 1-65535, got 70000"),
    ("port 0", "target=127.0.0.1:0&module=plain", 400, "port must be 1-65535, got 0"),
    ("port by name", "target=127.0.0.1:smtp&module=plain", 400, 'port must be a number 1-65535, got "smtp"'),
    ("no port", "target=127.0.0.1&module=plain", 400, "missing port"),
    ("IPv6 without brackets", "target=::1:25&module=plain", 400, "an IPv6 address must be in brackets"),
    ("IPv6 in brackets without port", "target=[::1]&module=plain", 400, "missing port"),
    ("IPv6 with an unclosed bracket", "target=[::1:25&module=plain", 400, 'missing "]"'),
    ("not an IPv6 address", "target=[::g]:25&module=plain", 400, 'invalid IPv6 address "::g"'),
    # A valid address that is no configured target: refused, or /probe is a port scanner.
    ("IPv6 in brackets, not configured", "target=[::1]:25&module=plain", 403, "port scanner"),
    ("IPv4 not configured", "target=127.0.0.1:1&module=plain", 403, "port scanner"),
    ("CR LF injected", "target=127.0.0.1%0d%0aQUIT:25&module=plain", 400, "control characters"),
    ("LF injected", "target=127.0.0.1:25%0aRCPT&module=plain", 400, "control characters"),
    ("NUL injected", "target=127.0.0.1%00:25&module=plain", 400, "control characters"),
    ("space in the target", "target=127.0.0.1+:25&module=plain", 400, "whitespace"),
    ("bad host name", "target=mx..example.org:25&module=plain", 400, 'invalid host name "mx..example.org"'),
    ("percent-encoding that is not UTF-8", "target=%ff%fe:25&module=plain", 400, "percent-encoded UTF-8"),
    ("unknown module", f"target={TARGET}&module=smtps", 400, "unknown module 'smtps'; known: plain, other"),
    ("module name with CR LF", f"target={TARGET}&module=x%0d%0aSet-Cookie:%20a", 400,
     "unknown module 'x\\r\\nSet-Cookie: a'"),  # escaped once, as a person would write it
    ("module name of 10,000 characters", f"target={TARGET}&module=" + "m" * 10_000, 400, "unknown module"),
    ("debug neither true nor false", f"target={TARGET}&module=plain&debug=yes", 400, "'debug' must be true or false"),
    ("too many parameters", "&".join(f"p{i}=1" for i in range(40)), 400, "too many"),
]


@pytest.mark.parametrize(("query", "status", "words"), [case[1:] for case in BAD_PROBE_QUERIES],
                         ids=[case[0] for case in BAD_PROBE_QUERIES])
def test_bad_probe_parameters_get_a_4xx_with_a_reason(running, smtp_target, query, status, words):
    code, body = running.get("/probe?" + query.replace(TARGET, smtp_target))

    assert (code, body.count("\n")) == (status, 1), body  # one line of plain text: the reason
    assert words in body
    assert "\r" not in body and len(body) < 1000  # nothing of the input is echoed raw or whole
    assert_no_traceback(body)
    assert_log_clean(running)


def test_a_100_kb_target_is_refused_by_the_request_line_limit(running):
    code, body = raw_request(running.port, b"GET /probe?module=plain&target=" + b"a" * 100_000 + b":25 HTTP/1.1\r\n\r\n")

    assert code == 414 and "Request-URI Too Long" in body


@pytest.mark.parametrize("header", ["abc", "-1", "0", "nan", "inf"])
def test_bad_scrape_timeout_header(running, smtp_target, header):
    code, body = running.request("GET", f"/probe?target={smtp_target}&module=plain",
                                 headers={"X-Prometheus-Scrape-Timeout-Seconds": header})

    assert (code, body) == (400, "header X-Prometheus-Scrape-Timeout-Seconds must be a positive number of seconds\n")


def test_a_good_probe_still_works_after_the_bad_ones(running, smtp_target):
    code, body = running.get(f"/probe?target={smtp_target}&module=plain")

    assert code == 200
    assert sample_value(body, "smtpmon_probe_success", target=smtp_target, module="plain") == 1


# -- requests of every other kind of wrong -------------------------------------------------------
def raw_request(port: int, data: bytes, timeout: float = 5.0) -> tuple[int, str]:
    """Send bytes as they are; (status code from the status line, the response's body)."""
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
        sock.sendall(data)
        response = b""
        while True:
            head, separator, body = response.partition(b"\r\n\r\n")
            if separator:
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), None)
                if length is not None and len(body) >= length:
                    break
            chunk = sock.recv(65536)
            if not chunk:
                break
            response += chunk
    status_line = response.split(b"\r\n", 1)[0].decode("latin-1")
    assert status_line.startswith("HTTP/1.1 "), f"no status line in {response[:200]!r}"
    return int(status_line.split()[1]), response.partition(b"\r\n\r\n")[2].decode("utf-8", errors="replace")


BAD_REQUESTS = [
    # (id, raw request, status)
    ("garbage request line", b"GARBAGE\r\n\r\n", 400),
    ("binary request line", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),
    ("TLS ClientHello to the plain port", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(range(32)) + b"\n\n", 400),
    ("bad version", b"GET /metrics HTTP/x.y\r\n\r\n", 400),
    ("HTTP/2 on an HTTP/1 port", b"GET /metrics HTTP/2.0\r\n\r\n", 505),
    ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
    ("unknown method", b"FROB /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 501),
    ("DELETE", b"DELETE /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 405),
    ("POST with a body to /metrics", b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello=world", 405),
    ("POST to /probe", b"POST /probe?target=a:25&module=plain HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 405),
    ("a header line of 70 KB", b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", 431),
    ("200 headers", b"GET /metrics HTTP/1.1\r\n" + b"".join(b"X-%d: a\r\n" % i for i in range(200)) + b"\r\n", 431),
    ("40 KB of header fields in 10 lines", b"GET /metrics HTTP/1.1\r\n"
     + b"".join(b"X-%d: " % i + b"a" * 4000 + b"\r\n" for i in range(10)) + b"\r\n", 431),
    ("40 KB of header fields on /probe (the hub's path)", b"GET /probe?target=a:25&module=plain HTTP/1.1\r\n"
     + b"".join(b"X-%d: " % i + b"a" * 4000 + b"\r\n" for i in range(10)) + b"\r\n", 431),
    ("a path of 70 KB", b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 414),
    ("a deep path", b"GET /" + b"a/" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 404),
    ("dot-dot path", b"GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n", 404),
    ("double slash (http.server collapses it)", b"GET //metrics HTTP/1.1\r\nHost: x\r\n\r\n", 200),
    ("absolute URI of another host", b"GET http://evil.example/metrics HTTP/1.1\r\nHost: x\r\n\r\n", 404),
    ("NUL in the path", b"GET /metrics%00 HTTP/1.1\r\nHost: x\r\n\r\n", 404),
    ("non-ASCII path", b"GET /\xff\xfe\x00 HTTP/1.1\r\nHost: x\r\n\r\n", 404),
    ("OPTIONS *", b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", 404),
    # The body is never read: a length that lies, either way, cannot make the server wait.
    ("Content-Length larger than the body", b"POST /-/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nshort", 200),
    ("Content-Length of a terabyte", b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000\r\n\r\n", 200),
    ("negative Content-Length", b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", 200),
    ("Content-Length not a number", b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: lots\r\n\r\n", 200),
    ("chunked garbage", b"POST /-/reload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 200),
    ("no version (HTTP/0.9)", b"GET /-/healthy\r\n\r\n", 200),
]


@pytest.mark.parametrize(("data", "status"), [case[1:] for case in BAD_REQUESTS], ids=[case[0] for case in BAD_REQUESTS])
def test_bad_requests_get_a_status_never_a_500_or_a_traceback(running, data, status):
    begun = time.monotonic()
    code, body = raw_request(running.port, data)

    assert code == status, body[:300]
    assert time.monotonic() - begun < 1.0  # answered, not left waiting for a body
    assert_no_traceback(body)
    assert_log_clean(running)


# -- request smuggling: a body is never read as a request -----------------------------------------
SMUGGLED = b"POST /-/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"


def all_answers(port: int, data: bytes, timeout: float = 3.0) -> bytes:
    """Everything the server sends back until it closes the connection (or goes quiet)."""
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
        sock.sendall(data)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return received


@pytest.mark.parametrize("request_head", [
    pytest.param(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n", id="thread: Content-Length"),
    pytest.param(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n", id="thread: chunked"),
    pytest.param(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: %d\r\n\r\n",
                 id="thread: two Content-Lengths"),
    pytest.param(b"GET /probe?target={target}&module=plain HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n",
                 id="hub: Content-Length"),
    pytest.param(b"GET /probe?target={target}&module=plain HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n",
                 id="hub: chunked"),
])
def test_a_body_on_a_get_is_never_taken_for_the_next_request(running, smtp_target, request_head):
    """A GET whose body holds `POST /-/reload`: behind a proxy that filters by method and path,
    the body must not become a second request, on either transport (the hub's /probe path and
    a thread's)."""
    head = request_head.replace(b"{target}", smtp_target.encode()) % len(SMUGGLED)
    reloads_before = running.log().count("configuration reloaded")

    answers = all_answers(running.port, head + SMUGGLED)

    assert answers.count(b"HTTP/1.1 ") == 1, answers[:500]
    assert b"configuration reloaded" not in answers
    time.sleep(0.2)
    assert running.log().count("configuration reloaded") == reloads_before
    assert_log_clean(running)


# -- slow and idle clients -------------------------------------------------------------------------
def test_slowloris_and_idle_connections_cannot_stop_metrics(running):
    """20 clients sending their headers a byte a second and 100 that connect and say nothing."""
    request = b"GET /metrics HTTP/1.1\r\nHost: x\r\nUser-Agent: slowloris\r\nX-Padding: " + b"z" * 200
    slow = [socket.create_connection((LOOPBACK, running.port), timeout=5) for _ in range(20)]
    idle = [socket.create_connection((LOOPBACK, running.port), timeout=5) for _ in range(100)]
    stop = threading.Event()

    def trickle() -> None:
        for byte in request:
            for sock in slow:
                try:
                    sock.send(bytes([byte]))
                except OSError:
                    pass
            if stop.wait(1.0):
                return

    trickler = threading.Thread(target=trickle, daemon=True)
    trickler.start()
    try:
        latencies = []
        until = time.monotonic() + 4.0
        while time.monotonic() < until:
            begun = time.monotonic()
            assert running.metrics(timeout=5.0)
            latencies.append(time.monotonic() - begun)
            time.sleep(0.2)
    finally:
        stop.set()
        trickler.join(5)
        for sock in slow + idle:
            sock.close()

    assert len(latencies) >= 10
    assert max(latencies) < METRICS_WITHIN_SECONDS, f"/metrics took up to {max(latencies):.3f} s"


# -- limits ----------------------------------------------------------------------------------------
def test_connection_and_probe_limits_answer_503_at_once(tmp_path, scripted_server):
    """`--web.max-concurrent-probes 1` and `--web.max-connections 8` on the real daemon."""
    tarpit = scripted_server([Sleep(30)])
    config = ("global: {interval: 1m, timeout: 5s}\nprobe_allow: ['localhost:*']\n"
              "modules:\n  plain: {tls: none}\ntargets: []\n")  # every probe is a /probe
    running = start_daemon(tmp_path, config, args=["--web.max-connections", "8",
                                                   "--web.max-concurrent-probes", "1"])
    slow_probe = f"/probe?target=localhost:{tarpit.port}&module=plain"
    answers = []
    slow = threading.Thread(target=lambda: answers.append(running.request(
        "GET", slow_probe, headers={"X-Prometheus-Scrape-Timeout-Seconds": "2.5"})))
    idle = []
    try:
        slow.start()
        running.wait_for(lambda text: sample_value(text, "smtpmon_probes_in_flight") == 1, timeout=2)
        begun = time.monotonic()
        code, body = running.get(slow_probe)
        assert time.monotonic() - begun < 0.5
        assert (code, body) == (503, "too many concurrent probes (limit 1); try again later\n")
        slow.join(5)
        assert answers[0][0] == 200 and 'reason="timeout"' in answers[0][1]

        idle = [socket.create_connection((LOOPBACK, running.port), timeout=5) for _ in range(8)]
        begun = time.monotonic()
        code, body = raw_request(running.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert time.monotonic() - begun < 0.5
        assert (code, body) == (503, "too many connections (limit 8); try again later\n")
        idle.pop().close()
        deadline = time.monotonic() + 2
        while (code := running.get("/metrics")[0]) == 503 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert code == 200, "a freed slot was not taken by the next client"
        log = running.log()
        assert 'level=warn msg="/probe limit reached; more concurrent /probe requests get 503" limit=1' in log
        assert 'level=warn msg="connection limit reached; new connections get 503 until one closes" limit=8' in log
    finally:
        for sock in idle:
            sock.close()
        running.stop()
