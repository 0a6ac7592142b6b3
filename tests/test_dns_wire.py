"""smtpmon.dns.wire against dnspython, over the same octets.

The reader's promise: for any octets, it either declines (None: dnspython reads them) or
says exactly what dnspython's reading says (the resolver's Answer, field by field, MX names
label by label). Checked on a real knotd's answers, on responses dnspython builds, on
hand-made octets (compression pointers that loop or point forward, truncation, junk), and on
hypothesis' messages and mutations of them. The query's octets must be dnspython's, byte for
byte.
"""

from __future__ import annotations

import random
import socket
import struct

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from dns_server import Zone, require_knot, start_knot
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from smtpmon.dns import wire
from smtpmon.dns.names import name_text
from smtpmon.dns.resolver import EDNS_PAYLOAD, _from_wire_answer, _judge_response

ZONE = "wire.test"
RECORDS = """\
two MX 10 mxa.two
two MX 20 mxb.two
mxa.two A 127.0.56.1
mxa.two A 127.0.56.2
mxa.two AAAA ::1
mxb.two A 127.0.56.3
v6 AAAA ::1
v6 AAAA 2001:db8::5
nodata TXT "no MX, no address"
nullmx MX 0 .
alias CNAME two
lame NS ns.lame
ns.lame A 127.0.56.99
Mixed-Case MX 5 Upper.Mixed-Case
"""


def query_for(name: str | dns.name.Name, rdtype: str, query_id: int = 4711, *, dnssec: bool = False,
              checking_disabled: bool = False) -> dns.message.Message:
    qname = dns.name.from_text(name) if isinstance(name, str) else name
    query = dns.message.make_query(qname, rdtype, use_edns=0, payload=EDNS_PAYLOAD, id=query_id,
                                   want_dnssec=dnssec)
    if checking_disabled:
        query.flags |= dns.flags.CD
    return query


def dnspython_reading(octets: bytes, query: dns.message.Message) -> object:
    """What the resolver makes of `octets` with dnspython alone (dns.query.udp's parse and
    is_response check, then the resolver's judgement)."""
    try:
        response = dns.message.from_wire(octets, raise_on_truncation=True)
    except Exception as error:
        return f"unreadable: {type(error).__name__}"
    if not query.is_response(response):
        return "not a response"
    return _judge_response(response, "server", name_text(query.question[0].name),
                           dns.rdatatype.to_text(query.question[0].rdtype))


def exact(answer: object) -> object:
    """An Answer with its MX names as their exact labels (Name equality ignores case)."""
    records = getattr(answer, "records", None)
    if not records or not isinstance(records[0], tuple):
        return answer
    return answer, [(preference, target.labels) for preference, target in records]


def check(octets: bytes, query: dns.message.Message) -> bool:
    """Whether the wire reader decided `octets`; when it did, that it agrees with dnspython."""
    question = query.question[0]
    rdtype = dns.rdatatype.to_text(question.rdtype)
    fast = wire.read_answer(octets, query.id, question.name, rdtype)
    if fast is None:
        return False
    mine = _from_wire_answer(name_text(question.name), rdtype, fast)
    assert exact(mine) == exact(dnspython_reading(octets, query)), octets.hex()
    return True


# -- the query ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["example.org", "Mixed-Case.Example.", "xn--bcher-kva.example",
                                  "a." * 100 + "example", r"odd\032label\.dot.example", "."])
@pytest.mark.parametrize("rdtype", ["MX", "A", "AAAA", "TLSA", "TXT"])
def test_the_query_octets_are_dnspythons(name, rdtype):
    for query_id in (0, 1, 4711, 65535):
        qname = dns.name.from_text(name)
        for dnssec, checking_disabled in ((False, False), (True, False), (True, True), (False, True)):
            assert (wire.query_wire(qname, rdtype, query_id, EDNS_PAYLOAD, dnssec=dnssec,
                                    checking_disabled=checking_disabled)
                    == query_for(qname, rdtype, query_id, dnssec=dnssec,
                                 checking_disabled=checking_disabled).to_wire())


# -- a real server's answers -------------------------------------------------------------------
@pytest.fixture(scope="module")
def knot_server():
    require_knot()
    with start_knot([Zone(ZONE, RECORDS, negative_ttl=60)]) as server:
        yield server


