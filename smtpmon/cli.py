"""The command line: `smtpmon run | probe | explain | check-config`.

Each subcommand lives in `smtpmon/commands/<name>.py` with `add_arguments(parser)` and
`run(args) -> int`; this module only wires them together.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from smtpmon import __version__

# name -> (module, one-line help)
SUBCOMMANDS = {
    "run": ("smtpmon.commands.run", "run the daemon: probe targets on a schedule, serve /metrics"),
    "probe": ("smtpmon.commands.probe", "probe one SMTP server now and print the annotated session"),
    "explain": ("smtpmon.commands.explain", "explain a reply code, an enhanced status code, or a reply line"),
    "check-config": ("smtpmon.commands.check_config", "validate a configuration file and exit"),
    "log-report": ("smtpmon.commands.log_report",
                   "summarize the reply codes of a mail log (last night's, say)"),
}

EPILOG = """examples:
  smtpmon probe mx.example.org            annotated session against port 25
  smtpmon explain "550 5.1.1 user unknown"
  smtpmon check-config /etc/smtpmon/smtpmon.yml
  smtpmon log-report /var/log/mail.log
  smtpmon run --config.file /etc/smtpmon/smtpmon.yml
"""


class UsageExit(Exception):
    """Bad usage: argparse's message, with the exit code the subcommand wants."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    """argparse that lets a subcommand choose its usage exit code (probe: 3, as Nagios wants)."""

    usage_exit_code = 2

    def error(self, message: str):  # type: ignore[override]
        raise UsageExit(f"{self.prog}: error: {message}", self.usage_exit_code)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="smtpmon",
        description="SMTP monitor: runs real SMTP sessions and records every reply code "
        "by stage, class and category as Prometheus metrics.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"smtpmon {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(
            name,
            help=help_text,
            description=getattr(module, "DESCRIPTION", help_text),
            epilog=getattr(module, "EPILOG", None),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.usage_exit_code = getattr(module, "USAGE_EXIT_CODE", 2)
        module.add_arguments(sub)
        sub.set_defaults(handler=module.run, subparser=sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args, unknown = parser.parse_known_args(argv)
        if unknown:
            # Reported by the subcommand's parser, so it exits with the subcommand's usage code
            # (argparse would report them from the top level, always with 2).
            (getattr(args, "subparser", None) or parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    except UsageExit as error:
        print(error, file=sys.stderr)
        return error.code
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        return 130
