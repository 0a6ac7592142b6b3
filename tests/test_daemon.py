"""End to end: `python -m smtpmon run` as a real subprocess, real SMTP servers on loopback.

What an operator sees: the metrics after probes of healthy and failing servers, reloads (good
and bad), `/probe`, the landing page, the log lines, and how fast SIGTERM stops it.
"""

from __future__ import annotations

import platform
import re
import signal
import subprocess
import sys
import time

import pytest
from daemon_process import REPO, RunningDaemon, free_port, probed, start_daemon
from helpers import sample_value
from smtpservers import (
    BANNER,
    EHLO_OK,
    LOOPBACK,
    QUIT_OK,
    ScriptedHandler,
    Send,
    Sleep,
)

from smtpmon.config.load import DEFAULT_CONFIG_TEXT
from smtpmon.runtime.daemon import free_memory_trimmer, limit_malloc_arenas


@pytest.fixture
def daemon(tmp_path):
    """start(config_text) -> a running, ready daemon; stopped at teardown."""
    started: list[RunningDaemon] = []

    def start(config_text: str) -> RunningDaemon:
        running = start_daemon(tmp_path, config_text, name=f"daemon{len(started)}")
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


def config_text(targets: list[tuple[str, str]], extra_modules: str = "", interval: str = "1s",
                timeout: str = "500ms") -> str:
    lines = [f"global: {{interval: {interval}, timeout: {timeout}}}",
             "modules:",
             "  plain: {tls: none}",
             "  rcpt: {tls: none, mail_from: monitor@test.example, rcpt_to: [user@test.example]}"]
    lines += [extra_modules] if extra_modules else []
    lines.append("targets:")
    lines += [f'  - {{address: "{address}", module: {module}}}' for address, module in targets]
    return "\n".join(lines) + "\n"


def test_metrics_carry_each_reply_code_class_and_category(daemon, smtp_server, scripted_server):
    healthy = smtp_server()
    busy = scripted_server([Send(b"421 4.3.2 mx.test.example busy, try later\r\n")])
    greylisted = smtp_server(ScriptedHandler(
        rcpt_replies={"user@test.example": "450 4.2.0 <user@test.example>: greylisted"}))
    refused = scripted_server([Send(b"554 5.7.1 no SMTP service here\r\n")])
    running = daemon(config_text([
        (healthy.target, "rcpt"), (busy.target, "plain"),
        (greylisted.target, "rcpt"), (refused.target, "plain"),
    ]))
    targets = (healthy.target, busy.target, greylisted.target, refused.target)
    text = running.wait_for(lambda t: all(probed(target)(t) for target in targets))

    def replies(target, stage, code, klass, category):
        return sample_value(text, "smtpmon_replies_total", target=target, stage=stage, code=code,
                     **{"class": klass}, category=category)

    assert sample_value(text, "smtpmon_probe_success", target=healthy.target) == 1
    assert replies(healthy.target, "banner", "220", "positive_completion", "connections") >= 1
    assert replies(healthy.target, "ehlo", "250", "positive_completion", "mail_system") >= 1
    assert replies(healthy.target, "rcpt", "250", "positive_completion", "mail_system") >= 1

    assert sample_value(text, "smtpmon_probe_success", target=busy.target) == 0
    assert replies(busy.target, "banner", "421", "transient_negative", "connections") >= 1
    assert sample_value(text, "smtpmon_probe_failures_total", target=busy.target, stage="banner",
                 reason="banner_rejected") >= 1
    assert sample_value(text, "smtpmon_enhanced_status_codes_total", target=busy.target,
                 stage="banner", enhanced_code="4.3.2",
                 **{"class": "persistent_transient_failure"}) >= 1

    assert sample_value(text, "smtpmon_probe_success", target=greylisted.target) == 0
    assert replies(greylisted.target, "rcpt", "450", "transient_negative", "mail_system") >= 1
    assert sample_value(text, "smtpmon_probe_failures_total", target=greylisted.target, stage="rcpt",
                 reason="rcpt_rejected") >= 1
    assert sample_value(text, "smtpmon_probe_stage_reply_code", target=greylisted.target,
                 stage="rcpt") == 450

    assert replies(refused.target, "banner", "554", "permanent_negative", "mail_system") >= 1
    assert sample_value(text, "smtpmon_probe_failure_info", target=refused.target, stage="banner",
                 reason="banner_rejected") == 1

    assert sample_value(text, "smtpmon_targets") == 4
    assert sample_value(text, "smtpmon_config_last_reload_successful") == 1
    assert sample_value(text, "smtpmon_schedule_lag_seconds_count") >= 4
    assert sample_value(text, "process_resident_memory_bytes") > 0
    # One event, one logfmt line, with the target and module on it.
    assert re.search(rf'level=warn msg="probe failed" target={re.escape(busy.target)} '
                     r'module=plain stage=banner reason=banner_rejected', running.log())


