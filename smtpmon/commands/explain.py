"""`smtpmon explain`: not built yet."""

import sys


def add_arguments(parser):
    pass


def run(args) -> int:
    print("smtpmon explain: not implemented yet", file=sys.stderr)
    return 3
