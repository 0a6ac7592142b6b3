"""Real DNS servers on loopback for tests: a private knotd, and resolvers that misbehave.

`start_knot(zones)` writes zone files and a knot.conf into a work directory and runs
`knotd -c FILE` (Debian's knot 3.2) on a 127.0.53.x address and a free port; it returns
once every zone answers (signed zones: once their DNSKEY is published). knot rather than nsd:
knot signs zones itself (`dnssec-signing: on`), and `keymgr -c FILE ZONE ds` gives the DS to
use as a trust anchor or to put (right or wrong) into a parent zone, which DNSSEC tests need.

    with start_knot([Zone("example.test", "@ MX 10 mx\\nmx A 127.0.54.1\\n")]) as knot:
        MxResolver(ResolverSettings(nameservers=(knot.nameserver,))).resolve("example.test")

For DNSSEC: `Zone(..., dnssec_signing=True)`, then `knot.ds("example.test")`; a bogus zone
is a signed child whose parent carries a wrong DS: start with the parent unsigned of DS,
then `knot.set_zone(Zone("test", records + wrong_ds, ...))` reloads it.

Resolvers that misbehave (each a real UDP socket on loopback, answering from a thread):
`silent_server()` never answers, `garbage_server()` answers bytes that are not DNS,
`servfail_server()` answers SERVFAIL to everything, `truncating_server(knot)` answers
every UDP query with TC set and no records and serves TCP by passing it to knot's TCP
(`truncating_server(None)`: TCP connections are accepted and never answered;
`truncating_server(None, tcp_listens=False)`: nothing listens on TCP);
`selectively_silent_server(knot, ("AAAA",))` passes queries to knot but never answers AAAA.

The `knot` fixture is a factory (`knot(zones)`); `require_knot()` skips with the reason
locally and fails under CI=true.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
from helpers import unavailable

KNOT_ADDRESS = "127.0.53.1"  # 127.0.0.53 is systemd-resolved's
BAD_RESOLVER_ADDRESS = "127.0.53.2"
START_ATTEMPTS = 3  # the free port can be taken between our check and knotd's bind
READY_TIMEOUT_SECONDS = 10.0
STOP_TIMEOUT_SECONDS = 5.0
COMMAND_TIMEOUT_SECONDS = 20

KNOT_CONF = """\
server:
    rundir: "{run}"
    listen: {address}@{port}
    # one of each: tests ask a few hundred questions, on a machine shared with others
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
    identity: ""
    version: ""

control:
    listen: "{run}/knot.sock"

database:
    storage: "{db}"

log:
  - target: "{log}"
    any: info

template:
  - id: default
    storage: "{zones}"
    file: "%s.zone"
    zonefile-sync: -1
    zonefile-load: whole
    journal-content: none
    semantic-checks: off

