"""The configuration file: what a user sees for good files, bad files, and `check-config`."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from smtpmon.cli import main
from smtpmon.config.load import (
    DEFAULT_CONFIG_TEXT,
    Config,
    ConfigError,
    Settings,
    Target,
    default_config,
    format_duration,
    load_config,
    parse_config,
    parse_duration,
)
from smtpmon.smtp.module import PasswordUnavailable

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
MX = "modules: {mx: {tls: starttls}}\n"
REPLY_STAGES = "banner, ehlo, starttls, ehlo_tls, auth, mail, rcpt, data, quit"
TLS_CHOICES = "none, starttls, opportunistic, implicit"
PATTERN_RULE = 'must be a host:port pattern like "*.example.org:25" or "[2001:db8::*]:*"'
RUN_BEFORE_NEXT = "a probe must end before its next run"


def target(address: str, extra: str = "") -> str:
    return MX + f"targets: [{{address: '{address}', module: mx{extra}}}]\n"


# (id, YAML text, every error the user must see, in order). Secrets and files that depend on
# the environment are tested further down.
INVALID = [
    ("empty file", "", ["the file is empty; it needs at least a modules section"]),
    ("only comments", "# nothing yet\n",
     ["the file is empty; it needs at least a modules section"]),
    (
        "top-level list",
        "- mx1.example.org:25\n",
        ["the top level must be a mapping with keys global, probe_allow, modules, targets, "
         "domains, dns, probe_allow_domains, maillog, got a list"],
    ),
    (
        "YAML syntax error names the line",
        "modules:\n  mx: {tls: starttls\ntargets: []\n",
        ["line 3, column 8: invalid YAML: expected ',' or '}', but got ':' "
         "(while parsing a flow mapping on line 2)"],
    ),
    (
        "tab indentation",
        "modules:\n\tmx: {}\n",
        ["line 2, column 1: invalid YAML: found character '\\t' that cannot start any token"],
    ),
    ("duplicate YAML key", "modules:\n  mx:\n    tls: starttls\n    tls: none\n",
     ['line 4: duplicate key "tls" (first on line 3)']),
    ("unknown global key", "global: {frobnicate: 1}\n" + MX, ["global.frobnicate: unknown key"]),
    ("misspelt global key", "global: {intervall: 30s}\n" + MX,
     ['global.intervall: unknown key; did you mean "interval"?']),
    ("misspelt top-level key", "target: []\n" + MX,
     ['target: unknown key; did you mean "targets"?']),
    ("unknown module key", "modules: {mx: {interval: 30s}}\n",
     ["modules.mx.interval: unknown key"]),
    ("unknown target key", target("mx1.example.org:25", ", port: 25"),
     ["targets[0].port: unknown key"]),
    ("no modules", "global: {interval: 60s}\n", ["modules: must define at least one module"]),
    ("modules as a list", "modules: [mx]\n", ["modules: must be a mapping, got a list"]),
    ("module as a string", "modules: {mx: starttls}\n",
     ['modules.mx: must be a mapping, got "starttls"']),
    ("module name with a space", "modules: {'my mod': {}}\n",
     ['modules.my mod: a module name may use only letters, digits, "_", "-" and "."']),
    (
        "unknown module",
        MX + "targets:\n"
        "  - {address: 'mx1.example.org:25', module: mx}\n"
        "  - {address: 'mx2.example.org:25', module: mx}\n"
        "  - {address: 'mx3.example.org:25', module: smpt_tls}\n",
        ['targets[2].module: unknown module "smpt_tls"; known: mx'],
    ),
    ("port 0", target("mx1.example.org:0"), ["targets[0].address: port must be 1-65535, got 0"]),
    ("port too large", target("mx1.example.org:70000"),
     ["targets[0].address: port must be 1-65535, got 70000"]),
    ("port by name", target("mx1.example.org:smtp"),
     ['targets[0].address: port must be a number 1-65535, got "smtp"']),
    ("no port", target("mx1.example.org"),
     ["targets[0].address: missing port; write host:port, e.g. mx1.example.org:25"]),
    ("IPv6 without brackets", target("::1:25"),
     ["targets[0].address: an IPv6 address must be in brackets, e.g. [::1]:25"]),
    ("bad IPv6 literal", target("[::g]:25"), ['targets[0].address: invalid IPv6 address "::g"']),
    ("IPv6 without port", target("[2001:db8::1]"),
     ["targets[0].address: missing port; write [IPv6]:port, e.g. [2001:db8::1]:25"]),
    ("bad host name", target("mx..example.org:25"),
     ['targets[0].address: invalid host name "mx..example.org"']),
    (
        "CR LF injected into the address",
        MX + 'targets: [{address: "mx1.example.org\\r\\nQUIT:25", module: mx}]\n',
        ['targets[0].address: invalid host name "mx1.example.org\\r\\nQUIT"'],
    ),
    (
        "target without address and module",
        MX + "targets: [{interval: 30s}]\n",
        ["targets[0].address: required", "targets[0].module: required"],
    ),
    ("targets as a mapping", MX + "targets: {address: 'mx1.example.org:25'}\n",
     ["targets: must be a list, got a mapping"]),
    (
        "duplicate target",
        MX + "targets:\n"
        "  - {address: 'mx1.example.org:25', module: mx}\n"
        "  - {address: 'MX1.example.org:25', module: mx}\n",
        ['targets[1]: duplicate of targets[0] (same address "MX1.example.org:25" and module "mx")'],
    ),
    ("zero interval", target("mx1.example.org:25", ", interval: 0"),
     ["targets[0].interval: must be a positive duration, got 0"]),
    ("negative interval", "global: {interval: -5}\n" + MX,
     ["global.interval: must be a positive duration, got -5"]),
    (
        "duration in words",
        "global: {interval: 5 minutes}\n" + MX,
        ['global.interval: invalid duration "5 minutes": use seconds (30) or numbers with units '
         "ms, s, m, h (500ms, 30s, 2m, 1m30s)"],
    ),
    ("duration as a boolean", "global: {timeout: true}\n" + MX,
     ["global.timeout: must be a duration like 30s, 2m or 500ms, got true"]),
    ("global timeout equal to interval", "global: {interval: 30s, timeout: 30s}\n" + MX,
     [f"global.timeout: 30s must be shorter than global.interval 30s: {RUN_BEFORE_NEXT}"]),
    (
        "target interval shorter than the global timeout",
        target("mx1.example.org:25", ", interval: 5s"),
        [f"targets[0]: timeout 10s (global.timeout) must be shorter than interval 5s "
         f"(targets[0].interval): {RUN_BEFORE_NEXT}"],
    ),
    (
        "module timeout longer than the global interval",
        "modules: {mx: {timeout: 2m}}\ntargets: [{address: 'mx1.example.org:25', module: mx}]\n",
        [f"targets[0]: timeout 2m (modules.mx.timeout) must be shorter than interval 1m "
         f"(global.interval): {RUN_BEFORE_NEXT}"],
    ),
    ("misspelt TLS mode", "modules: {mx: {tls: startls}}\n",
     [f'modules.mx.tls: must be one of {TLS_CHOICES}; got "startls"']),
    ("YAML off is a boolean, not a TLS mode", "modules: {mx: {tls: off}}\n",
     [f"modules.mx.tls: must be one of {TLS_CHOICES}; got false"]),
    ("unknown TLS version", "modules: {mx: {tls_min_version: '1.2'}}\n",
     ['modules.mx.tls_min_version: must be one of TLSv1, TLSv1.1, TLSv1.2, TLSv1.3; got "1.2"']),
    ("unknown IP protocol", "modules: {mx: {ip_protocol: ipv4}}\n",
     ['modules.mx.ip_protocol: must be one of any, ip4, ip6; got "ipv4"']),
    ("not a boolean", "modules: {mx: {tls_verify: maybe}}\n",
     ['modules.mx.tls_verify: must be true or false, got "maybe"']),
    ("max_concurrency 0", "global: {max_concurrency: 0}\n" + MX,
     ["global.max_concurrency: must be at least 1, got 0"]),
    ("a NUL byte", "global: {}\n\x00\n",
     ["line 2, column 1: invalid YAML: control character #x0000 is not allowed"]),
    ("a module's own probe_allow without auth", "modules: {mx: {probe_allow: ['*:25']}}\n",
     ["modules.mx.probe_allow: only a module with auth has its own probe_allow (the top-level "
      "probe_allow applies to every other module)"]),
    ("max_concurrency past its bound", "global: {max_concurrency: 1000000}\n" + MX,
     ["global.max_concurrency: must be at most 10000, got 1000000"]),
    # Values that parse but that the schedule's dates or the sockets cannot hold.
    ("an interval of millennia", "global: {interval: 99999999h}\n" + MX,
     ['global.interval: must be at most 24h, got "99999999h"']),
    ("an interval past a day", target("mx1.example.org:25", ", interval: 25h"),
     ['targets[0].interval: must be at most 24h, got "25h"']),
    ("a timeout in seconds past 10 minutes", "global: {interval: 1h, timeout: 601}\n" + MX,
     ["global.timeout: must be at most 10m, got 601"]),
    ("a module timeout past 10 minutes", "modules: {mx: {timeout: 1.0e+300}}\n",
     ["modules.mx.timeout: must be at most 10m, got 1e+300"]),
    ("a target timeout past 10 minutes", target("mx1.example.org:25", ", interval: 1h, timeout: 11m"),
     ['targets[0].timeout: must be at most 10m, got "11m"']),
    ("max_concurrency not a number", "global: {max_concurrency: many}\n" + MX,
     ['global.max_concurrency: must be a whole number, got "many"']),
    ("EHLO name with a space", "global: {ehlo_name: 'my host'}\n" + MX,
     ['global.ehlo_name: invalid host name "my host"']),
    ("bad address literal as EHLO name", "global: {ehlo_name: '[1.2.3]'}\n" + MX,
     ['global.ehlo_name: invalid address literal "[1.2.3]"']),
    (
        "unknown expect stage",
        "modules: {mx: {mail_from: '', rcpt_to: [a@example.org], expect: {rpct: [550]}}}\n",
        [f"modules.mx.expect.rpct: unknown stage; stages with replies: {REPLY_STAGES}"],
    ),
    ("expect on a stage without a reply", "modules: {mx: {expect: {connect: [220]}}}\n",
     [f"modules.mx.expect.connect: the connect stage has no reply; "
      f"stages with replies: {REPLY_STAGES}"]),
    (
        "expect codes out of range",
        "modules: {mx: {expect: {banner: [55, 220, 600]}}}\n",
        ["modules.mx.expect.banner[0]: must be a reply code 100-599, got 55",
         "modules.mx.expect.banner[2]: must be a reply code 100-599, got 600"],
    ),
    ("expect code as a string", "modules: {mx: {expect: {banner: '220'}}}\n",
     ['modules.mx.expect.banner: must be a reply code 100-599, got "220"']),
    ("expect on a stage the module never reaches", "modules: {mx: {expect: {rcpt: [550]}}}\n",
     ["modules.mx.expect.rcpt: the module never reaches this stage (it has no rcpt_to)"]),
    ("rcpt_to without mail_from", "modules: {mx: {rcpt_to: [a@example.org]}}\n",
     ['modules.mx.rcpt_to: needs mail_from (write "" for the null sender <>)']),
    ("data without rcpt_to", "modules: {mx: {mail_from: a@example.org, data: true}}\n",
     ["modules.mx.data: needs rcpt_to: a message needs a recipient"]),
    ("rcpt_to as a string", "modules: {mx: {mail_from: '', rcpt_to: a@example.org}}\n",
     ['modules.mx.rcpt_to: must be a list of addresses, got "a@example.org"']),
    ("empty mail_from value is null, not <>", "modules: {mx: {mail_from: }}\n",
     ['modules.mx.mail_from: must be a string (write "" for the null sender <>), got null']),
    ("message_size without data", "modules: {mx: {mail_from: a@b.example, rcpt_to: [c@d.example], message_size: 1000}}\n",
     ["modules.mx.message_size: needs data: true (the size is the test message's)"]),
    ("message_size not a size", "modules: {mx: {mail_from: a@b.example, rcpt_to: [c@d.example], data: true, "
     "message_size: 10 parsecs}}\n",
     ['modules.mx.message_size: invalid size "10 parsecs": use bytes (1048576) or a number with KB, MB, KiB or MiB '
      "(500KB, 10MiB)"]),
    ("message_size too large", "modules: {mx: {mail_from: a@b.example, rcpt_to: [c@d.example], data: true, "
     "message_size: 1000MiB}}\n",
     ["modules.mx.message_size: must be 1 byte to 256MiB, got 1048576000"]),
    ("connect_timeout not a duration", "modules: {mx: {connect_timeout: soon}}\n",
     ['modules.mx.connect_timeout: invalid duration "soon": use seconds (30) or numbers with units ms, s, m, h '
      "(500ms, 30s, 2m, 1m30s)"]),
    (
        "angle brackets in mail_from",
        "modules: {mx: {mail_from: '<>'}}\n",
        ["modules.mx.mail_from: must be a bare address without spaces or angle brackets "
         '(write "" for the null sender <>), got "<>"'],
    ),
    (
        "unknown AUTH mechanism",
        "modules: {s: {tls: starttls, auth: {mechanism: CRAM-MD5, username: u, "
        "password_env: PATH}}}\n",
        ['modules.s.auth.mechanism: must be one of PLAIN, LOGIN; got "CRAM-MD5"'],
    ),
    ("AUTH without username", "modules: {s: {tls: starttls, auth: {password_env: PATH}}}\n",
     ["modules.s.auth.username: required"]),
    (
        "both password_file and password_env",
        "modules: {s: {tls: starttls, auth: {username: u, password_env: PATH, "
        "password_file: /etc/hostname}}}\n",
        ["modules.s.auth: set password_file or password_env, not both"],
    ),
    ("AUTH without a password", "modules: {s: {tls: starttls, auth: {username: u}}}\n",
     ["modules.s.auth: needs password_file or password_env"]),
    (
        "AUTH over plain text",
        "modules: {s: {tls: opportunistic, auth: {username: u, password_env: PATH}}}\n",
        ["modules.s.auth: needs tls: starttls or implicit, so the password never crosses the "
         "network in clear; got tls: opportunistic"],
    ),
    ("missing CA file", "modules: {mx: {tls_ca_file: /nonexistent/ca.pem}}\n",
     ["modules.mx.tls_ca_file: file not found: /nonexistent/ca.pem"]),
    (
        "bad probe_allow patterns",
        "probe_allow: ['*.example.org', '2001:db8::1:25', 'a b:25']\n" + MX,
        [f'probe_allow[0]: {PATTERN_RULE}, got "*.example.org"',
         f'probe_allow[1]: {PATTERN_RULE}, got "2001:db8::1:25"',
         f'probe_allow[2]: {PATTERN_RULE}, got "a b:25"'],
    ),
    (
        "timeout not shorter than interval beside another global error",
        "global: {interval: 10s, timeout: 20s, max_concurrency: 0}\n" + MX,
        ["global.max_concurrency: must be at least 1, got 0",
         f"global.timeout: 20s must be shorter than global.interval 10s: {RUN_BEFORE_NEXT}"],
    ),
    (
        "three problems at once",
        "global: {interval: 0}\nmodules: {mx: {tls: startls}}\n"
        "targets: [{address: 'mx1.example.org:0', module: mx}]\n",
        ["global.interval: must be a positive duration, got 0",
         f'modules.mx.tls: must be one of {TLS_CHOICES}; got "startls"',
         "targets[0].address: port must be 1-65535, got 0"],
    ),
]


def test_message_size_and_connect_timeout_are_read_with_their_units():
    config = parse_config("modules: {mx: {mail_from: a@b.example, rcpt_to: [c@d.example], data: true, "
                          "message_size: 10MiB, connect_timeout: 1500ms}, big: {mail_from: a@b.example, "
                          "rcpt_to: [c@d.example], data: true, message_size: 500KB}, plain: {}}\n", "test.yml")
    assert config.modules["mx"].message_size == 10 * 1024 * 1024
    assert config.modules["mx"].connect_timeout_seconds == 1.5
    assert config.modules["big"].message_size == 500_000
    assert (config.modules["plain"].message_size, config.modules["plain"].connect_timeout_seconds) == (None, 3.0)


def test_the_table_has_at_least_20_invalid_configurations():
    assert len(INVALID) >= 20


@pytest.mark.parametrize(("text", "errors"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_configuration_lists_every_error(text, errors):
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "test.yml")
    assert caught.value.errors == errors
    assert caught.value.source == "test.yml"


@pytest.mark.parametrize(("text", "errors"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_check_config_prints_each_error_and_exits_2(text, errors, tmp_path, capsys):
    path = tmp_path / "smtpmon.yml"
    path.write_text(text, encoding="utf-8")
    assert main(["check-config", str(path)]) == 2
    output = capsys.readouterr()
    assert output.out == ""
    assert output.err.splitlines() == [f"smtpmon: {path}: {error}" for error in errors]


# -- secrets: password files, $CREDENTIALS_DIRECTORY, environment variables --------------------

SUBMISSION = """\
modules:
  submission:
    tls: starttls
    auth: {{username: monitor, {password}}}