def ask(server, name: str, rdtype: str, case_mix: bool = False) -> tuple[bytes, dns.message.Message]:
    if case_mix:  # as a resolver using DNS 0x20 would ask
        name = "".join(c.upper() if i % 2 else c for i, c in enumerate(name))
    query = query_for(name, rdtype, random.randrange(65536))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(query.to_wire(), server.nameserver)
        octets, _ = sock.recvfrom(65535)
    return octets, query


@pytest.mark.parametrize(("label", "rdtype", "decided"), [
    ("two", "MX", True),  # with the MX hosts' addresses as glue
    ("mxa.two", "A", True),
    ("mxa.two", "AAAA", True),
    ("mxb.two", "AAAA", True),  # NODATA, the SOA in the authority section
    ("v6", "AAAA", True),
    ("nodata", "MX", True),
    ("missing", "MX", True),  # NXDOMAIN
    ("deep.missing", "A", True),
    ("nullmx", "MX", True),
    ("mixed-case", "MX", True),
    ("alias", "MX", False),  # a CNAME: dnspython follows it
    ("x.lame", "A", False),  # a referral
])
def test_a_real_servers_answers_read_as_dnspython_reads_them(knot_server, label, rdtype, decided):
    for case_mix in (False, True):
        octets, query = ask(knot_server, f"{label}.{ZONE}", rdtype, case_mix)
        assert check(octets, query) is decided


def test_every_shorter_copy_of_a_real_answer_is_left_to_dnspython(knot_server):
    octets, query = ask(knot_server, f"two.{ZONE}", "MX")
    for size in range(len(octets)):
        assert not check(octets[:size], query)
    assert not check(octets + b"\x00", query)  # trailing junk


# -- responses built with dnspython ------------------------------------------------------------
def response_to(query: dns.message.Message, answer=(), authority=(), additional=(),
                rcode: int = dns.rcode.NOERROR, flags: int = 0,
                options=()) -> dns.message.Message:
    response = dns.message.make_response(query)
    response.flags |= flags
    response.set_rcode(rcode)
    if options:
        response.use_edns(0, payload=EDNS_PAYLOAD, options=list(options))
    for section, texts in ((response.answer, answer), (response.authority, authority),
                           (response.additional, additional)):
        for text in texts:
            owner, ttl, rdtype, data = text.split(maxsplit=3)
            section.append(dns.rrset.from_text(owner, int(ttl), "IN", rdtype, data))
    return response


def rr(owner: str, ttl: int, rdtype: str, data: str) -> str:
    return f"{owner} {ttl} {rdtype} {data}"


SOA = "ns.example.org. hostmaster.example.org. 1 3600 600 86400 60"


def sig(covered: str, signer: str = "example.org.") -> str:
    """An RRSIG record's data covering `covered` (the signature is not checked by anyone here)."""
    return f"{covered} 13 3 300 20300101000000 20200101000000 4711 {signer} AAAA"


