"""SMTP reply codes: parse a reply as the server framed it, then classify and explain it.

Pure functions, no I/O. Parsing follows RFC 5321 section 4.2 ("NNN-text" continues a reply,
"NNN text" or a bare "NNN" ends it) and never raises: bytes that are not a reply become a
`Reply` with `code=None` and an `error`, which counts as a protocol error: classification is
total, any input maps somewhere (docs/reply-codes.md: `code="000"`).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from typing import NamedTuple

from smtpmon.smtp.results import Reply

PROTOCOL_ERROR = "protocol_error"

# RFC 3463 section 2: class.subject.detail at the start of the reply text. ASCII digits only:
# `\d` would also accept other scripts' digits.
_ENHANCED_PREFIX = re.compile(r"\s*([245])\.([0-9]{1,3})\.([0-9]{1,3})(?![0-9A-Za-z_])")


class ReplyLine(NamedTuple):
    """One line of a reply. `final` is True on the line that ends the reply, and on any line
    that is not a reply line at all (it ends the reply as a protocol error)."""

    code: int | None
    final: bool
    text: str  # after the code and separator (the whole line when it is not a reply line)
    bare_lf: bool  # ended in LF without CR
    error: str | None  # why the line is a protocol error, if it is


def parse_line(raw: bytes) -> ReplyLine:
    """Parse one line as read from the socket, terminator included (b"250-SIZE 1000\\r\\n").

    A line without a terminator (the last bytes before the connection closed, or a line typed
    by a person) is parsed as it is.
    """
    bare_lf = False
    if raw.endswith(b"\r\n"):
        body = raw[:-2]
    elif raw.endswith(b"\n"):
        body, bare_lf = raw[:-1], True
    else:
        body = raw
    digits = body[:3]
    if len(digits) < 3 or not digits.isdigit():  # bytes.isdigit: ASCII digits only
        return _broken_line(body, bare_lf,
                            f"not a reply line: expected a three-digit code, got {_show(body[:12])}")
    code = int(digits)
    if not 100 <= code <= 599:
        return _broken_line(body, bare_lf, f"reply code {digits.decode()} outside 100-599")
    separator = body[3:4]
    if separator not in (b"", b" ", b"-"):
        return _broken_line(
            body, bare_lf, f"expected a space or '-' after the code {code}, got {_show(separator)}")
    if b"\n" in body:
        return _broken_line(body, bare_lf, "line break inside a reply line")
    if b"\x00" in body:
        return _broken_line(body, bare_lf, "NUL byte in a reply line")
    # Interned: the same lines come back on every probe of thousands of targets.
    text = sys.intern(body[4:].decode("utf-8", errors="replace"))
    return ReplyLine(code, separator != b"-", text, bare_lf, None)


def _broken_line(body: bytes, bare_lf: bool, why: str) -> ReplyLine:
    return ReplyLine(None, True, body.decode("utf-8", errors="replace"), bare_lf, why)


def make_reply(lines: Sequence[ReplyLine]) -> Reply:
    """Join the lines of one reply. Any line's protocol error makes the whole reply one."""
    texts = tuple(line.text for line in lines)
    bare_lf = any(line.bare_lf for line in lines)

    def broken(why: str) -> Reply:
        return Reply(code=None, lines=texts, bare_lf=bare_lf, error=why)

    if not lines:
        return broken("empty reply")
    for line in lines:
        if line.error is not None:
            return broken(line.error)
    first = lines[0].code
    for line in lines[1:]:
        if line.code != first:
            return broken(f"lines disagree on the code: {first} vs {line.code}")
    if any(line.final for line in lines[:-1]):
        return broken(f"more lines after the final line of reply {first}")
    if not lines[-1].final:
        return broken(f"reply {first} ended before its final line")
    enhanced = parse_enhanced(lines[0].text)
    if enhanced is not None and enhanced[0] != str(first)[0]:
        enhanced = None  # e.g. "250 5.0.0": a server bug, not a status to report
    return Reply(code=first, lines=texts, enhanced=enhanced, bare_lf=bare_lf)


