"""The peer protocol: consensus messages, HELLO and SNAPSHOT_CHUNK on the wire."""

from __future__ import annotations

import json

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
    ReadIndex,
    ReadIndexResp,
    Replicate,
    ReplicateAck,
    RequestVote,
    SnapshotMeta,
    TimeoutNow,
    VoteResponse,
)
from chorus.wire.peer import Challenge, Hello, SnapshotChunk, decode_peer, encode_peer

SECRET = b"peer-secret-0123456789"
FP = "0123456789abcdef"

EXAMPLES = [
    Heartbeat(term=5, server_id=2, to=3, commit=11, ctx=9),
    Heartbeat(term=1, server_id=1, to=2, commit=0),
    HeartbeatAck(term=5, server_id=3, to=2, ctx=9),
    RequestVote(term=6, server_id=1, to=2, last_index=12, last_term=5, pre_vote=False, transfer=True),
    VoteResponse(term=6, server_id=2, to=1, granted=False, pre_vote=True),
    Replicate(term=5, server_id=2, to=1, prev_index=10, prev_term=4,
              entries=(Entry(11, 5, 1, b""), Entry(12, 5, 0, bytes(range(256))),
                       Entry(13, 5, 2, Membership(frozenset({1, 2, 3}), frozenset({4})).encode())),
              commit=10),
    Replicate(term=2, server_id=1, to=3, prev_index=0, prev_term=0),
    ReplicateAck(term=5, server_id=1, to=2, index=12),
    ReplicateAck(term=5, server_id=3, to=2, index=20, reject=True, hint_index=15, hint_term=4),
    InstallSnapshot(term=7, server_id=3, to=1,
                    snapshot=SnapshotMeta(500, 6, Membership(frozenset({1, 2, 3}), frozenset({5}), frozenset({4})))),
    TimeoutNow(term=7, server_id=1, to=3),
    Forward(term=7, server_id=3, to=1, commands=(b'{"op":"send"}', b"\x00\xff", b"")),
    ReadIndex(term=7, server_id=2, to=1, request_id=99),
    ReadIndexResp(term=7, server_id=1, to=2, request_id=99, index=480),
    Probe(term=0, server_id=2, to=1),
    ProbeResp(term=7, server_id=1, to=2, recovering=True),
]


def _chunk(data: bytes = b"\x00\x01snapshot\xff", **kw) -> SnapshotChunk:
    fields = dict(server_id=1, to=3, term=7, index=500, snapshot_term=6,
                  membership=Membership(frozenset({1, 2, 3}), frozenset({4}), frozenset({9})),
                  size=4096, sha256="ab" * 32, digest="00000000075bcd15", offset=1024, data=data)
    fields.update(kw)
    return SnapshotChunk(**fields)


def test_every_message_type_has_an_example() -> None:
    assert {m.type for m in EXAMPLES} == set(MESSAGE_TYPES)


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda m: m.type)
def test_consensus_messages_round_trip(msg) -> None:
    wire = encode_peer(msg)
    env = json.loads(wire)
    assert set(env) == {"type", "term", "server_id", "to", "payload"}
    assert (env["type"], env["term"], env["server_id"], env["to"]) == (msg.type, msg.term, msg.server_id, msg.to)
    back = decode_peer(wire)
    assert type(back) is type(msg)
    assert back == msg


CH = "c" * 32  # a challenge (32 hex digits)
N2 = "d" * 32


def test_the_handshake_frames_round_trip() -> None:
    ch = Challenge(server_id=1, nonce=CH)
    h = Hello.sign(SECRET, 2, 1, CH, FP, nonce=N2)
    w = h.welcome(SECRET)
    for frame, kind, sender, to in ((ch, "CHALLENGE", 1, 0), (h, "HELLO", 2, 1), (w, "WELCOME", 1, 2)):
        wire = encode_peer(frame)
        env = json.loads(wire)
        assert (env["type"], env["server_id"], env["to"]) == (kind, sender, to)
        assert decode_peer(wire) == frame
    assert json.loads(encode_peer(h))["payload"] == {"challenge": CH, "nonce": N2, "cluster": FP, "mac": h.mac,
                                                     "state": "member"}
    assert h.valid(SECRET, CH, FP) and w.valid(SECRET, h)


