"""The common answers to MX, A, AAAA, TLSA and TXT questions, read straight from the wire.

A refreshed domain resolution spent most of its CPU in dnspython's `dns.message.from_wire`,
which builds every record of every section as objects (the MX answer's glue addresses in the
additional section included, which nothing reads), and in `make_query` and `to_wire` for a
query that only differs from the last one by its ID (benchmarks/README.md, the domains
benchmark); with DANE and MTA-STS on, a domain refreshes five more answers a TTL (the MX with
DNSSEC, two TLSA, two TXT), each signed (mail_tls benchmark). This module does both for the
shapes a resolver gives nearly always, and nothing else:

- `query_wire`: the query dnspython's `make_query(name, rdtype, use_edns=0, payload=...,
  want_dnssec=...)` makes (with the CD flag set when asked), byte for byte
  (tests/test_dns_wire.py compares them).
- `read_answer`: the outcome of a response to such a query when it is one of the plain cases:
  the question echoed, QR set, no TC, rcode NOERROR or NXDOMAIN (EDNS's extended bits
  included), an answer section of records of the question's name and type only (no CNAME)
  and their signatures (RRSIG), an authority section of SOA and NS records and signatures,
  an additional section of A, AAAA, signatures and one OPT without options; every record
  read and checked as dnspython checks it (rdata lengths, names and their compression
  pointers, trailing octets), signatures included, though nothing here uses them: the AD
  bit says what a validating resolver made of them. Anything else (a CNAME, a referral, a
  second SOA, NSEC or NSEC3 records, a duplicate record, an EDNS option, an unknown type, a
  TTL over 2^31 - 1, any malformation) returns None, and the caller parses the same octets
  with dnspython, whose verdict then stands. So this reader never decides a case
  differently from dnspython: it only decides the ones it is sure of, faster. Where
  dnspython 2.3 and later versions differ (compression pointers, empty TXT data, a TLSA
  digest of the wrong length: later ones are stricter), the stricter rule is applied here,
  so that both versions agree with this reader wherever it answers.

The records come out as the resolver's Answer holds them: (preference, dns.name.Name) for MX,
address texts for A and AAAA, dnspython's own (immutable) rdata for TLSA and TXT.
"""

from __future__ import annotations

import functools
import struct
from typing import NamedTuple

import dns.ipv4
import dns.ipv6
import dns.name
import dns.rdataclass
import dns.rdatatype
from dns.rdtypes.ANY.TLSA import TLSA
from dns.rdtypes.ANY.TXT import TXT

TYPE_A, TYPE_NS, TYPE_SOA, TYPE_MX, TYPE_TXT, TYPE_AAAA = 1, 2, 6, 15, 16, 28
TYPE_OPT, TYPE_RRSIG, TYPE_TLSA = 41, 46, 52
TYPES = {"A": TYPE_A, "AAAA": TYPE_AAAA, "MX": TYPE_MX, "TLSA": TYPE_TLSA, "TXT": TYPE_TXT}
CLASS_IN = 1
FLAG_QR, FLAG_AA, FLAG_TC, FLAG_RD, FLAG_AD, FLAG_CD = 0x8000, 0x0400, 0x0200, 0x0100, 0x0020, 0x0010
EDNS_DO = 0x8000  # in the OPT record's TTL field: DNSSEC OK
RRSIG_FIXED_OCTETS = 18  # type covered, algorithm, labels, TTL, expiration, inception, key tag
# The digest length of TLSA matching types 1 (SHA-256) and 2 (SHA-512): later dnspython
# versions refuse a record whose data has another length.
TLSA_DIGEST_OCTETS = {1: 32, 2: 64}
RCODE_NOERROR, RCODE_NXDOMAIN = 0, 3
MAX_NAME_OCTETS = 255
MAX_POINTER_HOPS = 16  # dnspython's MAX_COMPRESSION_POINTER_CHAIN (2.4 and later)
MAX_RRSET_TTL = 0x7FFFFFFF  # dnspython reads a larger record TTL as 0 (RFC 2181 8)
TTL_CEILING = 2**32 - 1  # dnspython's MAX_TTL: where resolve_chaining's minimum starts

