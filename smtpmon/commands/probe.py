"""`smtpmon probe`: not built yet."""

import sys


def add_arguments(parser):
    pass


def run(args) -> int:
    print("smtpmon probe: not implemented yet", file=sys.stderr)
    return 3
