"""DANE matching (RFC 6698 / 7671 / 7672) against chains presented by real SMTP servers over
STARTTLS, and the record and policy grammars of MTA-STS and TLS-RPT. The DNS side (secure,
insecure, bogus lookups through a real validating resolver) is in test_mailtls_dane.py."""

from __future__ import annotations

import datetime
import hashlib

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from mailtls_sender import starttls_chain
from smtpservers import AiosmtpdServer, server_tls_context

from smtpmon.mailtls import mtasts, tlsrpt
from smtpmon.mailtls.dane import TlsaLookup, TlsaRecord, association_data, check_address

MX = "mx.dane.test"


def der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


def spki(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def secure(*records: TlsaRecord, host: str = MX) -> TlsaLookup:
    return TlsaLookup(host + ".", 25, f"_25._tcp.{host}.", "secure", records, 300, False, "test")


@pytest.fixture(scope="module")
def pki():
    root = trustme.CA()
    intermediate = root.create_child_ca()
    return {
        "root": root,
        "intermediate": intermediate,
        "leaf": intermediate.issue_cert(MX),
        "next": trustme.CA().issue_cert(MX),  # the key of the next rollover
    }


@pytest.fixture(scope="module")
def presented(pki):
    """The chain a real STARTTLS server (aiosmtpd on 127.18.2.1) presents: leaf, intermediate."""
    server = AiosmtpdServer(starttls_context=server_tls_context(pki["leaf"]), host="127.18.2.1").start()
    try:
        offered, chain = starttls_chain(server.host, server.port, MX)
    finally:
        server.stop()
    assert offered
    return chain


def test_the_presented_chain_is_read_whole_leaf_first(pki, presented):
    assert presented == (der(pki["leaf"].cert_chain_pems[0].bytes()),
                         der(pki["intermediate"].cert_pem.bytes()))


@pytest.mark.parametrize("selector, matching_type", [(s, m) for s in (0, 1) for m in (0, 1, 2)])
def test_dane_ee_matches_by_every_selector_and_matching_type(pki, presented, selector, matching_type):
    leaf_pem = pki["leaf"].cert_chain_pems[0].bytes()
    selected = der(leaf_pem) if selector == 0 else spki(leaf_pem)
    data = {0: selected, 1: hashlib.sha256(selected).digest(), 2: hashlib.sha512(selected).digest()}[matching_type]
    record = TlsaRecord(3, selector, matching_type, data)
    check = check_address(secure(record), starttls_offered=True, chain=presented)
    assert (check.verdict, check.matched, check.matched_depth, check.unmatched) == ("match", record, 0, ())


def test_dane_ee_ignores_the_name_and_the_dates(pki):
    now = datetime.datetime.now(datetime.UTC)
    expired = trustme.CA().issue_cert("not-the-mx.test", not_before=now - datetime.timedelta(days=90),
                                      not_after=now - datetime.timedelta(days=1))
    server = AiosmtpdServer(starttls_context=server_tls_context(expired), host="127.18.2.2").start()
    try:
        _, chain = starttls_chain(server.host, server.port, MX)
    finally:
        server.stop()
    record = TlsaRecord(3, 1, 1, association_data(chain[0], 1, 1))
    assert check_address(secure(record), starttls_offered=True, chain=chain).verdict == "match"


def test_a_key_change_without_a_new_record_is_a_mismatch_that_names_the_stale_record(pki, presented):
    stale = TlsaRecord(3, 1, 1, hashlib.sha256(spki(pki["next"].cert_chain_pems[0].bytes())).digest())
    check = check_address(secure(stale), starttls_offered=True, chain=presented)
    assert (check.verdict, check.matched, check.unmatched, check.rollover_ready) == ("mismatch", None, (stale,), False)


def test_two_records_during_a_rollover_match_and_show_the_other_as_ready(pki, presented):
    current = TlsaRecord(3, 1, 1, association_data(presented[0], 1, 1))
    upcoming = TlsaRecord(3, 1, 1, hashlib.sha256(spki(pki["next"].cert_chain_pems[0].bytes())).digest())
    check = check_address(secure(upcoming, current), starttls_offered=True, chain=presented)
    assert (check.verdict, check.matched, check.unmatched, check.rollover_ready) == ("match", current, (upcoming,), True)


def test_dane_ta_matches_the_intermediate_and_checks_the_path_and_the_name(pki, presented):
    anchor = TlsaRecord(2, 0, 1, hashlib.sha256(presented[1]).digest())
    check = check_address(secure(anchor), starttls_offered=True, chain=presented)
    assert (check.verdict, check.matched_depth) == ("match", 1)
    wrong_host = check_address(secure(anchor, host="mx2.dane.test"), starttls_offered=True, chain=presented)
    assert wrong_host.verdict == "mismatch"
    assert "does not name mx2.dane.test" in wrong_host.detail


def test_dane_ta_fails_when_the_leaf_was_not_issued_by_the_matched_anchor(pki):
    stranger = trustme.CA().issue_cert(MX)  # a leaf from another CA, sent with our intermediate
    chain = (der(stranger.cert_chain_pems[0].bytes()), der(pki["intermediate"].cert_pem.bytes()))
    anchor = TlsaRecord(2, 1, 1, association_data(chain[1], 1, 1))
    check = check_address(secure(anchor), starttls_offered=True, chain=chain)
    assert check.verdict == "mismatch"
    assert "not issued by certificate 1" in check.detail


def test_dane_ta_fails_when_the_leaf_is_signed_by_another_key_under_the_anchor_name(pki):
    intermediate = x509.load_pem_x509_certificate(pki["intermediate"].cert_pem.bytes())
    now = datetime.datetime.now(datetime.UTC)
    impostor = (x509.CertificateBuilder()  # the intermediate's name as issuer, another CA's key
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, MX)]))
                .issuer_name(intermediate.subject)
                .public_key(ec.generate_private_key(ec.SECP256R1()).public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(MX)]), critical=False)
                .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256()))
    chain = (impostor.public_bytes(serialization.Encoding.DER), der(pki["intermediate"].cert_pem.bytes()))
    anchor = TlsaRecord(2, 1, 1, association_data(chain[1], 1, 1))
    check = check_address(secure(anchor), starttls_offered=True, chain=chain)
    assert (check.verdict, check.detail) == ("mismatch", "2 1 1: certificate 0 is not signed by certificate 1's key")


