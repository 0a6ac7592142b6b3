"""Reading the mail host's own log: follow a log file or the journal, parse Postfix's lines
into the probes' reply vocabulary (stage, code, class, category, enhanced code), count them.

Plain values only: nothing here imports PyYAML, prometheus_client, the scheduler or the web
side. Modules, in the order data flows:

- `follow` (FileFollower) and `journal` (JournalFollower): the sources; `position` their
  saved position; `health` the ReaderHealth they report.
- `syslog`: the syslog framing of a line; `postfix` (PostfixParser): Postfix lines to
  `events.LogEvent`, the bounded label tuple that is counted in an `events.Tally`.
- `reader` (LogReader): a source polled on its own thread, with snapshots for other threads.
- `report` (log summary for `smtpmon log-report`) and `mentions` (reply codes in pasted log
  text, for `smtpmon explain`): one-shot uses of the same parser.
"""
