"""`smtpmon explain`: what a reply code, an enhanced status code or a reply line means."""

from __future__ import annotations

import sys

from smtpmon.smtp.replycodes import explain

DESCRIPTION = (
    "Explain an SMTP reply: its class (first digit), category (second digit) and meaning, "
    "and the parts of an RFC 3463 enhanced status code. The class and category names are the "
    "values of the `class` and `category` metric labels."
)

EPILOG = """examples:
  smtpmon explain 554
  smtpmon explain 5.7.1
  smtpmon explain "550 5.1.1 <bob@example.org>: Recipient address rejected"
  smtpmon explain "$(cat reply.txt)"     a multi-line reply, one line per line

exit status: 0 explained, 3 not a reply code, enhanced status code or reply line
"""

USAGE_EXIT_CODE = 3


def add_arguments(parser) -> None:
    parser.add_argument(
        "text",
        metavar="TEXT",
        nargs="+",
        help="a reply code (554), an enhanced status code (5.7.1) or a reply line; "
        "several words are joined with spaces",
    )


def run(args) -> int:
    try:
        lines = explain(" ".join(args.text))
    except ValueError as error:
        print(f"smtpmon explain: {error}", file=sys.stderr)
        return USAGE_EXIT_CODE
    print("\n".join(lines))
    return 0
