"""`smtpmon run`: configuration, store, scheduler and HTTP server wired together.

The main thread only waits for signals (`sigwait`, with the signals blocked in every thread, so
no handler ever runs in the middle of other code): SIGHUP reloads the configuration, SIGTERM and
SIGINT stop. The scheduler runs its probes on its own thread (smtpmon.net.hub); the HTTP server
runs /probe on another hub, on its serving thread, and other requests on threads of their own.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable

from smtpmon import __version__
from smtpmon.config import webconfig
from smtpmon.config.addresses import parse_listen_address
from smtpmon.config.load import Config, ConfigError, default_config, load_config
from smtpmon.dns import DnsCache, MxResolver
from smtpmon.domains.policy import PolicyChecker, policy_checker
from smtpmon.exposition.domains import DomainStore
from smtpmon.exposition.state import ExporterState
from smtpmon.web.server import MAX_CONCURRENT_PROBES, MAX_CONNECTIONS, Server
from smtpmon.logs import get_logger
from smtpmon.runtime.scheduler import Scheduler
from smtpmon.exposition.store import ResultStore

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


# The HTTP server's longest wait; a shutdown wakes it at once.
HTTP_POLL_SECONDS = 0.2
# SIGTERM waits for in-flight probes up to their timeout plus this; the exit must come
# within timeout + 1 s.
STOP_GRACE_SECONDS = 0.5
# (target, module) pairs whose /probe counters are kept; the least recently probed goes first.
MAX_PROBE_ENTRIES = 10_000
# (domain, module) pairs whose /probe?domain= counters are kept, each with its addresses'.
MAX_PROBE_DOMAINS = 1_000


@dataclass(frozen=True)
class Options:
    config_file: str | None
    listen_address: str
    web_config_file: str | None = None
    max_connections: int = MAX_CONNECTIONS
    max_concurrent_probes: int = MAX_CONCURRENT_PROBES


class Daemon:
    """The running exporter: what the HTTP side sees (see smtpmon.web.server.Exporter)."""

    def __init__(self, config: Config, config_file: str | None):
        self.config_file = config_file
        self.store = ResultStore()
        self.probe_store = ResultStore(max_entries=MAX_PROBE_ENTRIES)
        self.state = ExporterState()
        self.domain_store = DomainStore()
        self.domain_probe_store = DomainStore(max_entries=MAX_PROBE_DOMAINS)
        self.scheduler = Scheduler(self.store, self.state, domain_store=self.domain_store)
        self.state.set_dns_counts(self.scheduler.dns_counts)
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

    def start(self) -> None:
        self.scheduler.apply(self._config)
        self.state.config_loaded(True)
        self.state.set_targets(len(self._config.targets))
        self.state.set_domains(len(self._config.domains))
        self.scheduler.start()

    def reload(self) -> list[str]:
        """Load the file again and apply it; on failure keep the running config. The errors."""
        with self._reload_lock:
            try:
                config = load_config(self.config_file) if self.config_file else default_config()
            except ConfigError as error:
                for message in error.errors:
                    log.error("configuration reload failed; keeping the running configuration",
                              source=error.source, error=message)
                self.state.config_loaded(False)
                return list(error.errors)
            except Exception as error:  # a loader bug must not take the running daemon down
                log.exception("configuration reload failed", source=self.config_file)
                self.state.config_loaded(False)
                return [f"internal error while loading the configuration: {error}"]
            self.scheduler.apply(config)
            self._config = config
            self.state.config_loaded(True)
            self.state.set_targets(len(config.targets))
            self.state.set_domains(len(config.domains))
            log.info("configuration reloaded", source=config.source, targets=len(config.targets),
                     domains=len(config.domains))
            return []

    def stop_timeout(self) -> float:
        """How long in-flight probes may still take: the longest target timeout, plus a grace.

        A probe started just before SIGTERM ends at its own deadline plus the time to record
        its result; on a loaded machine that overruns the bare timeout by a few milliseconds.
        """
        longest = max((entry.timeout_seconds for entry in (*self._config.targets, *self._config.domains)),
                      default=0.0)
        return longest + STOP_GRACE_SECONDS


def load_startup_config(path: str | None) -> Config | None:
    """The configuration to start with; prints every problem and returns None if invalid."""
    try:
        return load_config(path) if path else default_config()
    except ConfigError as error:
        print(f"smtpmon: invalid configuration {error.source}:", file=sys.stderr)
        for message in error.errors:
            print(f"  {message}", file=sys.stderr)
        return None


def web_server_options(path: str | None) -> dict[str, Any]:
    """Server keyword arguments from `--web.config.file`: TLS, basic auth, response headers.

    Without the file: none (plain HTTP, no auth, no extra headers).
    """
    if path is None:
        return {}
    web = webconfig.load_web_config(path)
    return {
        "authorize": web.authorize,
        "wrap_connection": web.wrap_connection if web.context is not None else None,
        "extra_headers": web.headers,
    }


def _listen(address: tuple[str, int], daemon: Daemon, server_options: dict[str, Any]) -> Server:
    try:
        return Server(address, daemon, **server_options)
    except OSError:
        if address[0] != "::":
            raise
        # ":port" on a host without IPv6: every IPv4 interface will do.
        return Server(("", address[1]), daemon, **server_options)


def run(options: Options) -> int:
    config = load_startup_config(options.config_file)
    if config is None:
        return EXIT_BAD_CONFIG
    try:
        address = parse_listen_address(options.listen_address)
        server_options = web_server_options(options.web_config_file)
    except ValueError as error:
        print(f"smtpmon: {error}", file=sys.stderr)
        return EXIT_BAD_CONFIG

    limit_malloc_arenas()
    open_files = raise_open_files_limit()
    handled = {signal.SIGHUP, signal.SIGTERM, signal.SIGINT}
    # Blocked before any thread starts, so every thread inherits the mask and only sigwait()
    # below ever sees these signals.
    signal.pthread_sigmask(signal.SIG_BLOCK, handled)
    daemon = Daemon(config, options.config_file)
    try:
        server = _listen(address, daemon, {
            **server_options,
            "max_connections": options.max_connections,
            "max_concurrent_probes": options.max_concurrent_probes,
        })
    except OSError as error:
        print(f"smtpmon: cannot listen on {options.listen_address}: {error.strerror}",
              file=sys.stderr)
        return EXIT_FAILURE
    daemon.start()
    http_thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": HTTP_POLL_SECONDS},
        name="http", daemon=True,
    )
    http_thread.start()
    host, port = server.server_address[:2]
    log.info("smtpmon started", version=__version__, listen=f"{host}:{port}",
             config=config.source, targets=len(config.targets), open_files_limit=open_files)

    trim = free_memory_trimmer()
    while True:
        received = signal.sigtimedwait(handled, TRIM_SECONDS)
        if received is None:  # nothing to do but housekeeping
            trim()
            continue
        received = received.si_signo
        if received == signal.SIGHUP:
            log.info("SIGHUP: reloading the configuration")
            daemon.reload()
            continue
        break

    timeout = daemon.stop_timeout()
    log.info("stopping", signal=signal.Signals(received).name, timeout_seconds=timeout)
    finished = daemon.scheduler.stop(timeout)
    server.shutdown()
    server.server_close()
    if not finished:
        # A probe overran its own deadline; the scheduler's thread would hold the exit hostage.
        log.warning("stopped with probes still running")
        sys.stderr.flush()
        os._exit(EXIT_OK)
    log.info("stopped")
    return EXIT_OK