def test_embedded_default_probes_the_local_mta(tmp_path, scripted_server):
    script = [BANNER, EHLO_OK, QUIT_OK]
    try:
        server = scripted_server(script, port=25)
        config_path = None
    except OSError:  # something (a real MTA) owns port 25: the same default, another port
        server = scripted_server(script)
        config_path = tmp_path / "default.yml"
        config_path.write_text(DEFAULT_CONFIG_TEXT.replace("127.0.0.1:25", server.target))
    running = RunningDaemon(config_path, tmp_path / "default.log")
    try:
        running.wait_ready()
        text = running.wait_for(probed(server.target), timeout=10)
        assert sample_value(text, "smtpmon_probe_success", target=server.target, module="local_mta") == 1
        assert sample_value(text, "smtpmon_starttls_offered", target=server.target) == 0
        assert sample_value(text, "smtpmon_replies_total", target=server.target, stage="quit",
                     code="221") == 1
    finally:
        running.stop()


def test_reload_adds_and_removes_targets_and_keeps_unchanged_counters(daemon, smtp_server):
    kept, dropped, added = smtp_server(), smtp_server(), smtp_server()
    running = daemon(config_text([(kept.target, "plain"), (dropped.target, "plain")]))
    text = running.wait_for(lambda t: probed(kept.target, 2)(t) and probed(dropped.target)(t))
    kept_before = sample_value(text, "smtpmon_probes_total", target=kept.target)

    running.config_path.write_text(config_text([(kept.target, "plain"), (added.target, "plain")]))
    running.process.send_signal(signal.SIGHUP)
    text = running.wait_for(probed(added.target))
    assert sample_value(text, "smtpmon_probes_total", target=kept.target) >= kept_before
    assert f'target="{dropped.target}"' not in text  # no series left, whole label value
    assert sample_value(text, "smtpmon_targets") == 2
    assert sample_value(text, "smtpmon_config_last_reload_successful") == 1

    # The same through the HTTP endpoint.
    running.config_path.write_text(config_text([(kept.target, "plain")]))
    status, body = running.request("POST", "/-/reload")
    assert (status, body) == (200, "configuration reloaded\n")
    text = running.metrics()
    assert f'target="{added.target}"' not in text
    assert sample_value(text, "smtpmon_probes_total", target=kept.target) >= kept_before


def test_bad_reload_keeps_the_running_configuration(daemon, smtp_server):
    server = smtp_server()
    running = daemon(config_text([(server.target, "plain")]))
    running.wait_for(probed(server.target))
    good = running.config_path.read_text()

    running.config_path.write_text(good.replace("module: plain", "module: smpt_plain"))
    status, body = running.request("POST", "/-/reload")
    assert status == 400
    assert 'targets[0].module: unknown module "smpt_plain"; known: plain, rcpt' in body
    text = running.metrics()
    assert sample_value(text, "smtpmon_config_last_reload_successful") == 0
    before = sample_value(text, "smtpmon_probes_total", target=server.target)
    running.wait_for(probed(server.target, int(before) + 1))  # still probing the old targets
    assert re.search(r'level=error msg="configuration reload failed; keeping the running '
                     r'configuration" source=\S+ error="targets\[0\]\.module: unknown module',
                     running.log())

    failed_reloads = running.log().count("configuration reload failed")
    running.process.send_signal(signal.SIGHUP)  # the same by signal: tried again, still refused
    deadline = time.monotonic() + 5
    while running.log().count("configuration reload failed") == failed_reloads:
        assert time.monotonic() < deadline, "SIGHUP did not try the configuration again"
        time.sleep(0.05)
    assert running.process.poll() is None
    assert sample_value(running.metrics(), "smtpmon_config_last_reload_successful") == 0

    running.config_path.write_text(good)
    assert running.request("POST", "/-/reload")[0] == 200
    assert sample_value(running.metrics(), "smtpmon_config_last_reload_successful") == 1


def test_probe_endpoint(daemon, smtp_server):
    server = smtp_server()
    running = daemon(config_text([(server.target, "plain")], interval="1m", timeout="2s"))
    status, body = running.get(f"/probe?target={server.target}&module=plain")
    assert status == 200
    assert sample_value(body, "smtpmon_probe_success", target=server.target, module="plain") == 1
    assert sample_value(body, "smtpmon_replies_total", target=server.target, stage="ehlo",
                 code="250") == 1

    status, body = running.get(f"/probe?target={server.target}&module=nosuch")
    assert (status, body) == (400, "unknown module 'nosuch'; known: plain, rcpt\n")
    status, body = running.get("/probe?module=plain")
    assert status == 400 and "missing parameter 'target'" in body
    status, body = running.get(f"/probe?target=127.0.0.1:{server.port + 1}&module=plain")
    assert status == 403 and "port scanner" in body


