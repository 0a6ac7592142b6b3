"""Shared parts of the benchmark suite and the soak: processes, /proc figures, HTTP, metrics.

Everything runs on loopback; every process started here is stopped by `Processes.close()`.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import trustme

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
BLACKBOX = shutil.which("prometheus-blackbox-exporter") or shutil.which("blackbox_exporter")


def raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


# -- /proc --------------------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of the process (all its threads)."""
    with open(f"/proc/{pid}/stat", "rb") as handle:
        fields = handle.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm", "rb") as handle:
        return int(handle.read().split()[1]) * PAGE_SIZE


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- processes ---------------------------------------------------------------------------------

@dataclass
class Processes:
    """Every process the run started, stopped in reverse order at the end."""

    workdir: Path
    started: list[subprocess.Popen] = field(default_factory=list)

    def spawn(self, args: list[str], *, log_name: str, **kwargs) -> subprocess.Popen:
        with open(self.workdir / log_name, "wb") as log:  # the child keeps its own copy
            process = subprocess.Popen(args, stderr=log, **kwargs)
        self.started.append(process)
        return process

    def stop(self, process: subprocess.Popen, timeout: float = 15.0) -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process in self.started:
            self.started.remove(process)

    def close(self) -> None:
        for process in reversed(list(self.started)):
            self.stop(process)


@dataclass
class Certificates:
    ca_file: str
    cert_file: str
    key_file: str


def make_certificates(workdir: Path) -> Certificates:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "bench.example.org")
    paths = Certificates(str(workdir / "ca.pem"), str(workdir / "cert.pem"), str(workdir / "key.pem"))
    ca.cert_pem.write_to_path(paths.ca_file)
    server.cert_chain_pems[0].write_to_path(paths.cert_file)
    server.private_key_pem.write_to_path(paths.key_file)
    return paths


@dataclass
class SmtpServer:
    process: subprocess.Popen
    ports: list[int]
    banner_delays_file: Path  # written when the server stops (see smtpserver.py --timings)

    def banner_delays(self) -> dict[int, list[tuple[float, float]]]:
        """Per port: (accept time, seconds to the banner's write) of each delayed banner."""
        with open(self.banner_delays_file, encoding="utf-8") as handle:
            return {int(port): [tuple(pair) for pair in pairs]
                    for port, pairs in json.load(handle).items()}


def start_smtp_server(procs: Processes, certs: Certificates, behaviours: list[str],
                      rotate_seconds: float = 20.0, port: int = 0) -> SmtpServer:
    spec = procs.workdir / f"spec-{len(procs.started)}.json"
    spec.write_text(json.dumps(behaviours))
    delays = procs.workdir / f"banner-delays-{len(procs.started)}.json"
    process = procs.spawn(
        [PYTHON, str(ROOT / "benchmarks" / "smtpserver.py"), "--spec", str(spec),
         "--cert", certs.cert_file, "--key", certs.key_file,
         "--rotate-seconds", str(rotate_seconds), "--timings", str(delays), "--port", str(port)],
        log_name="smtpserver.log", stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )
    line = process.stdout.readline()
    if not line:
        raise RuntimeError(f"the SMTP server did not start: see {procs.workdir}/smtpserver.log")
    return SmtpServer(process, json.loads(line), delays)


def smtpmon_config(path: Path, ports: list[int], *, interval: float, timeout: float,
                   max_concurrency: int, ca_file: str, module: str = "plain") -> None:
    lines = [
        "global:",
        f"  interval: {interval}s",
        f"  timeout: {timeout}s",
        f"  max_concurrency: {max_concurrency}",
        "  ehlo_name: bench.example.org",
        "probe_allow: ['127.0.0.1:*']",
        "modules:",
        "  plain: {tls: none}",
        f"  starttls: {{tls: starttls, tls_ca_file: '{ca_file}'}}",
        "targets:" if ports else "targets: []",
    ]
    lines += [f"  - {{address: '127.0.0.1:{port}', module: {module}}}" for port in ports]
    path.write_text("\n".join(lines) + "\n")