zone:
{zone_list}"""

SOA_AND_NS = """\
$ORIGIN {origin}.
$TTL {ttl}
@ SOA ns.{origin}. hostmaster.{origin}. {serial} 3600 600 86400 {negative_ttl}
@ NS ns.{origin}.
ns A {address}
"""


class KnotUnavailable(RuntimeError):
    """knotd cannot run here."""


@dataclass(frozen=True)
class Zone:
    """A zone to serve: `records` in zone-file syntax, relative to the origin (`$ORIGIN` is
    set); SOA, NS and the nameserver's address are added. `ttl` is the default TTL and
    `negative_ttl` the SOA minimum (the TTL of NXDOMAIN and NODATA answers)."""

    name: str
    records: str = ""
    dnssec_signing: bool = False
    ttl: int = 300
    negative_ttl: int = 60

    @property
    def origin(self) -> str:
        return self.name.rstrip(".")


def unavailable_reason() -> str | None:
    for tool in ("knotd", "knotc", "keymgr"):
        if _which(tool) is None:
            return f"{tool} is not installed (Debian: apt-get install knot knot-dnsutils knot-dnssecutils)"
    return None


def require_knot() -> None:
    """Skip the calling test with the reason knotd cannot run here; under CI=true, fail."""
    reason = unavailable_reason()
    if reason is None:
        return
    unavailable(reason)


@dataclass
class KnotServer:
    address: str
    port: int
    workdir: Path
    zones: dict[str, Zone]
    process: subprocess.Popen
    startup_seconds: float = 0.0
    remove_workdir: bool = False
    _serials: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def nameserver(self) -> tuple[str, int]:
        """(address, port): what smtpmon's `nameservers` setting takes."""
        return (self.address, self.port)

    @property
    def config_file(self) -> Path:
        return self.workdir / "knot.conf"

    @property
    def log_file(self) -> Path:
        return self.workdir / "knot.log"

    def ds(self, zone: str) -> list[str]:
        """The DS records of a signed zone (`keymgr -c FILE ZONE ds`), one per line as keymgr
        prints them: `zone. DS 12345 13 2 ABCD...`."""
        run = _run(["keymgr", "-c", str(self.config_file), zone.rstrip(".") + ".", "ds"])
        if run.returncode != 0:
            raise RuntimeError(f"keymgr ds {zone} failed: {run.stdout}{run.stderr}")
        return [line for line in run.stdout.splitlines() if " DS " in line]

    def set_zone(self, zone: Zone) -> None:
        """Replace an served zone's records (a new serial) and reload it; returns once the
        new serial answers."""
        if zone.origin not in self.zones:
            raise KeyError(f"{zone.origin} is not served by this knotd")
        self.zones[zone.origin] = zone
        serial = self._serials[zone.origin] = self._serials.get(zone.origin, 1) + 1
        _write_zone(self.workdir / "zones", zone, self.address, serial)
        run = _run(["knotc", "-c", str(self.config_file), "zone-reload", zone.origin + "."])
        if run.returncode != 0:
            raise RuntimeError(f"knotc zone-reload {zone.origin} failed: {run.stdout}{run.stderr}")
        _wait_ready(self, {zone.origin: serial})

    def stop(self) -> None:
        """Stop knotd (SIGTERM, SIGKILL after 5 s) and remove an own work directory."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.remove_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> KnotServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_knot(zones: list[Zone], workdir: str | os.PathLike[str] | None = None,
               address: str = KNOT_ADDRESS) -> KnotServer:
    """Start a private knotd serving `zones` on `address` and a free port; ready (every zone
    answers its SOA, every signed zone its DNSKEY) when this returns."""
    reason = unavailable_reason()
    if reason is not None:
        raise KnotUnavailable(reason)
    started = time.monotonic()
    owned = workdir is None
    root = Path(tempfile.mkdtemp(prefix="smtpmon-knot-") if owned else workdir).resolve()
    try:
        for directory in ("run", "db", "zones"):
            (root / directory).mkdir(parents=True, exist_ok=True)
        for zone in zones:
            _write_zone(root / "zones", zone, address, 1)
        last_error = ""
        for _ in range(START_ATTEMPTS):
            port = free_udp_tcp_port(address)
            _write_config(root, zones, address, port)
            (root / "knot.log").write_text("")
            with open(root / "knotd.stderr", "wb") as stderr:
                process = subprocess.Popen(
                    [_which("knotd") or "knotd", "-c", str(root / "knot.conf")],
                    stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr,
                    start_new_session=True)
            server = KnotServer(address, port, root, {z.origin: z for z in zones}, process,
                                remove_workdir=owned)
            try:
                _wait_ready(server, {zone.origin: 1 for zone in zones})
            except RuntimeError as error:
                last_error = str(error)
                server.remove_workdir = False
                server.stop()
                continue
            server.startup_seconds = time.monotonic() - started
            return server
        raise RuntimeError(f"knotd -c {root}/knot.conf did not start: {last_error}")
    except BaseException:
        if owned:
            shutil.rmtree(root, ignore_errors=True)
        raise


def _write_config(root: Path, zones: list[Zone], address: str, port: int) -> None:
    zone_list = "".join(
        f"  - domain: {zone.origin}.\n" + ("    dnssec-signing: on\n" if zone.dnssec_signing else "")
        for zone in zones)
    (root / "knot.conf").write_text(KNOT_CONF.format(
        run=root / "run", db=root / "db", zones=root / "zones", log=root / "knot.log",
        address=address, port=port, zone_list=zone_list))


def _write_zone(directory: Path, zone: Zone, address: str, serial: int) -> None:
    head = SOA_AND_NS.format(origin=zone.origin, ttl=zone.ttl, serial=serial,
                             negative_ttl=zone.negative_ttl, address=address)
    (directory / f"{zone.origin}.zone").write_text(head + zone.records)


def _wait_ready(server: KnotServer, serials: dict[str, int]) -> None:
    """Until every zone answers with its serial (and, signed, its DNSKEY); RuntimeError with
    knotd's log when it exits or the time is up."""
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    waiting = dict(serials)
    while waiting:
        if server.process.poll() is not None:
            raise RuntimeError(f"knotd exited with {server.process.returncode}: "
                               f"{_tail(server.log_file)}{_tail(server.workdir / 'knotd.stderr')}")
        if "cannot bind" in _tail(server.log_file):
            raise RuntimeError(f"knotd could not bind {server.address}@{server.port}")
        for origin, serial in list(waiting.items()):
            if _zone_answers(server, origin, serial):
                del waiting[origin]
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"zones {sorted(waiting)} did not answer within "
                               f"{READY_TIMEOUT_SECONDS:.0f} s: {_tail(server.log_file)}")
        time.sleep(0.02)