_HEADER = struct.Struct("!HHHHHH")
_RR = struct.Struct("!HHIH")
_QUESTION_TAIL = struct.Struct("!HH")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


class WireAnswer(NamedTuple):
    """What the resolver keeps of a plain response (see the module's docstring)."""

    rcode: int  # RCODE_NOERROR or RCODE_NXDOMAIN
    records: tuple  # MX: (preference, dns.name.Name); A, AAAA: address texts; TLSA, TXT: rdata
    ttl: int  # as dnspython's resolve_chaining().minimum_ttl would say
    has_soa: bool  # an SOA in the authority section (no SOA: a negative answer is not kept)
    authenticated: bool  # the AD bit


class _NotPlain(Exception):
    """The response is not one this module decides: dnspython reads it."""


def query_wire(name: dns.name.Name, rdtype: str, query_id: int, payload: int, *,
               dnssec: bool = False, checking_disabled: bool = False) -> bytes:
    """The octets of dnspython's make_query(name, rdtype, use_edns=0, payload=payload,
    want_dnssec=dnssec) with `query_id`, and the CD flag when `checking_disabled`: RD set,
    one question (class IN), an OPT record (version 0, the DO flag alone or no flag, no
    options) in the additional section."""
    flags = FLAG_RD | (FLAG_CD if checking_disabled else 0)
    return (_HEADER.pack(query_id, flags, 1, 0, 0, 1)
            + _question(name.labels, TYPES[rdtype])
            + b"\x00" + _RR.pack(TYPE_OPT, payload, EDNS_DO if dnssec else 0, 0))


# Keyed by the labels, not the Name: a Name's hash is worked out afresh at every call.
@functools.lru_cache(maxsize=16384)
def _question(labels: tuple[bytes, ...], rdtype: int) -> bytes:
    return dns.name.Name(labels).to_wire() + _QUESTION_TAIL.pack(rdtype, CLASS_IN)


def read_answer(wire: bytes, query_id: int, name: dns.name.Name,
                rdtype: str) -> WireAnswer | None:
    """The response `wire` to the query `query_wire(name, rdtype, query_id, ...)`, or None
    when it is not a plain one (dnspython is to read it)."""
    try:
        return _read(wire, query_id, _lowered(name.labels), TYPES[rdtype])
    except (_NotPlain, struct.error, IndexError):
        return None


@functools.lru_cache(maxsize=16384)
def _lowered(labels: tuple[bytes, ...]) -> tuple[bytes, ...]:
    # Absolute names only (the resolver's questions): the root's empty label left out.
    return tuple(label.lower() for label in labels[:-1])


