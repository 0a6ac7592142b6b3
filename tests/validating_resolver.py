"""A real validating resolver for tests: Debian's unbound 1.17 with a private configuration.

It answers on a loopback address of its own, sends every question for the test zones to the
authoritative server named by `stubs` (knotd from tests/dns_server.py), validates with the
trust anchors given (DS lines, e.g. from `keymgr ds`), and never queries anything outside
127.0.0.0/8: IPv6 is off and every other IPv4 network is on `do-not-query-address`.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import dns.exception
import dns.message
import dns.query
from daemon_process import stop_process
from dns_server import free_udp_tcp_port
from prometheus_tools import require_tool

# 0.0.0.0/0 without 127.0.0.0/8, as the fewest prefixes.
NON_LOOPBACK_IPV4 = ("0.0.0.0/2", "64.0.0.0/3", "96.0.0.0/4", "112.0.0.0/5", "120.0.0.0/6",
                     "124.0.0.0/7", "126.0.0.0/8", "128.0.0.0/1")


class UnboundResolver:
    def __init__(self, directory: Path, address: str, *, stubs: dict[str, str], trust_anchors: list[str]):
        """`stubs`: zone -> "address@port" of its authoritative server; `trust_anchors`: DS
        records in presentation form."""
        self.unbound = require_tool("unbound")
        self.directory = directory
        self.address = address
        self.port = 0
        self.stubs = stubs
        self.trust_anchors = trust_anchors
        self._process: subprocess.Popen | None = None

    def _write(self) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        anchors = self.directory / "anchors.ds"
        anchors.write_text("".join(line.strip() + "\n" for line in self.trust_anchors))
        tops = sorted({zone.rstrip(".").rsplit(".", 1)[-1] + "." for zone in self.stubs})
        blocked = "".join(f"  do-not-query-address: {block}\n" for block in NON_LOOPBACK_IPV4)
        # The test TLDs (e.g. test.) are among unbound's default local zones: let them through.
        local = "".join(f'  local-zone: "{top}" nodefault\n' for top in tops)
        stubs = "".join(f'stub-zone:\n  name: "{zone}"\n  stub-addr: {where}\n' for zone, where in self.stubs.items())
        config = self.directory / "unbound.conf"
        config.write_text(f"""server:
  interface: {self.address}
  port: {self.port}
  do-ip4: yes
  do-ip6: no
  num-threads: 1
  so-reuseport: no
  chroot: ""
  username: ""
  directory: "{self.directory}"
  pidfile: "{self.directory}/unbound.pid"
  logfile: "{self.directory}/unbound.log"
  use-syslog: no
  verbosity: 1
  val-log-level: 2
  access-control: 127.0.0.0/8 allow
  module-config: "validator iterator"
  trust-anchor-file: "{anchors}"
  do-not-query-localhost: no
{blocked}{local}  qname-minimisation: no
  # Debian's build drops answers that took longer than discard-timeout: a silent server
  # must give SERVFAIL, not a client timeout.
  discard-timeout: 8000
  infra-cache-max-rtt: 1000
remote-control:
  control-enable: no
{stubs}""")
        return config

    def start(self) -> UnboundResolver:
        self.port = free_udp_tcp_port(self.address)
        config = self._write()
        checked = subprocess.run([require_tool("unbound-checkconf"), str(config)], capture_output=True, text=True)
        if checked.returncode != 0:
            raise RuntimeError(f"unbound-checkconf: {checked.stdout}{checked.stderr}")
        self._process = subprocess.Popen([self.unbound, "-d", "-c", str(config)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        probe = dns.message.make_query("localhost.", "A")
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"unbound exited: {self._process.stderr.read().decode()}{self.log()}")
            try:
                dns.query.udp(probe, self.address, port=self.port, timeout=0.2)
                return self
            except (OSError, dns.exception.DNSException):  # not up yet, or another socket's stray answer
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"unbound did not answer on {self.address}#{self.port} within 10 s: {self.log()}")

    def log(self) -> str:
        path = self.directory / "unbound.log"
        return path.read_text() if path.exists() else ""

    def stop(self) -> None:
        if self._process is None:
            return
        stop_process(self._process)
        self._process.stderr.close()
        self._process = None
