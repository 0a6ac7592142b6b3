"""What Prometheus sees: `/metrics` and `/probe` output, parsed back with prometheus_client's
own parser and checked with `promtool check metrics`."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import tracemalloc

import probe_results
import pytest
from helpers import render_metrics, sample_value, samples, stored_keys, unavailable
from prometheus_client import exposition
from prometheus_client.parser import text_string_to_metric_families

from smtpmon import __version__
from smtpmon.exposition.metrics import (
    CONTENT_TYPE,
    TARGET_FAMILIES,
    render_probe,
)
from smtpmon.exposition.state import EXPORTER_FAMILIES, ExporterState
from smtpmon.exposition.store import ResultStore
from smtpmon.smtp.results import TranscriptLine


def series(exposition: bytes, name: str, **labels: str) -> list[dict[str, str]]:
    """Label sets of every `name` sample that has at least `labels`."""
    wanted = {key.rstrip("_"): label for key, label in labels.items()}
    return [found for n, found, _ in samples(exposition)
            if n == name and wanted.items() <= found.items()]


def metrics_after(*results) -> bytes:
    store = ResultStore()
    for result in results:
        store.register(result.target, result.module)
        store.record(result)
    return render_metrics(store, ExporterState())


def test_content_type_is_text_format_0_0_4():
    # Newer prometheus_client names this type CONTENT_TYPE_PLAIN_0_0_4; older ones (Debian 12's
    # 0.16) have no such name, and their CONTENT_TYPE_LATEST is this format.
    text_0_0_4 = getattr(exposition, "CONTENT_TYPE_PLAIN_0_0_4", None) or exposition.CONTENT_TYPE_LATEST
    assert text_0_0_4.startswith("text/plain; version=0.0.4")
    assert CONTENT_TYPE == text_0_0_4


def test_healthy_target():
    result = probe_results.healthy()
    out = metrics_after(result)
    t = {"target": result.target, "module": "mx"}
    assert sample_value(out, "smtpmon_probe_success", **t) == 1
    assert sample_value(out, "smtpmon_probes_total", **t) == 1
    assert sample_value(out, "smtpmon_probe_duration_seconds", **t) == pytest.approx(0.019)
    assert sample_value(out, "smtpmon_probe_last_timestamp_seconds", **t) == pytest.approx(
        probe_results.STARTED_AT + 0.019)
    assert sample_value(out, "smtpmon_probe_stage_duration_seconds", stage="starttls", **t) == 0.01
    assert sample_value(out, "smtpmon_probe_stage_reply_code", stage="banner", **t) == 220
    assert sample_value(out, "smtpmon_probe_stage_reply_code", stage="quit", **t) == 221
    # resolve and connect get no reply: no reply code for them.
    assert series(out, "smtpmon_probe_stage_reply_code", stage="connect") == []
    assert sample_value(out, "smtpmon_replies_total", stage="banner", code="220",
                 class_="positive_completion", category="connections", **t) == 1
    assert sample_value(out, "smtpmon_replies_total", stage="ehlo", code="250",
                 class_="positive_completion", category="mail_system", **t) == 1
    assert sample_value(out, "smtpmon_probe_stage_reply_info", stage="starttls", code="220",
                 class_="positive_completion", category="connections",
                 enhanced_code="2.0.0", **t) == 1
    assert sample_value(out, "smtpmon_enhanced_status_codes_total", stage="quit",
                 enhanced_code="2.0.0", class_="success", **t) == 1
    assert series(out, "smtpmon_probe_failure_info") == []
    assert series(out, "smtpmon_probe_failures_total") == []
    assert sample_value(out, "smtpmon_tls_info", tls_version="TLSv1.3",
                 cipher="TLS_AES_256_GCM_SHA384", **t) == 1
    assert sample_value(out, "smtpmon_tls_certificate_not_after_timestamp_seconds", **t) == \
        probe_results.NOT_AFTER
    assert sample_value(out, "smtpmon_tls_certificate_not_before_timestamp_seconds", **t) == \
        probe_results.NOT_BEFORE
    assert sample_value(out, "smtpmon_tls_certificate_verified", **t) == 1
    assert sample_value(out, "smtpmon_starttls_offered", **t) == 1
    plain = {labels["extension"] for labels in series(out, "smtpmon_ehlo_extension_info", phase="plain")}
    # X-VENDOR-MAGIC is not a known keyword: it becomes "other", the label set stays bounded.
    assert plain == {"PIPELINING", "SIZE", "STARTTLS", "ENHANCEDSTATUSCODES", "8BITMIME",
                     "other"}
    tls = {labels["extension"] for labels in series(out, "smtpmon_ehlo_extension_info", phase="tls")}
    assert tls == {"AUTH", "SIZE"}
    assert sample_value(out, "smtpmon_ehlo_size_limit_bytes", phase="plain", **t) == 10240000
    assert sample_value(out, "smtpmon_ehlo_size_limit_bytes", phase="tls", **t) == 20480000
    assert series(out, "smtpmon_tls_certificate_verify_failure_info") == []
    assert sample_value(out, "smtpmon_probe_address_info", address="192.0.2.25", family="ipv4", **t) == 1


def test_an_unverified_certificate_under_opportunistic_tls_is_a_fact_not_a_failure():
    result = probe_results.opportunistic_unverified()
    out = metrics_after(result)
    t = {"target": result.target, "module": "mx"}
    assert sample_value(out, "smtpmon_probe_success", **t) == 1
    assert sample_value(out, "smtpmon_tls_certificate_verified", **t) == 0
    assert sample_value(out, "smtpmon_tls_certificate_verify_failure_info", reason="certificate_untrusted", **t) == 1
    assert series(out, "smtpmon_probe_failure_info") == []


def test_banner_421():
    result = probe_results.banner_421()
    out = metrics_after(result)
    t = {"target": result.target, "module": "mx"}
    assert sample_value(out, "smtpmon_probe_success", **t) == 0
    assert sample_value(out, "smtpmon_probe_failure_info", stage="banner", reason="banner_rejected",
                 **t) == 1
    assert sample_value(out, "smtpmon_probe_failures_total", stage="banner", reason="banner_rejected",
                 **t) == 1
    assert sample_value(out, "smtpmon_replies_total", stage="banner", code="421",
                 class_="transient_negative", category="connections", **t) == 1
    assert sample_value(out, "smtpmon_probe_stage_reply_code", stage="banner", **t) == 421
    assert sample_value(out, "smtpmon_enhanced_status_codes_total", stage="banner",
                 enhanced_code="4.3.2", class_="persistent_transient_failure", **t) == 1
    # The session never reached TLS or EHLO: no such series, rather than made-up zeros.
    assert series(out, "smtpmon_tls_info") == []
    assert series(out, "smtpmon_starttls_offered") == []


def test_rcpt_450():
    result = probe_results.rcpt_450()
    out = metrics_after(result)
    t = {"target": result.target, "module": "mx"}
    assert sample_value(out, "smtpmon_replies_total", stage="rcpt", code="450",
                 class_="transient_negative", category="mail_system", **t) == 1
    assert sample_value(out, "smtpmon_probe_failure_info", stage="rcpt", reason="rcpt_rejected",
                 **t) == 1
    assert sample_value(out, "smtpmon_enhanced_status_codes_total", stage="rcpt",
                 enhanced_code="4.2.0", class_="persistent_transient_failure", **t) == 1


def test_data_554_counts_both_replies_of_the_stage():
    result = probe_results.data_554()
    out = metrics_after(result)
    t = {"target": result.target, "module": "mx"}
    assert sample_value(out, "smtpmon_replies_total", stage="data", code="354",
                 class_="positive_intermediate", category="mail_system", **t) == 1
    assert sample_value(out, "smtpmon_replies_total", stage="data", code="554",
                 class_="permanent_negative", category="mail_system", **t) == 1
    # The gauges describe the reply that decided the stage: the last one.
    assert sample_value(out, "smtpmon_probe_stage_reply_code", stage="data", **t) == 554
    assert sample_value(out, "smtpmon_probe_stage_reply_info", stage="data", code="554",
                 class_="permanent_negative", category="mail_system", enhanced_code="5.7.1",
                 **t) == 1
    assert sample_value(out, "smtpmon_enhanced_status_codes_total", stage="data",
                 enhanced_code="5.7.1", class_="permanent_failure", **t) == 1
    assert sample_value(out, "smtpmon_probe_failures_total", stage="data", reason="data_rejected",
                 **t) == 1


def test_protocol_error_reply_is_code_000():
    result = probe_results.protocol_error()
    out = metrics_after(result)
    t = {"target": result.target, "module": "mx"}
    assert sample_value(out, "smtpmon_replies_total", stage="banner", code="000",
                 class_="protocol_error", category="protocol_error", **t) == 1
    assert sample_value(out, "smtpmon_probe_stage_reply_code", stage="banner", **t) == 0
    assert sample_value(out, "smtpmon_probe_stage_reply_info", stage="banner", code="000",
                 class_="protocol_error", category="protocol_error", enhanced_code="", **t) == 1
    assert sample_value(out, "smtpmon_probe_failure_info", stage="banner", reason="protocol_error",
                 **t) == 1


def test_counters_accumulate_and_gauges_follow_the_last_probe():
    store = ResultStore()
    store.register("mx.example.org:25", "mx")
    store.record(probe_results.banner_421("mx.example.org:25"))
    store.record(probe_results.banner_421("mx.example.org:25"))
    store.record(probe_results.healthy("mx.example.org:25"))
    out = render_metrics(store, ExporterState())
    t = {"target": "mx.example.org:25", "module": "mx"}
    assert sample_value(out, "smtpmon_probes_total", **t) == 3
    assert sample_value(out, "smtpmon_probe_failures_total", stage="banner", reason="banner_rejected",
                 **t) == 2
    assert sample_value(out, "smtpmon_replies_total", stage="banner", code="421",
                 class_="transient_negative", category="connections", **t) == 2
    assert sample_value(out, "smtpmon_replies_total", stage="banner", code="220",
                 class_="positive_completion", category="connections", **t) == 1
    assert sample_value(out, "smtpmon_probe_success", **t) == 1
    assert series(out, "smtpmon_probe_failure_info") == []  # absent after a success


def test_registered_target_starts_at_zero():
    store = ResultStore()
    store.register("new.example.org:25", "mx")
    out = render_metrics(store, ExporterState())
    t = {"target": "new.example.org:25", "module": "mx"}
    assert sample_value(out, "smtpmon_probe_success", **t) == 0
    assert sample_value(out, "smtpmon_probes_total", **t) == 0
    assert sample_value(out, "smtpmon_probe_skipped_total", **t) == 0
    assert series(out, "smtpmon_probe_duration_seconds") == []


def test_skipped_runs_are_counted():
    store = ResultStore()
    store.register("slow.example.org:25", "mx")
    store.record_skip("slow.example.org:25", "mx")
    store.record_skip("slow.example.org:25", "mx")
    out = render_metrics(store, ExporterState())
    assert sample_value(out, "smtpmon_probe_skipped_total", target="slow.example.org:25",
                 module="mx") == 2


def test_removed_target_series_disappear():
    store = ResultStore()
    for result in (probe_results.healthy(), probe_results.banner_421()):
        store.register(result.target, result.module)
        store.record(result)
    store.remove("busy.example.org:25", "mx")
    out = render_metrics(store, ExporterState())
    assert not any(labels.get("target") == "busy.example.org:25" for _, labels, _ in samples(out))
    assert sample_value(out, "smtpmon_probe_success", target="mx.example.org:25", module="mx") == 1


def test_label_values_are_escaped():
    awkward = 'a"b\\c\nd:25'
    store = ResultStore()
    store.register(awkward, 'mod"ule')
    store.record(probe_results.healthy(awkward, 'mod"ule'))
    out = render_metrics(store, ExporterState())
    assert b'target="a\\"b\\\\c\\nd:25",module="mod\\"ule"' in out
    assert sample_value(out, "smtpmon_probe_success", target=awkward, module='mod"ule') == 1


def test_each_family_is_declared_once_with_its_samples_together():
    out = metrics_after(probe_results.healthy(), probe_results.banner_421(),
                        probe_results.data_554(), probe_results.opportunistic_unverified())
    text = out.decode()
    for family in TARGET_FAMILIES + EXPORTER_FAMILIES:
        assert text.count(f"# TYPE {family.name} ") == 1, family.name
    seen_families = []
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            seen_families.append(line.split()[2])
    assert len(seen_families) == len(set(seen_families))
    # prometheus_client's parser starts a new family when a name comes back after another.
    parsed = [family.name for family in text_string_to_metric_families(text)]
    assert len(parsed) == len(set(parsed))


def test_exporter_metrics():
    state = ExporterState()
    state.config_loaded(True, at=1_700_000_123.0)
    state.config_loaded(False)
    state.set_targets(3)
    state.probe_started()
    state.probe_started()
    state.probe_finished()
    for lag in (0.0005, 0.02, 0.02, 3.0, 60.0):
        state.observe_schedule_lag(lag)
    out = render_metrics(ResultStore(), state)
    assert sample_value(out, "smtpmon_build_info", version=__version__,
                 python_version=series(out, "smtpmon_build_info")[0]["python_version"]) == 1
    assert sample_value(out, "smtpmon_config_last_reload_successful") == 0
    # The failed reload keeps the time of the last success.
    assert sample_value(out, "smtpmon_config_last_reload_success_timestamp_seconds") == 1_700_000_123.0
    assert sample_value(out, "smtpmon_targets") == 3
    assert sample_value(out, "smtpmon_probes_in_flight") == 1
    assert sample_value(out, "smtpmon_schedule_lag_seconds_bucket", le="0.001") == 1
    assert sample_value(out, "smtpmon_schedule_lag_seconds_bucket", le="0.05") == 3
    assert sample_value(out, "smtpmon_schedule_lag_seconds_bucket", le="5.0") == 4
    assert sample_value(out, "smtpmon_schedule_lag_seconds_bucket", le="10.0") == 4
    assert sample_value(out, "smtpmon_schedule_lag_seconds_bucket", le="+Inf") == 5
    assert sample_value(out, "smtpmon_schedule_lag_seconds_count") == 5
    assert sample_value(out, "smtpmon_schedule_lag_seconds_sum") == pytest.approx(63.0405)
    names = {name for name, _, _ in samples(out)}
    assert "process_cpu_seconds_total" in names or "process_resident_memory_bytes" in names
    assert "python_info" in names
    assert any(name.startswith("python_gc_") for name in names)


def test_render_probe_is_one_target_without_exporter_metrics():
    result = probe_results.data_554()
    out = render_probe(ResultStore().record_on_demand(result))
    t = {"target": result.target, "module": "mx"}
    assert sample_value(out, "smtpmon_probes_total", **t) == 1
    assert sample_value(out, "smtpmon_probe_success", **t) == 0
    assert sample_value(out, "smtpmon_replies_total", stage="data", code="554",
                 class_="permanent_negative", category="mail_system", **t) == 1
    assert sample_value(out, "smtpmon_replies_total", stage="data", code="354",
                 class_="positive_intermediate", category="mail_system", **t) == 1
    assert sample_value(out, "smtpmon_probe_failures_total", stage="data", reason="data_rejected",
                 **t) == 1
    names = {name for name, _, _ in samples(out)}
    assert "smtpmon_probe_skipped_total" not in names  # daemon mode only
    assert not any(name.startswith(("smtpmon_build", "smtpmon_targets", "process_", "python_"))
                   for name in names)
    # The same families and labels as the daemon's view of the same result.
    daemon = {(n, tuple(sorted(labels.items()))) for n, labels, _ in samples(metrics_after(result))
              if "target" in labels and n != "smtpmon_probe_skipped_total"}
    probe = {(n, tuple(sorted(labels.items()))) for n, labels, _ in samples(out)}
    assert probe == daemon


@pytest.fixture
def promtool() -> str:
    if shutil.which("promtool") is None:
        unavailable("promtool is missing (Debian's prometheus package)")
    return "promtool"


def promtool_problems(promtool: str, exposition: bytes) -> str:
    done = subprocess.run([promtool, "check", "metrics"], input=exposition,
                          capture_output=True, timeout=30)
    return "" if done.returncode == 0 else (done.stdout + done.stderr).decode()


def test_promtool_accepts_metrics(promtool):
    store = ResultStore()
    for result in (probe_results.healthy(), probe_results.banner_421(), probe_results.rcpt_450(),
                   probe_results.data_554(), probe_results.protocol_error()):
        store.register(result.target, result.module)
        store.record(result)
    store.register("never-probed.example.org:25", "mx")
    store.record_skip("never-probed.example.org:25", "mx")
    state = ExporterState()
    state.config_loaded(True)
    state.observe_schedule_lag(0.2)
    assert promtool_problems(promtool, render_metrics(store, state)) == ""


def test_render_probe_counts_every_probe_of_the_target():
    """Counters grow from one /probe to the next, so rate() works as in daemon mode."""
    store = ResultStore(max_entries=10)
    render_probe(store.record_on_demand(probe_results.data_554()))
    render_probe(store.record_on_demand(probe_results.healthy()))  # another target: counted apart
    out = render_probe(store.record_on_demand(probe_results.data_554()))
    t = {"target": probe_results.data_554().target, "module": "mx"}
    assert sample_value(out, "smtpmon_probes_total", **t) == 2
    assert sample_value(out, "smtpmon_replies_total", stage="data", code="554",
                 class_="permanent_negative", category="mail_system", **t) == 2
    assert sample_value(out, "smtpmon_probe_failures_total", stage="data", reason="data_rejected",
                 **t) == 2
    assert {labels["target"] for _, labels, _ in samples(out)} == {t["target"]}


def test_render_probe_store_forgets_the_least_recently_probed_when_full():
    store = ResultStore(max_entries=2)
    a, b, c = (probe_results.healthy(f"{name}.example.org:25", "mx") for name in "abc")
    for result in (a, b, a, c):  # b is now the least recently probed: it makes room for c
        render_probe(store.record_on_demand(result))
    assert sorted(stored_keys(store)) == [(a.target, "mx"), (c.target, "mx")]
    out = render_probe(store.record_on_demand(a))
    assert sample_value(out, "smtpmon_probes_total", target=a.target, module="mx") == 3
    out = render_probe(store.record_on_demand(b))  # back after eviction: counting from the start again
    assert sample_value(out, "smtpmon_probes_total", target=b.target, module="mx") == 1
    assert len(stored_keys(store)) == 2


def test_render_probe_store_is_bounded_in_bytes_and_keeps_no_transcript_or_reply_text():
    """Results with 60 KB replies and their transcripts: the store keeps counters, rendered
    rows and slim results (no transcript, replies cut to a line), and stays within its byte bound however many targets come."""
    big_banner = b"".join(b"220-" + b"x" * 3996 + b"\r\n" for _ in range(14)) + b"220 ok\r\n"
    transcript = tuple(TranscriptLine(0.0, "S", "x" * 4000) for _ in range(15))

    def hostile(index: int):
        result = probe_results.healthy(f"host{index}.example.org:25", "mx")
        stages = (probe_results.stage("banner", big_banner),) + result.stages[3:]
        return dataclasses.replace(result, stages=stages, transcript=transcript, detail="y" * 4000)

    store = ResultStore(max_entries=10_000, max_bytes=1024 * 1024)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for index in range(500):
            out = render_probe(store.record_on_demand(hostile(index)))
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert sample_value(out, "smtpmon_replies_total", target="host499.example.org:25", stage="banner",
                        code="220") == 1
    keys = stored_keys(store)
    assert 10 < len(keys) < 500  # the least recently probed made room
    assert kept < 4 * 1024 * 1024, f"{kept} bytes kept"
    kept_result = store.latest("host499.example.org:25", "mx")  # for the status page, slim
    assert kept_result.transcript == () and len(kept_result.detail) <= 200
    assert all(len("".join(reply.lines)) <= 200 for stage in kept_result.stages for reply in stage.replies)


def test_promtool_accepts_probe(promtool):
    store = ResultStore()
    for result in (probe_results.healthy(), probe_results.protocol_error(),
                   probe_results.healthy()):
        assert promtool_problems(promtool, render_probe(store.record_on_demand(result))) == ""
