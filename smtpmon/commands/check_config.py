"""`smtpmon check-config`: not built yet."""

import sys


def add_arguments(parser):
    pass


def run(args) -> int:
    print("smtpmon check-config: not implemented yet", file=sys.stderr)
    return 3