def start_smtpmon(procs: Processes, config: Path, name: str = "smtpmon") -> tuple[subprocess.Popen, int]:
    port = free_port()
    process = procs.spawn(
        [str(Path(PYTHON).parent / "smtpmon"), "run", "--config.file", str(config),
         "--web.listen-address", f"127.0.0.1:{port}"],
        log_name=f"{name}.log",
    )
    wait_http(port, "/-/ready", process)
    return process, port


BLACKBOX_CONFIG = """\
modules:
  smtp_plain:
    prober: tcp
    timeout: {timeout}s
    tcp:
      query_response:
        - expect: "^220"
        - send: "EHLO bench.example.org"
        - expect: "^250 "
        - send: "QUIT"
  smtp_starttls:
    prober: tcp
    timeout: {timeout}s
    tcp:
      tls_config:
        ca_file: "{ca_file}"
        server_name: "{server_name}"
      query_response:
        - expect: "^220"
        - send: "EHLO bench.example.org"
        - expect: "^250 "
        - send: "STARTTLS"
        - expect: "^220"
        - starttls: true
        - send: "EHLO bench.example.org"
        - expect: "^250 "
        - send: "QUIT"
"""


def start_blackbox(procs: Processes, ca_file: str, server_name: str = "127.0.0.1",
                   timeout: float = 5.0, name: str = "blackbox") -> tuple[subprocess.Popen, int] | None:
    if BLACKBOX is None:
        return None
    config = procs.workdir / f"{name}.yml"
    config.write_text(BLACKBOX_CONFIG.format(timeout=timeout, ca_file=ca_file, server_name=server_name))
    port = free_port()
    process = procs.spawn(
        [BLACKBOX, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}",
         "--log.level=warn"],
        log_name=f"{name}.log",
    )
    wait_http(port, "/-/healthy", process)
    return process, port


def wait_http(port: int, path: str, process: subprocess.Popen, timeout: float = 30.0) -> None:
    import urllib.request
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{process.args[0]} not ready on port {port} within {timeout}s")


# -- HTTP (asyncio, keep-alive) ------------------------------------------------------------------

class HttpClient:
    """One keep-alive HTTP/1.1 connection: GET and read the body (Content-Length)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str) -> tuple[int, bytes]:
        for attempt in (1, 2):  # a server may close an idle keep-alive connection
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(
                    "127.0.0.1", self.port, limit=1 << 20)
            try:
                self.writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
                head = await self.reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                length = re.search(rb"(?i)content-length:\s*(\d+)", head)
                body = await self.reader.readexactly(int(length.group(1))) if length else b""
                if re.search(rb"(?i)connection:\s*close", head):
                    self.close()
                return status, body
            except (OSError, asyncio.IncompleteReadError):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


# -- exposition parsing --------------------------------------------------------------------------

def samples(body: bytes, name: str) -> list[tuple[bytes, float]]:
    """(labels, value) of every sample of `name` (exact name, with or without labels)."""
    pattern = re.compile(rb"^" + re.escape(name.encode()) + rb"(\{[^\n]*\})? (\S+)$", re.M)
    return [(match.group(1) or b"", float(match.group(2))) for match in pattern.finditer(body)]


def label(labels: bytes, name: str) -> str | None:
    match = re.search(rb'[{,]' + name.encode() + rb'="([^"]*)"', labels)
    return match.group(1).decode() if match else None


def histogram(body: bytes, name: str) -> list[tuple[float, float]]:
    """Cumulative (upper bound, count) buckets of a label-less histogram."""
    return [(float(label(labels, "le")), value) for labels, value in samples(body, name + "_bucket")]


def histogram_delta(after, before) -> list[tuple[float, float]]:
    return [(bound, count - old) for (bound, count), (_, old) in zip(after, before)]


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """PromQL's histogram_quantile: linear interpolation inside the bucket."""
    total = buckets[-1][1] if buckets else 0
    if total <= 0:
        return float("nan")
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / max(count - lower_count, 1e-9)
        lower_bound, lower_count = bound, count
    return buckets[-2][0]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def workdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))
