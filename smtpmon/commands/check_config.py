"""`smtpmon check-config FILE`: validate a configuration file without running anything."""

from __future__ import annotations

import sys

from smtpmon.config.load import ConfigError, load_config

DESCRIPTION = """Validate a configuration file without running anything.

Prints one line with the number of modules and targets and exits 0 when the file is valid;
otherwise prints every problem, one per line with the path of the key at fault, and exits 2."""

EPILOG = """examples:
  smtpmon check-config /etc/smtpmon/smtpmon.yml
  smtpmon check-config --skip-secrets config/smtpmon.yml   outside the service's environment

exit status: 0 valid, 2 invalid or unreadable"""


def add_arguments(parser) -> None:
    parser.add_argument("file", metavar="FILE", help="the YAML configuration file")
    parser.add_argument(
        "--skip-secrets",
        action="store_true",
        help="do not check that AUTH password files exist and password environment variables "
        "are set (for checking a file outside the service, where $CREDENTIALS_DIRECTORY "
        "is not set)",
    )


def run(args) -> int:
    try:
        config = load_config(args.file, check_secrets=not args.skip_secrets)
    except ConfigError as error:
        for message in error.errors:
            print(f"smtpmon: {args.file}: {message}", file=sys.stderr)
        return 2
    modules, targets = len(config.modules), len(config.targets)
    domains = f", {len(config.domains)} domain{'s' * (len(config.domains) != 1)}" if config.domains else ""
    print(
        f"{args.file}: OK: {modules} module{'s' * (modules != 1)}, "
        f"{targets} target{'s' * (targets != 1)}{domains}"
    )
    return 0