def _read(wire: bytes, query_id: int, qname: tuple[bytes, ...], qtype: int) -> WireAnswer:
    end = len(wire)
    if end < 12:
        raise _NotPlain
    ident, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(wire, 0)
    # A response (QR), to this query (ID), a standard query (opcode 0), complete (no TC).
    if ident != query_id or flags & 0xFA00 != FLAG_QR or qdcount != 1:
        raise _NotPlain
    labels, offset = _name(wire, 12, end)
    qt, qc = _QUESTION_TAIL.unpack_from(wire, offset)
    offset += 4
    if offset > end or qt != qtype or qc != CLASS_IN or _lower(labels) != qname:
        raise _NotPlain

    records: list = []
    seen: set = set()
    answer_ttl = TTL_CEILING
    for _ in range(ancount):
        labels, offset = _name(wire, offset, end)
        rtype, rclass, ttl, rdlen = _RR.unpack_from(wire, offset)
        offset += 10
        stop = offset + rdlen
        if (stop > end or rclass != CLASS_IN or ttl > MAX_RRSET_TTL
                or _lower(labels) != qname):
            raise _NotPlain
        if rtype == TYPE_RRSIG:  # a signature of the answer: checked, not kept
            if _signature(wire, offset, stop) != qtype:
                raise _NotPlain
            offset = stop
            continue
        if rtype != qtype:
            raise _NotPlain
        if rtype == TYPE_MX:
            if rdlen < 3:
                raise _NotPlain
            preference = _U16.unpack_from(wire, offset)[0]
            exchange, after = _name(wire, offset + 2, stop)
            if after != stop:
                raise _NotPlain
            key: object = (preference, _lower(exchange))
            record: object = (preference, _name_object(exchange))
        elif rtype == TYPE_TLSA:
            key = wire[offset:stop]
            record = _tlsa(key)
        elif rtype == TYPE_TXT:
            key = wire[offset:stop]
            record = _txt(key)
        else:
            if rdlen != (4 if rtype == TYPE_A else 16):
                raise _NotPlain
            key = wire[offset:stop]
            record = _address_text(key)
        if key in seen:  # dnspython keeps one of the two, and the TTL rules differ
            raise _NotPlain
        seen.add(key)
        records.append(record)
        answer_ttl = min(answer_ttl, ttl)
        offset = stop

    soa: tuple | None = None
    ns = False
    for _ in range(nscount):
        labels, offset = _name(wire, offset, end)
        rtype, rclass, ttl, rdlen = _RR.unpack_from(wire, offset)
        offset += 10
        stop = offset + rdlen
        if stop > end or rclass != CLASS_IN or ttl > MAX_RRSET_TTL:
            raise _NotPlain
        if rtype == TYPE_SOA:
            if soa is not None:
                raise _NotPlain
            _, after = _name(wire, offset, stop)
            _, after = _name(wire, after, stop)
            if after + 20 != stop:
                raise _NotPlain
            minimum = _U32.unpack_from(wire, after + 16)[0]
            soa = (_lower(labels), ttl, minimum)
        elif rtype == TYPE_NS:
            _, after = _name(wire, offset, stop)
            if after != stop:
                raise _NotPlain
            ns = True
        elif rtype == TYPE_RRSIG:
            _signature(wire, offset, stop)
        else:
            raise _NotPlain
        offset = stop

    extended = 0
    opt = False
    for _ in range(arcount):
        labels, offset = _name(wire, offset, end)
        rtype, rclass, ttl, rdlen = _RR.unpack_from(wire, offset)
        offset += 10
        stop = offset + rdlen
        if stop > end:
            raise _NotPlain
        if rtype == TYPE_OPT:
            if opt or labels or rdlen != 0:  # one OPT, owned by the root, no options
                raise _NotPlain
            opt = True
            extended = ttl >> 24
        elif rtype in (TYPE_A, TYPE_AAAA):
            if (rclass != CLASS_IN or ttl > MAX_RRSET_TTL
                    or rdlen != (4 if rtype == TYPE_A else 16)):
                raise _NotPlain
        elif rtype == TYPE_RRSIG:
            if rclass != CLASS_IN or ttl > MAX_RRSET_TTL:
                raise _NotPlain
            _signature(wire, offset, stop)
        else:
            raise _NotPlain
        offset = stop
    if offset != end:  # trailing octets: dnspython's TrailingJunk
        raise _NotPlain

    rcode = (flags & 0x000F) | (extended << 4)
    if rcode not in (RCODE_NOERROR, RCODE_NXDOMAIN) or (rcode == RCODE_NXDOMAIN and records):
        raise _NotPlain
    if records:
        ttl_seconds = answer_ttl
    elif soa is None:
        if ns:  # a referral, or close to one: dnspython's reading says which
            raise _NotPlain
        ttl_seconds = 0
    else:
        owner, soa_ttl, minimum = soa
        # resolve_chaining takes the SOA of the question's name or of a parent of it; an SOA
        # of another name is read differently by dnspython's versions.
        if owner != qname[len(qname) - len(owner):]:
            raise _NotPlain
        ttl_seconds = min(TTL_CEILING, soa_ttl, minimum)
    return WireAnswer(rcode, tuple(records), ttl_seconds, soa is not None,
                      bool(flags & FLAG_AD))


