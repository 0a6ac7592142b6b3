"""The Grafana dashboard: valid JSON, every panel queries something, template variables for
target and module, and every metric a dashboard query or a rule names is one smtpmon exports
(docs/metrics.md) or a recording rule defines."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_tools import require_tool

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "config" / "grafana" / "smtpmon-dashboard.json"
RULE_FILES = [ROOT / "config" / "prometheus" / name
              for name in ("smtpmon-alerts.yml", "smtpmon-recording.yml")]
METRICS_DOC = ROOT / "docs" / "metrics.md"

# Metrics that come from Prometheus or from prometheus_client rather than from docs/metrics.md.
OTHER_METRICS = {"up"}
OTHER_PREFIXES = ("process_", "python_")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

PROMQL_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
                   "group_right", "offset", "bool", "inf", "nan", "atan2"}


def metric_names(expr: str) -> set[str]:
    """Every metric name a PromQL expression selects (functions and labels are not names)."""
    text = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w:.$])[A-Za-z_:][\w:]*", text):
        is_function = text[match.end():].lstrip().startswith("(")
        if not is_function and match.group() not in PROMQL_KEYWORDS:
            names.add(match.group())
    return names


def documented_metrics() -> set[str]:
    names = set()
    for match in re.finditer(r"^\| `(smtpmon_\w+)` \| (\w+) \|", METRICS_DOC.read_text(), re.M):
        name, kind = match.groups()
        names.add(name)
        if kind == "histogram":
            names.update(name + suffix for suffix in HISTOGRAM_SUFFIXES)
    return names


def rules() -> list[dict]:
    return [rule for path in RULE_FILES
            for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]


def known_metric(name: str) -> bool:
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    return (name in documented_metrics() or name in recorded or name in OTHER_METRICS
            or name.startswith(OTHER_PREFIXES))


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels() -> list[dict]:
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def dashboard_exprs() -> list[str]:
    return [query["expr"] for panel in panels() for query in panel["targets"]]


def variables() -> dict[str, dict]:
    return {variable["name"]: variable for variable in dashboard()["templating"]["list"]}


def test_metric_name_parser_finds_names_and_skips_functions_labels_and_strings():
    expr = ('sum by (class) (rate(smtpmon_replies_total{code="450", stage=~"mail|rcpt"}[5m]))'
            ' / on (target) group_left () a:b:rate5m offset 1d > 1e3 and time() - up')
    assert metric_names(expr) == {"smtpmon_replies_total", "a:b:rate5m", "up"}


def test_documented_metrics_are_read_from_the_metrics_reference():
    names = documented_metrics()
    assert {"smtpmon_probe_success", "smtpmon_replies_total",
            "smtpmon_schedule_lag_seconds_bucket"} <= names
    assert "smtpmon_probe_sucess" not in names


def test_dashboard_is_a_grafana_dashboard_with_a_datasource_variable():
    board = dashboard()
    assert board["schemaVersion"] >= 36
    assert board["uid"] and board["title"]
    assert variables()["datasource"]["type"] == "datasource"
    assert variables()["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in panels()]
    assert len(ids) == len(set(ids)), "panel ids repeat"


def test_every_panel_has_queries_on_the_datasource_variable():
    for panel in panels():
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no queries"
        for query in panel["targets"]:
            assert query["expr"].strip(), f"panel {panel['title']!r} has an empty query"
            assert query["datasource"]["uid"] == "${datasource}", panel["title"]


def test_template_variables_target_and_module_come_from_probe_success():
    target, module = variables()["target"], variables()["module"]
    assert target["definition"] == "label_values(smtpmon_probe_success, target)"
    assert module["definition"] == 'label_values(smtpmon_probe_success{target=~"$target"}, module)'
    for variable in (target, module):
        assert variable["type"] == "query"
        assert variable["query"]["query"] == variable["definition"]
        assert variable["includeAll"] and variable["allValue"] == ".*"


def is_maillog(expr: str) -> bool:
    return "smtpmon_maillog_" in expr


def test_every_query_follows_the_variables_and_ignores_the_job():
    """Daemon and /probe mode have different jobs: a query must not depend on one. Host
    target panels follow $target, mail domain panels $domain. The mail log's series have no
    target: their panels follow the mail log host instead."""
    for expr in dashboard_exprs():
        if is_maillog(expr):
            assert 'instance=~"$maillog_instance"' in expr, expr
        else:
            follows = 'target=~"$target"' in expr or 'domain=~"$domain"' in expr
            assert follows and 'module=~"$module"' in expr, expr
        assert not re.search(r"\bjob\s*(=|!=|=~|!~)", expr), expr


def test_the_domain_variable_comes_from_the_domain_series():
    domain = variables()["domain"]
    assert domain["definition"] == 'label_values(smtpmon_domain_success{module=~"$module"}, domain)'
    assert domain["includeAll"] and domain["allValue"] == ".*" and domain["multi"]


def test_maillog_host_variable_comes_from_the_reader():
    variable = variables()["maillog_instance"]
    assert variable["definition"] == "label_values(smtpmon_maillog_reader_up, instance)"
    assert variable["includeAll"] and variable["allValue"] == ".*"


def test_dashboard_queries_name_only_known_metrics():
    unknown = {name for expr in dashboard_exprs() for name in metric_names(expr)
               if not known_metric(name)}
    assert unknown == set()


def test_rules_name_only_known_metrics():
    unknown = set()
    for rule in rules():
        unknown |= {name for name in metric_names(rule["expr"]) if not known_metric(name)}
        # Annotation templates query metrics too (the enhanced status code).
        for text in rule.get("annotations", {}).values():
            unknown |= {name for name in re.findall(r"\bsmtpmon_\w+", text)
                        if not known_metric(name)}
    assert unknown == set()


def test_dashboard_queries_parse_as_promql(tmp_path):
    """promtool checks every query, with the template variables as Grafana substitutes them."""
    promtool = require_tool("promtool")
    records = [{"record": f"dashboard:query_{index}:check",
                "expr": expr.replace("$target", ".*").replace("$module", ".*")
                            .replace("$domain", ".*").replace("$maillog_instance", ".*")}
               for index, expr in enumerate(dashboard_exprs())]
    rule_file = tmp_path / "dashboard-queries.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    result = subprocess.run([promtool, "check", "rules", str(rule_file)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("title", ["Targets", "Last reply per stage", "Replies by class",
                                   "Replies by class and category", "Share of 4xx and 5xx replies",
                                   "Latency per stage", "Failures by reason", "Domains",
                                   "MX hosts and addresses",
                                   "Mail log: inbound replies by class and category",
                                   "Mail log: inbound replies by stage and code",
                                   "Mail log: outbound replies by class and category",
                                   "Mail log: outbound refusals by stage, code and domain"])
def test_dashboard_has_the_panels_an_operator_expects(title):
    assert title in [panel["title"] for panel in panels()]


@pytest.mark.parametrize("title", ["DANE per MX address", "MTA-STS and TLS-RPT per domain",
                                   "MTA-STS per MX address"])
def test_dashboard_has_the_mail_tls_policy_panels(title):
    assert title in [panel["title"] for panel in panels()]
