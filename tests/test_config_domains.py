"""`domains:`, `dns:` and `probe_allow_domains:` in the configuration file."""

from __future__ import annotations

import pytest

from smtpmon.cli import main
from smtpmon.config.load import ConfigError, parse_config

MX = "modules:\n  mx: {tls: opportunistic, timeout: 8s}\n"


def test_domains_with_their_defaults_and_both_forms_of_an_idn():
    config = parse_config(MX + """\
global: {interval: 2m}
domains:
  - domain: Bücher.Example.
    module: mx
  - domain: example.org
    module: mx
    interval: 30s
    timeout: 5s
    port: 2525
    ip_protocol: ipv6
    max_mx_hosts: 3
    max_addresses_per_host: 2
    expect_mail: false
dns:
  nameservers: ["127.0.0.1:5353", "::1", "[::1]:5300", "192.0.2.53"]
  timeout: 500ms
  min_ttl: 10s
  max_ttl: 10m
  grace: 1m
probe_allow_domains: ["*.example.net", "bücher.example"]
""", "test.yml")
    idn, plain = config.domains
    assert (idn.name, idn.unicode, idn.written) == ("xn--bcher-kva.example", "bücher.example",
                                                    "Bücher.Example.")
    assert (idn.port, idn.ip_protocol, idn.max_mx_hosts, idn.max_addresses_per_host,
            idn.expect_mail) == (25, "both", 10, 4, True)
    assert (idn.interval_seconds, idn.timeout_seconds) == (120, 8)  # global interval, module timeout
    assert (plain.interval_seconds, plain.timeout_seconds, plain.port) == (30, 5, 2525)
    assert plain.mx_options.ip_protocol == "ipv6" and plain.mx_options.max_mx_hosts == 3
    assert not plain.expect_mail
    assert config.dns.nameservers == (("127.0.0.1", 5353), ("::1", 53), ("::1", 5300),
                                      ("192.0.2.53", 53))
    assert (config.dns.timeout_seconds, config.dns.min_ttl_seconds, config.dns.max_ttl_seconds,
            config.dns.grace_seconds) == (0.5, 10, 600, 60)
    assert config.dns.resolver_settings.nameservers == config.dns.nameservers
    # /probe?domain=: configured ones, then the patterns, on either form
    assert config.domain_probe_refusal("example.org", "example.org", "mx") is None
    assert config.domain_probe_refusal("mx.example.net", "mx.example.net", "mx") is None
    assert "neither a configured domain nor allowed by probe_allow_domains" in \
        config.domain_probe_refusal("example.net", "example.net", "mx")
    assert config.domain_probe_refusal("xn--bcher-kva.example", "bücher.example", "mx") is None
    assert config.domain_probe_refusal("evil.example", "evil.example", "mx") is not None


def test_a_module_with_auth_probes_only_the_domains_configured_with_it():
    config = parse_config("""\
modules:
  mx: {tls: opportunistic}
  submit:
    tls: starttls
    auth: {mechanism: PLAIN, username: monitor, password_env: SMTPMON_TEST_UNSET}
domains:
  - {domain: example.org, module: submit}
  - {domain: example.com, module: mx}
probe_allow_domains: ["*"]
""", "test.yml")
    assert config.domain_probe_refusal("example.org", "example.org", "submit") is None
    # Neither probe_allow_domains nor another module's domain sends the password anywhere.
    for name in ("example.com", "evil.example"):
        refusal = config.domain_probe_refusal(name, name, "submit")
        assert refusal == (f"module submit sends an AUTH password, so /probe uses it only for the "
                           f"domains configured with it; {name} is not one")
    assert config.domain_probe_refusal("evil.example", "evil.example", "mx") is None


def test_a_domain_of_an_implicit_tls_module_defaults_to_port_465():
    config = parse_config("modules: {smtps: {tls: implicit}}\n"
                          "domains: [{domain: example.org, module: smtps}]\n", "test.yml")
    assert config.domains[0].port == 465


