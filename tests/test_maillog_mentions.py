"""Reply codes found in what an admin pastes from a mail log (for `smtpmon explain`)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_maillog_parser import INBOUND_LINES, OUTBOUND_LINES

from smtpmon.maillog.mentions import ReplyMention as M
from smtpmon.maillog.mentions import mentions


@pytest.mark.parametrize("text, expected", [
    (INBOUND_LINES[4][0], [M(550, "5.1.1")]),  # smtpd reject, traditional timestamp
    ("2026-12-03T08:13:59.123456+00:00 mx postfix/smtpd[18035]: NOQUEUE: reject: RCPT from "
     "unknown[127.0.0.7]: 450 4.2.0 <g@mx.test>: Recipient address rejected: Greylisted; "
     "from=<a@b.test> to=<g@mx.test> proto=ESMTP helo=<c.test>", [M(450, "4.2.0")]),
    (OUTBOUND_LINES[1][0], [M(450, "4.2.0")]),  # status=deferred (host ... said: ...), dsn=
    (OUTBOUND_LINES[4][0], [M(421, "4.7.0")]),  # refused to talk to me
    (OUTBOUND_LINES[8][0], [M(550, "5.7.1")]),  # a multi-line reply joined on one line
    (OUTBOUND_LINES[6][0], [M(None, "4.4.1")]),  # connection refused: only the DSN
    ("dsn=5.1.1", [M(None, "5.1.1")]),
    ("250-2.0.0 ok", [M(250, "2.0.0")]),
    ("421 4.7.0 try later, then 554 5.7.1 go away", [M(421, "4.7.0"), M(554, "5.7.1")]),
    ("554", [M(554, None)]),
    ("Dec 03 08:13:59 mx postfix/qmgr[250]: 5CDD12122E2: from=<a@b>, size=281, nrcpt=1 "
     "(queue active)", []),
    ("connect to 127.0.0.1[127.0.0.1]:250: Connection refused", []),
])
def test_every_reply_code_on_a_pasted_line(text, expected):
    assert mentions(text) == expected


@given(st.text(max_size=300))
def test_any_text_gives_a_list(text):
    for mention in mentions(text):
        assert mention.code is None or 200 <= mention.code <= 599
