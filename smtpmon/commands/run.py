"""`smtpmon run`: the daemon. Probes every configured target on its schedule, serves /metrics."""

from __future__ import annotations

import argparse

from smtpmon.logs import FORMATS, LEVELS, setup_logging
from smtpmon.runtime import daemon
from smtpmon.web.routes import METRICS_PATH
from smtpmon.web.server import MAX_CONCURRENT_PROBES, MAX_CONNECTIONS

DESCRIPTION = """Run the daemon: probe every configured target on its schedule and serve the
results to Prometheus on /metrics, blackbox-style one-off probes on /probe, and a
landing page on /. Without --config.file, it watches the local MTA at 127.0.0.1:25
every 60 s. SIGHUP or POST /-/reload reloads the configuration; SIGTERM stops."""

EPILOG = """examples:
  smtpmon run                                   watch 127.0.0.1:25, serve on :9725
  smtpmon run --config.file /etc/smtpmon/smtpmon.yml --web.listen-address 127.0.0.1:9725
  smtpmon run --log.format json --log.level debug
  smtpmon run --web.listen-address 127.0.0.1:9725 --web.listen-address [::1]:9725
  curl -s localhost:9725/metrics | grep smtpmon_probe_success

exit codes: 0 stopped by SIGTERM/SIGINT, 1 cannot listen, 2 invalid configuration or flags
"""


def add_arguments(parser) -> None:
    parser.add_argument("--config.file", dest="config_file", metavar="FILE",
                        help="YAML configuration (default: the embedded default, 127.0.0.1:25)")
    # Appended to None, not to the default: a default list would keep ":9725" beside the
    # addresses given.
    parser.add_argument("--web.listen-address", dest="listen_addresses", metavar="ADDRESS",
                        action="append",
                        help="address to serve HTTP on: host:port, [IPv6]:port or :port (every "
                             "address); repeat it to serve on several "
                             f"(default: {daemon.DEFAULT_LISTEN_ADDRESS})")
    parser.add_argument("--web.systemd-socket", dest="systemd_socket", action="store_true",
                        help="serve on the sockets systemd passes (socket activation, "
                             "smtpmon.socket) instead of --web.listen-address")
    parser.add_argument("--web.telemetry-path", dest="telemetry_path", metavar="PATH",
                        default=METRICS_PATH,
                        help="path under which to serve the metrics (default: %(default)s)")
    parser.add_argument("--web.config.file", dest="web_config_file", metavar="FILE",
                        help="TLS, basic auth and response headers for the HTTP server "
                             "(exporter-toolkit format)")
    parser.add_argument("--web.max-connections", dest="max_connections", metavar="N",
                        type=positive_int, default=MAX_CONNECTIONS,
                        help="HTTP connections served at once; beyond them a new connection gets "
                             "503 at once (default: %(default)s)")
    parser.add_argument("--web.max-concurrent-probes", dest="max_concurrent_probes", metavar="N",
                        type=positive_int, default=MAX_CONCURRENT_PROBES,
                        help="/probe requests running at once; beyond them /probe answers 503 "
                             "at once (default: %(default)s)")
    parser.add_argument("--log.level", dest="log_level", choices=tuple(LEVELS), default="info",
                        help="only log events at this level or above (default: %(default)s)")
    parser.add_argument("--log.format", dest="log_format", choices=FORMATS, default="logfmt",
                        help="one line per event as logfmt or as a JSON object with the same fields "
                             "(default: %(default)s); under systemd each line also starts with its "
                             "syslog priority (<4> for warn), for journalctl -p")


def run(args) -> int:
    setup_logging(args.log_level, log_format=args.log_format)
    return daemon.run(daemon.Options(
        config_file=args.config_file,
        listen_addresses=tuple(args.listen_addresses or (daemon.DEFAULT_LISTEN_ADDRESS,)),
        systemd_socket=args.systemd_socket,
        telemetry_path=args.telemetry_path,
        web_config_file=args.web_config_file,
        max_connections=args.max_connections,
        max_concurrent_probes=args.max_concurrent_probes,
    ))


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return number