def parse_reply(data: bytes) -> Reply:
    """Parse a whole reply blob (one or more lines). Any bytes give a Reply."""
    return make_reply([parse_line(raw) for raw in _split_lines(data)])


def _split_lines(data: bytes) -> list[bytes]:
    """Split after each LF, keeping terminators; a bare CR does not end a line."""
    return [line for line in re.split(rb"(?<=\n)", data) if line]


def _show(data: bytes) -> str:
    return repr(data.decode("utf-8", errors="replace")) if data else "end of line"


def parse_enhanced(text: str) -> str | None:
    """The RFC 3463 enhanced status code at the start of a reply text ("5.1.1"), or None."""
    match = _ENHANCED_PREFIX.match(text)
    if match is None:
        return None
    status_class, subject, detail = match.groups()
    return f"{status_class}.{int(subject)}.{int(detail)}"


# --- Classification: RFC 5321 section 4.2.1, in the words of the reference table ------------

CLASS_NAMES: dict[int, str] = {
    1: "positive_preliminary",
    2: "positive_completion",
    3: "positive_intermediate",
    4: "transient_negative",
    5: "permanent_negative",
}

CLASS_MEANINGS: dict[int, str] = {
    1: "the server accepted the command but waits for confirmation before going on or refusing",
    2: "the requested action completed; the server is ready for a new command",
    3: "the server accepted the command but needs more information to complete the action",
    4: "the command was not accepted and nothing was done, but the error is temporary: "
    "the action may be requested again",
    5: "the command was not accepted and nothing was done",
}

CATEGORY_NAMES: dict[int, str] = {
    0: "syntax",
    1: "information",
    2: "connections",
    3: "unspecified",
    4: "unspecified",
    5: "mail_system",
}

CATEGORY_MEANINGS: dict[int, str] = {
    0: "syntax errors; a command that is syntactically valid but fits no other category; "
    "an unimplemented command",
    1: "replies to requests for information, such as status or help",
    2: "replies about the transmission channel",
    3: "not specified",
    4: "not specified",
    5: "the state of the receiving mail system with respect to the requested transfer "
    "or other mail-system action",
}


def _valid(code: int | None) -> bool:
    return isinstance(code, int) and 100 <= code <= 599


