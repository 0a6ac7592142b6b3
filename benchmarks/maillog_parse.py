"""CPU per log line: smtpmon's Postfix log reader against Debian's prometheus-postfix-exporter.

1. Capture real lines: a real Postfix (tests/postfix_traffic.py, needs root) is driven with
   the tests' traffic (inbound rejects at every stage, outbound deliveries answered by
   scripted loopback servers) and its maillog is read back. The "overriding earlier entry"
   warnings of the test configuration are left out (no real log has them).
2. Replicate them into a log of at least --lines lines, each copy with its own queue ids,
   process ids, addresses and client addresses, so no two copies are the same line.
3. prometheus-postfix-exporter 0.3.0 reads --postfix.logfile_path from the END of the file:
   it is started on an empty file (web listener on a free loopback port), the log is appended,
   and its CPU (/proc/PID/stat) is read until its counters have not changed for 3 s.
4. smtpmon: FileFollower + PostfixParser in this process, from the file's start with no
   catch-up bound; CPU by time.process_time(), catch-up rate by wall time. The parser alone
   (lines already in memory) is timed too.

    .venv/bin/python benchmarks/maillog_parse.py [--lines 400000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import harness as h  # noqa: E402

from smtpmon.maillog.events import MALFORMED, REPLY, Tally  # noqa: E402
from smtpmon.maillog.follow import FileFollower  # noqa: E402
from smtpmon.maillog.postfix import PostfixParser  # noqa: E402

EXPORTER = shutil.which("prometheus-postfix-exporter") or "/usr/bin/prometheus-postfix-exporter"
SETTLE_SECONDS = 3.0
QUEUE_ID = re.compile(r"\b[0-9A-F]{10,12}\b")
PID = re.compile(r"\[([0-9]+)\]: ")
ADDRESS = re.compile(r"<([A-Za-z0-9._-]+)@")
CLIENT = re.compile(r"\[127\.0\.0\.([0-9]+)\]")


def capture_lines() -> list[str]:
    from postfix import unavailable_reason
    from postfix_traffic import (
        drive_inbound,
        drive_outbound,
        start_logging_postfix,
        start_remote_servers,
    )

    reason = unavailable_reason()
    if reason is not None:
        raise SystemExit(f"needs a real Postfix: {reason}")
    servers = start_remote_servers()
    try:
        with start_logging_postfix(servers) as mx:
            drive_inbound(mx)
            driven = drive_outbound(mx)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                text = Path(mx.maillog).read_text()
                if text.count(" status=") >= driven.accepted + 4:  # + the discarded bounces
                    break
                time.sleep(0.2)
            time.sleep(0.5)
            text = Path(mx.maillog).read_text()
    finally:
        servers.stop()
    return [line for line in text.splitlines() if "overriding earlier entry" not in line]


def replicate(lines: list[str], wanted: int) -> list[str]:
    """Copies of `lines` until `wanted`, each copy with its own ids and addresses."""
    out: list[str] = []
    copy = 0
    while len(out) < wanted:
        copy += 1
        for line in lines:
            line = QUEUE_ID.sub(lambda m, copy=copy: f"{(int(m.group(0), 16) + copy * 7919) & 0xFFFFFFFFFFF:011X}", line)
            line = PID.sub(lambda m, copy=copy: f"[{(int(m.group(1)) + copy) % 4_000_000}]: ", line)
            line = ADDRESS.sub(lambda m, copy=copy: f"<{m.group(1)}{copy % 9973}@", line)
            line = CLIENT.sub(lambda m, copy=copy: f"[127.0.{copy % 250}.{m.group(1)}]", line)
            out.append(line)
    return out


def exporter_total(body: bytes) -> float:
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith("postfix_") and not line.startswith("postfix_up"):
            try:
                total += float(line.rsplit(" ", 1)[1])
            except ValueError:
                pass
    return total


def scrape(port: int) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        return answer.read()


def run_exporter(workdir: Path, log_bytes: bytes) -> dict:
    procs = h.Processes(workdir)
    logfile = workdir / "exporter-mail.log"
    logfile.write_bytes(b"")
    port = h.free_port()
    process = procs.spawn([EXPORTER, f"--web.listen-address=127.0.0.1:{port}",
                           f"--postfix.logfile_path={logfile}",
                           f"--postfix.showq_path={workdir / 'no-showq'}"],
                          log_name="postfix-exporter.log", stdout=subprocess.DEVNULL)
    try:
        h.wait_http(port, "/metrics", process)
        time.sleep(1.0)  # its tailer is at the end of the empty file
        before = h.cpu_seconds(process.pid)
        started = time.monotonic()
        with open(logfile, "ab") as log:
            log.write(log_bytes)
        last_total, last_change = exporter_total(scrape(port)), time.monotonic()
        while time.monotonic() - last_change < SETTLE_SECONDS:
            time.sleep(0.25)
            total = exporter_total(scrape(port))
            if total != last_total:
                last_total, last_change = total, time.monotonic()
        cpu = h.cpu_seconds(process.pid) - before
        body = scrape(port).decode()
        rejected = sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
                       if line.startswith("postfix_smtpd_messages_rejected_total"))
        return {"cpu_seconds": cpu, "wall_seconds": last_change - started,
                "rejects_counted": rejected}
    finally:
        procs.close()


def run_smtpmon(path: Path, lines: int) -> dict:
    parser, tally = PostfixParser(domains=["replies.remote.test"]), Tally()
    follower = FileFollower(str(path), from_start=True, catch_up_max_lines=10**9,
                            catch_up_max_seconds=10**9, max_lines_per_poll=10**9)
    wall, cpu = time.perf_counter(), time.process_time()
    while follower.poll(parser, tally):
        pass
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    counted = sum(tally.counts.values())
    assert counted == lines, (counted, lines)
    replies = sum(count for event, count in tally.counts.items() if event.kind == REPLY)
    malformed = sum(count for event, count in tally.counts.items() if event.kind == MALFORMED)
    rejects = sum(count for event, count in tally.counts.items()
                  if event.kind == REPLY and event.program == "smtpd" and event.stage == "rcpt")
    return {"cpu_seconds": cpu, "wall_seconds": wall, "reply_events": replies,
            "malformed": malformed, "smtpd_rcpt_rejects": rejects}


def run_parser_only(lines: list[str]) -> float:
    parser, counts = PostfixParser(domains=["replies.remote.test"]), {}
    parse = parser.parse_line
    cpu = time.process_time()
    for line in lines:
        event = parse(line)
        counts[event] = counts.get(event, 0) + 1
    return time.process_time() - cpu


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    arguments.add_argument("--lines", type=int, default=400_000)
    arguments.add_argument("--keep", help="write the generated log and results into this directory")
    options = arguments.parse_args()

    workdir = Path(options.keep) if options.keep else h.workdir("smtpmon-bench-maillog-")
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        captured = capture_lines()
        lines = replicate(captured, options.lines)
        log_path = workdir / "mail.log"
        log_bytes = ("\n".join(lines) + "\n").encode()
        log_path.write_bytes(log_bytes)
        print(f"captured {len(captured)} real Postfix lines; generated {len(lines)} lines, "
              f"{len(log_bytes) / 1e6:.1f} MB", flush=True)

        exporter = run_exporter(workdir, log_bytes)
        smtpmon = run_smtpmon(log_path, len(lines))
        parser_cpu = run_parser_only(lines)
        result = {
            "lines": len(lines),
            "captured_lines": len(captured),
            "exporter": exporter,
            "smtpmon": smtpmon,
            "exporter_us_per_line": exporter["cpu_seconds"] / len(lines) * 1e6,
            "smtpmon_us_per_line": smtpmon["cpu_seconds"] / len(lines) * 1e6,
            "smtpmon_parser_only_us_per_line": parser_cpu / len(lines) * 1e6,
            "smtpmon_catch_up_lines_per_second": len(lines) / smtpmon["wall_seconds"],
        }
        result["ratio"] = result["smtpmon_us_per_line"] / result["exporter_us_per_line"]
        print(f"{'':34}{'CPU s':>8}{'µs/line':>9}")
        print(f"{'prometheus-postfix-exporter 0.3.0':34}{exporter['cpu_seconds']:8.2f}"
              f"{result['exporter_us_per_line']:9.2f}")
        print(f"{'smtpmon (read + parse + count)':34}{smtpmon['cpu_seconds']:8.2f}"
              f"{result['smtpmon_us_per_line']:9.2f}")
        print(f"{'smtpmon parser alone':34}{parser_cpu:8.2f}"
              f"{result['smtpmon_parser_only_us_per_line']:9.2f}")
        print(f"ratio smtpmon / exporter: {result['ratio']:.2f}; smtpmon catch-up "
              f"{result['smtpmon_catch_up_lines_per_second']:,.0f} lines/s; reply events "
              f"{smtpmon['reply_events']}, malformed {smtpmon['malformed']}; smtpd RCPT rejects: "
              f"exporter {exporter['rejects_counted']:.0f}, smtpmon {smtpmon['smtpd_rcpt_rejects']}")
        (workdir / "result.json").write_text(json.dumps(result, indent=2))
    finally:
        if not options.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
