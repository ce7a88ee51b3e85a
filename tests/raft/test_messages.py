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
    return (node.term, node.vote, node.commit, node.role, node.leader, node.log.last_index,
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
        p.step(HeartbeatAck(term=p.term, server_id=2, to=1, ctx=p.read_ctx + 1000))
    assert _fingerprint(p) == before
    # Answers from servers that are not members are dropped quietly.
    p.step(ReplicateAck(term=p.term, server_id=7, to=1, index=1))
    assert _fingerprint(p) == before


def test_what_may_leave_before_the_fsync() -> None:
    """split_messages: a primary's REPLICATE/HEARTBEAT and every FORWARD go early;
    votes and acknowledgements never do; nothing of a primary goes early while
    its term or vote is not yet on disk."""
    from chorus.raft import HardState, Ready, Role, split_messages

    msgs = (
        Replicate(term=3, server_id=1, to=2, prev_index=4, prev_term=3, commit=4),
        Heartbeat(term=3, server_id=1, to=3, commit=4),
        Forward(term=3, server_id=1, to=2, commands=(b"x",)),
        ReplicateAck(term=3, server_id=1, to=2, index=5),
        VoteResponse(term=3, server_id=1, to=2, granted=True),
        RequestVote(term=3, server_id=1, to=2, last_index=5, last_term=3),
    )

    def ready(hs: HardState | None) -> Ready:
        return Ready(hard_state=hs, soft_state=None, snapshot=None, entries=(), messages=msgs, committed=(),
                     reads=(), membership=None)

    def early(rd: Ready, role: Role, durable: tuple[int, int, bool]) -> list[str]:
        first, rest = split_messages(rd, role, durable)
        assert first + rest == sorted(msgs, key=lambda m: m not in first) and len(first + rest) == len(msgs)
        return [m.type for m in first]

    assert early(ready(None), Role.PRIMARY, (3, 1, False, 0, ())) == ["REPLICATE", "HEARTBEAT", "FORWARD"]
    assert early(ready(HardState(3, 1, 5)), Role.PRIMARY, (3, 1, False, 0, ())) == ["REPLICATE", "HEARTBEAT", "FORWARD"]
    # A term or vote this Ready is about to write: the primary waits for it.
    assert early(ready(HardState(3, 1, 5)), Role.PRIMARY, (2, 2, False, 0, ())) == ["FORWARD"]
    # So does the end of a recovery (acknowledgements that count from now on).
    assert early(ready(HardState(3, 1, 5)), Role.PRIMARY, (3, 1, True, 0, ())) == ["FORWARD"]
    assert early(ready(None), Role.BACKUP, (3, 1, False, 0, ())) == ["FORWARD"]
    assert early(ready(None), Role.CANDIDATE, (3, 1, False, 0, ())) == ["FORWARD"]
