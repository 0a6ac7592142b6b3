"""The one host:port grammar (smtpmon.config.addresses): configured targets, /probe's target=,
the command line's HOST[:PORT] and --web.listen-address. The messages each caller shows are
tested where they are shown (test_config, test_http, test_cli_probe); the forms are here."""

from __future__ import annotations

import re

import pytest

from smtpmon.config.addresses import (
    format_address,
    matches_pattern,
    parse_address,
    parse_listen_address,
)


@pytest.mark.parametrize(
    ("address", "parsed"),
    [("mx.example.org:25", ("mx.example.org", 25)), ("127.0.0.1:2525", ("127.0.0.1", 2525)),
     ("[::1]:25", ("::1", 25)), ("mx.example.org.:465", ("mx.example.org.", 465)),
     ("localhost:65535", ("localhost", 65535))],
)
def test_parse_address(address, parsed):
    assert parse_address(address) == parsed
    assert parse_address(address, 25) == parsed  # a port given wins over the default
    assert parse_address(format_address(*parsed)) == parsed


@pytest.mark.parametrize("address", ["mx.example.org", "[::1]", "::1:25", "2001:db8::1", "mx:0",
                                     "mx:smtp", "[::1:25", "[::g]:25", "mx..example.org:25", ":25"])
def test_without_a_default_port_only_host_port_is_an_address(address):
    with pytest.raises(ValueError):
        parse_address(address)


def test_with_a_default_port_the_port_and_the_brackets_may_be_left_out():
    assert parse_address("mx.example.org", 465) == ("mx.example.org", 465)
    assert parse_address("[::1]:2525", 25) == ("::1", 2525)
    assert parse_address("[::1]", 25) == ("::1", 25)
    assert parse_address("::1", 25) == ("::1", 25)  # ":" is no address
    assert parse_address("2001:db8::1", 25) == ("2001:db8::1", 25)  # "2001:db8:" is no address
    assert parse_address("2001:db8::25:abcd", 25) == ("2001:db8::25:abcd", 25)  # "abcd" is no port
    # An address, and also an address and a port: refused rather than read one way silently.
    for ambiguous, advice in (("2001:db8::25:587", "[2001:db8::25:587] for port 25, or [2001:db8::25]:587"),
                              ("::1:2525", "[::1:2525] for port 25, or [::1]:2525")):
        with pytest.raises(ValueError, match=re.escape(f"is ambiguous: write {advice}")):
            parse_address(ambiguous, 25)
    for bad in ("mx.example.org:70000", "mx.example.org:\u0662\u0665", "mx.example.org:\u00b2"):
        with pytest.raises(ValueError, match="1-65535"):
            parse_address(bad, 25)


def test_format_address_brackets_ipv6_only():
    assert format_address("mx.example.org", 25) == "mx.example.org:25"
    assert format_address("2001:db8::1", 25) == "[2001:db8::1]:25"


def test_probe_allow_patterns_match_host_case_insensitively_and_port_by_glob():
    assert matches_pattern("MX1.Example.org", 25, "*.example.org:25")
    assert matches_pattern("2001:db8::5", 2525, "[2001:db8::*]:*")
    assert not matches_pattern("mx1.example.org", 587, "*.example.org:25")


@pytest.mark.parametrize(("text", "address"), [("127.0.0.1:9725", ("127.0.0.1", 9725)),
                                                ("[::1]:9725", ("::1", 9725))])
def test_listen_addresses(text, address):
    assert parse_listen_address(text) == address
    host, port = parse_listen_address(":9725")
    assert port == 9725 and host in ("::", "")  # every interface


@pytest.mark.parametrize("text", ["localhost:http", "127.0.0.1:70000", ""])
def test_bad_listen_addresses(text):
    with pytest.raises(ValueError, match="invalid listen address"):
        parse_listen_address(text)