def _zone_answers(server: KnotServer, origin: str, serial: int) -> bool:
    try:
        soa = dns.query.udp(dns.message.make_query(origin + ".", "SOA"),
                            server.address, timeout=0.5, port=server.port)
        if soa.rcode() != dns.rcode.NOERROR or not soa.answer or soa.answer[0][0].serial != serial:
            return False
        if not server.zones[origin].dnssec_signing:
            return True
        keys = dns.query.tcp(dns.message.make_query(origin + ".", "DNSKEY", want_dnssec=True),
                             server.address, timeout=0.5, port=server.port)
        return any(rrset.rdtype == dns.rdatatype.DNSKEY for rrset in keys.answer)
    except (OSError, dns.exception.DNSException):
        return False


def free_udp_tcp_port(address: str) -> int:
    """A port free for both UDP and TCP on `address` (knotd and unbound cannot bind port 0
    and tell which port they got)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((address, 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((address, port))
                except OSError:
                    continue
                return port


def _which(tool: str) -> str | None:
    return shutil.which(tool, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    command = [_which(command[0]) or command[0], *command[1:]]
    return subprocess.run(command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_SECONDS)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# -- resolvers that misbehave ------------------------------------------------------------------
class BadResolver:
    """A UDP socket on loopback (port 0, read back) answering each datagram with
    `answer(query_bytes)`, or not at all when that returns None. Stops at `stop()`."""

    def __init__(self, answer: Callable[[bytes], bytes | None],
                 address: str = BAD_RESOLVER_ADDRESS) -> None:
        self._answer = answer
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind((address, 0))
        self.udp.settimeout(0.1)
        self.address, self.port = self.udp.getsockname()
        self.queries = 0
        self._stopping = threading.Event()
        self._threads = [threading.Thread(target=self._serve_udp, daemon=True)]

    @property
    def nameserver(self) -> tuple[str, int]:
        return (self.address, self.port)

    def start(self) -> BadResolver:
        for thread in self._threads:
            thread.start()
        return self

    def _serve_udp(self) -> None:
        while not self._stopping.is_set():
            try:
                query, client = self.udp.recvfrom(65535)
            except (TimeoutError, OSError):
                continue
            self.queries += 1
            reply = self._answer(query)
            if reply is not None:
                self.udp.sendto(reply, client)

    def stop(self) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(5)
        self.udp.close()

    def __enter__(self) -> BadResolver:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def silent_server() -> BadResolver:
    """Reads every query and never answers."""
    return BadResolver(lambda query: None)


def garbage_server() -> BadResolver:
    """Answers every query with bytes that are no DNS message: the query's ID (so the answer
    is not dropped as someone else's), flags saying "a response" (QR; not TC, which newer
    dnspython reads before the rest and answers by retrying over TCP), then junk."""
    return BadResolver(lambda query: query[:2] + b"\x81\x00not a dns message")


def servfail_server() -> BadResolver:
    """Answers every query with SERVFAIL, as a recursive resolver does when the domain's
    nameservers are lame or broken."""
    def answer(query: bytes) -> bytes:
        response = dns.message.make_response(dns.message.from_wire(query))
        response.set_rcode(dns.rcode.SERVFAIL)
        response.flags |= dns.flags.RA
        return response.to_wire()
    return BadResolver(answer)


def selectively_silent_server(knot: KnotServer, silent_types: tuple[str, ...]) -> BadResolver:
    """Passes each query to knot over UDP and returns its answer, except for queries of
    `silent_types` (e.g. ("AAAA",)), which it never answers: a resolver whose upstream for
    some names or types has gone quiet."""
    silent = {dns.rdatatype.from_text(rdtype) for rdtype in silent_types}

    def answer(query: bytes) -> bytes | None:
        message = dns.message.from_wire(query)
        if message.question[0].rdtype in silent:
            return None
        response = dns.query.udp(message, knot.address, timeout=2, port=knot.port)
        response.flags |= dns.flags.RA
        return response.to_wire()
    return BadResolver(answer)


class TruncatingServer(BadResolver):
    """UDP: every answer truncated (TC, no records). TCP on the same address and port: each
    query passed to knot over TCP and its answer returned, so a client that falls back to TCP
    gets knot's real answer; without a knot, TCP connections are accepted and never answered."""

    def __init__(self, knot: KnotServer | None, tcp_listens: bool = True) -> None:
        super().__init__(self._truncated)
        self.knot = knot
        self.tcp_queries = 0
        self.tcp: socket.socket | None = None
        if not tcp_listens:  # like a resolver behind a firewall that blocks TCP port 53
            return
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind((self.address, self.port))
        self.tcp.listen(16)
        self.tcp.settimeout(0.1)
        self._threads.append(threading.Thread(target=self._serve_tcp, daemon=True))

    @staticmethod
    def _truncated(query: bytes) -> bytes:
        response = dns.message.make_response(dns.message.from_wire(query))
        response.flags |= dns.flags.TC | dns.flags.RA
        return response.to_wire()

    def _serve_tcp(self) -> None:
        assert self.tcp is not None
        while not self._stopping.is_set():
            try:
                connection, _ = self.tcp.accept()
            except (TimeoutError, OSError):
                continue
            with connection:
                if self.knot is None:  # held open, unanswered, until the client gives up
                    connection.settimeout(0.1)
                    while not self._stopping.is_set():
                        try:
                            if not connection.recv(4096):
                                break
                        except TimeoutError:
                            continue
                        except OSError:
                            break
                    continue
                connection.settimeout(5)
                try:
                    self._pass_to_knot(connection)
                except (OSError, dns.exception.DNSException):
                    pass  # the client sees the connection close

    def _pass_to_knot(self, connection: socket.socket) -> None:
        while True:
            head = _read_exactly(connection, 2)
            if not head:
                return
            query = dns.message.from_wire(_read_exactly(connection, struct.unpack("!H", head)[0]))
            self.tcp_queries += 1
            answer = dns.query.tcp(query, self.knot.address, timeout=5, port=self.knot.port)
            wire = answer.to_wire()
            connection.sendall(struct.pack("!H", len(wire)) + wire)

    def stop(self) -> None:
        super().stop()
        if self.tcp is not None:
            self.tcp.close()


def truncating_server(knot: KnotServer | None, tcp_listens: bool = True) -> TruncatingServer:
    return TruncatingServer(knot, tcp_listens)


def _read_exactly(connection: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = connection.recv(count - len(data))
        if not chunk:
            return b""
        data += chunk
    return data


# -- fixtures ----------------------------------------------------------------------------------
@pytest.fixture
def knot() -> Iterator[Callable[..., KnotServer]]:
    """A factory: `knot(zones)` starts a private knotd; every one started is stopped at
    teardown."""
    servers: list[KnotServer] = []

    def start(zones: list[Zone], **kwargs) -> KnotServer:
        require_knot()
        server = start_knot(zones, **kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def bad_resolvers() -> Iterator[Callable[[BadResolver], BadResolver]]:
    """`bad_resolvers(silent_server())` starts one; all are stopped at teardown."""
    started: list[BadResolver] = []

    def start(server: BadResolver) -> BadResolver:
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()
