"""The lookup pool: blocking calls (getaddrinfo) on a bounded set of threads.

Most tests hold a call on an Event as the hung lookup, or hold socket.getaddrinfo itself and
run real probes through it. The last runs the daemon against a real name server on loopback
that never answers, given to it as its only one (as root, in a mount namespace).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import threading
import time

import pytest
from daemon_process import start_daemon
from helpers import run_probe_at, unavailable
from probe_engines import call_on_engine

from smtpmon.net import lookups
from smtpmon.net.hub import Hub
from smtpmon.net.lookups import MAX_THREADS, LookupPool
from smtpmon.smtp import client as smtpclient
from smtpmon.smtp.module import Module


class HeldCall:
    """A stand-in lookup that blocks until released, counting calls and how many ran at once."""

    def __init__(self, value: object = "answer"):
        self.value = value
        self.release = threading.Event()
        self.calls = 0
        self.running = 0
        self.most_at_once = 0
        self._lock = threading.Lock()

    def __call__(self) -> object:
        with self._lock:
            self.calls += 1
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        self.release.wait(10)
        with self._lock:
            self.running -= 1
        return self.value


def on_threads(count: int, call) -> list:
    """call(i) on `count` threads at once; their values in order."""
    values: list = [None] * count

    def one(index: int) -> None:
        values[index] = call(index)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    return values


def wait_until(condition, seconds: float = 5.0) -> bool:
    limit = time.monotonic() + seconds
    while not condition() and time.monotonic() < limit:
        time.sleep(0.01)
    return condition()


def test_hung_lookups_hold_at_most_max_threads_and_queued_ones_that_expired_never_run():
    pool = LookupPool(max_threads=3, idle_seconds=0.2)
    held = HeldCall()
    begun = time.monotonic()
    outcomes = on_threads(10, lambda i: pool.run(f"mx{i}.example", held, begun + 0.3))
    waited = time.monotonic() - begun

    assert outcomes == [(False, None)] * 10  # each caller gave up at its deadline
    assert 0.3 <= waited < 1.5
    assert held.most_at_once == 3 and pool.threads == 3
    held.release.set()
    # The three running calls end; the seven that queued past their callers' deadline are
    # dropped unrun, and the idle workers end.
    assert wait_until(lambda: pool.threads == 0)
    assert held.calls == 3


def test_callers_of_the_same_lookup_in_flight_share_one_call():
    pool = LookupPool(max_threads=4)
    held = HeldCall(value=[("127.0.0.1", 25)])
    threading.Timer(0.1, held.release.set).start()
    outcomes = on_threads(8, lambda i: pool.run("mx.example", held, time.monotonic() + 5))
    assert outcomes == [(True, [("127.0.0.1", 25)])] * 8
    assert held.calls == 1
    # Finished lookups are not cached: the next caller asks again.
    assert pool.run("mx.example", held, time.monotonic() + 5) == (True, [("127.0.0.1", 25)])
    assert held.calls == 2


def test_an_exception_is_handed_back_as_the_value():
    pool = LookupPool(max_threads=1)
    answered, value = pool.run("bad", lambda: 1 / 0, time.monotonic() + 5)
    assert answered is True and isinstance(value, ZeroDivisionError)
    assert pool.run("good", lambda: 42, time.monotonic() + 5) == (True, 42)  # the worker lives on


def test_sessions_on_a_hub_park_while_lookups_queue_and_the_hub_goes_on():
    pool = LookupPool(max_threads=2)
    held = HeldCall()
    hub = Hub()
    outcomes: list = []
    ticks: list = []

    def lookup(index: int) -> None:
        outcomes.append(pool.run(index % 4, held, time.monotonic() + 0.5, hub))

    def ticker() -> None:  # the hub's own thread must stay free for other sessions
        for _ in range(8):
            hub.sleep(0.05)
            ticks.append(time.monotonic())

    try:
        for index in range(12):
            hub.spawn(lookup, index)
        hub.spawn(ticker)
        threading.Timer(0.2, held.release.set).start()
        limit = time.monotonic() + 5
        while hub.sessions and time.monotonic() < limit:
            hub.run_once(0.5)
    finally:
        hub.close()

    assert len(ticks) == 8 and max(b - a for a, b in zip(ticks, ticks[1:])) < 0.2
    # Four keys, two threads: two lookups ran, and after the release the other two.
    assert outcomes == [(True, "answer")] * 12
    assert held.calls == 4 and held.most_at_once == 2


@pytest.mark.parametrize("engine", ["thread", "hub"])
def test_probes_against_a_resolver_that_stopped_answering_fail_at_resolve_with_bounded_threads(
        monkeypatch, engine):
    held = HeldCall()
    monkeypatch.setattr(smtpclient.socket, "getaddrinfo", lambda *args: held())
    monkeypatch.setattr(smtpclient, "LOOKUPS", LookupPool(max_threads=4, idle_seconds=0.2))
    module = Module(tls="none", timeout_seconds=0.3)
    threads_before = threading.active_count()

    def probes(first: int):
        def three(hub):
            found = [run_probe_at(f"mx{first + i}.example.test:25", module, hub=hub)
                     for i in range(3)]
            return found, threading.active_count()
        return three

    # Rounds of probes to distinct hosts, three at a time, as a scheduler would start them.
    results = []
    most_threads = 0
    for round_number in range(4):
        first = 9 * round_number
        round_results = on_threads(3, lambda i, first=first: call_on_engine(engine, probes(first + 3 * i)))
        for found, threads in round_results:
            results += found
            most_threads = max(most_threads, threads)
    held.release.set()

    assert len(results) == 36
    for result in results:
        assert (result.failed_stage, result.reason) == ("resolve", "dns_failure")
        assert "no answer resolving" in result.detail
    assert held.most_at_once == 4
    # Three probe threads and the four lookup threads, beyond what ran before.
    assert most_threads <= threads_before + 3 + 4


def test_a_new_caller_revives_a_queued_lookup_whose_callers_gave_up():
    pool = LookupPool(max_threads=1)
    held = HeldCall()
    on_threads(1, lambda i: pool.run("busy", held, time.monotonic() + 0.05))  # holds the worker
    assert pool.run("mx.example", lambda: "early", time.monotonic() + 0.05) == (False, None)
    threading.Timer(0.1, held.release.set).start()
    # Still queued behind the held call, past its only caller's deadline: joined, it runs.
    assert pool.run("mx.example", lambda: "late", time.monotonic() + 5) == (True, "early")


def test_after_a_failed_thread_start_the_next_caller_of_the_lookup_starts_one(monkeypatch):
    # The process out of threads (a unit's TasksMax, say) for one moment: a stand-in Thread
    # whose first start fails as CPython's does then.
    failures = [RuntimeError("can't start new thread")]

    class OnceFailingThread(threading.Thread):
        def start(self):
            if failures:
                raise failures.pop()
            super().start()

    monkeypatch.setattr(lookups.threading, "Thread", OnceFailingThread)
    pool = LookupPool(max_threads=2)
    assert pool.run("mx.example", lambda: "addr", time.monotonic() + 0.1) == (False, None)
    assert pool.threads == 0
    # The same host again: it joins the lookup still queued, and starts a worker for it.
    assert pool.run("mx.example", lambda: "addr", time.monotonic() + 5) == (True, "addr")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # on purpose
def test_a_lookup_that_ends_its_thread_leaves_the_pool_counting_true():
    pool = LookupPool(max_threads=1)
    worker = []

    def ends_the_thread():
        worker.append(threading.current_thread())
        raise SystemExit

    answered, value = pool.run("first", ends_the_thread, time.monotonic() + 5)
    assert answered is True and isinstance(value, SystemExit)
    worker[0].join(5)  # its end is reported (and ignored) within this test
    assert pool.threads == 0
    assert pool.run("second", lambda: 42, time.monotonic() + 5) == (True, 42)


# A name server that never answers, for a daemon of its own: the daemon runs in a mount
# namespace where /etc/resolv.conf names it (needs root and unshare; loopback only).
SILENT_NAME_SERVER = "127.53.53.53"
OWN_RESOLV_CONF = ["unshare", "-m", "--", "sh", "-c",
                   'mount --bind "$0" /etc/resolv.conf && exec "$@"']


def _own_resolver_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "a resolv.conf of the daemon's own needs root (a bind mount in a mount namespace)"
    if shutil.which("unshare") is None:
        return "unshare is not installed (Debian: util-linux)"
    return None


def test_a_daemon_whose_resolver_never_answers_keeps_its_threads_bounded(tmp_path):
    reason = _own_resolver_unavailable()
    if reason is not None:
        unavailable(reason)
    name_server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    name_server.bind((SILENT_NAME_SERVER, 53))  # queries queue up in it, unanswered
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {SILENT_NAME_SERVER}\noptions timeout:5 attempts:2\n")
    targets = "\n".join(f"  - {{address: 'mx{i}.outage.test:25', module: plain}}"
                        for i in range(300))
    config = ("global: {interval: 1s, timeout: 0.5s, max_concurrency: 64}\n"
              f"modules: {{plain: {{tls: none}}}}\ntargets:\n{targets}\n")
    running = start_daemon(tmp_path, config, command_prefix=[*OWN_RESOLV_CONF, str(resolv)])
    try:
        most_threads = 0
        for _ in range(8):  # 4 s: 64 probes in flight, each giving up after 0.5 s
            time.sleep(0.5)
            with open(f"/proc/{running.process.pid}/status") as status:
                threads = next(int(line.split()[1]) for line in status
                               if line.startswith("Threads:"))
            most_threads = max(most_threads, threads)
        status_code, metrics = running.get("/metrics")
    finally:
        running.stop()
        name_server.close()
    # The main thread, the scheduler's and the web server's, the 32 lookup threads, and the
    # threads answering this test's requests. A thread per lookup made ~300 here.
    assert most_threads <= 3 + MAX_THREADS + 4
    assert status_code == 200
    failed = re.findall(r'smtpmon_probe_failures_total\{target="mx\d+\.outage\.test:25",'
                        r'module="plain",stage="resolve",reason="dns_failure"\} (\d+)', metrics)
    assert len(failed) >= 100
