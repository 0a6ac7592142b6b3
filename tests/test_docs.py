"""The reference pages cannot drift from the code.

- docs/metrics.md lists exactly the families smtpmon/exposition defines, with their types, and the
  label set of each is the one a real `/metrics` and `/probe` page shows after real probes;
- docs/reply-codes.md is what tools/gen_reply_codes_doc.py renders from smtpmon.smtp.replycodes, and
  carries every code of the project's reference table with its class and category;
- every relative link in README.md and docs/*.md leads to a file (and heading) that exists, and
  docs/index.md links every page;
- the configuration and scrape examples of docs/probe-mode.md load (smtpmon, promtool);
- `smtpmon --help` and each subcommand's help show an example and document every flag.

(The configuration reference is kept in step by tests/test_config.py; the README's tour, every
command and the output it shows, by tests/test_readme.py.)
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from helpers import render_metrics, run_probe_at
from markdown_pages import anchors, broken_links, relative_links, without_code_blocks
from prometheus_client.parser import text_string_to_metric_families
from prometheus_tools import require_tool
from smtpservers import SERVER_NAME, AiosmtpdServer, ScriptedHandler

from smtpmon.cli import SUBCOMMANDS, build_parser, main
from smtpmon.config.load import parse_config
from smtpmon.exposition.metrics import (
    TARGET_FAMILIES,
    render_probe,
)
from smtpmon.exposition.state import EXPORTER_FAMILIES, ExporterState
from smtpmon.exposition.store import ResultStore
from smtpmon.smtp.module import Module

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
METRICS_DOC = DOCS / "metrics.md"
REPLY_CODES_DOC = DOCS / "reply-codes.md"
PROBE_MODE_DOC = DOCS / "probe-mode.md"
REFERENCE_TABLE = Path(__file__).resolve().parent / "data" / "reply-codes.md"
# prometheus_client's own families, documented as one `process_*`, `python_*` row.
RUNTIME_PREFIXES = ("process_", "python_")


# -- reading markdown ------------------------------------------------------------------------------
def tables_by_heading(text: str) -> dict[str, list[dict[str, str]]]:
    """Each heading's first table, as rows of {column header: cell}; backticks kept."""
    tables: dict[str, list[dict[str, str]]] = {}
    heading, header, rows = None, None, None
    for line in without_code_blocks(text).splitlines():
        if line.startswith("#"):
            heading, header, rows = line.lstrip("#").strip(), None, None
            continue
        if not line.startswith("|"):
            header = None
            continue
        cells = [cell.strip().replace(r"\|", "|") for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if header is None:
            header, rows = cells, []
            if heading is not None and heading not in tables:
                tables[heading] = rows
        elif not all(set(cell) <= {"-", ":"} for cell in cells):
            rows.append(dict(zip(header, cells)))
    return tables


def backticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


# -- the metrics reference -------------------------------------------------------------------------
@dataclass(frozen=True)
class Documented:
    type: str
    labels: frozenset[str]


def documented_families() -> tuple[dict[str, Documented], dict[str, Documented]]:
    """(per-target families, exporter families) as docs/metrics.md lists them, in page order."""
    tables = tables_by_heading(METRICS_DOC.read_text(encoding="utf-8"))
    per_target = {
        backticked(row["metric"])[0]: Documented(
            row["type"], frozenset({"target", "module", *backticked(row["extra labels"])})
        )
        for row in tables["Per target"]
    }
    exporter = {
        backticked(row["metric"])[0]: Documented(row["type"], frozenset(backticked(row["labels"])))
        for row in tables["The exporter itself"]
        if "*" not in row["metric"]
    }
    return per_target, exporter


def test_the_page_parser_reads_the_metrics_tables():
    per_target, exporter = documented_families()
    assert per_target["smtpmon_replies_total"] == Documented(
        "counter", frozenset({"target", "module", "stage", "code", "class", "category"})
    )
    assert exporter["smtpmon_build_info"] == Documented(
        "gauge", frozenset({"version", "revision", "python_version", "openssl_version"}))


def test_metrics_reference_lists_exactly_the_collector_families_in_order():
    per_target, exporter = documented_families()
    assert [(name, doc.type) for name, doc in per_target.items()] == [
        (family.name, family.type) for family in TARGET_FAMILIES
    ]
    assert [(name, doc.type) for name, doc in exporter.items()] == [
        (family.name, family.type) for family in EXPORTER_FAMILIES
    ]


def exported_families(page: bytes) -> dict[str, Documented]:
    """Family name (as written in `# TYPE`) -> type and the label names of its samples."""
    families = {}
    for family in text_string_to_metric_families(page.decode("utf-8")):
        # The parser drops a counter's `_total` from the family name; the samples keep it.
        name = f"{family.name}_total" if family.type == "counter" else family.name
        labels = {label for sample in family.samples for label in sample.labels}
        families[name] = Documented(family.type, frozenset(labels - {"le", "quantile"}))
    return families


@pytest.fixture(scope="module")
def real_results(ca_file, tls_contexts):
    """Three real probes against aiosmtpd on loopback: a healthy session through STARTTLS, MAIL,
    RCPT and DATA, one whose RCPT gets 450 (greylisting), and opportunistic TLS going on over a
    self-signed certificate, so that every family has samples."""
    handler = ScriptedHandler(rcpt_replies={"grey@example.org": "450 4.2.0 Greylisted, try again later"})
    server = AiosmtpdServer(handler, starttls_context=tls_contexts["trusted"]).start()
    module = Module(tls="starttls", tls_ca_file=ca_file, tls_server_name=SERVER_NAME,
                    mail_from="probe@example.org", timeout_seconds=5.0)
    self_signed = AiosmtpdServer(starttls_context=tls_contexts["self_signed"]).start()
    try:
        healthy = run_probe_at(server.target, replace(module, rcpt_to=("ok@example.org",), data=True),
                               module_name="mx")
        greylisted = run_probe_at(server.target, replace(module, rcpt_to=("grey@example.org",)),
                                  module_name="greylist")
        unverified = run_probe_at(self_signed.target, Module(tls="opportunistic", timeout_seconds=5.0),
                                  module_name="opportunistic")
    finally:
        server.stop()
        self_signed.stop()
    assert healthy.success, healthy
    assert (greylisted.success, greylisted.reason) == (False, "rcpt_rejected")
    assert unverified.success and unverified.tls.verify_reason == "certificate_untrusted", unverified
    return healthy, greylisted, unverified


def test_every_family_on_metrics_is_documented_with_its_labels(real_results):
    store, state = ResultStore(), ExporterState()
    for result in real_results:
        store.register(result.target, result.module)
        store.record(result)
    store.record_skip(real_results[0].target, real_results[0].module)
    state.config_loaded(True)
    state.set_targets(len(real_results))
    state.observe_schedule_lag(0.02)

    exported = exported_families(render_metrics(store, state))
    per_target, exporter = documented_families()
    documented = {**per_target, **exporter}
    for name, family in exported.items():
        if name.startswith(RUNTIME_PREFIXES):
            continue
        assert name in documented, f"{name} is exported but not in docs/metrics.md"
        assert family == documented[name], f"{name}: exported {family}, documented {documented[name]}"
    missing = set(documented) - set(exported)
    assert not missing, f"documented but not exported after real probes: {sorted(missing)}"


def test_every_family_on_probe_is_documented_with_its_labels(real_results):
    per_target, _ = documented_families()
    probe_store = ResultStore(max_entries=10)
    for result in real_results:
        for name, family in exported_families(render_probe(probe_store.record_on_demand(result))).items():
            assert name in per_target, f"/probe exports {name}, not in docs/metrics.md"
            assert family == per_target[name], f"/probe {name}: {family} vs {per_target[name]}"


# -- the reply-code reference ----------------------------------------------------------------------
def _generator():
    spec = importlib.util.spec_from_file_location("gen_reply_codes_doc", REPO / "tools" / "gen_reply_codes_doc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reply_codes_page_is_what_the_code_renders():
    assert REPLY_CODES_DOC.read_text(encoding="utf-8") == _generator().render(), (
        "docs/reply-codes.md differs from smtpmon/smtp/replycodes.py: run "
        "`.venv/bin/python tools/gen_reply_codes_doc.py`"
    )


def test_reply_codes_page_has_every_code_of_the_reference_table():
    reference = tables_by_heading(REFERENCE_TABLE.read_text(encoding="utf-8"))
    page = tables_by_heading(REPLY_CODES_DOC.read_text(encoding="utf-8"))
    classes = {row["digit"][0]: row["name"].replace(" ", "_") for row in reference["First digit: the class (5 values)"]}
    categories = {row["digit"][1]: row["name"].replace(" ", "_") for row in reference["Second digit: the category (6 values)"]}
    listed = {row["code"]: row for row in page["The codes"]}
    for row in reference["The codes"]:
        code = row["code"]
        assert code in listed, f"docs/reply-codes.md has no row for {code}"
        assert backticked(listed[code]["`class`"]) == [classes[code[0]]], code
        assert backticked(listed[code]["`category`"]) == [categories[code[1]]], code
        # The page may add an extension's meaning after the reference words, never replace them.
        assert listed[code]["meaning"].startswith(row["meaning"]), code


def test_reply_codes_page_lists_the_enhanced_codes():
    text = REPLY_CODES_DOC.read_text(encoding="utf-8")
    enhanced = text.split("## Enhanced status codes", 1)[1]
    rows = {row["code"]: row["meaning"] for row in tables_by_heading(enhanced)["The codes"]}
    assert rows["X.1.1"] == "bad destination mailbox address"
    assert rows["X.7.1"] == "delivery not authorized, message refused"
    assert len(rows) > 70


# -- links -----------------------------------------------------------------------------------------
PAGES = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]


@pytest.mark.parametrize("page", PAGES, ids=lambda path: path.name)
def test_every_relative_link_resolves(page):
    assert broken_links(page) == [], page.name


def test_index_links_every_reference_page_and_the_readme_links_the_index():
    linked = {(DOCS / link.partition("#")[0]).resolve() for link in relative_links(DOCS / "index.md")}
    unlisted = {page.name for page in DOCS.glob("*.md") if page.name != "index.md"} - {
        path.name for path in linked
    }
    assert not unlisted, f"docs/index.md does not link {sorted(unlisted)}"
    assert "docs/index.md" in relative_links(REPO / "README.md")


def test_the_link_checker_sees_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n[ok](#title) [bad](missing.md)\n```\n[in code](nowhere.md)\n```\n")
    assert relative_links(page) == ["#title", "missing.md"]
    assert anchors(page) == {"title"}
    assert broken_links(page) == ["missing.md leads nowhere"]


# -- examples in the pages ------------------------------------------------------------------------
def yaml_blocks(path: Path) -> list[str]:
    return re.findall(r"^```yaml\n(.*?)^```", path.read_text(encoding="utf-8"), flags=re.M | re.S)


def test_probe_mode_configuration_example_loads_and_allows_what_it_says():
    (block,) = [block for block in yaml_blocks(PROBE_MODE_DOC) if block.startswith("probe_allow:")]
    config = parse_config(block, "docs/probe-mode.md", check_secrets=False)
    assert set(config.modules) == {"mx", "submission"}
    assert config.probe_refusal("mx1.example.org", 25, "mx") is None
    assert config.probe_refusal("smtp.example.org", 587, "submission") is None
    assert config.probe_refusal("mx1.example.net", 25, "mx") is not None
    assert config.probe_refusal("mx1.example.org", 25, "submission") is not None


def test_probe_mode_scrape_examples_pass_promtool(tmp_path):
    promtool = require_tool("promtool")
    jobs = [block for block in yaml_blocks(PROBE_MODE_DOC) if "job_name:" in block]
    assert len(jobs) == 3
    for number, block in enumerate(jobs):
        path = tmp_path / f"prometheus-{number}.yml"
        path.write_text(block if block.startswith("scrape_configs:") else "scrape_configs:\n" + block)
        checked = subprocess.run([promtool, "check", "config", str(path)], capture_output=True,
                                 text=True, timeout=30)
        assert checked.returncode == 0, f"example {number + 1}:\n{block}\n{checked.stdout}{checked.stderr}"


# -- command-line help -----------------------------------------------------------------------------
def help_text(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def subcommand_parsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    subparsers = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    return dict(subparsers.choices)


def test_top_level_help_lists_every_subcommand_and_examples(capsys):
    text = help_text(capsys, ["--help"])
    assert "examples:" in text
    for name in SUBCOMMANDS:
        assert re.search(rf"^\s+{re.escape(name)}\s", text, re.M), f"--help does not list {name}"
        assert f"smtpmon {name}" in text, f"--help has no example of {name}"


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_subcommand_help_shows_examples_and_documents_every_argument(capsys, name):
    text = help_text(capsys, [name, "--help"])
    assert "examples:" in text
    assert f"smtpmon {name} " in text.split("examples:", 1)[1]
    for action in subcommand_parsers()[name]._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        shown = action.option_strings or [action.metavar or action.dest]
        assert action.help and action.help != argparse.SUPPRESS, f"{name} {shown[0]}: no help text"
        for spelling in shown:
            assert spelling in text, f"smtpmon {name} --help does not show {spelling}"


def test_maillog_families_are_documented_with_their_labels():
    """docs/metrics.md "The mail log" lists exactly the maillog families, in order, with the
    labels a rendered snapshot carries."""
    from smtpmon.exposition.maillog import EVENT_FAMILIES, READER_FAMILIES, render_maillog
    from smtpmon.maillog.events import Tally
    from smtpmon.maillog.health import ReaderHealth
    from smtpmon.maillog.postfix import PostfixParser
    from smtpmon.maillog.reader import ReaderSnapshot

    table = tables_by_heading(METRICS_DOC.read_text(encoding="utf-8"))["The mail log"]
    documented = {backticked(row["metric"])[0]: Documented(row["type"],
                                                           frozenset(backticked(row["labels"])))
                  for row in table if "metric" in row}
    assert [(name, doc.type) for name, doc in documented.items()] == [
        (family.name, family.type) for family in EVENT_FAMILIES + READER_FAMILIES]
    parser, tally = PostfixParser(), Tally()
    for line in (
        "Dec  3 07:43:10 mx postfix/smtpd[1]: NOQUEUE: reject: RCPT from x[192.0.2.1]: 554 5.7.1 "
        "<a@b.test>: Relay access denied; from=<c@d.test> to=<a@b.test> proto=ESMTP helo=<x>",
        "Dec  3 07:43:11 mx postfix/smtpd[1]: lost connection after RCPT from x[192.0.2.1]",
        "Dec  3 07:43:12 mx postfix/smtp[2]: connect to x.test[192.0.2.2]:25: Connection refused",
    ):
        tally.add(parser.parse_line(line))
    health = ReaderHealth(source="/var/log/mail.log", bytes_behind=0, last_line_timestamp=1.0,
                          last_read_at=1.0)
    exported = exported_families(render_maillog(ReaderSnapshot(tally.snapshot(), health, 2.0)))
    assert exported == documented


# -- the mail log commands the docs show ---------------------------------------------------------
SAMPLE_MAIL_LOG = REPO / "tests" / "data" / "postfix-mail.log"  # a real Postfix's log (tests/postfix_traffic.py)
SHOWN_COMMANDS = re.compile(r"^```console\n\$ (smtpmon (?:explain|log-report) [^\n]*)\n(.*?)^```",
                            re.M | re.S)


def shown_mail_log_commands() -> list[tuple[str, str, str]]:
    """(page, command, output shown) of every `smtpmon explain` / `log-report` console block."""
    found = []
    for page in (REPO / "README.md", DOCS / "troubleshooting.md"):
        for match in SHOWN_COMMANDS.finditer(page.read_text(encoding="utf-8")):
            found.append((page.name, match.group(1), match.group(2)))
    return found


def test_the_docs_show_both_mail_log_commands():
    commands = [command for _, command, _ in shown_mail_log_commands()]
    assert any(command.startswith("smtpmon log-report ") for command in commands)
    assert any("postfix/smtpd" in command for command in commands)
    assert any("status=deferred" in command for command in commands)


@pytest.mark.parametrize(("page", "command", "shown"), shown_mail_log_commands(),
                         ids=lambda value: value[:40] if isinstance(value, str) else None)
def test_mail_log_commands_in_the_docs_print_what_they_show(page, command, shown, capsys):
    """Run as written (the shell's quoting), on the sample log for /var/log/mail.log: every line
    the page shows is printed, in that order (an excerpt may leave lines out)."""
    import shlex

    argv = [str(SAMPLE_MAIL_LOG) if word == "/var/log/mail.log" else word
            for word in shlex.split(command)[1:]]
    assert main(argv) == 0
    printed = capsys.readouterr().out.splitlines()
    position = 0
    for line in shown.splitlines():
        assert line in printed[position:], f"{page}: {command!r} no longer prints {line!r}"
        position = printed.index(line, position) + 1