"""


def submission(password: str) -> str:
    return SUBMISSION.format(password=password)


def test_credentials_directory_is_expanded_at_load_time(tmp_path, monkeypatch):
    (tmp_path / "smtp-password").write_text("s3cret\n", encoding="utf-8")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    for variable in ("$CREDENTIALS_DIRECTORY", "${CREDENTIALS_DIRECTORY}"):
        written = f"{variable}/smtp-password"
        config = parse_config(submission(f"password_file: '{written}'"), "test.yml")
        module = config.modules["submission"]
        assert module.auth_password_file == f"{tmp_path}/smtp-password"
        assert module.read_password() == "s3cret"


def test_credentials_directory_unset_is_a_secret_problem_not_an_error(monkeypatch):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    text = submission("password_file: $CREDENTIALS_DIRECTORY/smtp-password")
    config = parse_config(text, "test.yml")
    assert config.secret_problems == (
        "modules.submission.auth.password_file: $CREDENTIALS_DIRECTORY/smtp-password: "
        "$CREDENTIALS_DIRECTORY is not set (systemd sets it for the service's LoadCredential=)",
    )
    module = config.modules["submission"]
    assert module.auth_password_file == "$CREDENTIALS_DIRECTORY/smtp-password"
    with pytest.raises(PasswordUnavailable, match=r"\$CREDENTIALS_DIRECTORY is not set"):
        module.read_password()
    assert parse_config(text, "test.yml", check_secrets=False).secret_problems == ()


def test_missing_password_file_is_a_secret_problem_naming_the_key(tmp_path):
    missing = tmp_path / "nope"
    config = parse_config(submission(f"password_file: {missing}"), "test.yml")
    assert config.secret_problems == (
        f"modules.submission.auth.password_file: file not found: {missing}",
    )


def test_unset_password_env_is_a_secret_problem_naming_the_key(monkeypatch):
    monkeypatch.delenv("SMTPMON_TEST_PASSWORD", raising=False)
    text = submission("password_env: SMTPMON_TEST_PASSWORD")
    assert parse_config(text, "test.yml").secret_problems == (
        "modules.submission.auth.password_env: "
        "environment variable SMTPMON_TEST_PASSWORD is not set",
    )
    monkeypatch.setenv("SMTPMON_TEST_PASSWORD", "s3cret")
    config = parse_config(text, "test.yml")
    assert config.secret_problems == ()
    assert config.modules["submission"].read_password() == "s3cret"


# -- a valid file: every key, resolved -----------------------------------------------------------


@pytest.fixture
def valid_config(tmp_path, monkeypatch) -> Config:
    (tmp_path / "smtp-password").write_text("s3cret", encoding="utf-8")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    monkeypatch.setenv("SMTPMON_TEST_PASSWORD", "env-s3cret")
    return load_config(str(DATA / "config-valid.yml"))


def test_valid_file_settings(valid_config):
    assert valid_config.source == str(DATA / "config-valid.yml")
    assert valid_config.settings == Settings(
        interval_seconds=120.0,
        timeout_seconds=15.0,
        max_concurrency=8,
        ehlo_name="monitor.example.org",
        probe_allow=("*.example.org:25", "[2001:db8::*]:*"),
    )


def test_valid_file_modules(valid_config, tmp_path):
    modules = valid_config.modules
    assert list(modules) == ["mx", "mx_v6", "submission", "smtps", "recipient_check", "delivery"]
    mx = modules["mx"]
    assert (mx.tls, mx.tls_verify, mx.tls_server_name, mx.tls_min_version) == (
        "starttls", True, "mx.example.org", "TLSv1.2"
    )
    assert (mx.ehlo_name, mx.helo_fallback, mx.ip_protocol, mx.timeout_seconds) == (
        "[192.0.2.1]", False, "ip4", 5.0
    )
    # A YAML merge key (<<: *mx) copies a module and overrides one option.
    assert modules["mx_v6"] == dataclasses.replace(mx, ip_protocol="ip6")
    submission_module = modules["submission"]
    assert submission_module.auth_mechanism == "LOGIN"  # written "login"
    assert submission_module.auth_username == "monitor@example.org"
    assert submission_module.read_password() == "s3cret"
    assert modules["smtps"].auth_mechanism == "PLAIN"  # the default mechanism
    assert modules["smtps"].read_password() == "env-s3cret"
    # Modules without their own timeout and EHLO name take the global ones.
    assert modules["smtps"].timeout_seconds == 15.0
    assert modules["smtps"].ehlo_name == "monitor.example.org"
    check = modules["recipient_check"]
    assert check.mail_from == ""  # the null sender <>
    assert check.rcpt_to == ("nobody@example.org", "postmaster")
    assert dict(check.expect) == {"rcpt": (550, 551), "banner": (220,)}
    assert check.tls == "opportunistic"  # the default
    assert modules["delivery"].data is True


def test_valid_file_targets_resolve_interval_and_timeout(valid_config):
    assert valid_config.targets == (
        # own interval and timeout
        Target("mx1.example.org:25", "mx1.example.org", 25, "mx", 30.0, 20.0),
        # the same address with another module is a different target; global interval,
        # global timeout
        Target("mx1.example.org:25", "mx1.example.org", 25, "recipient_check", 120.0, 15.0),
        # the module's timeout
        Target("[2001:db8::25]:25", "2001:db8::25", 25, "mx_v6", 120.0, 5.0),
        # durations as a bare number of seconds and in milliseconds
        Target("192.0.2.25:587", "192.0.2.25", 587, "submission", 90.0, 1.5),
        Target("mail.example.org:465", "mail.example.org", 465, "smtps", 120.0, 15.0),
    )


def test_config_values_are_frozen(valid_config):
    with pytest.raises(dataclasses.FrozenInstanceError):
        valid_config.targets[0].interval_seconds = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        valid_config.modules["extra"] = valid_config.modules["mx"]  # type: ignore[index]


def test_probe_allowed_for_configured_targets_and_allow_patterns(valid_config):
    allowed = valid_config.probe_allowed
    assert allowed("192.0.2.25", 587)  # a configured target
    assert allowed("MX1.Example.ORG", 25)  # host names compare without case
    assert allowed("new.example.org", 25)  # "*.example.org:25"
    assert allowed("2001:db8::99", 2525)  # "[2001:db8::*]:*"
    assert not allowed("new.example.org", 587)  # the pattern names port 25 only
    assert not allowed("example.org", 25)
    assert not allowed("192.0.2.25", 25)  # configured on 587, not 25
    assert not allowed("10.0.0.1", 25)


def test_only_configured_targets_without_probe_allow():
    config = parse_config(target("mx1.example.org:25"), "test.yml")
    assert config.settings.probe_allow == ()
    assert config.probe_allowed("mx1.example.org", 25)
    assert not config.probe_allowed("mx2.example.org", 25)


def test_a_file_with_modules_and_no_targets_is_valid():
    """/probe-only use: Prometheus drives every probe, smtpmon schedules none."""
    config = parse_config(MX, "test.yml")
    assert config.targets == ()
    assert list(config.modules) == ["mx"]


# -- durations and addresses ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "seconds"),
    [(30, 30.0), (1.5, 1.5), ("30s", 30.0), ("2m", 120.0), ("500ms", 0.5), ("1h", 3600.0),
     ("1m30s", 90.0), ("0.25s", 0.25)],
)
def test_durations(written, seconds):
    assert parse_duration(written) == seconds


@pytest.mark.parametrize(
    "written", ["", "30", "30 s", "-5s", "5sec", "1d", "s", "0s", 0, -1, True, None, float("nan")]
)
def test_bad_durations(written):
    with pytest.raises(ValueError):
        parse_duration(written)


@pytest.mark.parametrize(
    ("seconds", "shown"), [(0.5, "500ms"), (1.5, "1.5s"), (90, "90s"), (120, "2m"), (7200, "2h")]
)
def test_format_duration(seconds, shown):
    assert format_duration(seconds) == shown


# -- the embedded default and the shipped example ------------------------------------------------


def test_embedded_default_probes_the_local_mta_every_minute():
    config = default_config()
    assert config.source == "<embedded default>"
    assert config.targets == (Target("127.0.0.1:25", "127.0.0.1", 25, "local_mta", 60.0, 10.0),)
    module = config.modules["local_mta"]
    assert module.tls == "opportunistic"  # STARTTLS when offered
    assert module.mail_from is None  # banner, EHLO, STARTTLS, QUIT: no mail transaction
    assert module.auth_mechanism is None
    assert config == parse_config(DEFAULT_CONFIG_TEXT, "<embedded default>")


def check_config(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "smtpmon", "check-config", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=30,
    )


def environment(**changes: str | None) -> dict[str, str]:
    env = dict(os.environ)
    for name, value in changes.items():
        env.pop(name, None)
        if value is not None:
            env[name] = value
    return env


def test_shipped_example_passes_check_config_with_its_credential(tmp_path):
    (tmp_path / "submission-password").write_text("s3cret", encoding="utf-8")
    env = environment(CREDENTIALS_DIRECTORY=str(tmp_path))
    result = check_config("config/smtpmon.yml", env=env)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == "config/smtpmon.yml: OK: 4 modules, 5 targets, 3 domains\n"


def test_shipped_example_outside_the_service_is_valid_with_a_warning_about_its_password():
    env = environment(CREDENTIALS_DIRECTORY=None)
    result = check_config("config/smtpmon.yml", env=env)
    assert result.returncode == 0
    assert result.stderr == (
        "smtpmon: config/smtpmon.yml: warning: modules.submission.auth.password_file: "
        "$CREDENTIALS_DIRECTORY/submission-password: $CREDENTIALS_DIRECTORY is not set (systemd "
        "sets it for the service's LoadCredential=): this module's probes fail at auth "
        "(auth_password_unavailable) until it can be read; outside the service, --skip-secrets "
        "leaves this out\n"
    )
    assert result.stdout == "config/smtpmon.yml: OK: 4 modules, 5 targets, 3 domains (1 AUTH password not readable here)\n"
    result = check_config("--skip-secrets", "config/smtpmon.yml", env=env)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == "config/smtpmon.yml: OK: 4 modules, 5 targets, 3 domains\n"


def test_shipped_example_has_the_documented_modules():
    config = load_config(str(REPO / "config" / "smtpmon.yml"), check_secrets=False)
    modules = config.modules
    assert (modules["mx"].tls, modules["submission"].tls, modules["smtps"].tls) == (
        "starttls", "starttls", "implicit"
    )
    assert modules["submission"].auth_mechanism == "PLAIN"
    assert modules["recipient_check"].expect["rcpt"] == (550,)
    ports = {(t.module, t.port) for t in config.targets}
    assert {("mx", 25), ("submission", 587), ("smtps", 465), ("recipient_check", 25)} <= ports


def test_check_config_lists_all_three_problems_of_a_file():
    result = check_config("tests/data/config-three-errors.yml")
    assert result.returncode == 2
    assert result.stdout == ""
    prefix = "smtpmon: tests/data/config-three-errors.yml: "
    assert result.stderr.splitlines() == [
        prefix + "global.interval: must be a positive duration, got 0",
        prefix + f'modules.mx.tls: must be one of {TLS_CHOICES}; got "startls"',
        prefix + "targets[0].address: port must be 1-65535, got 0",
    ]


def test_check_config_names_the_line_of_a_syntax_error():
    result = check_config("tests/data/config-syntax-error.yml")
    assert result.returncode == 2
    assert result.stderr == (
        "smtpmon: tests/data/config-syntax-error.yml: line 3, column 8: invalid YAML: "
        "expected ',' or '}', but got ':' (while parsing a flow mapping on line 2)\n"
    )


def test_check_config_on_a_missing_file():
    result = check_config("no/such/file.yml")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        "smtpmon: no/such/file.yml: cannot read the file: No such file or directory\n"
    )


def test_check_config_on_a_directory_and_on_binary_data(tmp_path, capsys):
    assert main(["check-config", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"smtpmon: {tmp_path}: cannot read the file: Is a directory\n"
    binary = tmp_path / "binary.yml"
    binary.write_bytes(b"modules: {mx: {}}\n\xff\xfe")
    assert main(["check-config", str(binary)]) == 2
    assert capsys.readouterr().err == f"smtpmon: {binary}: not UTF-8 text (byte 18)\n"


@pytest.fixture
def unusual_files(tmp_path):
    """Paths that are not a configuration file: a FIFO nobody writes to, /dev/zero through a
    symlink, and a sparse file of 100 MB (free on disk; 300 MB of memory if read whole)."""
    fifo = tmp_path / "fifo.yml"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.yml"
    zero.symlink_to("/dev/zero")
    huge = tmp_path / "huge.yml"
    with open(huge, "wb") as handle:
        handle.truncate(100 * 1024 * 1024)
    return {"fifo": (fifo, "not a regular file (a FIFO)"),
            "dev-zero": (zero, "not a regular file (a character device)"),
            "huge": (huge, "the file is larger than 16 MB; is it the right file?")}


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "huge"])
def test_check_config_refuses_what_is_not_a_regular_file_of_sane_size_at_once(unusual_files, kind):
    path, reason = unusual_files[kind]
    begun = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "smtpmon", "check-config", str(path)],
                            cwd=REPO, capture_output=True, text=True, timeout=5)
    shown = f"cannot read the file: {reason}" if "regular" in reason else reason
    assert (result.returncode, result.stderr) == (2, f"smtpmon: {path}: {shown}\n")
    assert time.monotonic() - begun < 5


def test_a_password_file_or_ca_file_that_is_a_fifo_is_refused_without_blocking(unusual_files, tmp_path):
    fifo, _ = unusual_files["fifo"]
    text = ("modules:\n  sub:\n    tls: starttls\n"
            f"    tls_ca_file: {fifo}\n"
            f"    auth: {{username: u, password_file: {fifo}}}\n")
    with pytest.raises(ConfigError) as raised:
        parse_config(text, "fifo-secrets.yml")
    assert raised.value.errors == [f"modules.sub.tls_ca_file: not a regular file (a FIFO): {fifo}"]
    # A password file is read when a probe uses it (a missing one fails that module's AUTH, not
    # the configuration): a FIFO there is named as that module's problem, and nothing waits on it.
    begun = time.monotonic()
    config = parse_config(text.replace(f"    tls_ca_file: {fifo}\n", ""), "fifo-secret.yml")
    assert config.secret_problems == (f"modules.sub.auth.password_file: not a regular file: {fifo}",)
    assert time.monotonic() - begun < 1


def test_check_config_counts_in_the_singular(tmp_path, capsys):
    path = tmp_path / "one.yml"
    path.write_text(target("mx1.example.org:25"), encoding="utf-8")
    assert main(["check-config", str(path)]) == 0
    assert capsys.readouterr().out == f"{path}: OK: 1 module, 1 target\n"


# -- the reference page stays true ---------------------------------------------------------------

CONFIGURATION_DOC = REPO / "docs" / "configuration.md"


def test_reference_page_documents_every_key():
    from smtpmon.config.load import _AUTH_KEYS, _GLOBAL_KEYS, _MODULE_KEYS, _TARGET_KEYS

    page = CONFIGURATION_DOC.read_text(encoding="utf-8")
    for key in (*_GLOBAL_KEYS, *_MODULE_KEYS, *_AUTH_KEYS, *_TARGET_KEYS):
        assert f"| `{key}` |" in page, f"docs/configuration.md has no table row for {key}"


def test_reference_page_shows_the_embedded_default_as_it_is():
    page = CONFIGURATION_DOC.read_text(encoding="utf-8")
    section = page.split("## The embedded default", 1)[1]
    shown = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert parse_config(shown, "<embedded default>") == default_config()
