"""A small world of mail domains on loopback: a knotd serving the zone `domains.test`, whose MX
hosts name 127.0.57.x addresses and ::1, and aiosmtpd servers listening on those addresses,
all on one port (a domain's port is one for all its MX hosts). Shared by the tests of the
domain probe, the daemon, /probe and the command line.

| domain | MX (preference host: addresses) | what a sender finds |
|---|---|---|
| good | 10 mx1.good: 127.0.57.1, ::1; 20 mx2.good: 127.0.57.2 | every address accepts |
| half | 10 mx1.half: 127.0.57.3 (nothing listens); 20 mx2.good | delivers via the second MX |
| dead | 10 mx.dead: 127.0.57.3 | nothing accepts |
| nullmx | `MX 0 .` | accepts no mail (RFC 7505) |
| implicit | no MX; A 127.0.57.2 | the implicit MX |
| misconf | 10 mx2.good; 20 gone.misconf (does not exist) | delivers; a misconfiguration |
| v6 | 10 mx.v6: 127.0.57.1, ::1 | on OTHER_PORT only IPv4 listens: IPv6 broken |

The servers offer STARTTLS with a certificate for the MX host names only (not for the
addresses), so a session verifies only when it checks the MX host's name, as senders do.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import trustme
from dns_server import KnotServer, Zone, require_knot, start_knot
from smtpservers import AiosmtpdServer, server_tls_context

ZONE = "domains.test"
LISTENING = ("127.0.57.1", "127.0.57.2", "::1")
NOTHING_LISTENS = "127.0.57.3"
MX_NAMES = ("mx1.good.domains.test", "mx2.good.domains.test", "mx1.half.domains.test",
            "mx.dead.domains.test", "mx.v6.domains.test", "implicit.domains.test")

RECORDS = """\
good MX 10 mx1.good
good MX 20 mx2.good
mx1.good A 127.0.57.1
mx1.good AAAA ::1
mx2.good A 127.0.57.2

half MX 10 mx1.half
half MX 20 mx2.good
mx1.half A 127.0.57.3

dead MX 10 mx.dead
mx.dead A 127.0.57.3

nullmx MX 0 .

implicit A 127.0.57.2

misconf MX 10 mx2.good
misconf MX 20 gone.misconf

v6 MX 10 mx.v6
mx.v6 A 127.0.57.1
mx.v6 AAAA ::1
"""


def fqdn(label: str) -> str:
    return f"{label}.{ZONE}"


@dataclass
class MailWorld:
    knot: KnotServer
    port: int  # every LISTENING address accepts mail here
    other_port: int  # only 127.0.57.1 listens here (v6 on this port: IPv6 broken)
    ca_file: str
    servers: list[AiosmtpdServer]

    @property
    def nameserver(self) -> str:
        """As the config's dns.nameservers and --dns-server take it."""
        address, port = self.knot.nameserver
        return f"{address}:{port}"


@contextlib.contextmanager
def mail_world(ca: trustme.CA, ca_file: str) -> Iterator[MailWorld]:
    require_knot()
    context = server_tls_context(ca.issue_cert(*MX_NAMES))
    servers: list[AiosmtpdServer] = []
    knot = start_knot([Zone(ZONE, RECORDS, ttl=300, negative_ttl=60)])
    try:
        first = AiosmtpdServer(starttls_context=context, host=LISTENING[0]).start()
        servers.append(first)
        for host in LISTENING[1:]:
            servers.append(AiosmtpdServer(starttls_context=context, host=host,
                                          port=first.port).start())
        other = AiosmtpdServer(starttls_context=context, host=LISTENING[0]).start()
        servers.append(other)
        yield MailWorld(knot, first.port, other.port, ca_file, servers)
    finally:
        for server in servers:
            server.stop()
        knot.stop()
