"""The Prometheus side of smtpmon: alert and recording rules, their promtool unit tests, the
example scrape configurations, and the runbook for every alert (docs/alerts.md)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_tools import require_tool

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = ROOT / "config" / "prometheus"
ALERT_RULES = PROMETHEUS_DIR / "smtpmon-alerts.yml"
RECORDING_RULES = PROMETHEUS_DIR / "smtpmon-recording.yml"
RULE_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
SCRAPE_CONFIGS = sorted(PROMETHEUS_DIR.glob("prometheus-*.yml"))
ALERTS_DOC = ROOT / "docs" / "alerts.md"


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([require_tool("promtool"), *args], capture_output=True, text=True,
                          timeout=30, cwd=ROOT)


def alert_rules() -> list[dict]:
    groups = yaml.safe_load(ALERT_RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_rule_files_pass_promtool_check():
    result = promtool("check", "rules", str(ALERT_RULES), str(RECORDING_RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAILED" not in result.stdout + result.stderr


@pytest.mark.parametrize("test_file", RULE_TESTS, ids=lambda path: path.name)
def test_promtool_rule_unit_tests_pass(test_file):
    result = promtool("test", "rules", str(test_file))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("config", SCRAPE_CONFIGS, ids=lambda path: path.name)
def test_example_scrape_config_passes_promtool_check(config):
    result = promtool("check", "config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    # The rule files are found and checked with the configuration.
    assert "SUCCESS: 2 rule files found" in result.stdout


def test_every_alert_is_unit_tested_firing_and_silent():
    """Each alert has a promtool case where it fires and one where it must stay silent."""
    fires, silent = set(), set()
    for test_file in RULE_TESTS:
        for group in yaml.safe_load(test_file.read_text())["tests"]:
            for case in group.get("alert_rule_test", []):
                (fires if case.get("exp_alerts") else silent).add(case["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - fires == set(), "alerts never tested firing"
    assert names - silent == set(), "alerts never tested silent"


def test_every_alert_has_severity_summary_and_a_runbook_section():
    doc = ALERTS_DOC.read_text()
    headings = {re.sub(r"[^a-z0-9_-]", "", line[3:].strip().lower())
                for line in doc.splitlines() if line.startswith("## ")}
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        annotations = rule["annotations"]
        # The mail log's alerts are about the host smtpmon runs on: no target, its instance.
        # A mail domain's alerts name the domain.
        if rule["alert"].startswith("SMTPMaillog"):
            about = ("{{ $labels.instance }}",)
        else:
            about = ("{{ $labels.target }}", "{{ $labels.domain }}")
        assert any(label in annotations["summary"] for label in about) or rule["alert"] in (
            "SMTPExporterDown", "SMTPConfigReloadFailed"), rule["alert"]
        assert annotations["runbook"] == f"docs/alerts.md#{rule['alert'].lower()}", rule["alert"]
        assert rule["alert"].lower() in headings, f"docs/alerts.md has no section {rule['alert']}"


def test_sharded_config_gives_every_target_to_exactly_one_replica():
    """Same target list everywhere, modulus = number of shards, each shard number kept once."""
    jobs = [job for job in yaml.safe_load((PROMETHEUS_DIR / "prometheus-sharded.yml").read_text())
            ["scrape_configs"] if job.get("metrics_path") == "/probe"]
    assert len(jobs) >= 2
    target_lists = {str(job["static_configs"]) for job in jobs}
    assert len(target_lists) == 1, "shards see different target lists"
    kept, replicas = [], set()
    for job in jobs:
        steps = job["relabel_configs"]
        hashmod = [step for step in steps if step.get("action") == "hashmod"]
        assert [step["modulus"] for step in hashmod] == [len(jobs)], job["job_name"]
        keep = [step for step in steps if step.get("action") == "keep"
                and step["source_labels"] == [hashmod[0]["target_label"]]]
        kept.append(int(keep[0]["regex"]))
        # Sharding happens on the SMTP address, before __address__ becomes the replica's.
        assert steps.index(hashmod[0]) < steps.index(
            next(step for step in steps if step.get("target_label") == "__address__"))
        replicas.add(next(step["replacement"] for step in steps
                          if step.get("target_label") == "__address__"))
    assert sorted(kept) == list(range(len(jobs)))
    assert len(replicas) == len(jobs), "two shards scrape the same replica"


@pytest.mark.parametrize("config", ["prometheus-probe.yml", "prometheus-sharded.yml"])
def test_probe_jobs_use_the_standard_relabelling(config):
    jobs = [job for job in yaml.safe_load((PROMETHEUS_DIR / config).read_text())["scrape_configs"]
            if job.get("metrics_path") == "/probe"]
    assert jobs
    for job in jobs:
        steps = [(tuple(step.get("source_labels", ())), step.get("target_label"))
                 for step in job["relabel_configs"] if step.get("action", "replace") == "replace"]
        assert steps == [(("__address__",), "__param_target"),
                         (("__param_target",), "instance"),
                         ((), "__address__")], job["job_name"]
        assert job["job_name"].startswith("smtpmon"), "SMTPExporterDown matches job=~smtpmon.*"