def test_landing_page(daemon, smtp_server, scripted_server):
    healthy = smtp_server()
    refused = scripted_server([Send(b"554 5.7.1 <b>not</b> welcome\r\n")])
    by_name = f"localhost:{healthy.port}"
    running = daemon(config_text([(healthy.target, "plain"), (refused.target, "plain"), (by_name, "plain")]))
    metrics = running.wait_for(lambda t: probed(healthy.target)(t) and probed(refused.target)(t)
                               and probed(by_name)(t))
    status, page = running.get("/")
    assert status == 200
    rows = page.split("<tr class=")[1:]
    row = next(r for r in rows if refused.target in r)
    assert row.startswith('"failing"') and "FAILING" in row and "banner_rejected" in row
    assert '<code class="code c5" title="5.7.1 &lt;b&gt;not&lt;/b&gt; welcome">554 5.7.1</code>' in row
    assert "&lt;b&gt;not&lt;/b&gt; welcome" in row
    assert f"/target?target=127.0.0.1%3A{refused.port}&amp;module=plain" in row
    healthy_row = next(r for r in rows if healthy.target in r)
    assert healthy_row.startswith('"healthy"') and ">OK<" in healthy_row
    assert '<span class="stage">banner</span><code class="code c2" ' in healthy_row
    assert page.index(refused.target) < page.index(healthy.target)  # failing first
    # A name: the address its session used is shown, and exported as an _info series.
    named_row = next(r for r in rows if f"<code>{by_name}</code>" in r)
    assert "&middot; 127.0.0.1</div>" in named_row
    assert sample_value(metrics, "smtpmon_probe_address_info", target=by_name, address="127.0.0.1", family="ipv4") == 1
    status, transcript = running.get(f"/transcript?target={refused.target}&module=plain")
    assert status == 200 and "S: 554 5.7.1 <b>not</b> welcome" in transcript


def test_opportunistic_tls_over_a_self_signed_certificate_passes_and_says_so(daemon, smtp_server, tls_contexts):
    """The default TLS mode judges as MTAs do: mail would flow, so the probe passes; the
    failed verification shows on /metrics, the landing page and the transcript."""
    server = smtp_server(starttls_context=tls_contexts["self_signed"])
    running = daemon(config_text([(server.target, "opportunistic")],
                                 extra_modules="  opportunistic: {tls: opportunistic}", timeout="900ms"))
    text = running.wait_for(probed(server.target))
    assert sample_value(text, "smtpmon_probe_success", target=server.target) == 1
    assert sample_value(text, "smtpmon_tls_certificate_verified", target=server.target) == 0
    assert sample_value(text, "smtpmon_tls_certificate_verify_failure_info", target=server.target,
                 reason="certificate_untrusted") == 1
    row = next(r for r in running.get("/")[1].split("<tr class=")[1:] if server.target in r)
    # Not a failure, but a warning on the status page, with the reason.
    assert row.startswith('"warning"') and "not verified: certificate_untrusted" in row
    status, transcript = running.get(f"/transcript?target={server.target}&module=opportunistic")
    assert status == 200
    assert "(opportunistic TLS: reported, not a failure)" in transcript
    assert "success in " in transcript and "certificate NOT verified: certificate_untrusted" in transcript


def test_sigterm_stops_within_the_timeout_plus_one_second(daemon, scripted_server):
    tarpit = scripted_server([Sleep(30)])
    running = daemon(config_text([(tarpit.target, "plain")], interval="5s", timeout="2s"))
    running.wait_for(lambda t: sample_value(t, "smtpmon_probes_in_flight") == 1)
    begun = time.monotonic()
    running.process.send_signal(signal.SIGTERM)
    assert running.process.wait(5) == 0
    elapsed = time.monotonic() - begun
    assert elapsed < 2.0 + 1.0
    assert 'msg=stopping signal=SIGTERM' in running.log()
    assert "msg=stopped" in running.log()


def test_sigterm_abandons_long_probes_after_a_short_grace(daemon, scripted_server):
    """Probes with a 30 s timeout stuck in tarpits: SIGTERM stops within the grace (2 s), not
    at their deadlines, and nothing is recorded for the abandoned probes."""
    tarpits = [scripted_server([Sleep(60)]) for _ in range(3)]
    running = daemon(config_text([(tarpit.target, "plain") for tarpit in tarpits], interval="60s", timeout="30s"))
    running.wait_for(lambda t: sample_value(t, "smtpmon_probes_in_flight") == 3)
    begun = time.monotonic()
    running.process.send_signal(signal.SIGTERM)
    assert running.process.wait(10) == 0
    assert time.monotonic() - begun < 2.0 + 1.0
    log = running.log()
    assert "msg=stopping signal=SIGTERM grace_seconds=2.0" in log
    assert "nothing recorded for them\" probes=3" in log
    assert "msg=\"probe failed\"" not in log


