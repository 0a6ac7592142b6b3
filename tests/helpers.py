"""Helpers shared by the tests: reading a sample out of an exposition, running the probe engine
as smtpmon's callers run it, rendering a store's whole /metrics page, and the rule for a test
whose system tool is missing.

Test-only: nothing in smtpmon/ uses these, and they use only smtpmon's public functions.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest
from prometheus_client.parser import text_string_to_metric_families

from smtpmon.config.addresses import parse_address
from smtpmon.exposition.metrics import metrics_chunks
from smtpmon.smtp.module import Module
from smtpmon.smtp.results import ProbeResult
from smtpmon.smtp.session import run_probe


def samples(exposition: str | bytes) -> list[tuple[str, dict[str, str], float]]:
    """Every sample as (name, labels, value), parsed as Prometheus parses the text format."""
    text = exposition.decode() if isinstance(exposition, bytes) else exposition
    return [(sample.name, sample.labels, sample.value)
            for family in text_string_to_metric_families(text) for sample in family.samples]


def sample_value(exposition: str | bytes, name: str, **labels: str) -> float | None:
    """The value of the one sample called `name` whose labels include `labels` (write `class_`
    for the label `class`); None when there is none. More than one is an error: the test must
    say which one it means."""
    wanted = {key.rstrip("_"): value for key, value in labels.items()}
    found = [(sample_labels, value) for sample_name, sample_labels, value in samples(exposition)
             if sample_name == name and wanted.items() <= sample_labels.items()]
    assert len(found) <= 1, f"{name}{wanted} matches {len(found)} samples: {found}"
    return found[0][1] if found else None


def run_probe_at(target: str, module: Module, **options) -> ProbeResult:
    """run_probe as smtpmon's callers run it: "host:port" parsed once by the one grammar
    (smtpmon.config.addresses), the engine given the parts.

    A host name the grammar refuses is handed over as it is, split at the last colon: the
    engine's own resolve stage is tested with names that fail before any DNS query is sent
    (a label of 64 characters)."""
    try:
        host, port = parse_address(target)
    except ValueError:
        host, _, port_text = target.rpartition(":")
        port = int(port_text)
    return run_probe(target, host, port, module, **options)


def render_metrics(store, state) -> bytes:
    """The whole /metrics page of `store` and `state` as one bytes object."""
    return b"".join(metrics_chunks(store.rows(), state))


def stored_keys(store) -> list[tuple[str, str]]:
    """The (target, module) of every entry of a ResultStore, in its order."""
    return [(entry.target, entry.module) for entry in store.snapshot(counts=False)]


def unavailable(reason: str) -> NoReturn:
    """A test needs something this machine lacks: skipped here with the reason, failed under
    CI=true, where .ci/run installs everything the tests need."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)
