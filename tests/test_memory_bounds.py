"""Memory bounds of the running daemon under the attacks of issue 14: the daemon's resident
size is measured around each attack (its peak, VmHWM, before and after), against a generous
bound. Each runs in a few seconds.

- a configuration path that is a FIFO, /dev/zero or a 100 MB file, at reload (item 9);
- /probe of one target written in hundreds of ways, its server answering 60 KB (item 7);
- many connections each sending distinct header fields near the line limit, never ending
  their heads (item 6).
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import socket
import time
import urllib.parse

from daemon_process import start_daemon
from helpers import sample_value
from smtpservers import QUIT_OK, Expect, SendFresh

MB = 1024 * 1024
# What an attack may add to the daemon's peak resident size: a generous bound (the attacks
# took hundreds of MB to GB before they were bounded).
GROWTH_LIMIT_BYTES = 60 * MB


def peak_rss_bytes(pid: int) -> int:
    """The process's peak resident size so far (VmHWM)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/PID/status")


GOOD = "global: {interval: 30s, timeout: 5s}\nmodules:\n  plain: {tls: none}\n"


# -- item 9: configuration files that are not one ----------------------------------------------
def test_a_config_path_that_is_a_fifo_dev_zero_or_huge_neither_hangs_nor_eats_memory(tmp_path):
    daemon = start_daemon(tmp_path, GOOD)
    try:
        path = daemon.config_path
        peak_before = peak_rss_bytes(daemon.process.pid)
        attacks = {
            "huge": "the file is larger than 16 MB",
            "dev-zero": "not a regular file (a character device)",
            "fifo": "not a regular file (a FIFO)",
        }
        for kind, reason in attacks.items():
            path.unlink()
            if kind == "huge":
                with open(path, "wb") as handle:
                    handle.truncate(100 * MB)
            elif kind == "dev-zero":
                path.symlink_to("/dev/zero")
            else:
                os.mkfifo(path)
            begun = time.monotonic()
            status, body = daemon.request("POST", "/-/reload", timeout=5)
            assert status == 400 and reason in body, (kind, status, body)
            assert time.monotonic() - begun < 2
        # SIGHUP reloads on the main thread, the one that also waits for SIGTERM.
        path.unlink()
        path.write_text(GOOD)
        assert daemon.request("POST", "/-/reload")[0] == 200
        path.unlink()
        os.mkfifo(path)
        daemon.process.send_signal(signal.SIGHUP)
        daemon.wait_for(lambda text: sample_value(text, "smtpmon_config_last_reload_successful") == 0, timeout=3)
        growth = peak_rss_bytes(daemon.process.pid) - peak_before
        assert growth < GROWTH_LIMIT_BYTES, f"peak RSS grew by {growth / MB:.0f} MB"
        begun = time.monotonic()
        daemon.process.send_signal(signal.SIGTERM)
        assert daemon.process.wait(5) == 0
        assert time.monotonic() - begun < 3
    finally:
        daemon.stop()


# -- item 7: /probe's store of on-demand results ------------------------------------------------
# A banner and an EHLO reply of 60 KB each (15 lines of 4 KB), different on every connection
# (no two results share their text): each result holds them in its replies and its transcript.
PROBE_GROWTH_LIMIT_BYTES = 30 * MB


def big_reply(code: bytes) -> bytes:
    return b"".join(code + b"-" + os.urandom(1998).hex().encode() + b"\r\n" for _ in range(14)) + code + b" ok\r\n"


BIG_SESSION = [SendFresh(lambda: big_reply(b"220")), Expect(r"EHLO "), SendFresh(lambda: big_reply(b"250")), QUIT_OK]


def test_one_target_written_many_ways_is_one_probe_entry_of_bounded_size(tmp_path, scripted_server):
    server = scripted_server(BIG_SESSION)
    daemon = start_daemon(tmp_path, 'probe_allow: ["127.0.0.1:*"]\n' + GOOD)
    # 127.0.0.1:PORT with 0 to 279 leading zeros on the port: 280 spellings, one address.
    spellings = [f"127.0.0.1:{'0' * zeros}{server.port}" for zeros in range(280)]
    try:
        peak_before = peak_rss_bytes(daemon.process.pid)

        def probe(target: str) -> str:
            status, body = daemon.get(f"/probe?module=plain&target={urllib.parse.quote(target)}")
            assert status == 200, body
            return body

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(probe, spellings))
        growth = peak_rss_bytes(daemon.process.pid) - peak_before
        assert growth < PROBE_GROWTH_LIMIT_BYTES, f"peak RSS grew by {growth / MB:.0f} MB"
        last = probe(spellings[0])
        assert sample_value(last, "smtpmon_probe_success", target=f"127.0.0.1:{server.port}") == 1
        assert sample_value(last, "smtpmon_probes_total", target=f"127.0.0.1:{server.port}",
                            module="plain") == len(spellings) + 1
        assert all(f'target="127.0.0.1:{server.port}"' in answer for answer in answers)
    finally:
        daemon.stop()


# -- item 6: header floods ----------------------------------------------------------------------
def test_header_floods_on_many_connections_take_a_bounded_memory(tmp_path):
    """64 connections each send 97 distinct header fields of 16 KB (1.6 MB a connection, below
    the line and count limits) and hold their heads open: each is cut at the total bound."""
    daemon = start_daemon(tmp_path, GOOD)
    field = b"a" * 16000
    connections = []
    try:
        peak_before = peak_rss_bytes(daemon.process.pid)

        def flood() -> socket.socket:
            sock = socket.create_connection(("127.0.0.1", daemon.port), timeout=5)
            try:
                sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n"
                             + b"".join(b"X-Flood-%d: " % index + field + b"\r\n" for index in range(97)))
            except OSError:  # refused midway (431): what a bounded server does
                pass
            return sock

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            connections = list(pool.map(lambda _: flood(), range(64)))
        time.sleep(0.5)  # what was sent is read
        growth = peak_rss_bytes(daemon.process.pid) - peak_before
        status, _ = daemon.get("/metrics", timeout=5)
        assert status == 200
        assert growth < GROWTH_LIMIT_BYTES, f"peak RSS grew by {growth / MB:.0f} MB"
    finally:
        for sock in connections:
            sock.close()
        daemon.stop()