def reply_class(code: int | None) -> str:
    """The class label of a code: its first digit's name, or "protocol_error".

    A code whose second digit is 6-9 (not defined by RFC 5321) still gets the class of its
    first digit: the first digit alone tells success from failure, and alerts need that.
    """
    return CLASS_NAMES[code // 100] if _valid(code) else PROTOCOL_ERROR


def reply_category(code: int | None) -> str:
    """The category label of a code: its second digit's name, or "protocol_error" for an
    invalid code and for a second digit of 6-9, which RFC 5321 does not define."""
    if not _valid(code):
        return PROTOCOL_ERROR
    return CATEGORY_NAMES.get(code // 10 % 10, PROTOCOL_ERROR)


def code_label(code: int | None) -> str:
    """The `code` label value: "421", or "000" for a reply that had no valid code."""
    return f"{code:03d}" if _valid(code) else "000"


# Every code of the reference table with its words verbatim, then the codes it omits. Where a
# code has a second meaning from an extension, it is joined on with its RFC.
_CODE_MEANINGS: dict[int, str] = {
    211: "system status, or system help reply",
    214: "help message: how to work with the server, description of non-standard commands, etc.",
    220: "service ready",
    221: "service closing transmission channel",
    235: "authentication succeeded",
    250: "requested mail action okay, completed",
    251: "user not local; will forward",
    252: "cannot verify the user's mailbox, but the message is accepted and the server will "
    "attempt delivery",
    334: "server challenge: continue the authentication exchange (RFC 4954)",
    354: "start mail input; end the message with a dot on a line by itself (CRLF.CRLF)",
    421: "service not available, closing transmission channel (may be the reply to any command "
    "when the server must close the connection)",
    432: "a password transition is needed (RFC 4954)",
    450: "requested mail action not taken: mailbox unavailable (for example mailbox busy)",
    451: "requested action aborted: local error in processing",
    452: "requested action not taken: insufficient system storage",
    454: "authentication not possible because of a temporary server failure; "
    "or, to STARTTLS: TLS not available due to a temporary reason (RFC 3207)",
    455: "server unable to accommodate parameters (RFC 5321)",
    500: "syntax error, command unrecognised (this reply may also mean the command line was too "
    "long); during AUTH: the authentication exchange line is too long (RFC 4954)",
    501: "syntax error in parameters or arguments",
    502: "command recognised but not implemented",
    503: "bad sequence of commands",
    504: "command parameter not implemented",
    521: "this host does not accept mail (RFC 7504)",
    530: "authentication required; or: must issue a STARTTLS command first (RFC 3207)",
    534: "the chosen authentication mechanism is too weak for this user",
    535: "authentication credentials rejected (for example an error in the encoded data)",
    538: "the chosen authentication mechanism requires an encrypted channel",
    550: "requested action not taken: mailbox unavailable (not found, no access, or the command "
    "was rejected by local security policy)",
    551: "user not local",
    552: "requested mail action aborted: exceeded storage allocation; "
    "also: the message size exceeds the server's fixed maximum (RFC 1870)",
    553: "requested action not taken: mailbox name not allowed (possibly a syntax error in the "
    "name)",
    554: "transaction failed, or no SMTP service here (when opening the session)",
    555: "MAIL FROM/RCPT TO parameters not recognised or not implemented (RFC 5321)",
    556: "the domain does not accept mail: it has a null MX (RFC 7504)",
}


def meaning(code: int) -> str | None:
    """The registered meaning of a reply code, or None for a code nobody registered."""
    return _CODE_MEANINGS.get(code)


# --- Enhanced status codes: RFC 3463, IANA registry (RFC 5248) ------------------------------

ENHANCED_CLASS_NAMES: dict[int, str] = {
    2: "success",
    4: "persistent_transient_failure",
    5: "permanent_failure",
}

ENHANCED_CLASS_MEANINGS: dict[int, str] = {
    2: "a positive delivery action",
    4: "the message as sent is valid, but a temporary condition persists: "
    "sending it again later may succeed",
    5: "not likely to be resolved by sending the message again in the same form: "
    "the message or the destination must change",
}

_SUBJECT_MEANINGS: dict[int, str] = {
    0: "other or undefined status",
    1: "addressing",
    2: "mailbox",
    3: "mail system",
    4: "network and routing",
    5: "mail delivery protocol",
    6: "message content or media",
    7: "security or policy",
}

# "subject.detail" -> summary, as in the IANA "Enumerated Status Codes" registry.
_ENHANCED_MEANINGS: dict[str, str] = {
    "0.0": "other undefined status",
    "1.0": "other address status",
    "1.1": "bad destination mailbox address",
    "1.2": "bad destination system address",
    "1.3": "bad destination mailbox address syntax",
    "1.4": "destination mailbox address ambiguous",
    "1.5": "destination address valid",
    "1.6": "destination mailbox has moved, no forwarding address",
    "1.7": "bad sender's mailbox address syntax",
    "1.8": "bad sender's system address",
    "1.9": "message relayed to non-compliant mailer (RFC 3886)",
    "1.10": "recipient address has null MX (RFC 7505)",
    "2.0": "other or undefined mailbox status",
    "2.1": "mailbox disabled, not accepting messages",
    "2.2": "mailbox full",
    "2.3": "message length exceeds administrative limit",
    "2.4": "mailing list expansion problem",
    "3.0": "other or undefined mail system status",
    "3.1": "mail system full",
    "3.2": "system not accepting network messages",
    "3.3": "system not capable of selected features",
    "3.4": "message too big for system",
    "3.5": "system incorrectly configured",
    "3.6": "requested priority was changed (RFC 6710)",
    "4.0": "other or undefined network or routing status",
    "4.1": "no answer from host",
    "4.2": "bad connection",
    "4.3": "directory server failure",
    "4.4": "unable to route",
    "4.5": "mail system congestion",
    "4.6": "routing loop detected",
    "4.7": "delivery time expired",
    "5.0": "other or undefined protocol status",
    "5.1": "invalid command",
    "5.2": "syntax error",
    "5.3": "too many recipients",
    "5.4": "invalid command arguments",
    "5.5": "wrong protocol version",
    "5.6": "authentication exchange line is too long (RFC 4954)",
    "6.0": "other or undefined media error",
    "6.1": "media not supported",
    "6.2": "conversion required and prohibited",
    "6.3": "conversion required but not supported",
    "6.4": "conversion with loss performed",
    "6.5": "conversion failed",
    "6.6": "message content not available (RFC 4468)",
    "6.7": "non-ASCII addresses not permitted for that sender/recipient (RFC 6531)",
    "6.8": "UTF-8 string reply is required, but not permitted by the SMTP client (RFC 6531)",
    "6.9": "UTF-8 header message cannot be transferred to one or more recipients, "
    "so the message must be rejected (RFC 6531)",
    "6.10": "UTF-8 string reply is required, but not permitted by the SMTP client "
    "(deprecated duplicate of X.6.8)",
    "7.0": "other or undefined security status",
    "7.1": "delivery not authorized, message refused",
    "7.2": "mailing list expansion prohibited",
    "7.3": "security conversion required but not possible",
    "7.4": "security features not supported",
    "7.5": "cryptographic failure",
    "7.6": "cryptographic algorithm not supported",
    "7.7": "message integrity failure",
    "7.8": "authentication credentials invalid (RFC 4954)",
    "7.9": "authentication mechanism is too weak (RFC 4954)",
    "7.10": "encryption needed (RFC 5248)",
    "7.11": "encryption required for requested authentication mechanism (RFC 4954)",
    "7.12": "a password transition is needed (RFC 4954)",
    "7.13": "user account disabled (RFC 5248)",
    "7.14": "trust relationship required (RFC 5248)",
    "7.15": "priority level is too low (RFC 6710)",
    "7.16": "message is too big for the specified priority (RFC 6710)",
    "7.17": "mailbox owner has changed (RFC 7293)",
    "7.18": "domain owner has changed (RFC 7293)",
    "7.19": "RRVS test cannot be completed (RFC 7293)",
    "7.20": "no passing DKIM signature found (RFC 7372)",
    "7.21": "no acceptable DKIM signature found (RFC 7372)",
    "7.22": "no valid author-matched DKIM signature found (RFC 7372)",
    "7.23": "SPF validation failed (RFC 7372)",
    "7.24": "SPF validation error (RFC 7372)",
    "7.25": "reverse DNS validation failed (RFC 7372)",
    "7.26": "multiple authentication checks failed (RFC 7372)",
    "7.27": "sender address has null MX (RFC 7505)",
    "7.28": "mail flood detected",
    "7.29": "ARC validation failure (RFC 8617)",
    "7.30": "REQUIRETLS support required (RFC 8689)",
}

# A whole enhanced code as a person types it; "X" is the registry's spelling of any class.
_ENHANCED_CODE = re.compile(r"([245Xx])\.([0-9]{1,3})\.([0-9]{1,3})")


def enhanced_meaning(code: str) -> str | None:
    """The registered meaning of "5.1.1" (or "X.1.1"), or None."""
    match = _ENHANCED_CODE.fullmatch(code.strip())
    if match is None:
        return None
    return _ENHANCED_MEANINGS.get(f"{int(match[2])}.{int(match[3])}")


def enhanced_subject_meaning(subject: int) -> str | None:
    """What the middle number of an enhanced code is about ("addressing"), or None."""
    return _SUBJECT_MEANINGS.get(subject)


# --- Words for people: the CLI transcript and `smtpmon explain` -----------------------------


def _words(label: str) -> str:
    return label.replace("_", " ")


def describe(reply: Reply) -> list[str]:
    """The annotation lines printed under a reply in a transcript."""
    if reply.code is None or reply.error is not None:
        return [f"protocol error: {reply.error or 'no reply code'}"]
    code = reply.code
    category = reply_category(code)
    lines = [
        f"{code}: {_words(reply_class(code))}, {_words(category)}: "
        f"{meaning(code) or 'no registered meaning'}"
    ]
    if reply.enhanced is not None:
        status_class, subject, _detail = (int(part) for part in reply.enhanced.split("."))
        lines.append(
            f"{reply.enhanced}: {_words(ENHANCED_CLASS_NAMES[status_class])}, "
            f"{enhanced_subject_meaning(subject) or 'unregistered subject'}: "
            f"{enhanced_meaning(reply.enhanced) or 'no registered meaning'}"
        )
    if reply.bare_lf:
        lines.append("warning: a line ended in a bare LF; RFC 5321 requires CRLF")
    return lines


def explain(text: str) -> list[str]:
    """Explain a reply code ("554"), an enhanced status code ("5.7.1") or a whole reply.

    Raises ValueError, with words for a person, when the text is none of these.
    """
    stripped = text.strip()
    if _ENHANCED_CODE.fullmatch(stripped):
        return _explain_enhanced(stripped)
    if re.fullmatch(r"[0-9]\.[0-9]{1,3}\.[0-9]{1,3}", stripped):
        raise ValueError(
            f"cannot explain {stripped!r}: an enhanced status code's class is 2, 4 or 5 (RFC 3463)"
        )
    # A bare code is a valid one-line reply, so one parser serves both.
    lines = [line.rstrip("\r") for line in stripped.split("\n")]
    reply = parse_reply("\r\n".join(lines).encode("utf-8", errors="replace"))
    if reply.code is None:
        shown = stripped if len(stripped) <= 60 else stripped[:57] + "..."
        raise ValueError(
            f"cannot explain {shown!r}: {reply.error}; expected a reply code (554), "
            "an enhanced status code (5.7.1) or a reply line (550 5.1.1 user unknown)"
        )
    output = _explain_code(reply.code)
    if reply.enhanced is not None:
        output += _explain_enhanced(reply.enhanced)
    else:
        ignored = parse_enhanced(reply.lines[0])
        if ignored is not None:
            output.append(
                f"enhanced {ignored}: ignored: its class {ignored[0]} contradicts "
                f"the reply code's first digit {str(reply.code)[0]}"
            )
    return output


def _explain_code(code: int) -> list[str]:
    first, second = code // 100, code // 10 % 10
    if second in CATEGORY_NAMES:
        category_line = f"category x{second}z {CATEGORY_NAMES[second]}: {CATEGORY_MEANINGS[second]}"
    else:
        category_line = (
            f"category x{second}z {PROTOCOL_ERROR}: RFC 5321 defines second digits 0-5 only"
        )
    return [
        f"code {code}: {meaning(code) or 'no registered meaning'}",
        f"class {first}yz {CLASS_NAMES[first]}: {CLASS_MEANINGS[first]}",
        category_line,
    ]


def _explain_enhanced(code: str) -> list[str]:
    """Lines for "5.1.1", or for "X.1.1" (the registry's spelling), which has no class."""
    status_class, subject, detail = code.split(".")
    code = f"{status_class.upper()}.{int(subject)}.{int(detail)}"
    subject_meaning = enhanced_subject_meaning(int(subject)) or "not a registered subject"
    lines = [f"enhanced {code}: {enhanced_meaning(code) or 'no registered meaning'}"]
    if status_class.isdigit():
        digit = int(status_class)
        name, words = ENHANCED_CLASS_NAMES[digit], ENHANCED_CLASS_MEANINGS[digit]
        lines.append(f"enhanced class {digit} {name}: {words}")
    lines.append(f"enhanced subject {int(subject)}: {subject_meaning}")
    return lines
