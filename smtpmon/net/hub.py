"""Many probe sessions on one thread: greenlets over epoll.

Why: a probe spends nearly all its time waiting for a server, and what a probe cost the daemon
was mostly the process waking up for it on cold caches. With every session on one thread,
probes started together share each wake-up (see scheduler.DISPATCH_ROUND_SECONDS; the figures
are in benchmarks/README.md). A session that would block parks itself on its socket (or its
deadline) and switches back to the loop, which waits on every socket at once with one epoll.

Why greenlet and not asyncio: the probe engine stays plain functions. The command line runs
the very same session code on its own thread, blocking (so does /probe behind TLS or basic
auth, see smtpmon.web.server); only smtp.client's lowest calls (connect, send, receive, the TLS
handshake) and the DNS wait ask the hub to wait when there is one. asyncio would mean a
second, `async`, copy of the engine.

Everything here runs on the hub's thread, except `post` and `wake`, which other threads use.
A session must never block that thread: it waits through `wait_socket`, `wait_callback` or
`sleep`, each bounded by a deadline.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import math
import os
import select
import threading
import time
from collections.abc import Callable

import greenlet

from smtpmon.logs import get_logger

log = get_logger("hub")

READ = select.EPOLLIN
WRITE = select.EPOLLOUT
# Errors and hang-ups always wake the session parked on the socket: its next call sees them.
_ALWAYS = select.EPOLLERR | select.EPOLLHUP


class Hub:
    """An epoll loop whose sessions are greenlets; `run_once` is called by the owning thread."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        # fd -> (the socket, the events epoll watches for it)
        self._registered: dict[int, tuple[object, int]] = {}
        # Unregistered during the current batch of events: a later event of the same batch for
        # that number belongs to the closed socket, not to a new one that reused the number.
        self._dropped: set[int] = set()
        # What is parked, by key (an fd, or a private object for a thread or a sleep), with the
        # token of that wait: a timer or a late thread only wakes the wait it was made for.
        self._parked: dict[object, tuple[greenlet.greenlet, int]] = {}
        self._timers: list[tuple[float, int, object]] = []  # (monotonic deadline, token, key)
        self._tokens = itertools.count()
        self._posted: collections.deque[Callable[[], None]] = collections.deque()
        # Spawned by a session (an accept loop): started by the loop, since the spawning
        # session must not be left suspended outside any wait.
        self._starting: collections.deque[tuple[Callable, tuple]] = collections.deque()
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._wake_lock = threading.Lock()  # a wake() never writes to a closed, reused number
        self._epoll.register(self._wake_fd, READ)
        self._loop: greenlet.greenlet | None = None
        self.sessions = 0  # spawned and not yet returned

    def close(self) -> None:
        self._epoll.close()
        with self._wake_lock:
            wake_fd, self._wake_fd = self._wake_fd, -1
            os.close(wake_fd)

    # -- for the owning thread -------------------------------------------------------------
    def spawn(self, function: Callable, *args) -> None:
        """Start function(*args) as a session now; it runs until its first wait. An exception
        it lets out is logged, never raised here. Called from a session, it starts at the end
        of the current turn instead."""
        current = greenlet.getcurrent()
        if self._loop is not None and current is not self._loop and current.parent is self._loop:
            self._starting.append((function, args))
            return
        self._loop = current
        session = greenlet.greenlet(self._guarded, parent=self._loop)
        self.sessions += 1
        session.switch(function, args)

    def _guarded(self, function: Callable, args: tuple) -> None:
        try:
            function(*args)
        except Exception:
            log.exception("session error")
        finally:
            self.sessions -= 1

    def run_once(self, timeout: float) -> None:
        """Wait up to `timeout` seconds (less when a deadline comes first) for sockets, then
        resume every session whose socket is ready or whose deadline passed."""
        self._loop = greenlet.getcurrent()
        timers = self._timers
        # A wait that ended on its socket leaves its timer behind: drop such timers from the top
        # rather than wake up for them.
        while timers and not self._is_waiting(timers[0][2], timers[0][1]):
            heapq.heappop(timers)
        if timers:
            timeout = min(timeout, timers[0][0] - time.monotonic())
        if self._starting:  # spawned by a session that ran outside run_once (its first step)
            timeout = 0.0
        self._dropped.clear()
        for fd, _events in self._epoll.poll(max(0.0, timeout)):
            if fd == self._wake_fd:
                self._run_posted()
                continue
            if fd in self._dropped:
                continue
            parked = self._parked.get(fd)
            if parked is not None:
                parked[0].switch(True)
            elif fd in self._registered:
                # Nobody waits on it (say a first connection kept open while a second one
                # reads a certificate): level-triggered, it would wake every poll.
                self._unregister(fd)
        self._expire_timers()
        while self._starting:
            function, args = self._starting.popleft()
            self.spawn(function, *args)

    def _expire_timers(self) -> None:
        timers = self._timers
        now = time.monotonic()
        while timers and timers[0][0] <= now:
            _, token, key = heapq.heappop(timers)
            if self._is_waiting(key, token):
                self._parked[key][0].switch(False)

    def _is_waiting(self, key: object, token: int) -> bool:
        parked = self._parked.get(key)
        return parked is not None and parked[1] == token

    def _run_posted(self) -> None:
        try:
            os.eventfd_read(self._wake_fd)
        except BlockingIOError:
            pass
        while self._posted:
            self._posted.popleft()()

    # -- for other threads -----------------------------------------------------------------
    def post(self, callback: Callable[[], None]) -> None:
        """Run callback on the hub's thread at its next turn (thread-safe)."""
        self._posted.append(callback)
        self.wake()

    def wake(self) -> None:
        """End the current or next `run_once` wait at once (thread-safe)."""
        with self._wake_lock:
            if self._wake_fd >= 0:  # else closed: nothing waits any more
                os.eventfd_write(self._wake_fd, 1)

    # -- for sessions ----------------------------------------------------------------------
    def wait_socket(self, sock, events: int, until: float) -> bool:
        """Park the calling session until sock is ready for `events` (READ or WRITE), or an
        error or hang-up, or until the monotonic time `until` (math.inf: no deadline). False
        when the time ran out."""
        fd = sock.fileno()
        wanted = events | _ALWAYS
        registered = self._registered.get(fd)
        if registered is None or registered[0] is not sock or registered[1] != wanted:
            self._watch(fd, wanted, new=registered is None or registered[0] is not sock)
            self._registered[fd] = (sock, wanted)
        return self._park(fd, until)

    def _watch(self, fd: int, events: int, new: bool) -> None:
        # A new socket object is registered afresh: its number may be that of a socket closed
        # without forget() (ssl may close one itself), which the kernel has already dropped.
        if not new:
            self._epoll.modify(fd, events)
            return
        try:
            self._epoll.register(fd, events)
        except FileExistsError:  # the same fd under a new socket object: ssl's wrap_socket
            self._epoll.modify(fd, events)

    def forget(self, sock) -> None:
        """Call before closing a socket a session waited on: its fd number will be reused."""
        fd = sock.fileno()
        if fd >= 0 and fd in self._registered:
            self._unregister(fd)

    def _unregister(self, fd: int) -> None:
        del self._registered[fd]
        self._dropped.add(fd)
        try:
            self._epoll.unregister(fd)
        except OSError:  # already closed: the kernel dropped it itself
            pass

    def sleep(self, seconds: float) -> None:
        """Park the calling session for `seconds`."""
        self._park(object(), time.monotonic() + seconds)

    def wait_callback(self, start: Callable[[Callable[[], None]], None], until: float) -> bool:
        """Park until the callback handed to start(callback) is called, from any thread (for
        work done elsewhere, such as a name lookup on smtpmon.net.lookups' threads), or until
        `until` passes: False then, and a later call of the callback wakes nobody."""
        key = object()
        token = next(self._tokens)

        def resume() -> None:
            if self._is_waiting(key, token):
                self._parked[key][0].switch(True)

        start(lambda: self.post(resume))
        return self._park(key, until, token)

    def _park(self, key: object, until: float, token: int | None = None) -> bool:
        me = greenlet.getcurrent()
        if me is self._loop or self._loop is None:
            raise RuntimeError("only a session spawned on the hub can wait on it")
        if token is None:
            token = next(self._tokens)
        self._parked[key] = (me, token)
        if until < math.inf:  # a timer that can never fire would stay in the heap for good
            heapq.heappush(self._timers, (until, token, key))
        try:
            return self._loop.switch()
        finally:
            del self._parked[key]