def test_the_disk_state_each_side_tells_is_signed() -> None:
    """A forged "fresh" could make a server with an empty disk found a new cluster."""
    h = Hello.sign(SECRET, 2, 1, CH, FP, state="fresh")
    assert h.valid(SECRET, CH, FP) and decode_peer(encode_peer(h)).state == "fresh"
    assert not msgspec.structs.replace(h, state="member").valid(SECRET, CH, FP)
    w = h.welcome(SECRET, "recovering")
    assert w.valid(SECRET, h) and decode_peer(encode_peer(w)).state == "recovering"
    assert not msgspec.structs.replace(w, state="fresh").valid(SECRET, h)


def test_snapshot_chunk_round_trips_with_binary_data() -> None:
    c = _chunk(bytes(range(256)) * 3)
    wire = encode_peer(c)
    env = json.loads(wire)
    assert (env["type"], env["term"], env["server_id"], env["to"]) == ("SNAPSHOT_CHUNK", 7, 1, 3)
    assert isinstance(env["payload"]["data"], str)  # base64 in JSON
    back = decode_peer(wire)
    assert isinstance(back, SnapshotChunk)
    assert back == c
    assert back.data == bytes(range(256)) * 3
    assert back.meta == SnapshotMeta(500, 6, c.membership)


@settings(deadline=None)
@given(st.binary(max_size=2000), st.integers(0, 2**40), st.integers(0, 2**63 - 1))
def test_snapshot_chunk_round_trips_any_bytes(data: bytes, offset: int, digest: int) -> None:
    c = _chunk(data, offset=offset, digest=f"{digest:016x}")
    assert decode_peer(encode_peer(c)) == c


def test_hello_is_valid_with_the_same_secret_cluster_and_challenge() -> None:
    h = Hello.sign(SECRET, 1, 2, CH, FP)
    assert h.valid(SECRET, CH, FP)


def test_a_hello_answers_one_challenge_only() -> None:
    """What makes a captured HELLO useless: the next connection's challenge differs."""
    h = Hello.sign(SECRET, 1, 2, CH, FP)
    assert not h.valid(SECRET, "e" * 32, FP)
    # Changing the echoed challenge to the new one breaks the MAC.
    assert not msgspec.structs.replace(h, challenge="e" * 32).valid(SECRET, "e" * 32, FP)
    # Control: answered for the new challenge, it is valid.
    assert Hello.sign(SECRET, 1, 2, "e" * 32, FP).valid(SECRET, "e" * 32, FP)


def test_hello_is_invalid_with_another_secret() -> None:
    h = Hello.sign(SECRET, 1, 2, CH, FP)
    assert not h.valid(b"another-secret-0123456789", CH, FP)
    assert not Hello.sign(b"another-secret-0123456789", 1, 2, CH, FP).valid(SECRET, CH, FP)


def test_hello_is_invalid_with_another_cluster_fingerprint() -> None:
    h = Hello.sign(SECRET, 1, 2, CH, FP)
    assert not h.valid(SECRET, CH, "fedcba9876543210")
    # Claiming the receiver's fingerprint without having signed it does not help.
    assert not msgspec.structs.replace(h, cluster="fedcba9876543210").valid(SECRET, CH, "fedcba9876543210")
    # Control: signed for that fingerprint, it verifies against it.
    assert Hello.sign(SECRET, 1, 2, CH, "fedcba9876543210").valid(SECRET, CH, "fedcba9876543210")


@pytest.mark.parametrize(
    "change", [{"server_id": 3}, {"to": 3}, {"nonce": "f" * 32}], ids=["server_id", "to", "nonce"],
)
def test_hello_is_invalid_when_a_signed_field_is_changed(change: dict) -> None:
    h = Hello.sign(SECRET, 1, 2, CH, FP)
    forged = msgspec.structs.replace(h, **change)
    assert not forged.valid(SECRET, CH, FP)
    # Also after a trip over the wire.
    assert not decode_peer(encode_peer(forged)).valid(SECRET, CH, FP)