def test_without_dns_the_system_resolver_is_used():
    config = parse_config(MX + "domains: [{domain: example.org, module: mx}]\n", "test.yml")
    assert config.dns.nameservers == () and config.settings.probe_allow_domains == ()


BAD = [
    ("domains: [{domain: 'exa mple.org', module: mx}]", "domains[0].domain: 'exa mple.org'"),
    ("domains: [{domain: '_dmarc.example.org', module: mx}]", "domains[0].domain: "),
    ("domains: [{domain: 192.0.2.1, module: mx}]", "domains[0].domain: 192.0.2.1 is an IP address"),
    ("domains: [{domain: 'a..b', module: mx}]", "domains[0].domain: 'a..b' has an empty label"),
    ("domains: [{domain: example.org}]", "domains[0].module: required"),
    ("domains: [{module: mx}]", "domains[0].domain: required"),
    ("domains: [{domain: example.org, module: smtp}]", 'domains[0].module: unknown module "smtp"'),
    ("domains: [{domain: example.org, module: mx, port: 70000}]", "domains[0].port: must be a whole number 1-65535"),
    ("domains: [{domain: example.org, module: mx, ip_protocol: ip4}]", "domains[0].ip_protocol: must be one of both, ipv4, ipv6"),
    ("domains: [{domain: example.org, module: mx, max_mx_hosts: 0}]", "domains[0].max_mx_hosts: must be a whole number 1-50"),
    ("domains: [{domain: example.org, module: mx, max_addresses_per_host: 100}]", "domains[0].max_addresses_per_host: must be a whole number 1-16"),
    ("domains: [{domain: example.org, module: mx, expect_mail: maybe}]", "domains[0].expect_mail: must be true or false"),
    ("domains: [{domain: example.org, module: mx, mx: 1}]", "domains[0].mx: unknown key"),
    ("domains: [{domain: example.org, module: mx, timeout: 2m}]", "domains[0]: timeout 120 s must be shorter than interval 60 s"),
    ("domains: [{domain: example.org, module: mx}, {domain: EXAMPLE.org., module: mx}]", "domains[1]: duplicate of domains[0]"),
    ("domains: example.org", "domains: must be a list"),
    ("dns: {nameservers: [ns.example.org]}", "dns.nameservers[0]: must be an IP address"),
    ("dns: {nameservers: '127.0.0.1'}", "dns.nameservers: must be a list"),
    ("dns: {nameservers: ['127.0.0.1:0']}", "dns.nameservers[0]: port must be 1-65535"),
    ("dns: {timeout: never}", "dns.timeout: invalid duration"),
    ("dns: {min_ttl: 10m, max_ttl: 1m}", "dns.min_ttl: must not be longer than dns.max_ttl"),
    ("dns: {ttl: 1m}", 'dns.ttl: unknown key'),
    # every value bounded, as targets' are
    ("domains: [{domain: example.org, module: mx, interval: 25h}]", "domains[0].interval: must be at most 24h"),
    ("domains: [{domain: example.org, module: mx, interval: 1h, timeout: 11m}]", "domains[0].timeout: must be at most 10m"),
    ("dns: {timeout: 31s}", "dns.timeout: must be at most 30s"),
    ("dns: {min_ttl: 25h}", "dns.min_ttl: must be at most 24h"),
    ("dns: {max_ttl: 25h}", "dns.max_ttl: must be at most 24h"),
    ("dns: {grace: 25h}", "dns.grace: must be at most 24h"),
    ("dns: {nameservers: ['127.0.0.1', '127.0.0.2', '127.0.0.3', '127.0.0.4', '127.0.0.5', "
     "'127.0.0.6', '127.0.0.7', '127.0.0.8', '127.0.0.9']}", "dns.nameservers: must name at most 8 servers, got 9"),
    ("probe_allow_domains: ['exa mple.org']", "probe_allow_domains[0]: must be a domain pattern"),
    ("probe_allow_domains: example.org", "probe_allow_domains: must be a list"),
]


