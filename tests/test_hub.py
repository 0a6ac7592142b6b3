"""The hub: sessions parked on sockets, deadlines, threads and sleeps, on one thread.

Sockets here are socketpairs: the hub sees them exactly as it sees TCP connections. The probe
engine on a hub is tested with the rest of the engine (tests/probe_engines.py).
"""

from __future__ import annotations

import io
import math
import socket
import threading
import time

import pytest

from smtpmon.logs import setup_logging
from smtpmon.net.hub import READ, WRITE, Hub


@pytest.fixture
def hub():
    hub = Hub()
    yield hub
    hub.close()


def drive(hub: Hub, seconds: float) -> None:
    """Run the hub until no session is left, for `seconds` at most."""
    limit = time.monotonic() + seconds
    while hub.sessions and time.monotonic() < limit:
        hub.run_once(limit - time.monotonic())


def test_a_session_resumes_when_its_socket_is_ready(hub):
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    got = []

    def session():
        ready = hub.wait_socket(ours, READ, time.monotonic() + 2)
        got.append((ready, ours.recv(100)))

    hub.spawn(session)
    assert hub.sessions == 1  # parked: nothing to read yet
    threading.Timer(0.1, theirs.send, (b"220 ready\r\n",)).start()
    begun = time.monotonic()
    drive(hub, 2)
    assert got == [(True, b"220 ready\r\n")]
    assert 0.05 < time.monotonic() - begun < 1.0
    ours.close(), theirs.close()


def test_a_deadline_ends_a_wait_while_other_sessions_go_on(hub):
    silent, _silent_peer = socket.socketpair()
    busy, busy_peer = socket.socketpair()
    waits = []
    echoes = []

    def waits_in_vain():
        begun = time.monotonic()
        ready = hub.wait_socket(silent, READ, begun + 0.3)
        waits.append((ready, time.monotonic() - begun))

    def echoes_ten_times():
        for _ in range(10):
            busy_peer.send(b"x")
            assert hub.wait_socket(busy, READ, time.monotonic() + 2)
            echoes.append(busy.recv(10))

    hub.spawn(waits_in_vain)
    hub.spawn(echoes_ten_times)
    drive(hub, 2)
    assert len(echoes) == 10
    [(ready, waited)] = waits
    assert not ready and 0.3 <= waited < 0.6
    for sock in (silent, _silent_peer, busy, busy_peer):
        sock.close()


def test_wait_socket_for_writing_and_on_a_closed_peer(hub):
    ours, theirs = socket.socketpair()
    outcomes = []

    def session():
        outcomes.append(hub.wait_socket(ours, WRITE, time.monotonic() + 1))
        theirs.close()
        outcomes.append(hub.wait_socket(ours, READ, time.monotonic() + 1))  # EOF counts as ready
        outcomes.append(ours.recv(10))

    hub.spawn(session)
    drive(hub, 2)
    assert outcomes == [True, True, b""]
    ours.close()


def test_wait_callback_resumes_on_the_call_from_any_thread_or_gives_up_at_the_deadline(hub):
    outcomes = []
    late = []

    def session():
        outcomes.append(hub.wait_callback(lambda done: threading.Timer(0.05, done).start(),
                                          time.monotonic() + 2))
        outcomes.append(hub.wait_callback(lambda done: done(), time.monotonic() + 2))  # at once
        begun = time.monotonic()
        outcomes.append(hub.wait_callback(late.append, begun + 0.2))  # never called in time
        outcomes.append(time.monotonic() - begun)
        threading.Thread(target=late[0]).start()  # the late call must wake nobody
        begun = time.monotonic()
        hub.sleep(0.2)
        outcomes.append(time.monotonic() - begun)

    hub.spawn(session)
    drive(hub, 3)
    assert outcomes[:3] == [True, True, False]
    assert 0.2 <= outcomes[3] < 0.5
    assert outcomes[4] >= 0.2


def test_a_session_error_is_logged_not_raised(hub):
    stream = io.StringIO()
    setup_logging("info", stream)
    try:
        hub.spawn(lambda: 1 / 0)
    finally:
        setup_logging("info")
    assert hub.sessions == 0
    assert 'msg="session error"' in stream.getvalue() and "ZeroDivisionError" in stream.getvalue()


def test_wake_from_another_thread_ends_the_wait_at_once(hub):
    threading.Timer(0.1, hub.wake).start()
    begun = time.monotonic()
    hub.run_once(5.0)
    assert time.monotonic() - begun < 1.0


def test_a_ready_socket_nobody_waits_on_does_not_keep_the_hub_awake(hub):
    ours, theirs = socket.socketpair()

    def leaves_a_socket_registered():
        hub.wait_socket(ours, READ, time.monotonic() + 1)
        ours.recv(1)
        hub.sleep(0.6)  # parked elsewhere while more arrives on the first socket

    theirs.send(b"a")
    hub.spawn(leaves_a_socket_registered)
    theirs.send(b"b")
    rounds = 0
    while hub.sessions:
        hub.run_once(1.0)
        rounds += 1
    assert rounds < 10  # level-triggered, the unread byte would wake every round
    ours.close(), theirs.close()


