"""The knotd harness itself (tests/dns_server.py): what DNSSEC tests will build on works."""

from __future__ import annotations

import dns.dnssec
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from dns_server import Zone


def ask(server, name: str, rdtype: str) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, want_dnssec=True)
    return dns.query.tcp(query, server.address, timeout=2, port=server.port)


def test_a_signed_zone_answers_with_signatures_that_its_ds_vouches_for(knot):
    server = knot([Zone("signed.test", "@ MX 10 mx\nmx A 127.0.54.1\n", dnssec_signing=True),
                   Zone("plain.test", "@ MX 10 mx\nmx A 127.0.54.2\n")])
    keys = ask(server, "signed.test.", "DNSKEY").find_rrset(
        dns.message.ANSWER, dns.name.from_text("signed.test."), dns.rdataclass.IN,
        dns.rdatatype.DNSKEY)
    mx = ask(server, "signed.test.", "MX")
    assert {rrset.rdtype for rrset in mx.answer} == {dns.rdatatype.MX, dns.rdatatype.RRSIG}
    mx_rrset = next(r for r in mx.answer if r.rdtype == dns.rdatatype.MX)
    signature = next(r for r in mx.answer if r.rdtype == dns.rdatatype.RRSIG)
    dns.dnssec.validate(mx_rrset, signature, {dns.name.from_text("signed.test."): keys})

    ds_lines = server.ds("signed.test")
    assert ds_lines and all(line.startswith("signed.test. DS ") for line in ds_lines)
    ds = dns.rrset.from_text_list("signed.test.", 3600, "IN", "DS",
                                  [line.split(" DS ", 1)[1] for line in ds_lines])
    key_signing = [key for key in keys if key.flags & 0x0001]  # the SEP bit: a KSK
    assert any(dns.dnssec.make_ds("signed.test.", key, "SHA256") in ds for key in key_signing)

    unsigned = ask(server, "plain.test.", "MX")
    assert {rrset.rdtype for rrset in unsigned.answer} == {dns.rdatatype.MX}


def test_set_zone_reloads_a_zone_with_new_records(knot):
    server = knot([Zone("reload.test", "@ MX 10 mx\nmx A 127.0.54.1\n")])
    server.set_zone(Zone("reload.test", "@ MX 20 other\nother A 127.0.54.3\n"))
    answer = ask(server, "reload.test.", "MX")
    assert [rdata.to_text() for rdata in answer.answer[0]] == ["20 other.reload.test."]
