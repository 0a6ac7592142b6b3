"""A small world of mail domains with TLS policies, every part real and on loopback, shared
by the policy tests of the engine, the daemon and the command line:

- knotd (tests/dns_server.py) serves the DNSSEC-signed zone `pol.test`; a validating unbound
  (tests/validating_resolver.py) trusts it through the DS `keymgr ds` prints;
- SMTP servers on 127.18.4.x, all on one port (a domain is probed on one port);
- nginx (tests/https_server.py) on 127.18.5.80:443 serves the MTA-STS policy.

Domains:
  good.pol.test      MX mx.good        DANE-EE 3 1 1 matching the key the server presents
  changed.pol.test   MX mx.changed     DANE-EE 3 1 1 of the key before a key change: mismatch
  selfsigned.pol.test MX mx.selfsigned DANE-EE matching a self-signed certificate (PKIX fails)
  sts.pol.test       MX mx1.sts, mx2.sts; an enforce MTA-STS policy that lists only mx1
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from dns_server import KnotServer, Zone, require_knot, start_knot
from https_server import NginxServer, Site
from smtpservers import AiosmtpdServer, server_tls_context
from validating_resolver import UnboundResolver

KNOT = "127.18.5.53"
UNBOUND = "127.18.5.54"
HTTPS = "127.18.5.80"
POLICY_PATH = "/.well-known/mta-sts.txt"
STS_POLICY = b"version: STSv1\nmode: enforce\nmx: mx1.sts.pol.test\nmax_age: 86400\n"
SMTP_HOSTS = {"mx.good": "127.18.4.1", "mx.changed": "127.18.4.2", "mx.selfsigned": "127.18.4.3",
              "mx1.sts": "127.18.4.4", "mx2.sts": "127.18.4.5"}


def spki_sha256(pem: bytes) -> str:
    key = x509.load_pem_x509_certificate(pem).public_key()
    return hashlib.sha256(key.public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)).hexdigest()


@dataclass
class PolicyWorld:
    port: int  # every SMTP server's
    ca_file: str  # the test CA, for the SMTP module's tls_ca_file and mta_sts_ca_file
    knot: KnotServer
    unbound: UnboundResolver
    nginx: NginxServer
    servers: dict[str, AiosmtpdServer]
    tlsa: dict[str, str] = field(default_factory=dict)  # MX host -> the TLSA record published

    @property
    def validating_resolver(self) -> str:
        return f"{self.unbound.address}:{self.unbound.port}"

    def stop(self) -> None:
        for part in (self.unbound, self.knot, self.nginx, *self.servers.values()):
            try:
                part.stop()
            except Exception:  # noqa: BLE001 - stop the rest whatever one did
                pass


def start_world(directory: Path) -> PolicyWorld:
    require_knot()
    ca = trustme.CA()
    ca_file = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    self_signed = trustme.CA()  # presented as a leaf: DANE-EE matches it, PKIX cannot
    certs = {host: ca.issue_cert(f"{host}.pol.test") for host in SMTP_HOSTS}
    old_key = ca.issue_cert("mx.changed.pol.test")
    nginx = NginxServer(directory / "nginx", HTTPS)  # skips (or fails under CI) before anything starts
    servers: dict[str, AiosmtpdServer] = {}
    knot = unbound = None
    try:
        port = 0
        for host, address in SMTP_HOSTS.items():
            served = self_signed if host == "mx.selfsigned" else certs[host]
            servers[host] = AiosmtpdServer(starttls_context=server_tls_context(served), host=address,
                                           port=port).start()
            port = servers[host].port
        nginx.add(Site("mta-sts.sts.pol.test", ca.issue_cert("mta-sts.sts.pol.test"), {POLICY_PATH: STS_POLICY}))
        nginx.start()
        tlsa = {
            "mx.good": f"3 1 1 {spki_sha256(certs['mx.good'].cert_chain_pems[0].bytes())}",
            "mx.changed": f"3 1 1 {spki_sha256(old_key.cert_chain_pems[0].bytes())}",
            "mx.selfsigned": f"3 1 1 {spki_sha256(self_signed.cert_pem.bytes())}",
        }
        records = "".join(f"{host} A {address}\n" for host, address in SMTP_HOSTS.items())
        records += "".join(f"_{port}._tcp.{host} TLSA {record}\n" for host, record in tlsa.items())
        records += ("good MX 10 mx.good\nchanged MX 10 mx.changed\nselfsigned MX 10 mx.selfsigned\n"
                    "sts MX 10 mx1.sts\nsts MX 20 mx2.sts\n"
                    '_mta-sts.sts TXT "v=STSv1; id=20261203"\n'
                    f"mta-sts.sts A {HTTPS}\n"
                    '_smtp._tls.sts TXT "v=TLSRPTv1; rua=mailto:tls-reports@sts.pol.test"\n')
        knot = start_knot([Zone("pol.test", records, dnssec_signing=True)], workdir=directory / "knot",
                          address=KNOT)
        unbound = UnboundResolver(directory / "unbound", UNBOUND, stubs={"pol.test.": f"{knot.address}@{knot.port}"},
                                  trust_anchors=knot.ds("pol.test")).start()
        return PolicyWorld(port, str(ca_file), knot, unbound, nginx, servers,
                           {f"{host}.pol.test": record for host, record in tlsa.items()})
    except BaseException:
        for part in (unbound, knot, nginx, *servers.values()):
            if part is not None:
                try:
                    part.stop()
                except Exception:  # noqa: BLE001
                    pass
        raise

