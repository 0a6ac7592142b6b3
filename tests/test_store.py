"""The result store: latest result and counters per (target, module), shared by threads."""

from __future__ import annotations

import threading

import probe_results
from helpers import render_metrics, stored_keys
from prometheus_client.parser import text_string_to_metric_families

from smtpmon.exposition.state import ExporterState
from smtpmon.exposition.store import ResultStore

MX = ("mx.example.org:25", "mx")


def test_register_creates_an_empty_entry_once():
    store = ResultStore()
    store.register(*MX)
    store.register(*MX)
    assert stored_keys(store) == [MX]
    assert store.latest(*MX) is None
    (entry,) = store.snapshot()
    assert entry.counts.probes == 0
    assert entry.skipped == 0
    assert entry.latest is None and entry.tls is None


def test_register_again_keeps_counters():
    """A reload registers unchanged targets again: their counters must survive."""
    store = ResultStore()
    store.register(*MX)
    store.record(probe_results.banner_421(*MX))
    store.register(*MX)
    (entry,) = store.snapshot()
    assert entry.counts.probes == 1
    assert store.latest(*MX) is not None


def test_record_counts_every_reply_of_every_stage():
    store = ResultStore()
    store.register(*MX)
    result = probe_results.data_554(*MX)
    assert store.record(result) is True
    assert store.latest(*MX) is result
    (entry,) = store.snapshot()
    assert entry.counts.probes == 1
    assert dict(entry.counts.failures) == {("data", "data_rejected"): 1}
    assert dict(entry.counts.replies) == {
        ("banner", "220", "positive_completion", "connections"): 1,
        ("ehlo", "250", "positive_completion", "mail_system"): 1,
        ("starttls", "220", "positive_completion", "connections"): 1,
        ("ehlo_tls", "250", "positive_completion", "mail_system"): 1,
        ("mail", "250", "positive_completion", "mail_system"): 1,
        ("rcpt", "250", "positive_completion", "mail_system"): 1,
        ("data", "354", "positive_intermediate", "mail_system"): 1,
        ("data", "554", "permanent_negative", "mail_system"): 1,
    }
    assert dict(entry.counts.enhanced) == {
        ("starttls", "2.0.0", "success"): 1,
        ("mail", "2.1.0", "success"): 1,
        ("rcpt", "2.1.5", "success"): 1,
        ("data", "5.7.1", "permanent_failure"): 1,
    }


def test_counters_accumulate_across_records():
    store = ResultStore()
    store.register(*MX)
    store.record(probe_results.rcpt_450(*MX))
    store.record(probe_results.rcpt_450(*MX))
    store.record(probe_results.protocol_error(*MX))
    (entry,) = store.snapshot()
    assert entry.counts.probes == 3
    assert entry.counts.failures == {("rcpt", "rcpt_rejected"): 2,
                                     ("banner", "protocol_error"): 1}
    assert entry.counts.replies[("rcpt", "450", "transient_negative", "mail_system")] == 2
    assert entry.counts.replies[("banner", "000", "protocol_error", "protocol_error")] == 1
    assert entry.counts.enhanced[("rcpt", "4.2.0", "persistent_transient_failure")] == 2


def test_tls_state_is_kept_from_the_last_probe_that_reached_tls():
    store = ResultStore()
    store.register(*MX)
    store.record(probe_results.healthy(*MX))
    store.record(probe_results.banner_421(*MX))  # never reached TLS
    (entry,) = store.snapshot()
    assert entry.latest.tls is None
    assert entry.tls is not None and entry.tls.not_after == probe_results.NOT_AFTER


def test_results_of_unregistered_targets_are_dropped():
    """A probe that finishes after a reload removed its target must not bring it back."""
    store = ResultStore()
    store.register(*MX)
    store.remove(*MX)
    assert store.record(probe_results.healthy(*MX)) is False
    assert store.record_skip(*MX) is False
    assert stored_keys(store) == []
    assert store.latest(*MX) is None
    assert store.rows() == []