def test_startup_with_a_bad_config_exits_2_listing_every_error(tmp_path):
    config = tmp_path / "bad.yml"
    config.write_text("global: {interval: soon}\nmodules: {m: {tls: sometimes}}\n"
                      "targets: [{address: '127.0.0.1:99999', module: m}]\n")
    completed = subprocess.run(
        [sys.executable, "-m", "smtpmon", "run", "--config.file", str(config),
         "--web.listen-address", f"{LOOPBACK}:{free_port()}"],
        cwd=REPO, capture_output=True, text=True, timeout=20)
    assert completed.returncode == 2
    assert "invalid configuration" in completed.stderr
    assert "global.interval" in completed.stderr
    assert "modules.m.tls" in completed.stderr
    assert "targets[0].address: port must be 1-65535, got 99999" in completed.stderr


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc arenas are glibc's")
def test_malloc_arenas_are_capped_unless_the_operator_chose(monkeypatch):
    # Uncapped, glibc's per-thread arenas let the daemon's RSS creep up (benchmarks/soak.py).
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert limit_malloc_arenas() is True
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False


def test_after_start_up_the_collector_frees_cyclic_garbage_less_often_but_still_frees_it():
    """settle_garbage_collector, as the daemon runs it at the end of start-up (in a child
    process: it changes the collector of the process it runs in)."""
    code = """
import gc, weakref
from smtpmon.runtime.daemon import GC_YOUNG_THRESHOLD, settle_garbage_collector
settle_garbage_collector()
class Node: pass
def garbage_cycle():
    node = Node(); node.me = node
    return weakref.ref(node)
first = [garbage_cycle() for _ in range(GC_YOUNG_THRESHOLD // 10)]
early = sum(ref() is not None for ref in first)
later = [garbage_cycle() for _ in range(GC_YOUNG_THRESHOLD)]
print(len(first), early, sum(ref() is not None for ref in first), gc.get_freeze_count() > 0)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    made, alive_early, alive_later, frozen = done.stdout.split()
    # CPython's threshold (700) would have collected some of the first cycles already.
    assert int(alive_early) == int(made) and frozen == "True"
    assert int(alive_later) == 0  # more new objects than the threshold: collected


def test_the_open_files_limit_is_raised_to_the_hard_limit(tmp_path, smtp_server):
    """The default soft limit (1,024) is below what a large max_concurrency can hold open; the
    daemon raises it as Go's runtime does for blackbox_exporter."""
    server = smtp_server()
    running = start_daemon(tmp_path, config_text([(server.target, "plain")]),
                           command_prefix=["prlimit", "--nofile=256:2048"])
    try:
        with open(f"/proc/{running.process.pid}/limits") as limits:
            line = next(line for line in limits if line.startswith("Max open files"))
        assert line.split()[3:5] == ["2048", "2048"]
        assert "open_files_limit=2048" in running.log()
    finally:
        running.stop()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_the_trimmer_gives_free_heap_pages_back_to_the_system():
    def rss_mb() -> float:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024

    chunks = [bytearray(1000) for _ in range(60_000)]  # ~60 MB from the heap, 1 KB each
    kept = chunks[::100]  # one in a hundred stays: the heap cannot shrink from its top
    del chunks
    before = rss_mb()
    free_memory_trimmer()()
    assert before - rss_mb() > 30, "malloc_trim released less than half of the freed memory"
    del kept


def test_a_daemon_without_tls_probes_never_loads_cryptography(daemon, smtp_server):
    """cryptography (certificate facts) is 11 MB of resident memory; plain probes skip it, and
    so do opportunistic ones (the default) of servers that never offer STARTTLS."""
    server = smtp_server()
    running = daemon(config_text([(server.target, "plain"), (server.target, "opportunistic")],
                                 extra_modules="  opportunistic: {tls: opportunistic}"))
    running.wait_for(lambda text: all(
        (sample_value(text, "smtpmon_probes_total", target=server.target, module=module) or 0) >= 1
        for module in ("plain", "opportunistic")))
    with open(f"/proc/{running.process.pid}/maps") as maps:
        libraries = {line.split()[-1] for line in maps if "/" in line}
    assert not [path for path in libraries if "/cryptography/" in path or "/bcrypt/" in path]
    assert any("_ssl" in path for path in libraries)  # the check sees extension modules at all
