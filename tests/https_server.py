"""A real HTTPS server for tests: Debian's nginx with a private configuration, prefix, pid
file and logs in a test directory, serving name-based sites (by SNI) on one loopback address.

It listens on port 443 of a 127.x address of its own, as a real MTA-STS policy host does, so
the code under test needs no port option: binding 443 needs root (CI runs as root); without
it the tests skip locally with that reason, and fail when CI=true.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme
from daemon_process import stop_process
from prometheus_tools import require_tool

HTTPS_PORT = 443


@dataclass
class Site:
    """One server name: the certificate it presents, its files, and paths that redirect."""

    name: str
    cert: trustme.LeafCert
    files: dict[str, bytes] = field(default_factory=dict)  # URL path -> content
    redirects: dict[str, str] = field(default_factory=dict)  # URL path -> Location


class NginxServer:
    def __init__(self, directory: Path, address: str):
        self.nginx = require_tool("nginx")
        if os.geteuid() != 0:
            reason = f"nginx must bind {address}:{HTTPS_PORT}, which needs root"
            if os.environ.get("CI") == "true":
                pytest.fail(f"CI=true but {reason}")
            pytest.skip(reason)
        self.directory = directory
        self.address = address
        self.sites: list[Site] = []
        self._process: subprocess.Popen | None = None

    def add(self, site: Site) -> Site:
        self.sites.append(site)
        return site

    def _write(self) -> Path:
        root = self.directory
        for sub in ("temp", "logs", "certs", "www"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        servers = []
        for index, site in enumerate(self.sites):
            cert_file = root / "certs" / f"{index}.pem"
            key_file = root / "certs" / f"{index}.key"
            site.cert.private_key_pem.write_to_path(str(key_file))
            cert_file.write_bytes(b"".join(blob.bytes() for blob in site.cert.cert_chain_pems))
            www = root / "www" / str(index)
            for path, content in site.files.items():
                target = www / path.lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)
            redirects = "".join(f"    location = {path} {{ return 301 {location}; }}\n"
                                for path, location in site.redirects.items())
            default = " default_server" if index == 0 else ""
            servers.append(f"""
  server {{
    listen {self.address}:{HTTPS_PORT} ssl{default};
    server_name {site.name};
    ssl_certificate {cert_file};
    ssl_certificate_key {key_file};
    root {www};
{redirects}  }}""")
        temp = root / "temp"
        config = root / "nginx.conf"
        config.write_text(f"""
daemon off;
master_process on;
worker_processes 1;
user root root;
pid {root}/nginx.pid;
error_log {root}/logs/error.log info;
events {{ worker_connections 64; }}
http {{
  access_log {root}/logs/access.log;
  client_body_temp_path {temp}/body;
  proxy_temp_path {temp}/proxy;
  fastcgi_temp_path {temp}/fastcgi;
  uwsgi_temp_path {temp}/uwsgi;
  scgi_temp_path {temp}/scgi;
  types {{ text/plain txt; text/html html; }}
  default_type application/octet-stream;
{''.join(servers)}
}}
""")
        return config

    def start(self) -> NginxServer:
        config = self._write()
        self._process = subprocess.Popen(
            [self.nginx, "-p", str(self.directory), "-c", str(config), "-e", str(self.directory / "logs/error.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"nginx exited: {self._process.stderr.read().decode()} "
                                   f"{(self.directory / 'logs/error.log').read_text()}")
            try:
                socket.create_connection((self.address, HTTPS_PORT), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nginx did not listen on {self.address}:{HTTPS_PORT} within 10 s")

    def access_log(self) -> str:
        path = self.directory / "logs/access.log"
        return path.read_text() if path.exists() else ""

    def stop(self) -> None:
        if self._process is None:
            return
        stop_process(self._process)  # SIGTERM: nginx's fast shutdown, workers too
        self._process.stderr.close()
        self._process = None