@pytest.mark.parametrize(("rdtype", "sections", "decided"), [
    ("MX", dict(answer=[rr("d.example.org.", 300, "MX", "10 mx.d.example.org."),
                        rr("d.example.org.", 200, "MX", "20 MX2.d.example.org.")],
                additional=[rr("mx.d.example.org.", 300, "A", "192.0.2.1"),
                            rr("mx.d.example.org.", 300, "AAAA", "2001:db8::1")]), True),
    ("A", dict(answer=[rr("d.example.org.", 0, "A", "192.0.2.1")]), True),
    ("AAAA", dict(answer=[rr("d.example.org.", 30, "AAAA", "::ffff:192.0.2.1"),
                          rr("d.example.org.", 30, "AAAA", "2001:db8::")]), True),
    ("MX", dict(authority=[rr("example.org.", 900, "SOA", SOA)]), True),  # NODATA
    ("MX", dict(authority=[rr("d.example.org.", 30, "SOA", SOA)]), True),
    ("MX", dict(authority=[rr(".", 30, "SOA", SOA)]), True),
    ("MX", dict(authority=[rr("other.org.", 30, "SOA", SOA)]), False),  # dnspython versions differ
    ("MX", dict(authority=[rr("example.org.", 30, "SOA", SOA),
                           rr("example.org.", 30, "SOA", SOA.replace(" 1 ", " 2 "))]), False),
    ("MX", dict(), True),  # NODATA without an SOA: not to be kept
    ("MX", dict(authority=[rr("example.org.", 30, "NS", "ns.example.org.")]), False),  # referral
    ("MX", dict(answer=[rr("d.example.org.", 30, "MX", "10 mx.example.org.")],
                authority=[rr("example.org.", 30, "NS", "ns.example.org.")]), True),
    ("MX", dict(answer=[rr("d.example.org.", 30, "CNAME", "e.example.org."),
                        rr("e.example.org.", 30, "MX", "10 mx.example.org.")]), False),
    ("MX", dict(answer=[rr("other.example.org.", 30, "MX", "10 mx.example.org.")]), False),
    ("A", dict(answer=[rr("d.example.org.", 30, "MX", "10 mx.example.org.")]), False),
    ("MX", dict(answer=[rr("d.example.org.", 30, "MX", "0 .")]), True),  # null MX
    ("MX", dict(answer=[rr("d.example.org.", 30, "MX", "10 192.0.2.1.")]), True),
    ("MX", dict(answer=[rr("d.example.org.", 30, "MX", "10 mx.example.org.")],
                additional=[rr("mx.example.org.", 30, "TXT", '"x"')]), False),
    # Signed answers, as a validating resolver gives them to a question with the DO bit.
    ("A", dict(answer=[rr("d.example.org.", 30, "A", "192.0.2.1")],
               additional=[rr("d.example.org.", 30, "RRSIG", sig("A"))]), True),
    ("MX", dict(answer=[rr("d.example.org.", 300, "MX", "10 mx.d.example.org."),
                        rr("d.example.org.", 300, "RRSIG", sig("MX"))]), True),
    ("TLSA", dict(answer=[rr("d.example.org.", 300, "RRSIG", sig("TLSA")),
                          rr("d.example.org.", 300, "TLSA", f"3 1 1 {'ab' * 32}"),
                          rr("d.example.org.", 200, "TLSA", f"2 0 2 {'cd' * 64}"),
                          rr("d.example.org.", 300, "TLSA", "3 0 0 308201")]), True),
    ("TXT", dict(answer=[rr("d.example.org.", 60, "TXT", '"v=STSv1; id=1"'),
                         rr("d.example.org.", 60, "TXT", '"two " "strings" ""'),
                         rr("d.example.org.", 60, "RRSIG", sig("TXT"))]), True),
    ("TXT", dict(authority=[rr("example.org.", 900, "SOA", SOA),
                            rr("example.org.", 900, "RRSIG", sig("SOA"))]), True),  # NODATA
    ("TLSA", dict(answer=[rr("d.example.org.", 300, "TLSA", f"3 1 1 {'ab' * 32}"),
                          rr("d.example.org.", 300, "RRSIG", sig("TXT"))]), False),  # covers another type
    ("TLSA", dict(answer=[rr("d.example.org.", 300, "TLSA", f"3 1 1 {'ab' * 32}"),
                          rr("e.example.org.", 300, "RRSIG", sig("TLSA"))]), False),  # another name's
    ("TLSA", dict(authority=[rr("example.org.", 900, "SOA", SOA),
                             rr("d.example.org.", 900, "NSEC", "e.example.org. A RRSIG NSEC")]), False),
    ("TLSA", dict(authority=[rr("example.org.", 900, "SOA", SOA),
                             rr("x.example.org.", 900, "NSEC3", "1 0 0 - 0P9MHAVEQVM6T7VBL5LOP2U3T2RP3TOM A")]), False),
    ("TXT", dict(answer=[rr("d.example.org.", 60, "TXT", '"x"'), rr("d.example.org.", 60, "SPF", '"x"')]), False),
])
def test_responses_of_each_shape(rdtype, sections, decided):
    query = query_for("d.example.org", rdtype)
    for rcode in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        for flags in (0, dns.flags.AA, dns.flags.AD):
            octets = response_to(query, rcode=rcode, flags=flags, **sections).to_wire()
            expected = decided and not (rcode == dns.rcode.NXDOMAIN and sections.get("answer"))
            assert check(octets, query) is expected


@pytest.mark.parametrize("rcode", [dns.rcode.SERVFAIL, dns.rcode.REFUSED, dns.rcode.FORMERR,
                                   dns.rcode.BADVERS])
def test_failure_rcodes_are_left_to_dnspython(rcode):
    query = query_for("d.example.org", "A")
    assert not check(response_to(query, rcode=rcode).to_wire(), query)


