"""Blocking calls (name lookups) on a bounded pool of threads, shared by every probe.

getaddrinfo cannot be given a timeout, so a probe waits for it on another thread and gives up
at its deadline. One thread per lookup would leave every abandoned lookup running: when the
resolver stops answering, 10,000 targets a minute start ~170 threads a second, each living as
long as the resolver's own timeouts (up to 30 s), until the process or its unit (TasksMax)
can start no more threads, and then /metrics, served on threads, fails too. Here at most
`max_threads` lookups run at once and the rest queue; identical lookups in flight share one
call (several modules probing one host); a queued lookup that every caller gave up on is
never run. The sharing has a price: while one lookup of a host hangs, every probe of that host
waits on it, and fails at its deadline, until it returns (at most the resolver's timeouts).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING

from smtpmon.logs import ThrottledWarning, get_logger

if TYPE_CHECKING:
    from smtpmon.net.hub import Hub

log = get_logger("lookups")
_start_failed = ThrottledWarning(
    log, "cannot start a lookup thread; lookups queue for the running ones")

MAX_THREADS = 32  # lookups in flight at once; ~100 ms each would still serve 320 a second
IDLE_SECONDS = 30.0  # a worker with nothing to do for this long ends


class _Lookup:
    __slots__ = ("key", "function", "until", "finished", "ran", "outcome", "callbacks")

    def __init__(self, key: Hashable, function: Callable[[], object], until: float) -> None:
        self.key = key
        self.function = function
        self.until = until  # the latest deadline of its callers: after it, nobody waits
        self.finished = False
        self.ran = False  # False for a lookup dropped unrun
        self.outcome: object = None
        self.callbacks: list[Callable[[], None]] = []


class LookupPool:
    def __init__(self, max_threads: int = MAX_THREADS, idle_seconds: float = IDLE_SECONDS) -> None:
        self._max_threads = max_threads
        self._idle_seconds = idle_seconds
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._queue: collections.deque[_Lookup] = collections.deque()
        self._in_flight: dict[Hashable, _Lookup] = {}  # queued or running, by key
        self._threads = 0
        self._busy = 0  # threads running a lookup; the others wait for one

    @property
    def threads(self) -> int:
        """Worker threads started (or being started) and not yet ended."""
        with self._lock:
            return self._threads

    def run(self, key: Hashable, function: Callable[[], object], until: float,
            hub: Hub | None = None) -> tuple[bool, object]:
        """function() on a pool thread, or the outcome of the call already in flight for the
        same key: (True, its value, or the exception it raised) or (False, None) when the
        monotonic time `until` passed first. With a hub the calling session parks on it;
        without one the calling thread blocks."""
        lookup = self._submit(key, function, until)
        if hub is not None:
            answered = hub.wait_callback(lambda done: self._on_finish(lookup, done), until)
        else:
            finished = threading.Event()
            self._on_finish(lookup, finished.set)
            answered = finished.wait(max(0.0, until - time.monotonic()))
        return (True, lookup.outcome) if answered and lookup.ran else (False, None)

    def _submit(self, key: Hashable, function: Callable[[], object], until: float) -> _Lookup:
        with self._lock:
            lookup = self._in_flight.get(key)
            if lookup is not None:
                lookup.until = max(lookup.until, until)
            else:
                lookup = self._in_flight[key] = _Lookup(key, function, until)
                self._queue.append(lookup)
                self._work.notify()
            # Checked on joining too: after a failed thread start, a queued lookup may have no
            # worker, and a caller of its key is the one to start one.
            waiting = self._threads - self._busy
            if len(self._queue) <= waiting or self._threads >= self._max_threads:
                return lookup  # a waiting worker takes it, or the next one that is done
            self._threads += 1
        try:
            threading.Thread(target=self._work_loop, name="smtpmon-lookup", daemon=True).start()
        except RuntimeError as error:  # no more threads: the next caller tries again
            with self._lock:
                self._threads -= 1
            _start_failed.log(error=str(error))
        return lookup

    def _on_finish(self, lookup: _Lookup, callback: Callable[[], None]) -> None:
        """callback() once the lookup is finished: now (on this thread) if it is already."""
        with self._lock:
            if not lookup.finished:
                lookup.callbacks.append(callback)
                return
        callback()

    def _work_loop(self) -> None:
        while True:
            with self._lock:
                lookup = self._take()
                if lookup is None:
                    self._threads -= 1
                    return
                self._busy += 1
            try:
                outcome = lookup.function()
            except Exception as error:  # handed to the callers, who decide
                outcome = error
            except BaseException as error:  # ends this thread; the counts must stay true
                self._done(lookup, error, thread_ends=True)
                raise
            self._done(lookup, outcome)

    def _done(self, lookup: _Lookup, outcome: object, *, thread_ends: bool = False) -> None:
        with self._lock:
            self._busy -= 1
            self._threads -= thread_ends
            lookup.outcome = outcome
            lookup.ran = True
            callbacks = self._finished(lookup)
        for callback in callbacks:
            callback()

    def _take(self) -> _Lookup | None:
        """The next lookup someone still waits for (under the lock), or None after
        idle_seconds without one. A lookup every caller gave up on is dropped unrun: its
        callers' waits have ended, or end at their deadline, which has passed."""
        idle_until = time.monotonic() + self._idle_seconds
        while True:
            while self._queue:
                lookup = self._queue.popleft()
                if time.monotonic() < lookup.until:
                    return lookup
                self._finished(lookup)  # its callbacks are not called: nobody waits any more
            left = idle_until - time.monotonic()
            if left <= 0:
                return None
            self._work.wait(left)

    def _finished(self, lookup: _Lookup) -> list[Callable[[], None]]:
        """Mark it finished (under the lock): later callers of its key start a new lookup.
        Its callbacks, to call outside the lock."""
        lookup.finished = True
        del self._in_flight[lookup.key]
        callbacks, lookup.callbacks = lookup.callbacks, []
        return callbacks