@pytest.mark.parametrize("text, error", BAD, ids=[error.split(":")[0] for _, error in BAD])
def test_bad_domain_settings_name_the_key(text, error):
    with pytest.raises(ConfigError) as raised:
        parse_config(MX + text + "\n", "test.yml")
    assert any(message.startswith(error) for message in raised.value.errors), raised.value.errors


def test_check_config_exits_2_naming_the_key_and_counts_domains(tmp_path, capsys):
    bad = tmp_path / "bad.yml"
    bad.write_text(MX + "domains:\n  - {domain: example.org, module: mx}\n"
                        "  - {domain: 'bad name.org', module: mx}\n")
    assert main(["check-config", str(bad)]) == 2
    assert "domains[1].domain: 'bad name.org'" in capsys.readouterr().err
    good = tmp_path / "good.yml"
    good.write_text(MX + "domains:\n  - {domain: example.org, module: mx}\n")
    assert main(["check-config", str(good)]) == 0
    assert capsys.readouterr().out.strip() == f"{good}: OK: 1 module, 0 targets, 1 domain"


def test_dane_follows_the_validating_resolver_and_mta_sts_is_on_by_default(tmp_path):
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text("not read here\n")
    config = parse_config(MX + f"""\
domains:
  - {{domain: example.org, module: mx}}
  - {{domain: example.net, module: mx, dane: false, mta_sts: false}}
  - {{domain: example.com, module: mx, mta_sts_ca_file: {ca_file}}}
dns:
  validating_resolver: "127.0.0.1:5353"
""", "test.yml")
    org, net, com = config.domains
    assert config.dns.validating_resolver == ("127.0.0.1", 5353)
    assert (org.dane, org.mta_sts, net.dane, net.mta_sts) == (True, True, False, False)
    assert com.policy_switches.mta_sts_ca_file == str(ca_file)
    plain = parse_config(MX + "domains: [{domain: example.org, module: mx}]\n", "test.yml")
    assert (plain.domains[0].dane, plain.domains[0].mta_sts) == (False, True)
    # A module without TLS: neither can be judged, so neither is on by default.
    no_tls = parse_config("modules: {plain: {tls: none}}\ndns: {validating_resolver: 127.0.0.1}\n"
                          "domains: [{domain: example.org, module: plain}]\n", "test.yml")
    assert (no_tls.domains[0].dane, no_tls.domains[0].mta_sts) == (False, False)


@pytest.mark.parametrize("text, error", [
    ("domains: [{domain: example.org, module: mx, dane: true}]\n",
     "domains[0].dane: needs dns.validating_resolver"),
    ("domains: [{domain: example.org, module: mx, mta_sts: maybe}]\n", "domains[0].mta_sts:"),
    ("domains: [{domain: example.org, module: mx, mta_sts_ca_file: /nonexistent/ca.pem}]\n",
     "domains[0].mta_sts_ca_file:"),
    ("dns: {validating_resolver: resolver.example}\n", "dns.validating_resolver: must be an IP address"),
    ("modules: {plain: {tls: none}}\ndns: {validating_resolver: 127.0.0.1}\n"
     "domains: [{domain: example.org, module: plain, dane: true}]\n",
     "domains[0].dane: needs a module that starts TLS"),
    ("modules: {plain: {tls: none}}\ndomains: [{domain: example.org, module: plain, mta_sts: true}]\n",
     "domains[0].mta_sts: needs a module that starts TLS and verifies certificates"),
])
def test_bad_policy_settings_name_the_key(text, error):
    with pytest.raises(ConfigError) as raised:
        parse_config(text if text.startswith("modules:") else MX + text, "test.yml")
    assert error in str(raised.value)
