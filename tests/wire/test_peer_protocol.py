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
    ReadIndex,
    ReadIndexResp,
    Replicate,
    ReplicateAck,
    RequestVote,
    SnapshotMeta,
    TimeoutNow,
    VoteResponse,
)
from chorus.wire.peer import Hello, SnapshotChunk, decode_peer, encode_peer

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


def test_hello_round_trips_and_stays_valid() -> None:
    h = Hello.sign(SECRET, 2, 1, "nonce-123", FP)
    wire = encode_peer(h)
    env = json.loads(wire)
    assert (env["type"], env["server_id"], env["to"]) == ("HELLO", 2, 1)
    assert env["payload"] == {"nonce": "nonce-123", "cluster": FP, "mac": h.mac}
    back = decode_peer(wire)
    assert isinstance(back, Hello)
    assert back == h
    assert back.valid(SECRET, FP)


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


def test_hello_is_valid_with_the_same_secret_and_cluster() -> None:
    h = Hello.sign(SECRET, 1, 2, "n1", FP)
    assert h.valid(SECRET, FP)


def test_hello_is_invalid_with_another_secret() -> None:
    h = Hello.sign(SECRET, 1, 2, "n1", FP)
    assert not h.valid(b"another-secret-0123456789", FP)
    assert not Hello.sign(b"another-secret-0123456789", 1, 2, "n1", FP).valid(SECRET, FP)


def test_hello_is_invalid_with_another_cluster_fingerprint() -> None:
    h = Hello.sign(SECRET, 1, 2, "n1", FP)
    assert not h.valid(SECRET, "fedcba9876543210")
    # Claiming the receiver's fingerprint without having signed it does not help.
    assert not msgspec.structs.replace(h, cluster="fedcba9876543210").valid(SECRET, "fedcba9876543210")
    # Control: signed for that fingerprint, it verifies against it.
    assert Hello.sign(SECRET, 1, 2, "n1", "fedcba9876543210").valid(SECRET, "fedcba9876543210")


@pytest.mark.parametrize(
    "change", [{"server_id": 3}, {"to": 3}, {"nonce": "n2"}], ids=["server_id", "to", "nonce"],
)
def test_hello_is_invalid_when_a_signed_field_is_changed(change: dict) -> None:
    h = Hello.sign(SECRET, 1, 2, "n1", FP)
    forged = msgspec.structs.replace(h, **change)
    assert not forged.valid(SECRET, FP)
    # Also after a trip over the wire.
    assert not decode_peer(encode_peer(forged)).valid(SECRET, FP)


@pytest.mark.parametrize("mac", ["", "00", "zz" * 32, "é" * 64], ids=["empty", "short", "not-hex", "non-ascii"])
def test_hello_with_a_garbage_mac_is_invalid_not_an_error(mac: str) -> None:
    h = msgspec.structs.replace(Hello.sign(SECRET, 1, 2, "n1", FP), mac=mac)
    assert h.valid(SECRET, FP) is False


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
        pytest.param(_env("HELLO", {"nonce": "n", "cluster": FP}), id="hello-without-mac"),
        pytest.param(_env("HELLO", {"nonce": 5, "cluster": FP, "mac": "00"}), id="hello-int-nonce"),
        pytest.param(json.dumps({"type": "HELLO", "term": 0, "server_id": "1", "to": 2,
                                 "payload": {"nonce": "n", "cluster": FP, "mac": "00"}}).encode(),
                     id="hello-string-server-id"),
        pytest.param(json.dumps({"type": "HELLO", "term": 0, "server_id": 1,
                                 "payload": {"nonce": "n", "cluster": FP, "mac": "00"}}).encode(),
                     id="hello-without-to"),
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