def test_an_edns_option_or_the_tc_flag_or_another_id_is_left_to_dnspython():
    query = query_for("d.example.org", "A")
    answer = [rr("d.example.org.", 30, "A", "192.0.2.1")]
    nsid = dns.edns.GenericOption(dns.edns.NSID, b"ns1")
    assert check(response_to(query, answer=answer).to_wire(), query)
    assert not check(response_to(query, answer=answer, options=[nsid]).to_wire(), query)
    assert not check(response_to(query, answer=answer, flags=dns.flags.TC).to_wire(), query)
    other = query_for("d.example.org", "A", query.id ^ 1)
    assert not check(response_to(other, answer=answer).to_wire(), query)
    assert not check(response_to(query_for("e.example.org", "A", query.id)).to_wire(), query)
    assert not check(response_to(query_for("d.example.org", "AAAA", query.id)).to_wire(), query)


# -- hand-made octets --------------------------------------------------------------------------
HEADER = struct.Struct("!HHHHHH")
QNAME = b"\x01d\x07example\x03org\x00"  # at offset 12


def message(answer: bytes, ancount: int = 1, query_id: int = 4711) -> bytes:
    return (HEADER.pack(query_id, 0x8180, 1, ancount, 0, 0) + QNAME + b"\x00\x0f\x00\x01"
            + answer)


def mx(owner: bytes, exchange: bytes, ttl: int = 30) -> bytes:
    return owner + struct.pack("!HHIHH", 15, 1, ttl, 2 + len(exchange), 10) + exchange


def test_hand_made_compression():
    query = query_for("d.example.org", "MX", 4711)
    # Pointers back to the question's name: decided.
    assert check(message(mx(b"\xc0\x0c", b"\x02mx\xc0\x0c")), query)
    assert check(message(mx(b"\xc0\x0c", b"\x02mx\xc0\x0e")), query)  # to "example.org"
    # A pointer to itself, forward, into the middle of a label, loops between two names,
    # a label type of 64 - 191, a pointer cut off: never decided here.
    looping = [
        mx(b"\xc0\x0c", b"\xc0\x33"),  # the exchange points at itself
        mx(b"\xc0\x40", b"\x02mx\xc0\x0c"),  # forward
        mx(b"\xc0\x0d", b"\x02mx\xc0\x0c"),  # into "d"'s label
        mx(b"\x01a\xc0\x2d", b"\x01b\xc0\x2b"),  # a, b point at each other
        mx(b"\x41a\x00", b"\x02mx\xc0\x0c"),
        mx(b"\xc0\x0c", b"\x02mx\xc0"),
    ]
    for answer in looping:
        assert not check(message(answer), query)
    # A name of more than 255 octets (four labels of 63, then the question's name).
    long_name = b"".join(b"\x3f" + bytes([65 + i]) * 63 for i in range(4)) + b"\xc0\x0c"
    assert not check(message(mx(b"\xc0\x0c", long_name)), query)
    assert not check(message(mx(long_name, b"\x02mx\xc0\x0c")), query)


def ladder(hops: int) -> tuple[bytes, int]:
    """Octets holding a name reached through `hops` compression pointers, and its offset."""
    octets = bytearray(12)
    previous = None
    for _ in range(hops):
        here = len(octets)
        octets += b"\x01x" + (struct.pack("!H", 0xC000 | previous) if previous else b"\x00")
        previous = here
    start = len(octets)
    octets += struct.pack("!H", 0xC000 | previous)
    return bytes(octets), start


def test_a_chain_of_sixteen_pointers_is_read_and_seventeen_are_not():
    octets, start = ladder(16)
    labels, after = wire._name(octets, start, len(octets))
    name = dns.name.from_wire(octets, start)[0]  # dnspython reads it too, the same
    assert labels == name.labels[:-1] and after == len(octets)
    octets, start = ladder(17)
    with pytest.raises(wire._NotPlain):
        wire._name(octets, start, len(octets))


def test_a_duplicate_record_or_a_huge_ttl_is_left_to_dnspython():
    query = query_for("d.example.org", "MX", 4711)
    one = mx(b"\xc0\x0c", b"\x02mx\xc0\x0c")
    assert check(message(one), query)
    assert not check(message(one + one, ancount=2), query)
    assert not check(message(one + mx(b"\xc0\x0c", b"\x02MX\xc0\x0c"), ancount=2), query)
    assert not check(message(mx(b"\xc0\x0c", b"\x02mx\xc0\x0c", ttl=0x80000000)), query)
    assert check(message(mx(b"\xc0\x0c", b"\x02mx\xc0\x0c", ttl=0x7FFFFFFF)), query)


