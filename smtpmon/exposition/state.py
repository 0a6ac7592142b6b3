"""The exporter's own metrics: build, configuration reloads, targets, probes in flight and
schedule lag. Updated by the daemon and the scheduler from any thread; rendered at the end of
every `/metrics` page (metrics.metrics_chunks)."""

from __future__ import annotations

import bisect
import platform
import ssl
import threading
import time
from dataclasses import dataclass

from prometheus_client.utils import floatToGoString

from smtpmon import __version__, build
from smtpmon.exposition.metrics import Family, label_pairs

EXPORTER_FAMILIES: tuple[Family, ...] = (
    Family("smtpmon_build_info", "gauge",
           "Constant 1: the smtpmon version and git revision, the Python and OpenSSL versions."),
    Family("smtpmon_config_last_reload_successful", "gauge",
           "1 if the last configuration load succeeded, else 0."),
    Family("smtpmon_config_last_reload_success_timestamp_seconds", "gauge",
           "When the configuration was last loaded successfully (Unix time)."),
    Family("smtpmon_targets", "gauge", "Targets in the running configuration."),
    Family("smtpmon_probes_in_flight", "gauge", "Probes running now."),
    Family("smtpmon_schedule_lag_seconds", "histogram",
           "How late each probe started against its scheduled time."),
)


# Schedule lag buckets, in seconds: from "on time" to "the loop is badly behind".
SCHEDULE_LAG_BUCKETS: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)


@dataclass(frozen=True, slots=True)
class ExporterStatus:
    """The exporter's own state at one moment, for the status page."""

    started_at: float  # Unix time
    config_loaded: bool  # the last load or reload succeeded
    config_loaded_at: float  # the last successful load (Unix time; 0 before any)
    config_attempted_at: float  # the last load or reload, successful or not (0 before any)
    config_errors: tuple[str, ...]  # why the last load failed; empty after a success
    probes_in_flight: int


class ExporterState:
    """The exporter's own metrics, updated by the daemon from any thread."""

    def __init__(self, version: str = __version__) -> None:
        self._lock = threading.Lock()
        self._started_at = time.time()
        self._reload_attempt_timestamp = 0.0
        self._config_errors: tuple[str, ...] = ()
        # OpenSSL decides which TLS versions and ciphers a probe can speak.
        self._build_labels = label_pairs(
            ("version", "revision", "python_version", "openssl_version"),
            (version, build.revision(), platform.python_version(), ssl.OPENSSL_VERSION))[1:]
        self._reload_successful = False
        self._reload_success_timestamp = 0.0
        self._targets = 0
        self._in_flight = 0
        self._lag_counts = [0] * (len(SCHEDULE_LAG_BUCKETS) + 1)  # the last one is +Inf
        self._lag_sum = 0.0

    def config_loaded(self, success: bool, at: float | None = None,
                      errors: tuple[str, ...] = ()) -> None:
        """Record a configuration load or reload (`errors`: why it failed); `at` defaults to
        now."""
        at = time.time() if at is None else at
        with self._lock:
            self._reload_successful = success
            self._reload_attempt_timestamp = at
            self._config_errors = () if success else tuple(errors)
            if success:
                self._reload_success_timestamp = at

    def status(self) -> ExporterStatus:
        with self._lock:
            return ExporterStatus(self._started_at, self._reload_successful,
                                  self._reload_success_timestamp, self._reload_attempt_timestamp,
                                  self._config_errors, self._in_flight)

    def set_targets(self, count: int) -> None:
        with self._lock:
            self._targets = count

    def probe_started(self) -> None:
        with self._lock:
            self._in_flight += 1

    def probe_finished(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def observe_schedule_lag(self, seconds: float) -> None:
        seconds = max(seconds, 0.0)  # a probe that started early is on time, not "negative late"
        with self._lock:
            self._lag_counts[bisect.bisect_left(SCHEDULE_LAG_BUCKETS, seconds)] += 1
            self._lag_sum += seconds

    def render(self) -> bytes:
        with self._lock:
            values = {
                "smtpmon_config_last_reload_successful": self._reload_successful,
                "smtpmon_config_last_reload_success_timestamp_seconds":
                    self._reload_success_timestamp,
                "smtpmon_targets": self._targets,
                "smtpmon_probes_in_flight": self._in_flight,
            }
            lag_counts = list(self._lag_counts)
            lag_sum = self._lag_sum
        build, *gauges, lag = EXPORTER_FAMILIES
        lines = [build.header.decode(), f"smtpmon_build_info{{{self._build_labels}}} 1.0\n"]
        for family in gauges:
            lines.append(family.header.decode())
            lines.append(f"{family.name} {floatToGoString(values[family.name])}\n")
        lines.append(lag.header.decode())
        cumulative = 0
        for bound, count in zip(SCHEDULE_LAG_BUCKETS + (float("inf"),), lag_counts):
            cumulative += count
            lines.append(f'{lag.name}_bucket{{le="{floatToGoString(bound)}"}} '
                         f"{floatToGoString(cumulative)}\n")
        lines.append(f"{lag.name}_count {floatToGoString(cumulative)}\n")
        lines.append(f"{lag.name}_sum {floatToGoString(lag_sum)}\n")
        return "".join(lines).encode()
