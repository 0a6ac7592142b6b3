"""The upper bounds of the configuration's values that both targets and mail domains use.

Every value that validates must also run (the schedule's dates, the socket timeouts and the
hub hold them) and mean something for a monitor:
- an interval of a day at most: a target probed less often cannot raise an alert in time;
- a timeout of 10 minutes at most: the longest client timeout RFC 5321 4.5.3.2 gives
  (for the reply to the end of the message); no stage of a probe needs longer;
- max_concurrency: each probe in flight holds a socket and its session's memory.
"""

MAX_INTERVAL_SECONDS = 86400.0
MAX_TIMEOUT_SECONDS = 600.0
MAX_CONCURRENCY = 10_000
