"""`smtpmon run`: configuration, store, scheduler and HTTP server wired together.

The main thread only waits for signals (`sigwait`, with the signals blocked in every thread, so
no handler ever runs in the middle of other code): SIGHUP reloads the configuration, SIGTERM and
SIGINT stop. The scheduler runs its probes on its own thread (smtpmon.net.hub); the HTTP server
runs /probe on another hub, on its serving thread, and other requests on threads of their own.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import resource
import signal
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from smtpmon import __version__
from smtpmon.config import webconfig
from smtpmon.config.addresses import parse_listen_address
from smtpmon.config.load import Config, ConfigError, default_config, load_config
from smtpmon.dns import DnsCache, MxResolver
from smtpmon.domains.policy import PolicyChecker, policy_checker
from smtpmon.exposition.domains import DomainStore
from smtpmon.exposition.state import ExporterState
from smtpmon.exposition.store import ResultStore
from smtpmon.logs import get_logger
from smtpmon.runtime.maillog import MaillogService
from smtpmon.runtime.scheduler import Scheduler
from smtpmon.web import listeners
from smtpmon.web.routes import METRICS_PATH, check_telemetry_path
from smtpmon.web.server import MAX_CONCURRENT_PROBES, MAX_CONNECTIONS, Server

log = get_logger("daemon")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_CONFIG = 2

# glibc gives each thread that allocates its own malloc arena (up to 8 per core); with many
# threads (HTTP, /probe, DNS lookups), memory freed in one arena is not reused by the others
# and the resident size creeps up for hours (the soak's figures: benchmarks/README.md).
MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # from glibc's malloc.h

# glibc gives memory back to the system by itself only from the top of its heap. Results
# replaced every minute leave free pages all through it; malloc_trim(0) also releases free
# pages in the middle of the heap, for no measurable CPU (benchmarks/README.md).
TRIM_SECONDS = 30.0


def _glibc_function(name: str):
    """A glibc function by name, or None (musl, macOS: no such function)."""
    library = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(library), name) if library else None
    except (OSError, AttributeError):
        return None


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas, before any thread starts; False where libc has no mallopt."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False  # the operator chose
    mallopt = _glibc_function("mallopt")
    return bool(mallopt and mallopt(_M_ARENA_MAX, arenas) == 1)


def raise_open_files_limit() -> int:
    """Raise the soft limit on open files to the hard one, as Go programs (blackbox_exporter)
    do at start: the default soft limit of 1,024 is below what a large max_concurrency with
    the web port's connections can hold. The soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard != resource.RLIM_INFINITY:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):  # refused (a seccomp filter, say): keep the soft one
            pass
    return soft


def free_memory_trimmer() -> Callable[[], None]:
    """A call that gives the heap's free pages back to the system (malloc_trim), or does
    nothing where libc has no malloc_trim."""
    trim = _glibc_function("malloc_trim")
    return (lambda: trim(0)) if trim is not None else (lambda: None)


# The cyclic garbage collector's young-generation threshold (CPython's is 700). A young
# collection runs every that many net new container objects, and every hundred of those one
# looks at the whole heap: a daemon that keeps the last result of every target, MX address
# and domain (transcripts, TLS facts, policy verdicts) spends a large share of its CPU there,
# and its longest schedule delays (benchmarks/README.md, "The garbage collector"). Results
# are freed by reference counting (they hold no cycles), so a larger threshold only lets the
# rare cyclic garbage (an exception's traceback) wait a little longer.
GC_YOUNG_THRESHOLD = 20_000


