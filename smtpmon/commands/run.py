"""`smtpmon run`: the daemon. Probes every configured target on its schedule, serves /metrics."""

from __future__ import annotations

from smtpmon import daemon
from smtpmon.logs import LEVELS, setup_logging

DESCRIPTION = """Run the daemon: probe every configured target on its schedule and serve the
results to Prometheus on /metrics, blackbox-style one-off probes on /probe, and a
landing page on /. Without --config.file, it watches the local MTA at 127.0.0.1:25
every 60 s. SIGHUP or POST /-/reload reloads the configuration; SIGTERM stops."""

EPILOG = """examples:
  smtpmon run                                   watch 127.0.0.1:25, serve on :9725
  smtpmon run --config.file /etc/smtpmon/smtpmon.yml --web.listen-address 127.0.0.1:9725
  curl -s localhost:9725/metrics | grep smtpmon_probe_success

exit codes: 0 stopped by SIGTERM/SIGINT, 1 cannot listen, 2 invalid configuration or flags
"""


def add_arguments(parser) -> None:
    parser.add_argument("--config.file", dest="config_file", metavar="FILE",
                        help="YAML configuration (default: the embedded default, 127.0.0.1:25)")
    parser.add_argument("--web.listen-address", dest="listen_address", metavar="ADDRESS",
                        default=":9725", help="address to serve HTTP on (default: %(default)s)")
    parser.add_argument("--web.config.file", dest="web_config_file", metavar="FILE",
                        help="TLS and basic auth for the HTTP server (exporter-toolkit format)")
    parser.add_argument("--log.level", dest="log_level", choices=tuple(LEVELS), default="info",
                        help="only log events at this level or above (default: %(default)s)")


def run(args) -> int:
    setup_logging(args.log_level)
    return daemon.run(daemon.Options(
        config_file=args.config_file,
        listen_address=args.listen_address,
        web_config_file=args.web_config_file,
    ))