def record(owner: bytes, rdtype: int, data: bytes, ttl: int = 30) -> bytes:
    return owner + struct.pack("!HHIH", rdtype, 1, ttl, len(data)) + data


def typed_message(qtype: int, answer: bytes, ancount: int = 1) -> bytes:
    return (HEADER.pack(4711, 0x81A0, 1, ancount, 0, 0) + QNAME + struct.pack("!HH", qtype, 1)
            + answer)


SIGNATURE = struct.pack("!HBBIIIH", 52, 13, 3, 300, 2**31, 2**30, 4711)


def test_hand_made_tlsa_txt_and_signatures():
    tlsa, txt = query_for("d.example.org", "TLSA", 4711, dnssec=True), query_for("d.example.org", "TXT", 4711)
    good = record(b"\xc0\x0c", 52, b"\x03\x01\x01" + b"\xab" * 32)
    signed = record(b"\xc0\x0c", 46, SIGNATURE + b"\x07example\x03org\x00" + b"sig")
    assert check(typed_message(52, good + signed, 2), tlsa)
    not_decided = [
        typed_message(52, record(b"\xc0\x0c", 52, b"\x03\x01\x01" + b"\xab" * 31)),  # SHA-256 of 31 octets
        typed_message(52, record(b"\xc0\x0c", 52, b"\x03\x01\x02" + b"\xab" * 32)),  # SHA-512 of 32
        typed_message(52, record(b"\xc0\x0c", 52, b"\x03\x01\x00")),  # no data at all
        typed_message(52, record(b"\xc0\x0c", 52, b"\x03\x01")),
        typed_message(52, good + good, 2),  # a duplicate
        # The signer's name compressed (later dnspython versions refuse it), cut short, or
        # a signature too short to hold one.
        typed_message(52, good + record(b"\xc0\x0c", 46, SIGNATURE + b"\xc0\x0e"), 2),
        typed_message(52, good + record(b"\xc0\x0c", 46, SIGNATURE + b"\x07example"), 2),
        typed_message(52, good + record(b"\xc0\x0c", 46, SIGNATURE[:10]), 2),
    ]
    for octets in not_decided:
        assert not check(octets, tlsa), octets.hex()
    assert check(typed_message(16, record(b"\xc0\x0c", 16, b"\x00")), txt)  # one empty string
    assert check(typed_message(16, record(b"\xc0\x0c", 16, b"\x02ab\x01c")), txt)
    for data in (b"", b"\x03ab", b"\x02ab\x05c"):  # no string (later versions refuse it), cut short
        assert not check(typed_message(16, record(b"\xc0\x0c", 16, data)), txt), data


# -- hypothesis --------------------------------------------------------------------------------
NAMES = ["d.example.org.", "D.Example.ORG.", "example.org.", "org.", ".", "mx.d.example.org.",
         "other.example.", "e.example.org."]
RDATA = {
    "A": ["192.0.2.1", "192.0.2.2", "127.0.0.1"],
    "AAAA": ["::1", "2001:db8::1", "::ffff:192.0.2.1"],
    "MX": ["10 mx.d.example.org.", "20 MX.d.example.org.", "0 .", "5 d.example.org."],
    "NS": ["ns.example.org."],
    "SOA": [SOA, "ns.example.org. hostmaster.example.org. 1 3600 600 86400 4294967295"],
    "CNAME": ["e.example.org."],
    "TXT": ['"t"', '"v=STSv1; id=1" "more"', '""'],
    "TLSA": [f"3 1 1 {'ab' * 32}", f"2 0 2 {'cd' * 64}", "3 1 0 3059"],
    "RRSIG": [sig("MX"), sig("A"), sig("TLSA"), sig("TXT"), sig("SOA"), sig("AAAA", ".")],
    "NSEC": ["e.example.org. A MX RRSIG NSEC"],
}
TYPES = tuple(sorted(RDATA))
ASKED = ("MX", "A", "AAAA", "TLSA", "TXT")


@st.composite
def records(draw, max_size: int, owners=tuple(NAMES), types=TYPES) -> list[str]:
    out = []
    for _ in range(draw(st.integers(0, max_size))):
        rdtype = draw(st.sampled_from(types))
        out.append(rr(draw(st.sampled_from(owners)), draw(st.sampled_from([0, 1, 300, 2**31 - 1])),
                      rdtype, draw(st.sampled_from(RDATA[rdtype]))))
    return out


