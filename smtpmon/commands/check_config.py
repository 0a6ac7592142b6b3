"""`smtpmon check-config FILE`: validate a configuration file without running anything."""

from __future__ import annotations

import sys

from smtpmon.config.load import ConfigError, load_config

SECRET_CONSEQUENCE = ("this module's probes fail at auth (auth_password_unavailable) until it "
                      "can be read; outside the service, --skip-secrets leaves this out")

DESCRIPTION = """Validate a configuration file without running anything.

Prints one line with the number of modules and targets and exits 0 when the file is valid;
otherwise prints every problem, one per line with the path of the key at fault, and exits 2.

An AUTH password that cannot be read here (a password file that is missing, an environment
variable or $CREDENTIALS_DIRECTORY that is not set) is a warning, not an error: `run` starts
all the same, and that module's probes fail at auth (auth_password_unavailable) until the
password can be read. Outside the service, where systemd's $CREDENTIALS_DIRECTORY is not set,
--skip-secrets leaves these warnings out."""

EPILOG = """examples:
  smtpmon check-config /etc/smtpmon/smtpmon.yml
  smtpmon check-config --skip-secrets config/smtpmon.yml   outside the service's environment

exit status: 0 valid (also with warnings about AUTH passwords), 2 invalid or unreadable"""


def add_arguments(parser) -> None:
    parser.add_argument("file", metavar="FILE", help="the YAML configuration file")
    parser.add_argument(
        "--skip-secrets",
        action="store_true",
        help="do not warn about AUTH password files that cannot be read and password "
        "environment variables that are not set (for checking a file outside the service, "
        "where $CREDENTIALS_DIRECTORY is not set)",
    )


def run(args) -> int:
    try:
        config = load_config(args.file, check_secrets=not args.skip_secrets)
    except ConfigError as error:
        for message in error.errors:
            print(f"smtpmon: {args.file}: {message}", file=sys.stderr)
        return 2
    for problem in config.secret_problems:
        print(f"smtpmon: {args.file}: warning: {problem}: {SECRET_CONSEQUENCE}", file=sys.stderr)
    modules, targets = len(config.modules), len(config.targets)
    unreadable = len(config.secret_problems)
    warned = f" ({unreadable} AUTH password{'s' * (unreadable != 1)} not readable here)" if unreadable else ""
    print(
        f"{args.file}: OK: {modules} module{'s' * (modules != 1)}, "
        f"{targets} target{'s' * (targets != 1)}{warned}"
    )
    return 0
