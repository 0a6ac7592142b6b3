"""End to end with a real Prometheus: the example scrape configs, the rule files and the Grafana
dashboard's queries, against real smtpmon daemons probing real SMTP servers on loopback.

Three set-ups, each from an example in config/prometheus/: daemon mode (prometheus-daemon.yml),
Prometheus driving /probe (prometheus-probe.yml), and two replicas sharded with hashmod
(prometheus-sharded.yml). The test configs are generated FROM those files: only the addresses
(SMTP targets, smtpmon's listen address) and the intervals change, so the examples' relabelling
is what runs. The alert rules are loaded with their `for:` shortened to seconds; expressions and
annotations are the shipped ones. Everything is asserted through Prometheus' HTTP API.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from daemon_process import RunningDaemon, free_port, start_daemon, stop_process
from mail_domains import MailWorld, fqdn, mail_world
from prometheus_tools import require_tool
from smtpservers import (
    LOOPBACK,
    QUIT_OK,
    AiosmtpdServer,
    Close,
    ScriptedHandler,
    ScriptedServer,
    Send,
)

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = ROOT / "config" / "prometheus"
DASHBOARD = ROOT / "config" / "grafana" / "smtpmon-dashboard.json"
ALERT_RULES = "smtpmon-alerts.yml"
RECORDING_RULES = "smtpmon-recording.yml"

INTERVAL = "1s"  # scrape, rule evaluation and daemon-mode probe interval
ALERT_FOR = "2s"  # instead of the rules' 5-15 minutes
WAIT_SECONDS = 25.0  # for alerts to fire and every panel to have data, per set-up
RECIPIENT = "postmaster@test.example"


# -- SMTP servers ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Servers:
    """host:port of each loopback SMTP server, by the situation it plays."""

    healthy: str  # STARTTLS with a trusted certificate, 250 all the way to DATA
    busy: str  # 421 banner
    greylisting: str  # 450 at RCPT
    no_service: str  # 554 banner
    spam_filter: str  # 554 after DATA, over TLS with a certificate that does not verify
    submission: str  # healthy, probed with the "submission" module (the probe example's 2nd group)

    @property
    def mx(self) -> list[str]:
        """The targets probed with the "mx" module."""
        return [self.healthy, self.busy, self.greylisting, self.no_service, self.spam_filter]


# (alert, server) → (stage, code_meaning, enhanced_status_code): the only firing instances of
# the reply-code alerts; everything the servers below answer is chosen to produce exactly these.
EXPECTED_ALERTS: dict[tuple[str, str], tuple[str, str, str]] = {
    ("SMTPService421", "busy"):
        ("banner", "service not available, closing transmission channel", "4.3.2"),
    ("SMTPMailboxUnavailable450", "greylisting"):
        ("rcpt", "requested mail action not taken: mailbox unavailable", "4.2.0"),
    ("SMTPTransactionFailed554", "no_service"): ("banner", "no SMTP service here", "5.7.1"),
    ("SMTPTransactionFailed554", "spam_filter"): ("data", "transaction failed", "5.6.0"),
}
REPLY_CODE_ALERTS = {alert for alert, _ in EXPECTED_ALERTS}


@pytest.fixture(scope="module")
def servers(tls_contexts) -> Servers:
    trusted = tls_contexts["trusted"]
    with contextlib.ExitStack() as stack:
        def aiosmtpd(handler: ScriptedHandler | None = None, context=trusted) -> str:
            server = AiosmtpdServer(handler, starttls_context=context).start()
            stack.callback(server.stop)
            return server.target

        def scripted(script: list) -> str:
            server = ScriptedServer(script).start()
            stack.callback(server.stop)
            return server.target

        yield Servers(
            healthy=aiosmtpd(),
            # As real servers do: 421 closes the channel; after a 554 banner, QUIT gets a 221.
            busy=scripted([Send(b"421 4.3.2 mx.test.example busy, try later\r\n"), Close()]),
            greylisting=aiosmtpd(ScriptedHandler(rcpt_replies={
                RECIPIENT: f"450 4.2.0 <{RECIPIENT}>: Recipient address rejected: Greylisted"})),
            no_service=scripted([Send(b"554 5.7.1 mx.test.example no SMTP service here\r\n"),
                                 QUIT_OK]),
            # Opportunistic TLS goes on over its unknown CA's certificate (a fact for the
            # dashboard's "Certificate not verified" column), up to the 554 after DATA.
            spam_filter=aiosmtpd(ScriptedHandler(data_reply="554 5.6.0 Message content rejected"),
                                 tls_contexts["untrusted"]),
            submission=aiosmtpd(),
        )


# A real Postfix's log (tests/postfix_traffic.py), which every daemon here reads from its start,
# so that the mail log's panels and variable have data in every set-up.
SAMPLE_MAIL_LOG = Path(__file__).resolve().parent / "data" / "postfix-mail.log"


def daemon_config(ca_file: str, targets: list[str], mail_log: Path,
                  world: MailWorld | None = None) -> str:
    """smtpmon's configuration: the "mx" module reaches DATA over STARTTLS, opportunistic as
    sending MTAs are (the healthy server's certificate verifies); /probe may probe any loopback
    port (the examples' probe_allow advice); `mail_log` is read from its start (a copy of
    SAMPLE_MAIL_LOG). With a `world` (tests/mail_domains.py), two mail domains too: one
    healthy, one whose first MX fails."""
    shutil.copyfile(SAMPLE_MAIL_LOG, mail_log)
    config = {
        "global": {"interval": INTERVAL, "timeout": "800ms"},
        "probe_allow": [f"{LOOPBACK}:*"],
        "modules": {
            "mx": {"tls": "opportunistic", "tls_ca_file": ca_file, "mail_from": "monitor@test.example",
                   "rcpt_to": [RECIPIENT], "data": True},
            "submission": {"tls": "starttls", "tls_ca_file": ca_file},
        },
        "targets": [{"address": target, "module": "mx"} for target in targets],
        "maillog": {"path": str(mail_log), "from_start": True},
    }
    if world is not None:
        config["domains"] = [{"domain": fqdn(name), "module": "mx", "port": world.port}
                             for name in ("good", "half")]
        config["dns"] = {"nameservers": [world.nameserver]}
    return yaml.safe_dump(config)


# -- Prometheus --------------------------------------------------------------------------------
def alert_rules_with_short_for() -> str:
    """The shipped alert rules with every `for:` set to ALERT_FOR, and nothing else changed."""
    original = (PROMETHEUS_DIR / ALERT_RULES).read_text()
    shortened = re.sub(r"(?m)^(\s+)for: \S+$", rf"\g<1>for: {ALERT_FOR}", original)

    def without_for(text: str) -> list:
        groups = yaml.safe_load(text)["groups"]
        for group in groups:
            for rule in group["rules"]:
                rule.pop("for", None)
        return groups

    assert without_for(shortened) == without_for(original)
    assert f"for: {ALERT_FOR}" in shortened
    return shortened


def prometheus_config(example: str, exporters: dict[str, str],
                      smtp_groups: list[list[str]]) -> dict:
    """The example scrape config with loopback addresses: `exporters` maps the example's smtmpon
    addresses to the running daemons, `smtp_groups` replaces the SMTP targets of each
    static_configs group of the /probe jobs. Relabelling is kept as it is."""
    config = yaml.safe_load((PROMETHEUS_DIR / example).read_text())
    assert config["rule_files"] == [ALERT_RULES, RECORDING_RULES]
    config["global"] = {"scrape_interval": INTERVAL, "evaluation_interval": INTERVAL}
    # No Alertmanager here (and nothing may leave loopback): /api/v1/alerts shows what fires.
    del config["alerting"]
    for job in config["scrape_configs"]:
        if "scrape_timeout" in job:
            job["scrape_timeout"] = INTERVAL  # may not exceed the scrape interval
        groups = job["static_configs"]
        if job.get("metrics_path") == "/probe":
            assert len(groups) == len(smtp_groups), f"{example}: {job['job_name']} changed"
            for group, targets in zip(groups, smtp_groups):
                group["targets"] = targets
        else:
            for group in groups:
                group["targets"] = [exporters[target] for target in group["targets"]]
        for step in job.get("relabel_configs", []):
            if step.get("target_label") == "__address__":
                step["replacement"] = exporters[step["replacement"]]
    return config


class RunningPrometheus:
    def __init__(self, directory: Path, config: dict):
        directory.mkdir()
        (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
        (directory / ALERT_RULES).write_text(alert_rules_with_short_for())
        shutil.copy(PROMETHEUS_DIR / RECORDING_RULES, directory / RECORDING_RULES)
        self.port = free_port()
        self.log_path = directory / "prometheus.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [require_tool("prometheus"), f"--config.file={directory / 'prometheus.yml'}",
                 f"--storage.tsdb.path={directory / 'data'}",
                 f"--web.listen-address={LOOPBACK}:{self.port}"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
            )

    def get(self, path: str, **params: str) -> tuple[int, bytes]:
        url = f"http://{LOOPBACK}:{self.port}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def api(self, path: str, **params: str) -> Any:
        status, body = self.get(f"/api/v1/{path}", **params)
        answer = json.loads(body)
        assert status == 200 and answer["status"] == "success", f"{path} {params}: {answer}"
        return answer["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)["result"]

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"prometheus exited:\n{self.log()}"
            with contextlib.suppress(OSError):
                if self.get("/-/ready")[0] == 200:
                    return
            time.sleep(0.1)
        raise AssertionError(f"prometheus not ready after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        stop_process(self.process)


@pytest.fixture
def processes(tmp_path):
    """start_daemon(name, config_text) and start_prometheus(name, config): every process is
    stopped at teardown, the last started first."""
    with contextlib.ExitStack() as stack:
        def daemon(name: str, config_text: str) -> RunningDaemon:
            running = start_daemon(tmp_path, config_text, name=name)
            stack.callback(running.stop)
            return running

        def prometheus(name: str, config: dict) -> RunningPrometheus:
            running = RunningPrometheus(tmp_path / name, config)
            stack.callback(running.stop)
            running.wait_ready()
            return running

        yield daemon, prometheus


def address(daemon: RunningDaemon) -> str:
    return f"{LOOPBACK}:{daemon.port}"


# -- what must hold -----------------------------------------------------------------------------
def eventually(prometheus: RunningPrometheus, problems: Callable[[], list[str]],
               timeout: float = WAIT_SECONDS) -> None:
    """Poll until `problems()` is empty; fail with the last problems if it never is."""
    deadline = time.monotonic() + timeout
    while True:
        found = problems()
        if not found:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"after {timeout} s:\n  " + "\n  ".join(found)
                        + f"\n--- prometheus log ---\n{prometheus.log()}")
        time.sleep(0.25)


def reply_code_alert_problems(prometheus: RunningPrometheus, servers: Servers) -> list[str]:
    """What differs between the firing reply-code alerts and EXPECTED_ALERTS."""
    role_of = {getattr(servers, field.name): field.name for field in dataclasses.fields(servers)}
    firing = {}
    for alert in prometheus.api("alerts")["alerts"]:
        labels = alert["labels"]
        if labels["alertname"] in REPLY_CODE_ALERTS and alert["state"] == "firing":
            key = (labels["alertname"], role_of.get(labels.get("target"), labels.get("target")))
            firing[key] = alert
    problems = [f"{alert} for {role} is not firing"
                for alert, role in EXPECTED_ALERTS.keys() - firing.keys()]
    problems += [f"{alert} fires for {role}"
                 for alert, role in firing.keys() - EXPECTED_ALERTS.keys()]
    for key in EXPECTED_ALERTS.keys() & firing.keys():
        stage, meaning, enhanced = EXPECTED_ALERTS[key]
        labels, annotations = firing[key]["labels"], firing[key]["annotations"]
        got = (labels["stage"], labels["severity"], annotations["code_meaning"],
               annotations["enhanced_status_code"])
        if got != (stage, "critical", meaning, enhanced):
            problems.append(f"{key}: stage, severity, code_meaning, enhanced_status_code = {got}")
        if (f"at stage {stage}" not in annotations["summary"]
                or labels["target"] not in annotations["description"]):
            problems.append(f"{key}: summary or description lacks target or stage: {annotations}")
    return problems


# The mail TLS policy's series exist only for domains whose DANE or MTA-STS is checked (a
# signed zone, a validating resolver, a policy host), which these set-ups do not have.
MAIL_TLS_POLICY_FAMILIES = r"smtpmon_domain_(dane|tlsa|mta_sts|tlsrpt)_"


def dashboard_queries(domains: bool = False) -> list[tuple[str, str]]:
    """(panel title and refId, PromQL) of every panel, with the template variables filled in
    the way Grafana does for "All" (.*) and its interval macros given fixed values. The mail
    domain panels (those following $domain) only with `domains`: only then are there any."""
    def panels(items: list[dict]):
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    macros = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}
    queries = []
    for panel in panels(json.loads(DASHBOARD.read_text())["panels"]):
        for target in panel.get("targets", []):
            expr = target["expr"]
            if '$domain' in expr and not domains:
                continue
            if re.search(MAIL_TLS_POLICY_FAMILIES, expr):
                continue  # only where DANE / MTA-STS are checked: tests/test_policy_end_to_end.py
            for macro, value in macros.items():
                expr = expr.replace(macro, value)
            expr = re.sub(r"\$\{?\w+\}?", ".*", expr)
            queries.append((f"{panel['title']} [{target['refId']}]", expr))
    assert queries
    return queries


def dashboard_problems(prometheus: RunningPrometheus, domains: bool = False) -> list[str]:
    return [f"panel {title}: no data for {expr}" for title, expr in dashboard_queries(domains)
            if not prometheus.query(expr)]


def template_variable_problems(prometheus: RunningPrometheus,
                               expected: dict[str, set[str]]) -> list[str]:
    """Each `label_values(selector, label)` variable offers at least the expected values."""
    problems = []
    for variable in json.loads(DASHBOARD.read_text())["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]["query"]
        selector, label = re.fullmatch(r"label_values\((.+), (\w+)\)", query).groups()
        match = re.sub(r"\$\w+", ".*", selector)
        offered = set(prometheus.api(f"label/{label}/values", **{"match[]": match}))
        wanted = expected.get(variable["name"])
        if wanted is None:  # the domain variable, where no domain is probed
            continue
        if not wanted <= offered:
            problems.append(f"variable {variable['name']} offers {sorted(offered)}, "
                            f"not all of {sorted(wanted)}")
    return problems


def assert_alerts_and_dashboard(prometheus: RunningPrometheus, servers: Servers,
                                healthy: list[str], modules: set[str],
                                maillog_instances: set[str],
                                domains: set[str] | None = None) -> None:
    """421/450/554 alerts fire for the right targets and stages and only there; every panel
    and variable has data; the healthy targets have no reply-code alert, not even pending, and
    no firing alert at all."""
    variables = {"target": set(servers.mx), "module": modules,
                 "maillog_instance": maillog_instances}
    if domains:
        variables["domain"] = domains
    eventually(prometheus, lambda: reply_code_alert_problems(prometheus, servers)
               + dashboard_problems(prometheus, domains=bool(domains))
               + template_variable_problems(prometheus, variables))
    for alert in prometheus.api("alerts")["alerts"]:
        if alert["labels"].get("target") in healthy:
            assert alert["state"] != "firing", alert
            assert alert["labels"]["alertname"] not in REPLY_CODE_ALERTS, alert
    up = prometheus.query("up")
    assert up and all(sample["value"][1] == "1" for sample in up), up


# -- the three set-ups ---------------------------------------------------------------------------
def test_daemon_mode(servers, ca, ca_file, processes, tmp_path):
    start_daemon, start_prometheus = processes
    with mail_world(ca, ca_file) as world:
        smtpmon = start_daemon("smtpmon", daemon_config(ca_file, servers.mx, tmp_path / "mail.log",
                                                        world))
        prometheus = start_prometheus("prometheus", prometheus_config(
            "prometheus-daemon.yml", {"localhost:9725": address(smtpmon)}, []))
        assert_alerts_and_dashboard(prometheus, servers, [servers.healthy], {"mx"},
                                    {address(smtpmon)}, domains={fqdn("good"), fqdn("half")})

        def domain_alert_problems() -> list[str]:
            """The first MX of `half` refuses: a warning for that address, nothing that
            pages for either domain. (The mail log's alerts carry a `domain` label of their
            own, the recipient domain: not these.)"""
            firing = {(a["labels"]["alertname"], a["labels"].get("domain"), a["labels"].get("address"),
                       a["labels"]["severity"])
                      for a in prometheus.api("alerts")["alerts"]
                      if a["state"] == "firing" and a["labels"].get("domain")
                      and a["labels"]["alertname"].startswith("SMTPDomain")}
            wanted = {("SMTPDomainMXAddressDown", fqdn("half"), "127.0.57.3", "warning")}
            return [] if firing == wanted else [f"domain alerts firing: {sorted(firing)}"]

        eventually(prometheus, domain_alert_problems)


def test_probe_mode(servers, ca_file, processes, tmp_path):
    start_daemon, start_prometheus = processes
    # probes only on request
    smtpmon = start_daemon("smtpmon", daemon_config(ca_file, [], tmp_path / "mail.log"))
    prometheus = start_prometheus("prometheus", prometheus_config(
        "prometheus-probe.yml", {"localhost:9725": address(smtpmon)},
        [servers.mx, [servers.submission]]))
    assert_alerts_and_dashboard(prometheus, servers, [servers.healthy, servers.submission],
                                {"mx", "submission"}, {address(smtpmon)})
    # The example's __param_module label picks the module; the exporter job keeps only
    # smtpmon's own health, so every target is counted once.
    probes = {(s["metric"]["target"], s["metric"]["module"], s["metric"]["job"])
              for s in prometheus.query("smtpmon_probes_total")}
    assert probes == {(target, "mx", "smtpmon-probe") for target in servers.mx} | {
        (servers.submission, "submission", "smtpmon-probe")}
    # /probe counters grow from scrape to scrape, so rate() works in this mode too.
    rates = prometheus.query(f'rate(smtpmon_probes_total{{target="{servers.healthy}"}}[1m]) > 0')
    assert rates, "smtpmon_probes_total does not grow in /probe mode"
    assert prometheus.query('smtpmon_build_info{job="smtpmon-exporter"}')


def hashmod_shard(address: str, modulus: int) -> int:
    """Prometheus' `hashmod` of one source label: the low 64 bits of its MD5, modulo."""
    return int.from_bytes(hashlib.md5(address.encode()).digest()[8:], "big") % modulus


def test_two_replicas_sharded_with_hashmod(servers, ca_file, tls_contexts, smtp_server,
                                           processes, tmp_path):
    start_daemon, start_prometheus = processes
    targets = list(servers.mx)
    # Both shards must get work: each extra healthy server lands on a shard by its random port.
    while len({hashmod_shard(target, 2) for target in targets}) < 2:
        targets.append(smtp_server(starttls_context=tls_contexts["trusted"]).target)
    replicas = [start_daemon(f"smtpmon{shard}",
                             daemon_config(ca_file, [], tmp_path / f"mail{shard}.log"))
                for shard in (0, 1)]
    prometheus = start_prometheus("prometheus", prometheus_config(
        "prometheus-sharded.yml",
        {"localhost:9725": address(replicas[0]), "localhost:9726": address(replicas[1])},
        [targets]))
    assert_alerts_and_dashboard(prometheus, servers, [servers.healthy, *targets[5:]], {"mx"},
                                {address(replica) for replica in replicas})

    # Through Prometheus: each target under exactly one shard job, the one hashmod picks.
    expected = sorted((target, f"smtpmon-shard-{hashmod_shard(target, 2)}") for target in targets)

    def shard_problems() -> list[str]:
        found = sorted((sample["metric"]["target"], sample["metric"]["job"])
                       for sample in prometheus.query("smtpmon_probes_total"))
        return [] if found == expected else [f"(target, job) {found}, want {expected}"]

    eventually(prometheus, shard_problems)
    # At the replicas: each one was asked to probe its own shard's targets, and no other.
    for shard, replica in enumerate(replicas):
        asked = set(re.findall(r'msg="probe via /probe" target=(\S+)', replica.log()))
        assert asked == {target for target, job in expected if job == f"smtpmon-shard-{shard}"}
