"""Memory bounds of the running daemon under the attacks of issue 14: the daemon's resident
size is measured around each attack (its peak, VmHWM, before and after), against a generous
bound. Each runs in a few seconds.

- a configuration path that is a FIFO, /dev/zero or a 100 MB file, at reload (item 9).
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from daemon_process import start_daemon
from helpers import sample_value

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
