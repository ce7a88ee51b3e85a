"""Peer messages: the JSON envelope, one-line printing, and bad input from peers."""

from __future__ import annotations

import random

import msgspec
import pytest

from chorus.raft import (
    MESSAGE_TYPES,
    Entry,
    Forward,
    Heartbeat,
    HeartbeatAck,
    InstallSnapshot,
    Membership,
    MessageError,
    Probe,
    ProbeResp,
    RaftNode,
    ReadIndex,
    ReadIndexResp,
    Replicate,
    ReplicateAck,
    RequestVote,
    SnapshotMeta,
    TimeoutNow,
    VoteResponse,
    from_envelope,
    to_envelope,
)

from .net import Net

EXAMPLES = [
    Heartbeat(term=3, server_id=1, to=2, commit=7, ctx=4),
    HeartbeatAck(term=3, server_id=2, to=1, ctx=4),
    RequestVote(term=4, server_id=3, to=1, last_index=9, last_term=3, pre_vote=True),
    VoteResponse(term=4, server_id=1, to=3, granted=True, pre_vote=True, incarnation=5, fenced=((2, 9), (3, 4))),
    Replicate(term=3, server_id=1, to=2, prev_index=7, prev_term=3,
              entries=(Entry(8, 3, 0, b"hello"), Entry(9, 3, 2, Membership(frozenset({1, 2})).encode())), commit=7),
    ReplicateAck(term=3, server_id=2, to=1, index=7, reject=True, hint_index=5, hint_term=2),
    InstallSnapshot(term=3, server_id=1, to=2, snapshot=SnapshotMeta(100, 2, Membership(frozenset({1, 2, 3})))),
    TimeoutNow(term=3, server_id=1, to=2),
    Forward(term=3, server_id=2, to=1, commands=(b"a", b"b")),
    ReadIndex(term=3, server_id=2, to=1, request_id=17),
    ReadIndexResp(term=3, server_id=1, to=2, request_id=17, index=9),
    Probe(term=0, server_id=3, to=1, incarnation=1796400123456789),
    ProbeResp(term=7, server_id=1, to=3, recovering=False, known=1796400123456789),
]


def test_every_type_has_an_example() -> None:
    assert {m.type for m in EXAMPLES} == set(MESSAGE_TYPES)
    for name in ("HEARTBEAT", "REQUEST_VOTE", "VOTE_RESPONSE", "REPLICATE", "FORWARD"):
        assert name in MESSAGE_TYPES  # the original design's names


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda m: m.type)
def test_envelope_round_trip_through_json(msg) -> None:
    env = to_envelope(msg)
    assert set(env) == {"type", "term", "server_id", "to", "payload"}
    wire = msgspec.json.encode(env)
    assert from_envelope(msgspec.json.decode(wire)) == msg


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda m: m.type)
def test_prints_in_one_readable_line(msg) -> None:
    text = repr(msg)
    assert "\n" not in text and text.startswith(f"{msg.type} t{msg.term} {msg.server_id}->{msg.to}")


def test_long_batches_print_short() -> None:
    m = Replicate(term=2, server_id=1, to=2, prev_index=0, prev_term=0,
                  entries=tuple(Entry(i, 2, 0, b"x" * 100) for i in range(1, 501)), commit=0)
    assert repr(m) == "REPLICATE t2 1->2 prev=0/0 entries=[1..500 t2..2 (500)] commit=0"


