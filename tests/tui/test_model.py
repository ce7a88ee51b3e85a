"""What the chat app shows, without a screen or a cluster."""

from __future__ import annotations

import time

from chorus.client import Conversation, Message
from chorus.tui.model import (
    FAILED,
    SENDING,
    SENT,
    Contacts,
    ConversationLog,
    Latch,
    clock,
    primary_of,
    search_pattern,
    since_last_time,
    trouble,
    wildcard,
)
from chorus.wire.results import ServerStatus, Status


def msg(id: int, sender: str, recipient: str, body: str = "", sent_at: int = 1_700_000_000_000) -> Message:
    return Message(id, sender, recipient, body or f"#{id}", sent_at)


def conv(peer: str, last: Message, unread: int = 0) -> Conversation:
    return Conversation(peer, unread, 0, last)


def test_search_patterns_match_as_the_server_does() -> None:
    assert search_pattern("") == "*"
    assert search_pattern(" bo ") == "*bo*"
    assert search_pattern("b?b") == "b?b"
    assert wildcard("*bo*").fullmatch("aBOt")
    assert wildcard("b?b").fullmatch("BOB") and not wildcard("b?b").fullmatch("bob2")
    assert wildcard("a.c").fullmatch("a.c") and not wildcard("a.c").fullmatch("abc")  # only * and ? are special


def test_contacts_put_recent_conversations_first_then_everyone_else() -> None:
    contacts = Contacts("alice")
    contacts.set_conversations([conv("bob", msg(5, "bob", "alice"), unread=2), conv("carol", msg(9, "alice", "carol"))])
    contacts.set_users(["alice", "bob", "carol", "dave", "erin"])
    assert [(c.name, c.unread) for c in contacts.visible()] == \
        [("carol", 0), ("bob", 2), ("alice", 0), ("dave", 0), ("erin", 0)]
    assert [c.name for c in contacts.visible("*r*")] == ["carol", "erin"]

    # A message from bob: his conversation goes to the top, one more unread.
    contacts.message(msg(12, "Bob", "alice"), open_peer=None)
    assert [(c.name, c.unread) for c in contacts.visible()][:2] == [("bob", 3), ("carol", 0)]
    # From dave, whose conversation is open: no badge. Our own message: no badge either.
    contacts.message(msg(13, "dave", "alice"), open_peer="DAVE")
    contacts.message(msg(14, "alice", "erin"), open_peer=None)
    assert [(c.name, c.unread) for c in contacts.visible()] == \
        [("erin", 0), ("dave", 0), ("bob", 3), ("carol", 0), ("alice", 0)]
    contacts.read("bob")
    assert contacts.get("BOB").unread == 0


def test_a_conversation_pages_back_and_takes_live_messages_once() -> None:
    log = ConversationLog("alice", "bob")
    log.add_page([msg(20, "bob", "alice"), msg(18, "alice", "bob")], limit=2)
    assert [e.id for e in log.entries] == [18, 20] and log.has_more and log.oldest_id == 18
    log.add_page([msg(11, "bob", "alice")], limit=2)  # view more: the last page
    assert [e.id for e in log.entries] == [11, 18, 20] and not log.has_more

    pushed = log.receive(msg(25, "bob", "alice", "live"))
    assert pushed is not None and pushed.fresh
    assert log.receive(msg(25, "bob", "alice", "live")) is None  # shown already
    assert [e.id for e in log.entries] == [11, 18, 20, 25]

    log.remove([18, 99])
    assert [e.id for e in log.entries] == [11, 20, 25]


def test_own_messages_go_from_sending_to_sent_whichever_comes_first() -> None:
    log = ConversationLog("alice", "bob")
    first, second = log.add_pending("one"), log.add_pending("two")
    assert [e.state for e in log.entries] == [SENDING, SENDING] and len(log.unsent) == 2

    # The answer to the send comes first, then the push of the same message.
    log.confirm(first, msg(30, "alice", "bob", "one"))
    assert (first.state, first.id) == (SENT, 30)
    assert log.receive(msg(30, "alice", "bob", "one")) is None
    # The push comes first, then the answer.
    assert log.receive(msg(31, "alice", "bob", "two")) is second
    log.confirm(second, msg(31, "alice", "bob", "two"))
    assert [(e.id, e.body, e.state) for e in log.entries] == [(30, "one", SENT), (31, "two", SENT)]
    assert not any(e.fresh for e in log.entries)


