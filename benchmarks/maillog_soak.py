"""The log reader over time: RSS and CPU of a process that follows a Postfix log written at
2,000 lines/s for 10 minutes, rotated by rename every minute and by copy-and-truncate every
other minute, and whether every line written was counted once.

The lines are the real Postfix lines of maillog_parse.py (captured from a real Postfix, needs
root), replicated with varying queue ids, pids and addresses. The reader runs in a child
process (`LogReader` on its own thread, polling every second, as the daemon will run it);
this process writes the log and reads the child's RSS and CPU from /proc. At the end the
child is asked (stdin closed) for its counts.

    .venv/bin/python benchmarks/maillog_soak.py [--minutes 10] [--rate 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

CHILD = """
import json, sys
from smtpmon.maillog.follow import FileFollower
from smtpmon.maillog.postfix import PostfixParser
from smtpmon.maillog.reader import LogReader
reader = LogReader(FileFollower(sys.argv[1], state_file=sys.argv[2]),
                   PostfixParser(domains=["replies.remote.test"]), interval_seconds=1.0).start()
print("ready", flush=True)
sys.stdin.read()  # until the parent closes it
time_to_drain = 3.0
import time; time.sleep(time_to_drain)
snapshot = reader.snapshot()
reader.stop()
health = snapshot.health
print(json.dumps({"lines": sum(snapshot.counts.values()), "events": len(snapshot.counts),
                  "rotations": health.rotations, "truncations": health.truncations,
                  "errors": health.errors}), flush=True)
"""


def main() -> None:
    import harness as h
    from maillog_parse import capture_lines, replicate

    arguments = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    arguments.add_argument("--minutes", type=float, default=10.0)
    arguments.add_argument("--rate", type=int, default=2000, help="lines per second")
    options = arguments.parse_args()

    workdir = h.workdir("smtpmon-bench-maillog-soak-")
    try:
        lines = [line.encode() + b"\n" for line in replicate(capture_lines(), 200_000)]
        log, state = workdir / "mail.log", workdir / "position.json"
        log.touch()
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(log), str(state)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "ready"
        time.sleep(1.5)  # the reader has opened the file at its end

        batch = max(options.rate // 10, 1)
        started = time.monotonic()
        end = started + options.minutes * 60
        written = 0
        cpu_start = h.cpu_seconds(child.pid)
        rss: list[tuple[float, int]] = []
        next_sample = started
        minute = 0
        while time.monotonic() < end:
            with open(log, "ab") as out:
                out.write(b"".join(lines[(written + n) % len(lines)] for n in range(batch)))
            written += batch
            now = time.monotonic()
            if now >= next_sample:
                rss.append((now - started, h.rss_bytes(child.pid)))
                next_sample += 30
            if int((now - started) // 60) > minute:
                minute = int((now - started) // 60)
                if minute % 2:
                    log.rename(workdir / f"mail.log.{minute}")  # rotation by rename
                    log.touch()
                else:
                    shutil.copyfile(log, workdir / f"mail.log.{minute}")  # copy-and-truncate
                    os.truncate(log, 0)
            time.sleep(max(0.0, started + written / options.rate - time.monotonic()))
        elapsed = time.monotonic() - started
        time.sleep(2.5)  # the reader's last polls
        cpu = h.cpu_seconds(child.pid) - cpu_start
        rss.append((time.monotonic() - started, h.rss_bytes(child.pid)))
        child.stdin.close()
        result = json.loads(child.stdout.readline())
        child.wait(15)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    first_minute = next(size for at, size in rss if at >= 60) if any(at >= 60 for at, _ in rss) else rss[0][1]
    print(f"{written} lines written in {elapsed:.0f} s ({written / elapsed:.0f}/s); counted "
          f"{result['lines']} ({result['events']} distinct events); rotations "
          f"{result['rotations']}, truncations {result['truncations']}, errors {result['errors']}")
    print(f"reader process CPU {cpu:.2f} s = {cpu / written * 1e6:.2f} µs/line "
          f"({cpu / elapsed * 100:.2f}% of a core)")
    print("RSS MB at " + ", ".join(f"{at:.0f}s {size / 1e6:.1f}" for at, size in rss))
    print(f"RSS from minute 1 to the end: {first_minute / 1e6:.1f} -> {rss[-1][1] / 1e6:.1f} MB "
          f"({(rss[-1][1] - first_minute) / first_minute * 100:+.1f}%)")


if __name__ == "__main__":
    main()