@pytest.mark.parametrize(
    "obj, complaint",
    [
        ([], "must be an object"),
        ({"type": "GOSSIP", "term": 1, "server_id": 1, "to": 2, "payload": {}}, "unknown peer message type"),
        ({"type": "HEARTBEAT", "term": 1, "server_id": 1, "payload": {"commit": 0}}, "missing envelope field 'to'"),
        ({"type": "HEARTBEAT", "term": "1", "server_id": 1, "to": 2, "payload": {"commit": 0}}, "Expected `int`"),
        ({"type": "HEARTBEAT", "term": 1, "server_id": 1, "to": 2, "payload": []}, "payload must be an object"),
        ({"type": "HEARTBEAT", "term": 1, "server_id": 1, "to": 2, "payload": {}}, "missing required field `commit`"),
        ({"type": "REPLICATE", "term": 1, "server_id": 1, "to": 2,
          "payload": {"prev_index": 0, "prev_term": 0, "entries": [[1, 1, 0, "not base64!"]]}}, "Invalid base64"),
        ({"type": "VOTE_RESPONSE", "term": 1, "server_id": 1, "to": 2, "payload": {"granted": 1}}, "Expected `bool`"),
        ({"type": "VOTE_RESPONSE", "term": 1, "server_id": 1, "to": 2,
          "payload": {"granted": True, "fenced": [[0, 5]]}}, "Expected `int` >= 1"),
        ({"type": "VOTE_RESPONSE", "term": 1, "server_id": 1, "to": 2,
          "payload": {"granted": True, "fenced": [[2, 2**63]]}}, "Expected `int` <= 9007199254740991"),
        ({"type": "PROBE", "term": 1, "server_id": 1, "to": 2, "payload": {"incarnation": -1}}, "Expected `int` >= 0"),
    ],
)
def test_malformed_envelopes_get_a_clear_error(obj, complaint) -> None:
    with pytest.raises(MessageError) as err:
        from_envelope(obj)
    assert complaint in str(err.value)


def _fingerprint(node: RaftNode) -> tuple:
    return (node.term, node.vote, node.commit, node.role, node.primary, node.log.last_index,
            node.membership, node.election_elapsed, len(node._outbox), node.has_ready())


BAD = [
    ("addressed elsewhere", Heartbeat(term=1, server_id=2, to=9, commit=0)),
    ("from itself", Heartbeat(term=1, server_id=1, to=1, commit=0)),
    ("negative term", Heartbeat(term=-1, server_id=2, to=1, commit=0)),
    ("string term", Heartbeat(term="1", server_id=2, to=1, commit=0)),
    ("bool index", ReplicateAck(term=1, server_id=2, to=1, index=True)),
    ("gap in entries", Replicate(term=5, server_id=2, to=1, prev_index=0, prev_term=0, entries=(Entry(2, 5, 0, b""),))),
    ("entry from the future", Replicate(term=5, server_id=2, to=1, prev_index=0, prev_term=0, entries=(Entry(1, 6, 0, b""),))),
    ("decreasing terms", Replicate(term=5, server_id=2, to=1, prev_index=0, prev_term=0,
                                   entries=(Entry(1, 4, 0, b""), Entry(2, 3, 0, b"")))),
    ("text instead of bytes", Replicate(term=5, server_id=2, to=1, prev_index=0, prev_term=0, entries=(Entry(1, 4, 0, "x"),))),
    ("unknown entry kind", Replicate(term=5, server_id=2, to=1, prev_index=0, prev_term=0, entries=(Entry(1, 4, 9, b""),))),
    ("garbled membership", Replicate(term=5, server_id=2, to=1, prev_index=0, prev_term=0, entries=(Entry(1, 4, 2, b"[1,2"),))),
    ("membership without voters", Replicate(term=5, server_id=2, to=1, prev_index=0, prev_term=0,
                                            entries=(Entry(1, 4, 2, Membership().encode()),))),
    ("prev term of index 0", Replicate(term=5, server_id=2, to=1, prev_index=0, prev_term=3)),
    ("vote for a future log", RequestVote(term=2, server_id=2, to=1, last_index=3, last_term=3)),
    ("snapshot at 0", InstallSnapshot(term=2, server_id=2, to=1, snapshot=SnapshotMeta(0, 1, Membership(frozenset({1}))))),
    ("snapshot without voters", InstallSnapshot(term=2, server_id=2, to=1, snapshot=SnapshotMeta(5, 1, Membership()))),
    ("snapshot voter also learner", InstallSnapshot(term=2, server_id=2, to=1,
                                                    snapshot=SnapshotMeta(5, 1, Membership(frozenset({1}), frozenset({1}))))),
    ("forward of text", Forward(term=1, server_id=2, to=1, commands=("x",))),
    ("too many fences", VoteResponse(term=1, server_id=2, to=1, granted=False,
                                     fenced=tuple((i, 1) for i in range(1, 258)))),
    ("a fence of three", VoteResponse(term=1, server_id=2, to=1, granted=False, fenced=((3, 1, 1),))),
    ("incarnation beyond bounds", ReplicateAck(term=1, server_id=2, to=1, index=0, incarnation=2**53)),
    ("known beyond bounds", ProbeResp(term=1, server_id=2, to=1, known=-1)),
    ("not a message", "REQUEST_VOTE"),
    ("a dict", {"type": "HEARTBEAT"}),
]


