"""Reading the mail host's own log: follow a log file or the journal, parse Postfix's lines
into the probes' reply vocabulary (stage, code, class, category, enhanced code), count them.

Plain values only: nothing here imports PyYAML, prometheus_client, the scheduler or the web
side. `events` holds the vocabulary, `syslog` the line framing, `postfix` the parser,
`follow` the file follower, `journal` the journal follower, `position` the saved position.
"""
