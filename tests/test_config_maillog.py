"""The `maillog:` section of the configuration file: defaults, every error with its key path
(check-config exits 2), and the state file's default under systemd's StateDirectory=."""

from __future__ import annotations

import pytest

from smtpmon.cli import main
from smtpmon.config.load import ConfigError, parse_config
from smtpmon.config.maillog import DEFAULT_PATH, MaillogSettings

BASE = "modules:\n  m: {}\n"


def test_absent_section_reads_no_log():
    assert parse_config(BASE, "t.yml").maillog is None


def test_defaults(monkeypatch):
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    settings = parse_config(BASE + "maillog: {}\n", "t.yml").maillog
    assert settings == MaillogSettings()
    assert settings.path == DEFAULT_PATH and settings.source == "file"
    assert settings.state_file is None and settings.from_start is False


def test_state_file_defaults_under_state_directory(monkeypatch):
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/smtpmon:/var/lib/other")
    settings = parse_config(BASE + "maillog: {}\n", "t.yml").maillog
    assert settings.state_file == "/var/lib/smtpmon/maillog.position"


def test_every_key():
    settings = parse_config(BASE + """\
maillog:
  source: journal
  journal_identifiers: [postfix/smtpd, postfix/smtp]
  state_file: /var/lib/smtpmon/pos
  from_start: true
  domains: [Gmail.com., outlook.com]
  rbl_lists: [zen.spamhaus.org]
  catch_up_max_lines: 1000
  catch_up_max_duration: 30s
  poll_interval: 500ms
""", "t.yml").maillog
    assert settings == MaillogSettings(
        source="journal", journal_identifiers=("postfix/smtpd", "postfix/smtp"),
        state_file="/var/lib/smtpmon/pos", from_start=True, domains=("gmail.com", "outlook.com"),
        rbl_lists=("zen.spamhaus.org",), catch_up_max_lines=1000, catch_up_max_seconds=30.0,
        poll_interval_seconds=0.5)


INVALID = """\
maillog:
  sorce: file
  source: syslog
  path: mail.log
  from_start: "yes"
  domains: [gmail.com, "not a domain", GMAIL.com]
  rbl_lists: zen.spamhaus.org
  catch_up_max_lines: -5
  catch_up_max_duration: forever
  poll_interval: 0
"""


def test_every_error_names_its_key_path():
    with pytest.raises(ConfigError) as caught:
        parse_config(BASE + INVALID, "t.yml")
    assert caught.value.errors == [
        'maillog.sorce: unknown key; did you mean "source"?',
        'maillog.source: must be one of file, journal; got "syslog"',
        'maillog.path: must be an absolute path, got "mail.log"',
        'maillog.from_start: must be true or false, got "yes"',
        'maillog.domains[1]: invalid host name "not a domain"',
        "maillog.domains[2]: duplicate of maillog.domains[0]",
        "maillog.rbl_lists: must be a list, got \"zen.spamhaus.org\"",
        "maillog.catch_up_max_lines: must be a whole number of lines, 0 to 1,000,000,000, got -5",
        'maillog.catch_up_max_duration: invalid duration "forever": use seconds (30) or '
        "numbers with units ms, s, m, h (500ms, 30s, 2m, 1m30s)",
        "maillog.poll_interval: must be a positive duration, got 0",
    ]


def test_a_journal_has_no_path_and_domains_are_capped():
    domains = ", ".join(f"d{n}.test" for n in range(101))
    with pytest.raises(ConfigError) as caught:
        parse_config(BASE + f"maillog:\n  source: journal\n  path: /var/log/mail.log\n"
                     f"  domains: [{domains}]\n", "t.yml")
    assert caught.value.errors == [
        "maillog.domains: at most 100 entries (each is a label value), got 101",
        "maillog.path: applies to source: file only (the journal has no path)",
    ]


def test_check_config_exits_2(tmp_path, capsys):
    path = tmp_path / "smtpmon.yml"
    path.write_text(BASE + "maillog:\n  path: relative.log\n")
    assert main(["check-config", str(path)]) == 2
    assert capsys.readouterr().err == (
        f'smtpmon: {path}: maillog.path: must be an absolute path, got "relative.log"\n')