@st.composite
def responses(draw) -> tuple[bytes, dns.message.Message]:
    """Responses of any shape, or (half of them) of the shapes the reader decides, with a
    record of any kind slipped in now and then."""
    rdtype = draw(st.sampled_from(ASKED))
    query = query_for(draw(st.sampled_from(NAMES[:2])), rdtype, draw(st.integers(0, 65535)),
                      dnssec=draw(st.booleans()))
    if draw(st.booleans()):
        # distinct data (a duplicate is left to dnspython), at most one SOA, signatures
        answer = list({text.split(maxsplit=3)[-1].lower(): text for text in
                       draw(records(4, owners=NAMES[:2], types=(rdtype,)))}.values())
        answer += [rr(draw(st.sampled_from(NAMES[:2])), 300, "RRSIG", sig(rdtype))
                   for _ in range(draw(st.integers(0, 2)))]
        authority = list({text.split()[2]: text for text in draw(records(
            2, owners=("example.org.", "org.", "D.example.org."), types=("SOA", "NS")))}.values())
        authority += draw(records(1, owners=("example.org.",), types=("RRSIG",)))
        additional = draw(records(3, owners=NAMES, types=("A", "AAAA", "RRSIG")))
        for section in (answer, authority, additional):
            if draw(st.integers(0, 9)) == 0:
                section += draw(records(1))
    else:
        answer, authority, additional = draw(records(4)), draw(records(3)), draw(records(3))
    response = response_to(
        query, answer=answer, authority=authority, additional=additional,
        rcode=draw(st.sampled_from([0, 0, 0, 0, 3, 3, 2, 16])),
        flags=draw(st.sampled_from([0, 0, 0, dns.flags.AA, dns.flags.AD, dns.flags.TC])))
    try:
        octets = response.to_wire()
    except Exception:  # a combination dnspython will not write
        octets = b""
    return octets, query


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(responses())
def test_generated_responses(built):
    octets, query = built
    event("decided" if check(octets, query) else "left to dnspython")


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(responses(), st.lists(st.tuples(st.integers(0, 600), st.integers(0, 255),
                                       st.sampled_from(["set", "insert", "delete"])),
                             min_size=1, max_size=4))
def test_mutated_responses(built, mutations):
    octets, query = built
    changed = bytearray(octets)
    for position, value, how in mutations:
        if not changed:
            break
        position %= len(changed)
        if how == "set":
            changed[position] = value
        elif how == "insert":
            changed.insert(position, value)
        else:
            del changed[position]
    event("decided" if check(bytes(changed), query) else "left to dnspython")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
@example(b"\x12\x67\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00" + QNAME + b"\x00\x0f\x00\x01\xc0\x0c")
def test_garbage_after_a_plausible_header(tail):
    query = query_for("d.example.org", "MX", 0x1267)
    check(b"\x12\x67\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00" + QNAME + b"\x00\x0f\x00\x01" + tail,
          query)
    check(tail, query)


# -- in the resolver ---------------------------------------------------------------------------
def test_a_domain_of_plain_answers_is_resolved_without_dnspythons_parser(knot_server, monkeypatch):
    """The resolver really takes the reader's way for plain answers (and dnspython's for the
    rest): with dnspython's parser broken, a domain of plain answers still resolves, and a
    CNAME's answer fails as unreadable."""
    from smtpmon.dns import MxResolver, ResolverSettings

    def broken(*args, **kwargs):
        raise AssertionError("dnspython's parser was called")

    monkeypatch.setattr(dns.message, "from_wire", broken)
    resolver = MxResolver(ResolverSettings(nameservers=(knot_server.nameserver,)))
    result = resolver.resolve(f"two.{ZONE}")
    assert result.state == "ok"
    assert [(h.preference, h.name, [a.ip for a in h.addresses]) for h in result.mx_hosts] == [
        (10, f"mxa.two.{ZONE}", ["::1", "127.0.56.1", "127.0.56.2"]),
        (20, f"mxb.two.{ZONE}", ["127.0.56.3"])]
    assert {(lookup.rdtype, lookup.state) for lookup in result.lookups} == {
        ("MX", "ok"), ("AAAA", "ok"), ("A", "ok"), ("AAAA", "nodata")}
    aliased = resolver.resolve(f"alias.{ZONE}")
    assert aliased.state == "bad_response"
    assert "AssertionError: dnspython's parser was called" in " ".join(aliased.notes)