def settle_garbage_collector() -> None:
    """At the end of start-up: what exists by then (modules, the configuration) lives as long
    as the process, so it goes to the permanent generation (gc.freeze), out of every later
    collection's way; young collections run every GC_YOUNG_THRESHOLD net new objects."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


# The HTTP server's longest wait; a shutdown wakes it at once.
HTTP_POLL_SECONDS = 0.2
# SIGTERM gives in-flight probes this long to finish, then abandons them (nothing is recorded
# for them: the process ends): a stop must not wait for a tarpit's deadline, up to the 10
# minutes a timeout may be, and systemd's stop timeout needs no tuning to the longest one.
# Most probes take well under a second, so those about to finish still do.
STOP_GRACE_SECONDS = 2.0
# (target, module) pairs whose /probe counters are kept, and about how many bytes they may
# hold (an estimate: smtpmon.exposition.store); beyond either, the least recently probed goes first.
# The count binds for ordinary results (about 9 KB each, estimated); the bytes for a hostile
# server's long replies.
MAX_PROBE_ENTRIES = 10_000
MAX_PROBE_BYTES = 128 * 1024 * 1024
# (domain, module) pairs whose /probe?domain= counters are kept, each with its addresses'.
MAX_PROBE_DOMAINS = 1_000


DEFAULT_LISTEN_ADDRESS = ":9725"


@dataclass(frozen=True)
class Options:
    config_file: str | None
    listen_addresses: tuple[str, ...] = (DEFAULT_LISTEN_ADDRESS,)
    web_config_file: str | None = None
    # Serve the sockets systemd passes (socket activation) instead of listen_addresses.
    systemd_socket: bool = False
    telemetry_path: str = METRICS_PATH
    max_connections: int = MAX_CONNECTIONS
    max_concurrent_probes: int = MAX_CONCURRENT_PROBES


class Daemon:
    """The running exporter: what the HTTP side sees (see smtpmon.web.server.Exporter)."""

    def __init__(self, config: Config, config_file: str | None,
                 web_config: webconfig.WebConfigFile | None = None, *,
                 telemetry_path: str = METRICS_PATH):
        self.config_file = config_file
        self.web_config = web_config  # reloaded with the configuration
        self.telemetry_path = telemetry_path
        self.store = ResultStore()
        self.probe_store = ResultStore(max_entries=MAX_PROBE_ENTRIES, max_bytes=MAX_PROBE_BYTES)
        self.state = ExporterState()
        self.domain_store = DomainStore()
        self.domain_probe_store = DomainStore(max_entries=MAX_PROBE_DOMAINS)
        self.scheduler = Scheduler(self.store, self.state, domain_store=self.domain_store)
        self.state.set_dns_counts(self.scheduler.dns_counts)
        self.maillog = MaillogService()
        self._config = config
        self._reload_lock = threading.Lock()

    @property
    def config(self) -> Config:
        return self._config

    @property
    def resolver(self) -> MxResolver:
        """The scheduler's (shared answer cache), or one for the configuration before start."""
        resolver = self.scheduler.resolver
        if resolver is None:
            dns = self._config.dns
            resolver = MxResolver(dns.resolver_settings, DnsCache(
                dns.min_ttl_seconds, dns.max_ttl_seconds, dns.grace_seconds))
        return resolver

    @property
    def policy(self) -> PolicyChecker:
        """The scheduler's TLS policy checker (its caches), or one for the configuration
        before start."""
        checker = self.scheduler.policy
        return checker if checker is not None else policy_checker(self._config.dns, self.resolver)

    @property
    def ready(self) -> bool:
        return self.scheduler.running

    def maillog_metrics(self) -> bytes:
        return self.maillog.render()

    def start(self) -> None:
        self.maillog.apply(self._config.maillog)
        warn_about_secrets(self._config)
        self.scheduler.apply(self._config)
        self.state.config_loaded(True)
        self.state.set_targets(len(self._config.targets))
        self.state.set_domains(len(self._config.domains))
        self.scheduler.start()

    def reload(self) -> list[str]:
        """Load the file (and the web config file) again and apply them; on failure keep the
        running ones. The errors.

        Whatever fails (a file, its validation, applying it), the running configuration, its
        schedule and all of its series, and the web config in force, stay, and the reload is
        recorded as failed."""
        with self._reload_lock:
            try:
                config = load_config(self.config_file) if self.config_file else default_config()
                web = self.web_config.read() if self.web_config is not None else None
                self.scheduler.apply(config)  # all or nothing
                if web is not None:
                    self.web_config.use(web)
            except (ConfigError, webconfig.WebConfigError) as error:
                for message in error.errors:
                    log.error("configuration reload failed; keeping the running configuration",
                              source=error.source, error=message)
                if isinstance(error, webconfig.WebConfigError):
                    errors = [f"web config {error.source}: {message}" for message in error.errors]
                else:
                    errors = list(error.errors)
                self.state.config_loaded(False, errors=tuple(errors))
                return errors
            except Exception as error:  # a bug must not take the running daemon down
                log.exception("configuration reload failed; keeping the running configuration",
                              source=self.config_file)
                errors = [f"internal error while applying the configuration: {type(error).__name__}: {error}"]
                self.state.config_loaded(False, errors=tuple(errors))
                return errors
            warn_about_secrets(config)
            self.maillog.apply(config.maillog)
            self._config = config
            self.state.config_loaded(True)
            self.state.set_targets(len(config.targets))
            self.state.set_domains(len(config.domains))
            log.info("configuration reloaded", source=config.source, targets=len(config.targets),
                     domains=len(config.domains))
            return []

    def stop_timeout(self) -> float:
        """How long in-flight probes may still take at a stop: their timeout (a target's or a
        domain's), at most the grace."""
        longest = max((entry.timeout_seconds for entry in (*self._config.targets, *self._config.domains)),
                      default=0.0)
        return min(longest, STOP_GRACE_SECONDS)


def warn_about_secrets(config: Config) -> None:
    """A password that cannot be read does not stop the daemon: its module's probes fail at
    auth, and this says why at every load."""
    for problem in config.secret_problems:
        log.warning("AUTH password not readable: this module's probes fail at auth "
                    "(auth_password_unavailable) until it is", source=config.source, problem=problem)