@pytest.mark.parametrize("why, msg", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_rejected_and_changes_nothing(why, msg) -> None:
    node = RaftNode(1, Membership(frozenset({1, 2, 3})), rng=random.Random(1))
    node.tick()
    before = _fingerprint(node)
    with pytest.raises(MessageError):
        node.step(msg)
    assert _fingerprint(node) == before


def test_a_primary_rejects_lies_about_its_own_term() -> None:
    net = Net(3)
    net.elect(1)
    p = net[1]
    before = _fingerprint(p)
    with pytest.raises(MessageError, match="claims to be primary"):
        p.step(Heartbeat(term=p.term, server_id=2, to=1, commit=0))
    with pytest.raises(MessageError, match="beyond our last entry"):
        p.step(ReplicateAck(term=p.term, server_id=2, to=1, index=p.log.last_index + 1))
    with pytest.raises(MessageError, match="read round"):
        # It would confirm, in advance, every read of this term.
        p.step(HeartbeatAck(term=p.term, server_id=2, to=1, ctx=p.reads.ctx + 1000))
    assert _fingerprint(p) == before
    # Answers from servers that are not members are dropped quietly.
    p.step(ReplicateAck(term=p.term, server_id=7, to=1, index=1))
    assert _fingerprint(p) == before


def test_what_may_leave_before_the_fsync() -> None:
    """The Ready's plan: a primary's REPLICATE/HEARTBEAT and every FORWARD go
    before the write; votes and acknowledgements wait for it; nothing of a
    primary goes early while its term or vote is not yet on disk; and a Ready
    with nothing to sync lets everything go."""
    net = Net(3)
    node = net[1]
    rd = node.ready()  # the bootstrap entry of a new store
    assert rd.must_sync and rd.entries
    node.advance(rd)
    node.campaign()  # (a pre-vote: term and vote unchanged)
    rd = node.ready()
    assert not rd.must_sync and {m.type for m in rd.now} == {"REQUEST_VOTE"}
    node.advance(rd)
    # The real election: its term and vote must be on disk before the requests leave.
    node.step(VoteResponse(term=2, server_id=2, to=1, granted=True, pre_vote=True))
    rd = node.ready()
    assert rd.must_sync and rd.hard_state is not None and rd.hard_state.term == 2
    assert rd.now == () and {m.type for m in rd.after} == {"REQUEST_VOTE"}
    node.advance(rd)
    node.step(VoteResponse(term=2, server_id=2, to=1, granted=True))
    rd = node.ready()  # primary of term 2, its vote on disk: its entries leave before its own write
    assert rd.must_sync and rd.entries and {m.type for m in rd.now} == {"REPLICATE"} and rd.after == ()
    node.advance(rd)
    node.step(ReplicateAck(term=2, server_id=2, to=1, index=rd.entries[-1].index))
    rd = node.ready()  # a commit index alone: nothing to sync, everything leaves at once
    assert not rd.must_sync and rd.after == () and rd.now == rd.messages
    node.advance(rd)
    # A backup: its acknowledgement waits for the entries it acknowledges; a FORWARD does not.
    b = net[3]
    b.advance(b.ready())
    b.step(Replicate(term=2, server_id=1, to=3, prev_index=1, prev_term=1, entries=(Entry(2, 2, 1, b""),), commit=1))
    b.propose(b"x")
    rd = b.ready()
    assert rd.must_sync and [m.type for m in rd.now] == ["FORWARD"] and [m.type for m in rd.after] == ["REPLICATE_ACK"]