def test_remove_drops_the_entry_and_only_that_one():
    store = ResultStore()
    for target in ("a.example.org:25", "b.example.org:25"):
        store.register(target, "mx")
        store.record(probe_results.healthy(target))
    store.remove("a.example.org:25", "mx")
    store.remove("a.example.org:25", "mx")  # removing twice is harmless
    assert stored_keys(store) == [("b.example.org:25", "mx")]
    assert store.latest("a.example.org:25", "mx") is None
    assert b"a.example.org" not in render_metrics(store, ExporterState())


def test_every_scrape_shows_every_probe_and_skip_recorded_before_it():
    """Rows are rendered by the worker or by the scrape, depending on timing: either way a
    scrape shows the state as of its start."""
    store = ResultStore()
    store.register(*MX)

    def page() -> str:
        return render_metrics(store, ExporterState()).decode()

    for probes in range(1, 4):  # a probe between two scrapes: rendered at once
        store.record(probe_results.banner_421(*MX))
        assert f'smtpmon_probes_total{{target="{MX[0]}",module="mx"}} {probes}.0' in page()
    for _ in range(3):  # several between two scrapes: the later ones rendered by the scrape
        store.record(probe_results.healthy(*MX))
        store.record_skip(*MX)
    text = page()
    assert f'smtpmon_probes_total{{target="{MX[0]}",module="mx"}} 6.0' in text
    assert f'smtpmon_probe_skipped_total{{target="{MX[0]}",module="mx"}} 3.0' in text
    assert f'smtpmon_probe_success{{target="{MX[0]}",module="mx"}} 1.0' in text


def test_record_skip():
    store = ResultStore()
    store.register(*MX)
    assert store.record_skip(*MX) is True
    store.record_skip(*MX)
    (entry,) = store.snapshot()
    assert entry.skipped == 2
    assert entry.counts.probes == 0


def test_snapshot_is_a_copy():
    store = ResultStore()
    store.register(*MX)
    store.record(probe_results.banner_421(*MX))
    (before,) = store.snapshot()
    store.record(probe_results.banner_421(*MX))
    store.record_skip(*MX)
    assert before.counts.probes == 1
    assert before.counts.failures == {("banner", "banner_rejected"): 1}
    assert before.skipped == 0


def test_snapshot_without_counts_has_the_rest():
    """The landing page's snapshot: no counters (copying them holds the lock), all it shows."""
    store = ResultStore()
    store.register(*MX)
    store.record(probe_results.banner_421(*MX))
    store.record_skip(*MX)
    (full,) = store.snapshot()
    (light,) = store.snapshot(counts=False)
    assert light.counts is None and full.counts.probes == 1
    assert (light.target, light.module, light.latest, light.skipped, light.tls) == (
        full.target, full.module, full.latest, full.skipped, full.tls)


def test_concurrent_records_and_renders():
    """Workers record while HTTP threads render: no count is lost, every page parses."""
    store = ResultStore()
    targets = [f"t{index}.example.org:25" for index in range(8)]
    for target in targets:
        store.register(target, "mx")
    rounds = 100
    errors: list[BaseException] = []
    stop = threading.Event()

    def worker(target: str) -> None:
        try:
            for index in range(rounds):
                if index % 2:
                    store.record(probe_results.banner_421(target))
                else:
                    store.record(probe_results.healthy(target))
                store.record_skip(target, "mx")
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)

    def scraper() -> None:
        try:
            while not stop.is_set():
                page = render_metrics(store, ExporterState()).decode()
                names = [family.name for family in text_string_to_metric_families(page)]
                assert len(names) == len(set(names))
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    scrapers = [threading.Thread(target=scraper) for _ in range(2)]
    workers = [threading.Thread(target=worker, args=(target,)) for target in targets]
    for thread in scrapers + workers:
        thread.start()
    for thread in workers:
        thread.join(timeout=30)
    stop.set()
    for thread in scrapers:
        thread.join(timeout=30)
    assert errors == []
    for entry in store.snapshot():
        assert entry.counts.probes == rounds
        assert entry.skipped == rounds
        assert entry.counts.failures == {("banner", "banner_rejected"): rounds // 2}
        assert entry.counts.replies[("banner", "220", "positive_completion",
                                     "connections")] == rounds // 2