def test_a_reused_file_descriptor_is_watched_afresh(hub):
    outcomes = []

    def session():
        for _ in range(3):
            ours, theirs = socket.socketpair()  # the previous pair's numbers come back
            theirs.send(b"hi")
            outcomes.append(hub.wait_socket(ours, READ, time.monotonic() + 1))
            hub.forget(ours)
            ours.close(), theirs.close()

    hub.spawn(session)
    drive(hub, 3)
    assert outcomes == [True, True, True]


def test_an_event_of_a_closed_socket_does_not_wake_the_socket_that_reused_its_number(hub):
    first, first_peer = socket.socketpair()
    other, other_peer = socket.socketpair()
    reused = []
    outcomes = []

    def session():
        for sock, peer in ((other, other_peer), (first, first_peer)):  # both watched by the hub
            peer.send(b"0")
            assert hub.wait_socket(sock, READ, time.monotonic() + 1)
            sock.recv(10)
        hub.sleep(0.05)  # a poll that finds them not ready takes them off epoll's ready list
        other_peer.send(b"1")  # ready first ...
        first_peer.send(b"2")  # ... then the first socket: one batch, in this order
        hub.wait_socket(other, READ, time.monotonic() + 1)
        number = first.fileno()
        hub.forget(first)
        first.close()
        fresh, fresh_peer = socket.socketpair()  # the lowest free numbers: the first's again
        reused.append(fresh.fileno() == number)
        outcomes.append(hub.wait_socket(fresh, READ, time.monotonic() + 0.3))  # nothing sent
        fresh.close(), fresh_peer.close()

    hub.spawn(session)
    drive(hub, 2)
    if not reused[0]:
        pytest.skip("the kernel did not reuse the descriptor number")
    assert outcomes == [False]  # not woken by the closed socket's event
    for sock in (first_peer, other, other_peer):
        sock.close()


def test_a_socket_closed_without_forget_does_not_blind_the_next_with_its_number(hub):
    outcomes = []

    def session():
        for first_wait in (READ, WRITE):  # the same events as the next wait, then others
            ours, theirs = socket.socketpair()
            theirs.send(b"x")
            assert hub.wait_socket(ours, first_wait, time.monotonic() + 1)
            ours.close(), theirs.close()  # no forget(): as when ssl closes a socket itself
            fresh, fresh_peer = socket.socketpair()  # the same numbers again
            fresh_peer.send(b"x")
            begun = time.monotonic()
            outcomes.append((hub.wait_socket(fresh, READ, begun + 1), time.monotonic() - begun < 0.5))
            hub.forget(fresh)
            fresh.close(), fresh_peer.close()

    hub.spawn(session)
    drive(hub, 3)
    assert outcomes == [(True, True), (True, True)]


def test_only_a_session_can_wait(hub):
    ours, theirs = socket.socketpair()
    with pytest.raises(RuntimeError, match="only a session"):
        hub.wait_socket(ours, READ, time.monotonic() + 1)
    ours.close(), theirs.close()


def test_a_session_may_spawn_sessions_and_goes_on_itself(hub):
    """An accept loop spawns a session per connection and keeps accepting."""
    listener, peer = socket.socketpair()
    listener.setblocking(False)
    served = []

    def serve(number):
        hub.sleep(0.01)
        served.append(number)

    def accept_loop():
        for number in range(3):
            hub.wait_socket(listener, READ, time.monotonic() + 2)
            listener.recv(1)
            hub.spawn(serve, number)

    hub.spawn(accept_loop)
    peer.send(b"xyz")
    drive(hub, 2)
    assert sorted(served) == [0, 1, 2]
    assert hub.sessions == 0
    listener.close(), peer.close()


def test_a_wait_without_a_deadline_leaves_no_timer_behind(hub):
    """An accept loop waits without a deadline, once per batch of connections: a timer per
    wait that never fires would pile up for as long as the server runs."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    got = []

    def reader():
        for _ in range(100):
            hub.wait_socket(ours, READ, math.inf)
            got.append(ours.recv(1))

    hub.spawn(hub.sleep, 30)  # a deadline that stays on top of the timer heap all along
    hub.spawn(reader)
    for _ in range(100):
        theirs.send(b"x")
        hub.run_once(1.0)
    assert len(got) == 100
    assert len(hub._timers) == 1  # the sleeper's
    ours.close(), theirs.close()


def test_a_session_spawned_in_a_first_step_starts_at_the_next_turn_at_once(hub):
    """spawn() runs a session's first step outside run_once: what that step spawns must not
    wait for the poll's timeout (a server accepting the connections queued at its start)."""
    started = []
    hub.spawn(lambda: hub.spawn(started.append, "second"))
    begun = time.monotonic()
    hub.run_once(5.0)
    assert started == ["second"]
    assert time.monotonic() - begun < 1.0
