"""The reply-code model: parsing replies as servers frame them, and the reference table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtpmon.smtp.replycodes import (
    CATEGORY_MEANINGS,
    CATEGORY_NAMES,
    CLASS_MEANINGS,
    CLASS_NAMES,
    ENHANCED_CLASS_NAMES,
    PROTOCOL_ERROR,
    ReplyLine,
    code_label,
    describe,
    enhanced_meaning,
    enhanced_subject_meaning,
    explain,
    make_reply,
    meaning,
    parse_enhanced,
    parse_line,
    parse_reply,
    reply_category,
    reply_class,
)
from smtpmon.smtp.results import Reply

# The project's copy of the reply-code reference table is the reference: no test reads a file
# outside the repository, so a fresh clone runs every test.
REFERENCE = Path(__file__).resolve().parent / "data" / "reply-codes.md"


def read_reference_tables(path: Path) -> dict[str, list[tuple[str, ...]]]:
    """Rows of each markdown table, keyed by the `## ` heading above it (header rows dropped)."""
    tables: dict[str, list[tuple[str, ...]]] = {}
    heading = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            heading = line[3:].strip()
        elif line.startswith("|") and not re.fullmatch(r"[|\-\s]+", line):
            cells = tuple(cell.strip() for cell in line.strip().strip("|").split("|"))
            if cells[0] not in ("digit", "code"):
                tables.setdefault(heading, []).append(cells)
    return tables


TABLES = read_reference_tables(REFERENCE)
CLASS_ROWS = TABLES["First digit: the class (5 values)"]
CATEGORY_ROWS = TABLES["Second digit: the category (6 values)"]
CODE_ROWS = TABLES["The codes"]


def test_reference_tables_were_read_whole():
    assert len(CLASS_ROWS) == 5
    assert len(CATEGORY_ROWS) == 6
    assert len(CODE_ROWS) >= 28, "the code table lost rows, or the parser missed them"


@pytest.mark.parametrize("digits, name, meaning_text", CLASS_ROWS)
def test_class_names_and_meanings_follow_the_reference(digits, name, meaning_text):
    digit = int(digits[0])
    assert CLASS_NAMES[digit] == name.replace(" ", "_")
    assert CLASS_MEANINGS[digit] == meaning_text


@pytest.mark.parametrize("digits, name, meaning_text", CATEGORY_ROWS)
def test_category_names_and_meanings_follow_the_reference(digits, name, meaning_text):
    digit = int(digits[1])
    assert CATEGORY_NAMES[digit] == name.replace(" ", "_")
    assert CATEGORY_MEANINGS[digit] == meaning_text


@pytest.mark.parametrize("code_text, meaning_text", CODE_ROWS, ids=[row[0] for row in CODE_ROWS])
def test_every_reference_code_classifies_and_means_what_the_table_says(code_text, meaning_text):
    code = int(code_text)
    reply = parse_reply(f"{code} example.org says hello\r\n".encode())
    assert reply.code == code and reply.error is None
    assert reply_class(code) == CLASS_NAMES[int(code_text[0])]
    assert reply_category(code) == CATEGORY_NAMES[int(code_text[1])]
    assert code_label(code) == code_text
    assert meaning_text in meaning(code)


def test_spot_checks_of_classification():
    assert (reply_class(421), reply_category(421)) == ("transient_negative", "connections")
    assert (reply_class(354), reply_category(354)) == ("positive_intermediate", "mail_system")
    assert (reply_class(214), reply_category(214)) == ("positive_completion", "information")
    assert (reply_class(500), reply_category(500)) == ("permanent_negative", "syntax")


@pytest.mark.parametrize(
    "code, rfc_words",
    [
        (334, "server challenge"),
        (432, "password transition"),
        (454, "authentication not possible"),
        (454, "TLS not available"),
        (455, "unable to accommodate parameters"),
        (500, "authentication exchange line is too long"),
        (521, "does not accept mail"),
        (530, "STARTTLS"),
        (552, "fixed maximum"),
        (555, "parameters not recognised"),
        (556, "null MX"),
    ],
)
def test_codes_beyond_the_source_page_have_their_rfc_meanings(code, rfc_words):
    assert rfc_words in meaning(code)


def test_an_unknown_but_valid_code_has_no_meaning_yet_is_classified():
    assert meaning(259) is None
    assert (reply_class(259), reply_category(259), code_label(259)) == (
        "positive_completion",
        "mail_system",
        "259",
    )


def test_an_undefined_second_digit_keeps_its_class_but_is_a_protocol_error_category():
    reply = parse_reply(b"560 odd\r\n")
    assert reply.code == 560
    assert reply_class(560) == "permanent_negative"
    assert reply_category(560) == PROTOCOL_ERROR


@pytest.mark.parametrize("code", [None, 0, 99, 600, 999, -250])
def test_classification_is_total(code):
    assert reply_class(code) == PROTOCOL_ERROR
    assert reply_category(code) == PROTOCOL_ERROR
    assert code_label(code) == "000"


# --- parse_line -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, expected",
    [
        (b"250-SIZE 1000\r\n", ReplyLine(250, False, "SIZE 1000", False, None)),
        (b"250 OK\r\n", ReplyLine(250, True, "OK", False, None)),
        (b"250\r\n", ReplyLine(250, True, "", False, None)),
        (b"250 OK\n", ReplyLine(250, True, "OK", True, None)),
        (b"220 no terminator", ReplyLine(220, True, "no terminator", False, None)),
        (b"221 bye  \r\n", ReplyLine(221, True, "bye  ", False, None)),
    ],
)
def test_parse_line_reads_rfc_5321_framing(raw, expected):
    assert parse_line(raw) == expected


@pytest.mark.parametrize(
    "raw, why",
    [
        (b"099 too low\r\n", "reply code 099 outside 100-599"),
        (b"600 too high\r\n", "reply code 600 outside 100-599"),
        (b"abc\r\n", "expected a three-digit code"),
        (b"25\r\n", "expected a three-digit code"),
        (b"\r\n", "expected a three-digit code"),
        (b"250_OK\r\n", "expected a space or '-' after the code 250"),
        (b"250OK\r\n", "expected a space or '-' after the code 250"),
        (b"250 nul\x00here\r\n", "NUL byte"),
        (b"\xd9\xa2\xd9\xa5\xd9\xa0 OK\r\n", "expected a three-digit code"),  # Arabic-Indic 250
    ],
)
def test_parse_line_flags_what_is_not_a_reply_and_ends_the_reply(raw, why):
    line = parse_line(raw)
    assert line.code is None
    assert line.final is True
    assert why in line.error


def test_parse_line_replaces_bytes_that_are_not_utf8():
    line = parse_line(b"550 caf\xe9 closed\r\n")
    assert line.code == 550 and line.error is None
    assert line.text == "caf\ufffd closed"


# --- make_reply / parse_reply -----------------------------------------------------------------


def test_a_multiline_ehlo_reply_keeps_every_line():
    reply = parse_reply(
        b"250-mx.example.org Hello\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250 STARTTLS\r\n"
    )
    assert reply == Reply(
        code=250, lines=("mx.example.org Hello", "PIPELINING", "SIZE 10240000", "STARTTLS")
    )
    assert reply.text == "mx.example.org Hello\nPIPELINING\nSIZE 10240000\nSTARTTLS"


def test_a_bare_lf_on_any_line_is_tolerated_but_flagged():
    reply = parse_reply(b"250-first\r\n250-second\n250 third\r\n")
    assert reply.code == 250 and reply.error is None
    assert reply.bare_lf is True
    assert parse_reply(b"250-first\r\n250 third\r\n").bare_lf is False


def test_lines_that_disagree_on_the_code_are_a_protocol_error():
    reply = parse_reply(b"250-first\r\n550 second\r\n")
    assert reply.code is None
    assert reply.error == "lines disagree on the code: 250 vs 550"
    assert reply.lines == ("first", "second")


def test_a_reply_cut_off_before_its_final_line_is_a_protocol_error():
    reply = parse_reply(b"250-first\r\n250-second\r\n")
    assert reply.code is None
    assert reply.error == "reply 250 ended before its final line"


def test_lines_after_the_final_line_are_a_protocol_error():
    reply = parse_reply(b"250 one\r\n250 two\r\n")
    assert reply.code is None
    assert "after the final line" in reply.error


def test_a_broken_line_inside_a_reply_makes_the_reply_a_protocol_error():
    reply = parse_reply(b"250-first\r\nnonsense\r\n")
    assert reply.code is None
    assert "expected a three-digit code" in reply.error


def test_make_reply_of_nothing_is_a_protocol_error():
    assert make_reply([]) == Reply(code=None, error="empty reply")


def test_a_bare_cr_does_not_end_a_line():
    reply = parse_reply(b"250 one\rtwo\r\n")
    assert reply.code == 250 and reply.lines == ("one\rtwo",)


# --- enhanced status codes --------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("5.1.1 <bob@example.org>: Recipient address rejected", "5.1.1"),
        ("4.7.0 try again later", "4.7.0"),
        ("2.0.0 Ok: queued as 4F2", "2.0.0"),
        ("5.1.10 Recipient address has null MX", "5.1.10"),
        ("5.7.1", "5.7.1"),
        ("5.1.1, user unknown", "5.1.1"),
        ("5.01.001 leading zeros", "5.1.1"),
        ("3.1.1 not a class", None),
        ("5.1.1a glued", None),
        ("5.1 too short", None),
        ("5.1234.1 too long", None),
        ("user unknown 5.1.1", None),
        ("", None),
    ],
)
def test_parse_enhanced_finds_an_rfc_3463_code_at_the_start(text, expected):
    assert parse_enhanced(text) == expected


def test_the_enhanced_code_comes_from_the_first_line():
    reply = parse_reply(b"550-5.7.1 policy says no\r\n550 5.1.1 and also this\r\n")
    assert reply.enhanced == "5.7.1"


@pytest.mark.parametrize(
    "raw",
    [b"250 5.1.1 a server bug\r\n", b"550 2.0.0 contradicts itself\r\n", b"354 5.0.0 go\r\n"],
)
def test_an_enhanced_code_of_another_class_than_the_reply_is_ignored(raw):
    reply = parse_reply(raw)
    assert reply.code is not None and reply.error is None
    assert reply.enhanced is None


# Every enumerated code of RFC 3463 section 3 and its registered successors (RFC 5248 registry).
REGISTERED_DETAILS = {0: 0, 1: 10, 2: 4, 3: 6, 4: 7, 5: 6, 6: 10, 7: 30}  # subject: last detail
REGISTERED_CODES = [
    f"X.{subject}.{detail}"
    for subject, last in REGISTERED_DETAILS.items()
    for detail in range(last + 1)
]


@pytest.mark.parametrize("code", REGISTERED_CODES)
def test_every_registered_enhanced_code_has_a_meaning(code):
    assert enhanced_meaning(code)
    assert enhanced_meaning(code.replace("X", "5")) == enhanced_meaning(code)


@pytest.mark.parametrize(
    "code, words",
    [
        ("5.1.1", "bad destination mailbox address"),
        ("4.2.2", "mailbox full"),
        ("5.7.1", "delivery not authorized, message refused"),
        ("5.7.8", "authentication credentials invalid"),
        ("5.7.26", "multiple authentication checks failed"),
        ("5.7.27", "sender address has null MX"),
        ("5.1.10", "recipient address has null MX"),
    ],
)
def test_enhanced_meanings_use_the_registry_words(code, words):
    assert enhanced_meaning(code).startswith(words)


@pytest.mark.parametrize("code", ["5.1.99", "5.8.0", "5.7.1.1", "nonsense", ""])
def test_an_unregistered_or_malformed_enhanced_code_has_no_meaning(code):
    assert enhanced_meaning(code) is None


def test_enhanced_subjects_and_classes():
    assert [enhanced_subject_meaning(subject) for subject in range(8)] == [
        "other or undefined status",
        "addressing",
        "mailbox",
        "mail system",
        "network and routing",
        "mail delivery protocol",
        "message content or media",
        "security or policy",
    ]
    assert enhanced_subject_meaning(8) is None
    assert ENHANCED_CLASS_NAMES == {
        2: "success",
        4: "persistent_transient_failure",
        5: "permanent_failure",
    }


# --- describe and explain ---------------------------------------------------------------------


def test_describe_annotates_a_reply_with_its_code_and_enhanced_code():
    reply = parse_reply(b"550 5.1.1 <bob@example.org>: Recipient address rejected\r\n")
    assert describe(reply) == [
        "550: permanent negative, mail system: " + meaning(550),
        "5.1.1: permanent failure, addressing: bad destination mailbox address",
    ]


def test_describe_names_a_protocol_error_and_a_bare_lf():
    assert describe(parse_reply(b"250-a\r\n550 b\r\n")) == [
        "protocol error: lines disagree on the code: 250 vs 550"
    ]
    lines = describe(parse_reply(b"299 odd\n"))
    assert lines[0] == "299: positive completion, protocol error: no registered meaning"
    assert "bare LF" in lines[1]


def test_explain_a_bare_code():
    assert explain("554") == [
        "code 554: " + meaning(554),
        "class 5yz permanent_negative: " + CLASS_MEANINGS[5],
        "category x5z mail_system: " + CATEGORY_MEANINGS[5],
    ]


def test_explain_an_enhanced_code():
    lines = explain(" 5.7.1 ")
    assert lines[0] == "enhanced 5.7.1: delivery not authorized, message refused"
    assert lines[1].startswith("enhanced class 5 permanent_failure: ")
    assert lines[2] == "enhanced subject 7: security or policy"


def test_explain_a_reply_line_gives_both_codes():
    lines = explain("550 5.1.1 <bob@example.org>: Recipient address rejected")
    assert lines[0].startswith("code 550: requested action not taken")
    assert lines[3] == "enhanced 5.1.1: bad destination mailbox address"
    assert lines[5] == "enhanced subject 1: addressing"


def test_explain_a_multiline_reply_and_a_contradicting_enhanced_code():
    lines = explain("250-5.1.1 first\n250 last")
    assert lines[0] == "code 250: " + meaning(250)
    assert lines[-1] == (
        "enhanced 5.1.1: ignored: its class 5 contradicts the reply code's first digit 2"
    )


def test_explain_an_unknown_code_still_classifies_it():
    assert explain("432")[0].startswith("code 432: a password transition")
    assert explain("259") == [
        "code 259: no registered meaning",
        "class 2yz positive_completion: " + CLASS_MEANINGS[2],
        "category x5z mail_system: " + CATEGORY_MEANINGS[5],
    ]
    assert explain("571")[2] == (
        "category x7z protocol_error: RFC 5321 defines second digits 0-5 only"
    )


@pytest.mark.parametrize(
    "text, why",
    [
        ("abc", "expected a three-digit code"),
        ("099", "reply code 099 outside 100-599"),
        ("600", "reply code 600 outside 100-599"),
        ("3.1.1", "class is 2, 4 or 5"),
        ("", "empty reply"),
        ("250-first\n550 second", "lines disagree on the code"),
    ],
)
def test_explain_rejects_what_is_not_a_reply(text, why):
    with pytest.raises(ValueError, match=re.escape(why)):
        explain(text)


# --- properties -------------------------------------------------------------------------------

LABELS = {PROTOCOL_ERROR, *CLASS_NAMES.values(), *CATEGORY_NAMES.values()}


@given(st.binary(max_size=600))
def test_parse_line_never_raises(raw):
    line = parse_line(raw)
    assert isinstance(line, ReplyLine)
    assert (line.code is None) == (line.error is not None)
    assert line.code is None or 100 <= line.code <= 599


@given(st.binary(max_size=2000))
def test_parse_reply_never_raises_and_its_result_classifies(data):
    reply = parse_reply(data)
    assert isinstance(reply, Reply)
    assert (reply.code is None) == (reply.error is not None)
    assert reply_class(reply.code) in LABELS and reply_category(reply.code) in LABELS
    assert re.fullmatch(r"[0-9]{3}", code_label(reply.code))
    assert describe(reply)


REPLY_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\x00"),
    max_size=40,
)


@given(st.integers(100, 599), st.lists(REPLY_TEXT, min_size=1, max_size=6))
def test_a_well_formed_reply_parses_back_to_its_parts(code, texts):
    wire = b"".join(
        f"{code}{'-' if index < len(texts) - 1 else ' '}{text}\r\n".encode()
        for index, text in enumerate(texts)
    )
    reply = parse_reply(wire)
    assert reply.code == code and reply.error is None
    assert reply.lines == tuple(texts)
    assert reply.bare_lf is False

