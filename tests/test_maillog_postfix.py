"""A real Postfix (Debian's, tests/postfix.py) writes its real log through postlogd
(`maillog_file`); smtpmon follows that file and must count exactly the replies the test made
Postfix give (tests/postfix_traffic.py): inbound rejects at each stage, sessions that ended
without QUIT, and outbound deliveries answered by scripted loopback servers."""

from __future__ import annotations

import time
from collections import Counter

from postfix_traffic import (
    DOMAIN_REPLIES,
    drive_inbound,
    drive_outbound,
)

from smtpmon.maillog.events import CONNECT_FAILURE, MALFORMED, REPLY, SESSION_END, Tally
from smtpmon.maillog.follow import FileFollower
from smtpmon.maillog.postfix import PostfixParser

WAIT_SECONDS = 20  # the silent server costs Postfix its 2 s greeting timeout


def follow_until(follower: FileFollower, parser: PostfixParser, tally: Tally, done) -> None:
    """Poll until `done(tally)` or WAIT_SECONDS (then the comparison shows what is missing)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        follower.poll(parser, tally)
        if done(tally) or time.monotonic() > deadline:
            return
        time.sleep(0.05)


def of_kind(tally: Tally, kind: str, direction: str) -> dict:
    return {event: count for event, count in tally.counts.items()
            if event.kind == kind and event.direction == direction}


def test_inbound_rejects_and_session_ends_by_stage(logging_postfix):
    parser, tally = PostfixParser(), Tally()
    follower = FileFollower(logging_postfix.maillog)
    follower.poll(parser, tally)  # open at the end: earlier lines belong to other tests
    driven = drive_inbound(logging_postfix)
    expected_events = sum(driven.replies.values()) + sum(driven.session_ends.values())
    follow_until(follower, parser, tally, lambda t: sum(
        of_kind(t, REPLY, "inbound").values()) + sum(
        of_kind(t, SESSION_END, "inbound").values()) >= expected_events)

    replies = Counter()
    for event, count in of_kind(tally, REPLY, "inbound").items():
        replies[event.direction, event.stage, event.code, event.enhanced] += count
        assert event.status == "reject"
    assert replies == driven.replies
    ends = Counter()
    for event, count in of_kind(tally, SESSION_END, "inbound").items():
        ends[event.stage, event.status] += count
    assert ends == driven.session_ends

    reasons = {(event.stage, event.code, event.reason) for event in of_kind(tally, REPLY, "inbound")}
    assert reasons == {
        ("connect", "554", "client_host"), ("ehlo", "554", "helo"), ("mail", "554", "sender"),
        ("mail", "552", "size"), ("rcpt", "550", "recipient"), ("rcpt", "554", "relay_access"),
        ("rcpt", "450", "recipient"), ("rcpt", "530", "tls_required"), ("ehlo", "501", "helo"),
        ("data", "503", "protocol"),
    }
    classes = {(event.code, event.reply_class, event.category)
               for event in of_kind(tally, REPLY, "inbound")}
    assert ("450", "transient_negative", "mail_system") in classes
    assert ("530", "permanent_negative", "unspecified") in classes
    assert ("501", "permanent_negative", "syntax") in classes
    assert not any(event.kind == MALFORMED for event in tally.counts)
    assert follower.health().lines_read == sum(tally.counts.values())


def test_outbound_replies_of_remote_servers_by_stage(logging_postfix):
    parser, tally = PostfixParser(domains=[DOMAIN_REPLIES]), Tally()
    follower = FileFollower(logging_postfix.maillog)
    follower.poll(parser, tally)
    driven = drive_outbound(logging_postfix)
    follow_until(follower, parser, tally, lambda t: sum(
        count for event, count in of_kind(t, REPLY, "outbound").items()
        if event.program == "smtp") >= driven.accepted)

    replies, deliveries, domains = Counter(), Counter(), Counter()
    for event, count in of_kind(tally, REPLY, "outbound").items():
        replies["outbound", event.status, event.stage, event.code, event.enhanced] += count
        deliveries[event.status, event.reason] += count
        domains[event.domain] += count
    assert replies == driven.replies
    assert deliveries == driven.deliveries
    assert domains == {DOMAIN_REPLIES: 4, "other": 6}  # only the configured domain is a label
    # The refused connection is also logged on its own, beside the delivery's status line.
    failures = {event.reason: count for event, count in tally.counts.items()
                if event.kind == CONNECT_FAILURE}
    assert failures == {"connection_refused": 1}
    by_code = {(event.code, event.reply_class, event.category)
               for event in of_kind(tally, REPLY, "outbound")}
    assert {("421", "transient_negative", "connections"), ("000", "none", "none"),
            ("554", "permanent_negative", "mail_system")} <= by_code
    assert not any(event.kind == MALFORMED for event in tally.counts)
