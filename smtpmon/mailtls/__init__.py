"""A mail domain's TLS policy, checked as sending MTAs check it.

- `chain`: the certificate chain a server presented (DANE-TA needs more than the leaf).
- `dane`: TLSA lookup and matching (RFC 7672, RFC 6698 / 7671): a verdict per MX address.
- `mtasts`: the MTA-STS record and policy (RFC 8461), fetched over HTTPS and cached.
- `tlsrpt`: the TLS-RPT record (RFC 8460).

DNS questions go through smtpmon.dns (`CachedResolver`: the one resolver, cache and query
counter): DANE's to the validating resolver whose AD bit is trusted (DO bit, CD re-ask).

Plain values in, frozen dataclasses out: nothing here knows of YAML, Prometheus or schedules.
Every call blocks (sockets with a deadline); the daemon runs them on its lookup threads.
"""