@pytest.mark.parametrize("key_type", ["RSA", "ECDSA"])
def test_dane_ta_checks_the_signature_of_either_key_type(key_type):
    intermediate = trustme.CA(key_type=trustme.KeyType[key_type]).create_child_ca(key_type=trustme.KeyType[key_type])
    leaf = intermediate.issue_cert(MX, key_type=trustme.KeyType[key_type])
    chain = (der(leaf.cert_chain_pems[0].bytes()), der(intermediate.cert_pem.bytes()))
    anchor = TlsaRecord(2, 0, 1, hashlib.sha256(chain[1]).digest())
    check = check_address(secure(anchor), starttls_offered=True, chain=chain)
    assert (check.verdict, check.matched_depth) == ("match", 1)


def test_dane_ta_fails_on_an_expired_leaf(pki):
    now = datetime.datetime.now(datetime.UTC)
    old = pki["intermediate"].issue_cert(MX, not_before=now - datetime.timedelta(days=90),
                                         not_after=now - datetime.timedelta(days=1))
    chain = (der(old.cert_chain_pems[0].bytes()), der(pki["intermediate"].cert_pem.bytes()))
    anchor = TlsaRecord(2, 0, 1, hashlib.sha256(chain[1]).digest())
    check = check_address(secure(anchor), starttls_offered=True, chain=chain)
    assert (check.verdict, check.detail) == ("mismatch", "2 0 1: certificate 0 is outside its validity period")


def test_pkix_only_records_are_unusable_and_listed_as_ignored(presented):
    pkix = (TlsaRecord(1, 1, 1, association_data(presented[0], 1, 1)), TlsaRecord(0, 0, 1, b"\x00" * 32))
    check = check_address(secure(*pkix), starttls_offered=True, chain=presented)
    assert (check.verdict, check.ignored) == ("unusable", pkix)
    assert "PKIX-EE" in check.detail and "PKIX-TA" in check.detail


def test_secure_records_and_no_starttls_is_a_dane_failure(presented):
    server = AiosmtpdServer(host="127.18.2.3").start()  # no TLS context: no STARTTLS offered
    try:
        offered, chain = starttls_chain(server.host, server.port, MX)
    finally:
        server.stop()
    record = TlsaRecord(3, 1, 1, association_data(presented[0], 1, 1))
    assert (offered, chain) == (False, ())
    assert check_address(secure(record), starttls_offered=offered, chain=chain).verdict == "starttls_missing"