def test_welcome_proves_the_accepting_server_knows_the_secret() -> None:
    h = Hello.sign(SECRET, 1, 2, CH, FP)
    assert h.welcome(SECRET).valid(SECRET, h)
    assert not h.welcome(b"another-secret-0123456789").valid(SECRET, h)
    # A WELCOME answers one HELLO: not another one (another nonce), not one from another server.
    other = Hello.sign(SECRET, 1, 2, CH, FP)
    assert not h.welcome(SECRET).valid(SECRET, other)
    assert not msgspec.structs.replace(h.welcome(SECRET), server_id=3).valid(SECRET, h)


@pytest.mark.parametrize("mac", ["", "00", "zz" * 32, "é" * 64], ids=["empty", "short", "not-hex", "non-ascii"])
def test_hello_with_a_garbage_mac_is_invalid_not_an_error(mac: str) -> None:
    h = msgspec.structs.replace(Hello.sign(SECRET, 1, 2, CH, FP), mac=mac)
    assert h.valid(SECRET, CH, FP) is False


@pytest.mark.parametrize("nonce", ["", "n", "zz" * 16, "0" * 65, "é" * 32])
def test_a_challenge_must_be_a_long_random_nonce(nonce: str) -> None:
    wire = json.dumps({"type": "CHALLENGE", "term": 0, "server_id": 1, "to": 0, "payload": {"nonce": nonce}})
    with pytest.raises(MessageError, match="CHALLENGE"):
        decode_peer(wire.encode())


def _env(kind: str, payload, **kw) -> bytes:
    return json.dumps({"type": kind, "term": 0, "server_id": 1, "to": 2, "payload": payload, **kw}).encode()