def _signature(wire: bytes, offset: int, stop: int) -> int:
    """The type an RRSIG record's data at `offset` (ending at `stop`) covers, its data checked
    as dnspython reads it: the fixed fields, then the signer's name, uncompressed (later
    dnspython versions refuse a compressed one), then the signature."""
    if stop - offset < RRSIG_FIXED_OCTETS + 1:
        raise _NotPlain
    _name(wire, offset + RRSIG_FIXED_OCTETS, stop, compressed=False)
    return _U16.unpack_from(wire, offset)[0]


@functools.lru_cache(maxsize=16384)  # the same records come back at every refresh
def _tlsa(data: bytes) -> TLSA:
    """dnspython's TLSA rdata of `data`; an empty digest, or one whose length does not fit its
    matching type, is left to dnspython."""
    if len(data) < 4:
        raise _NotPlain
    usage, selector, matching_type = data[0], data[1], data[2]
    digest = data[3:]
    if len(digest) != TLSA_DIGEST_OCTETS.get(matching_type, len(digest)):
        raise _NotPlain
    return TLSA(dns.rdataclass.IN, dns.rdatatype.TLSA, usage, selector, matching_type, digest)


@functools.lru_cache(maxsize=16384)
def _txt(data: bytes) -> TXT:
    """dnspython's TXT rdata of `data`: one or more strings, each with its length first,
    filling the data exactly (later dnspython versions refuse none)."""
    strings = []
    offset = 0
    while offset < len(data):
        stop = offset + 1 + data[offset]
        if stop > len(data):
            raise _NotPlain
        strings.append(data[offset + 1:stop])
        offset = stop
    if not strings:
        raise _NotPlain
    return TXT(dns.rdataclass.IN, dns.rdatatype.TXT, strings)


def _name(wire: bytes, offset: int, end: int, *,
          compressed: bool = True) -> tuple[tuple[bytes, ...], int]:
    """The labels of the name at `offset` (the root's empty label left out) and the offset
    after it, with `end` the end of what it may occupy (a record's data, or the message).

    dnspython's rules, the stricter of its versions: a compression pointer points before
    the previous one (before the name's start, at first), at most 16 of them, and a name
    continued at a pointer must end before the part that pointed there began; a name has
    at most 255 octets; label types other than lengths and pointers are refused; with
    `compressed` False, so is any pointer."""
    labels = []
    octets = 1
    after = -1
    hops = 0
    limit = end
    start = offset
    while True:
        if offset >= limit:
            raise _NotPlain
        count = wire[offset]
        if count == 0:
            offset += 1
            break
        if count < 64:
            offset += 1 + count
            if offset > limit:
                raise _NotPlain
            labels.append(wire[offset - count:offset])
            octets += 1 + count
        elif count >= 192:
            if not compressed or offset + 2 > limit:
                raise _NotPlain
            target = (count & 0x3F) << 8 | wire[offset + 1]
            if target >= start:
                raise _NotPlain
            hops += 1
            if hops > MAX_POINTER_HOPS:
                raise _NotPlain
            if after < 0:
                after = offset + 2
            limit = start
            offset = start = target
        else:
            raise _NotPlain
    if octets > MAX_NAME_OCTETS:
        raise _NotPlain
    return tuple(labels), (offset if after < 0 else after)


def _lower(labels: tuple[bytes, ...]) -> tuple[bytes, ...]:
    return tuple(label.lower() for label in labels)


@functools.lru_cache(maxsize=16384)  # the same MX hosts come back at every refresh
def _name_object(labels: tuple[bytes, ...]) -> dns.name.Name:
    return dns.name.Name(labels + (b"",))


@functools.lru_cache(maxsize=16384)
def _address_text(packed: bytes) -> str:
    return dns.ipv4.inet_ntoa(packed) if len(packed) == 4 else dns.ipv6.inet_ntoa(packed)