def test_the_same_text_from_another_session_is_not_taken_for_ours() -> None:
    log = ConversationLog("alice", "bob")
    mine = log.add_pending("hi")
    log.receive(msg(40, "alice", "bob", "hi"))  # alice, on another device, said "hi" too
    log.confirm(mine, msg(41, "alice", "bob", "hi"))
    assert [(e.id, e.body, e.state) for e in log.entries] == [(40, "hi", SENT), (41, "hi", SENT)]


def test_history_read_before_the_answer_does_not_show_a_message_twice() -> None:
    log = ConversationLog("alice", "bob")
    mine = log.add_pending("hello")
    log.reset()  # reopened while sending: what is still sending stays
    log.add_page([msg(50, "alice", "bob", "hello")], limit=5)
    log.confirm(mine, msg(50, "alice", "bob", "hello"))
    assert [(e.id, e.state) for e in log.entries] == [(50, SENT)]


def test_failed_sends_stay_and_only_own_sent_messages_can_be_selected() -> None:
    log = ConversationLog("alice", "bob")
    log.add_page([msg(60, "bob", "alice"), msg(59, "alice", "bob")], limit=5)
    pending = log.add_pending("to nobody")
    log.fail(pending, "there is no user named 'bob'")
    theirs, mine = log.entries[1], log.entries[0]
    assert not log.toggle(theirs) and not log.toggle(pending)
    assert log.toggle(mine) and log.selected_ids() == [59]
    log.reset()
    assert [e.state for e in log.entries] == [FAILED]


def _up(address: str, role: str, term: int) -> ServerStatus:
    status = Status(id=int(address[-1]), role=role, term=term, commit_index=0, applied_index=0, last_index=0,
                    snapshot_index=0, digest="0", primary=None, primary_address=None, voters=[1, 2, 3], learners=[],
                    health="ok", health_reason=None, disk="member")
    return ServerStatus(address, status)


def test_who_is_primary_and_why_the_app_is_reconnecting() -> None:
    up = [_up("a:1", "BACKUP", 3), _up("a:2", "PRIMARY", 3), _up("a:3", "PRIMARY", 2)]
    primary = primary_of(up)
    assert primary is not None and primary.address == "a:2"  # an old primary that has not heard yet loses to the newer term
    assert trouble(up, "a:1", logged_in=True, retrying=False) == ""
    assert trouble(up, None, logged_in=False, retrying=False) == ""  # not logged in: not connected yet
    assert "connection lost" in trouble(up, None, logged_in=True, retrying=False)
    assert "retried" in trouble(up, "a:1", logged_in=True, retrying=True)
    down = [_up("a:1", "CANDIDATE", 4), ServerStatus("a:2", error="unreachable")]
    assert trouble(down, "a:1", logged_in=True, retrying=False) == "no primary, 1 of 2 servers down: electing one"
    assert trouble(down, "a:2", logged_in=True, retrying=False) == "a:2 does not answer"


def test_the_reconnecting_banner_stays_long_enough_to_be_seen() -> None:
    latch = Latch(hold=1.5)
    assert not latch.update(False, 0.0)
    assert latch.update(True, 10.0)
    assert latch.update(False, 10.2)  # the failover was over quickly: still shown
    assert latch.update(True, 11.0)
    assert not latch.update(False, 11.5)


def test_times_read_in_local_time_and_the_greeting_says_what_arrived() -> None:
    now = time.time()
    ms = int(now * 1000)
    assert clock(ms, now) == time.strftime("%H:%M", time.localtime(now))
    last_year = now - 400 * 86400
    assert clock(int(last_year * 1000), now) == time.strftime("%Y-%m-%d %H:%M", time.localtime(last_year))

    assert "First time" in since_last_time(None, [])
    convs = [conv("bob", msg(7, "bob", "alice", sent_at=ms), unread=3),
             conv("carol", msg(5, "carol", "alice", sent_at=ms - 10_000), unread=1),
             conv("dave", msg(4, "alice", "dave", sent_at=ms))]
    greeting = since_last_time(ms - 5_000, convs)
    assert greeting.endswith("Since then, new messages from bob (3 unread).")
    assert time.strftime("%Y-%m-%d %H:%M", time.localtime((ms - 5_000) / 1000)) in greeting
    assert since_last_time(ms + 1, convs).endswith("Nothing new has arrived since.")