GOOD_CHUNK_PAYLOAD = {k: v for k, v in json.loads(encode_peer(_chunk()))["payload"].items()}


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"not json", id="not-json"),
        pytest.param(b"{", id="truncated"),
        pytest.param(b"\xff", id="not-utf8"),
        pytest.param(b"[1, 2]", id="array"),
        pytest.param(b"5", id="number"),
        pytest.param(b'"HELLO"', id="string"),
        pytest.param(b"null", id="null"),
        pytest.param(_env("GOSSIP", {}), id="unknown-type"),
        pytest.param(json.dumps({"term": 0, "server_id": 1, "to": 2, "payload": {}}).encode(), id="no-type"),
        pytest.param(json.dumps({"type": "HELLO", "term": 0, "server_id": 1, "to": 2}).encode(),
                     id="hello-without-payload"),
        pytest.param(_env("HELLO", None), id="hello-null-payload"),
        pytest.param(_env("HELLO", ["n", "c", "m"]), id="hello-array-payload"),
        pytest.param(_env("HELLO", {"challenge": CH, "nonce": N2, "cluster": FP}), id="hello-without-mac"),
        pytest.param(_env("HELLO", {"challenge": CH, "nonce": 5, "cluster": FP, "mac": "00"}), id="hello-int-nonce"),
        pytest.param(_env("HELLO", {"nonce": N2, "cluster": FP, "mac": "00"}), id="hello-without-challenge"),
        pytest.param(json.dumps({"type": "HELLO", "term": 0, "server_id": "1", "to": 2,
                                 "payload": {"challenge": CH, "nonce": N2, "cluster": FP, "mac": "00"}}).encode(),
                     id="hello-string-server-id"),
        pytest.param(json.dumps({"type": "HELLO", "term": 0, "server_id": 1,
                                 "payload": {"challenge": CH, "nonce": N2, "cluster": FP, "mac": "00"}}).encode(),
                     id="hello-without-to"),
        pytest.param(_env("HEARTBEAT", {"commit": 0}, term=2**63), id="term-2**63"),
        pytest.param(_env("HEARTBEAT", {"commit": 0}, term=2**53), id="term-2**53"),
        pytest.param(_env("HEARTBEAT", {"commit": -1}), id="negative-commit"),
        pytest.param(_env("REQUEST_VOTE", {"last_index": 2**64, "last_term": 0}), id="index-2**64"),
        pytest.param(_env("READ_INDEX", {"request_id": 2**63}), id="request-id-2**63"),
        pytest.param(_env("HEARTBEAT", {"commit": 0}, server_id=0), id="server-id-0"),
        pytest.param(_env("REPLICATE", {"prev_index": 0, "prev_term": 0, "entries": [[1, 2**63, 0, ""]]}),
                     id="entry-term-2**63"),
        pytest.param(_env("SNAPSHOT_CHUNK", {**GOOD_CHUNK_PAYLOAD, "size": 2**63}, term=7), id="chunk-size-2**63"),
        pytest.param(_env("INSTALL_SNAPSHOT", {"snapshot": {"index": 2**63, "term": 1, "membership": {}}}),
                     id="snapshot-index-2**63"),
        pytest.param(_env("HEARTBEAT", {"commit": 0, "ctx": [[[[0]]]]}), id="nested-field"),
        pytest.param(b'{"type":"HEARTBEAT","payload":' + b"[" * 50_000 + b"]" * 50_000 + b"}", id="nested-50000-deep"),
        pytest.param(json.dumps({"type": "SNAPSHOT_CHUNK", "term": 7, "server_id": 1, "to": 3}).encode(),
                     id="chunk-without-payload"),
        pytest.param(_env("SNAPSHOT_CHUNK", {**GOOD_CHUNK_PAYLOAD, "offset": "1024"}, term=7),
                     id="chunk-string-offset"),
        pytest.param(_env("SNAPSHOT_CHUNK", {**GOOD_CHUNK_PAYLOAD, "data": 17}, term=7), id="chunk-int-data"),
        pytest.param(_env("SNAPSHOT_CHUNK", {**GOOD_CHUNK_PAYLOAD, "data": "not base64!"}, term=7),
                     id="chunk-bad-base64"),
        pytest.param(_env("SNAPSHOT_CHUNK", {**GOOD_CHUNK_PAYLOAD, "membership": [1, 2]}, term=7),
                     id="chunk-array-membership"),
        pytest.param(_env("SNAPSHOT_CHUNK", {k: v for k, v in GOOD_CHUNK_PAYLOAD.items() if k != "sha256"},
                          term=7), id="chunk-without-sha256"),
        pytest.param(_env("SNAPSHOT_CHUNK", GOOD_CHUNK_PAYLOAD, term="7"), id="chunk-string-term"),
        pytest.param(_env("HEARTBEAT", {"commit": "0"}), id="heartbeat-string-commit"),
        pytest.param(_env("REPLICATE", {"prev_index": 0, "prev_term": 0, "entries": [[1, 1, 0, "!!"]]}),
                     id="replicate-bad-entry"),
    ],
)
def test_bad_frames_raise_message_error(body: bytes) -> None:
    with pytest.raises(MessageError):
        decode_peer(body)


def test_the_good_chunk_payload_used_above_does_decode() -> None:
    # So that the chunk cases above fail for the one field they change.
    assert decode_peer(_env("SNAPSHOT_CHUNK", GOOD_CHUNK_PAYLOAD, term=7, to=3)) == _chunk()


@pytest.mark.parametrize(
    "body, complaint",
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "object"),
        (_env("GOSSIP", {}), "unknown peer message type"),
        (json.dumps({"type": "HELLO", "term": 0, "server_id": 1, "to": 2}).encode(), "payload"),
        (_env("SNAPSHOT_CHUNK", {**GOOD_CHUNK_PAYLOAD, "offset": "1024"}, term=7), "offset"),
    ],
)
def test_errors_say_what_is_wrong(body: bytes, complaint: str) -> None:
    with pytest.raises(MessageError, match=complaint):
        decode_peer(body)