def load_startup_config(path: str | None) -> Config | None:
    """The configuration to start with; prints every problem and returns None if invalid."""
    try:
        return load_config(path) if path else default_config()
    except ConfigError as error:
        print(f"smtpmon: invalid configuration {error.source}:", file=sys.stderr)
        for message in error.errors:
            print(f"  {message}", file=sys.stderr)
        return None


def web_server_options(web: webconfig.WebConfigFile | None) -> dict[str, Any]:
    """Server keyword arguments from `--web.config.file`: TLS, basic auth, response headers,
    each from the web config in force at the time (the file is re-read when it changes).

    Without the file: none (plain HTTP, no auth, no extra headers).
    """
    if web is None:
        return {}
    return {
        "authorize": web.authorize,
        "wrap_connection": web.wrap_connection if web.current.context is not None else None,
        "extra_headers": web.headers,
    }


class ListenError(Exception):
    """No socket to serve on: the message says which address and why."""


def open_listeners(options: Options, addresses: list[tuple[str, int]]) -> list[socket.socket]:
    """The listening sockets: systemd's with --web.systemd-socket, else one bound for each
    --web.listen-address. Raises ListenError; on failure none stays open."""
    if options.systemd_socket:
        try:
            return listeners.systemd_sockets()
        except listeners.ActivationError as error:
            raise ListenError(f"--web.systemd-socket: {error}") from None
    opened: list[socket.socket] = []
    try:
        for text, (host, port) in zip(options.listen_addresses, addresses):
            try:
                opened.append(_bind(host, port))
            except OSError as error:
                raise ListenError(f"cannot listen on {text}: {error.strerror}") from None
    except BaseException:
        for sock in opened:
            sock.close()
        raise
    return opened


def _bind(host: str, port: int) -> socket.socket:
    try:
        return listeners.bind(host, port)
    except OSError:
        if host != "::":
            raise
        # ":port" on a host without IPv6: every IPv4 interface will do.
        return listeners.bind("", port)


def run(options: Options) -> int:
    config = load_startup_config(options.config_file)
    if config is None:
        return EXIT_BAD_CONFIG
    try:
        addresses = [parse_listen_address(text) for text in options.listen_addresses]
        check_telemetry_path(options.telemetry_path)
        web = webconfig.WebConfigFile(options.web_config_file) if options.web_config_file else None
        server_options = web_server_options(web)
    except ValueError as error:
        print(f"smtpmon: {error}", file=sys.stderr)
        return EXIT_BAD_CONFIG

    limit_malloc_arenas()
    open_files = raise_open_files_limit()
    handled = {signal.SIGHUP, signal.SIGTERM, signal.SIGINT}
    # Blocked before any thread starts, so every thread inherits the mask and only sigwait()
    # below ever sees these signals.
    signal.pthread_sigmask(signal.SIG_BLOCK, handled)
    daemon = Daemon(config, options.config_file, web, telemetry_path=options.telemetry_path)
    try:
        sockets = open_listeners(options, addresses)
    except ListenError as error:
        print(f"smtpmon: {error}", file=sys.stderr)
        return EXIT_FAILURE
    server = Server(None, daemon, listeners=sockets, **server_options,
                    max_connections=options.max_connections,
                    max_concurrent_probes=options.max_concurrent_probes)
    settle_garbage_collector()
    # Said before the scheduler starts, so that the log reads in order: started, the schedule,
    # then the first probes (which may fail within a millisecond).
    log.info("smtpmon started", version=__version__,
             listen=",".join(listeners.describe(sock) for sock in sockets),
             config=config.source, targets=len(config.targets), open_files_limit=open_files)
    daemon.start()
    http_thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": HTTP_POLL_SECONDS},
        name="http", daemon=True,
    )
    http_thread.start()

    trim = free_memory_trimmer()
    while True:
        received = signal.sigtimedwait(handled, TRIM_SECONDS)
        if received is None:  # nothing to do but housekeeping
            trim()
            continue
        received = received.si_signo
        if received not in handled:  # woken without one of ours (a debugger attaching: signal 0)
            continue
        if received == signal.SIGHUP:
            log.info("SIGHUP: reloading the configuration")
            daemon.reload()
            continue
        break

    grace = daemon.stop_timeout()
    log.info("stopping", signal=signal.Signals(received).name, grace_seconds=grace)
    finished = daemon.scheduler.stop(grace)
    daemon.maillog.stop()  # saves the position: the next start resumes there
    server.shutdown()
    server.server_close()
    if not finished:
        # The scheduler's thread is stuck outside the hub; it would hold the exit hostage.
        log.warning("stopped with the scheduler still running")
        sys.stderr.flush()
        os._exit(EXIT_OK)
    abandoned = daemon.scheduler.in_flight
    if abandoned:
        log.info("stopped; probes still running at the end of the grace were abandoned, "
                 "nothing recorded for them", probes=abandoned)
    else:
        log.info("stopped")
    return EXIT_OK
