"""`smtpmon log-report FILE`: the reply codes of a mail log, summarized for a person."""

from __future__ import annotations

import json
import os
import sys

from smtpmon.maillog.postfix import PostfixParser
from smtpmon.maillog.report import LogSummary, format_summary, summarize, summarize_file

DESCRIPTION = """Summarize a Postfix mail log: the reply codes given to senders (inbound) and
given by remote servers to our deliveries (outbound), by direction, stage, status, code,
enhanced code, class, category and reason, with their counts and the most frequent reply
texts (addresses and queue ids folded into …); then sessions that ended without QUIT,
outbound connection failures, lines not about replies by program, and malformed lines.

Reads the whole file once, as the daemon's reader would count it (smtpmon_maillog_* metrics,
docs/metrics.md). Syslog files with traditional or ISO (RFC 3339) timestamps; "-" reads
standard input (journalctl's default output is such a file)."""

EPILOG = """examples:
  smtpmon log-report /var/log/mail.log
  smtpmon log-report /var/log/mail.log.1                  last night's log, after rotation
  zcat /var/log/mail.log.2.gz | smtpmon log-report -
  journalctl -t postfix/smtpd -t postfix/smtp --since yesterday | smtpmon log-report -
  smtpmon log-report --json --domain gmail.com /var/log/mail.log

exit status: 0 summarized, 2 the file cannot be read"""


def add_arguments(parser) -> None:
    parser.add_argument("file", metavar="FILE", help='the log file; "-" for standard input')
    parser.add_argument("--json", action="store_true",
                        help="print the summary as one JSON object instead of tables")
    parser.add_argument("--top", type=int, default=3, metavar="N",
                        help="reply texts shown per row, most frequent first (default: 3)")
    parser.add_argument("--domain", action="append", default=[], metavar="DOMAIN",
                        help="a remote domain reported by name on outbound rows (others are "
                        "\"other\"), as maillog.domains in the configuration; repeatable")
    parser.add_argument("--rbl", action="append", default=[], metavar="LIST",
                        help="a DNS blocklist reported by name, as maillog.rbl_lists; repeatable")


def run(args) -> int:
    parser = PostfixParser(args.domain, args.rbl)
    top = max(args.top, 0)
    try:
        if args.file == "-":
            stdin = open(sys.stdin.fileno(), encoding="utf-8", errors="replace", newline="\n",
                         closefd=False)
            summary = summarize((line.rstrip("\n") for line in stdin), parser, top_texts=top)
        else:
            summary = summarize_file(args.file, parser, top_texts=top)
    except OSError as error:
        print(f"smtpmon log-report: cannot read {args.file}: {error.strerror}", file=sys.stderr)
        return 2
    try:
        if args.json:
            print(json.dumps(as_json(summary), indent=2, ensure_ascii=False))
        else:
            sys.stdout.write(format_summary(summary))
        sys.stdout.flush()
    except BrokenPipeError:
        # `| head` has read what it wanted; say nothing more (and not at exit either).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def as_json(summary: LogSummary) -> dict:
    return {
        "lines": summary.lines,
        "replies": [
            {"direction": row.direction, "stage": row.stage, "status": row.status,
             "code": row.code, "enhanced_code": row.enhanced, "class": row.reply_class,
             "category": row.category, "reason": row.reason, "count": row.count,
             "top_texts": [{"text": text, "count": count} for text, count in row.top_texts]}
            for row in summary.replies
        ],
        "session_ends": [{"stage": stage, "reason": status, "count": count}
                         for stage, status, count in summary.session_ends],
        "connect_failures": [{"reason": reason, "count": count}
                             for reason, count in summary.connect_failures],
        "unrelated": [{"program": program, "count": count}
                      for program, count in summary.unrelated],
        "malformed": [{"reason": reason, "count": count} for reason, count in summary.malformed],
    }
