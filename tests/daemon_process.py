"""`python -m smtpmon run` as a real subprocess on a free loopback port, for end-to-end tests.

Shared by the tests that need the whole daemon (faults, HTTP abuse, reloads, secrets): start it
with a configuration file, wait until it is ready, talk HTTP to it, read its log (stderr, at
debug level), stop it with SIGTERM.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from helpers import sample_value
from smtpservers import LOOPBACK

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


class RunningDaemon:
    """`smtpmon run --config.file config_path` on a free port, logging at debug level to log_path.

    `config_path` None runs the embedded default. `args` are more flags for `smtpmon run`;
    `env` adds to (or, with None values, removes from) this process's environment;
    `command_prefix` runs the daemon through a wrapper that ends by exec-ing it (a sandbox).
    """

    def __init__(self, config_path: Path | None, log_path: Path, *, args: Sequence[str] = (),
                 env: Mapping[str, str | None] | None = None, command_prefix: Sequence[str] = ()):
        self.config_path = config_path
        self.port = free_port()
        self.log_path = log_path
        self._log = open(log_path, "wb")
        environment = dict(os.environ)
        for name, setting in (env or {}).items():
            if setting is None:
                environment.pop(name, None)
            else:
                environment[name] = setting
        config_args = ["--config.file", str(config_path)] if config_path is not None else []
        self.process = subprocess.Popen(
            [*command_prefix, sys.executable, "-m", "smtpmon", "run", *config_args, *args,
             "--web.listen-address", f"{LOOPBACK}:{self.port}", "--log.level", "debug"],
            cwd=REPO, env=environment, stdout=subprocess.DEVNULL, stderr=self._log,
            stdin=subprocess.DEVNULL,
        )

    def request(self, method: str, path: str, *, body: bytes | None = None,
                headers: Mapping[str, str] | None = None, timeout: float = 10.0) -> tuple[int, str]:
        """(status, body text) of one request on a new connection."""
        connection = http.client.HTTPConnection(LOOPBACK, self.port, timeout=timeout)
        try:
            connection.request(method, path, body=body, headers=dict(headers or {}))
            response = connection.getresponse()
            return response.status, response.read().decode("utf-8", errors="replace")
        finally:
            connection.close()

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, str]:
        return self.request("GET", path, timeout=timeout)

    def wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"daemon exited early:\n{self.log()}"
            try:
                if self.get("/-/ready", timeout=1.0)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"daemon not ready after {timeout} s:\n{self.log()}")

    def metrics(self, timeout: float = 10.0) -> str:
        status, body = self.get("/metrics", timeout=timeout)
        assert status == 200, body
        return body

    def wait_for(self, condition: Callable[[str], bool], timeout: float = 10.0) -> str:
        """Poll /metrics until condition(text) holds; the text."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.metrics()
            if condition(text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {timeout} s; metrics:\n{text}")
            time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        stop_process(self.process)
        self._log.close()
        return self.process.returncode


def stop_process(process: subprocess.Popen) -> None:
    """SIGTERM, as systemd would send; SIGKILL if it has not ended within 10 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def start_daemon(directory: Path, config_text: str, *, name: str = "daemon", args: Sequence[str] = (),
                 env: Mapping[str, str | None] | None = None,
                 command_prefix: Sequence[str] = ()) -> RunningDaemon:
    """Write `directory/<name>.yml`, start the daemon on it and wait until it is ready."""
    config_path = directory / f"{name}.yml"
    config_path.write_text(config_text)
    running = RunningDaemon(config_path, directory / f"{name}.log", args=args, env=env,
                            command_prefix=command_prefix)
    try:
        running.wait_ready()
    except BaseException:
        running.stop()
        raise
    return running


def probed(target: str, times: int = 1) -> Callable[[str], bool]:
    """A wait_for condition: `target` has been probed at least `times` times."""
    return lambda text: (sample_value(text, "smtpmon_probes_total", target=target) or 0) >= times