def test_no_completed_handshake_is_a_mismatch(presented):
    record = TlsaRecord(3, 1, 1, association_data(presented[0], 1, 1))
    check = check_address(secure(record), starttls_offered=True, chain=None)
    assert (check.verdict, check.unmatched) == ("mismatch", (record,))


# -- MTA-STS and TLS-RPT grammars -------------------------------------------------------------
@pytest.mark.parametrize("texts, state, policy_id", [
    (["v=STSv1; id=20240101T000000"], "present", "20240101T000000"),
    (["v=spf1 -all", "v=STSv1;id=abc;"], "present", "abc"),
    (["v=STSv1; id=abc; ext=value"], "present", "abc"),
    (["v=spf1 -all"], "absent", None),
    (["v=STSv1; id=abc", "v=STSv1; id=def"], "multiple", None),
    (["v=STSv1;"], "invalid", None),
    (["v=STSv1; id=has-dash"], "invalid", None),
    (["v=STSv1; id=" + "a" * 33], "invalid", None),
    (["v=STSv1; id abc"], "invalid", None),
])
def test_mta_sts_record_grammar(texts, state, policy_id):
    record = mtasts.parse_record(texts)
    assert (record.state, record.id) == (state, policy_id)


POLICY = "version: STSv1\r\nmode: enforce\r\nmx: mx1.example.test\r\nmx: *.backup.example.test\r\nmax_age: 86400\r\n"


@pytest.mark.parametrize("text, error", [
    (POLICY, None),
    (POLICY.replace("STSv1", "STSv2"), "version_invalid"),
    (POLICY.replace("enforce", "strict"), "mode_invalid"),
    (POLICY.replace("86400", "31557601"), "max_age_too_large"),
    (POLICY.replace("86400", "31557600"), None),
    (POLICY.replace("86400", "a day"), "max_age_invalid"),
    (POLICY.replace("*.backup", "mx.*.backup"), "mx_invalid"),
    (POLICY.replace("*.backup", "*mx.backup"), "mx_invalid"),
    ("version: STSv1\nmode: testing\nmax_age: 600\n", "mx_missing"),
    ("version: STSv1\nmode: none\nmax_age: 600\n", None),
    (POLICY + "this line has no colon\n", "syntax"),
])
def test_mta_sts_policy_grammar(text, error):
    policy, found, detail = mtasts.parse_policy(text, policy_id="abc", fetched_at=0.0)
    assert found == error, detail
    assert (policy is None) == (error is not None)


def test_mta_sts_mx_patterns_cover_one_whole_left_most_label():
    policy, _, _ = mtasts.parse_policy(POLICY, policy_id="abc", fetched_at=0.0)
    assert [policy.covers(host) for host in ("MX1.example.test.", "a.backup.example.test",
                                             "a.b.backup.example.test", "backup.example.test",
                                             "mx2.example.test")] == [True, True, False, False, False]


@pytest.mark.parametrize("texts, state, targets", [
    (["v=TLSRPTv1; rua=mailto:tls@example.test"], "present", ["tls@example.test"]),
    (["v=TLSRPTv1;rua=mailto:a@example.test, https://reports.example.test/tls"], "present",
     ["a@example.test", "https://reports.example.test/tls"]),
    (["v=TLSRPTv1; rua=ftp://reports.example.test/"], "invalid", []),
    (["v=TLSRPTv1; rua=mailto:nobody"], "invalid", []),
    (["v=TLSRPTv1;"], "invalid", []),
    (["v=TLSRPTv1; rua=mailto:a@example.test", "v=TLSRPTv1; rua=mailto:b@example.test"], "multiple", []),
    (["v=spf1 -all"], "absent", []),
])
def test_tls_rpt_record_grammar(texts, state, targets):
    record = tlsrpt.parse_record(texts)
    assert (record.state, [uri.target for uri in record.rua]) == (state, targets)


def test_a_chain_that_is_not_certificates_is_a_mismatch_not_a_crash(presented):
    record = TlsaRecord(3, 1, 1, association_data(presented[0], 1, 1))
    check = check_address(secure(record), starttls_offered=True, chain=(b"\x30\x03garbage",))
    assert (check.verdict, check.detail) == ("mismatch", "the server presented something that is not an X.509 certificate")
