"""docs/mail-tls-policy.md cannot drift from smtpmon/mailtls: each vocabulary table lists
exactly the values the code returns, and the openssl command it shows computes a 3 1 1 record."""

from __future__ import annotations

import re
import subprocess

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from prometheus_tools import require_tool
from test_docs import DOCS, backticked, tables_by_heading

from smtpmon.mailtls import dane, mtasts, tlsrpt

PAGE = DOCS / "mail-tls-policy.md"


@pytest.mark.parametrize("heading, vocabulary", [
    ("TLSA lookup states", dane.TLSA_STATES),
    ("DANE verdicts", dane.DANE_VERDICTS),
    ("MTA-STS record states", mtasts.STS_RECORD_STATES),
    ("Policy fetch errors", mtasts.STS_FETCH_ERRORS),
    ("MTA-STS verdicts per MX", mtasts.STS_MX_VERDICTS),
    ("TLS-RPT record states", tlsrpt.TLSRPT_STATES),
])
def test_each_vocabulary_is_documented_exactly(heading, vocabulary):
    rows = tables_by_heading(PAGE.read_text())[heading]
    documented = [backticked(next(iter(row.values())))[0] for row in rows]
    assert documented == list(vocabulary)


def test_the_shown_openssl_command_computes_a_3_1_1_record(tmp_path):
    require_tool("openssl")
    command = re.search(r"^openssl x509 -in cert\.pem .*$", PAGE.read_text(), re.M).group(0)
    leaf = trustme.CA().issue_cert("mx.example.test")
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    output = subprocess.run(["sh", "-c", command], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    der = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).public_bytes(serialization.Encoding.DER)
    assert output.split()[-1] == dane.association_data(der, 1, 1).hex()
