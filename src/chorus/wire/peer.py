"""The peer protocol: what servers send each other, in frames of JSON.

Every frame has the envelope of the original design, ``{"type", "term",
"server_id", "payload"}``, plus ``to``. The types are the consensus core's
(HEARTBEAT, REQUEST_VOTE, VOTE_RESPONSE, REPLICATE, FORWARD, ...), and the
transport's own:

- CHALLENGE, HELLO and WELCOME open every peer connection, a challenge and a
  response each way, so that nothing captured on the wire can be replayed:
  1. the server that accepted the connection sends CHALLENGE, a fresh random
     nonce;
  2. the connecting server answers HELLO: an HMAC, keyed with the cluster
     secret, over (sender, addressee, that challenge, a nonce of its own, the
     fingerprint of its list of servers). Servers with different lists would
     bootstrap different logs;
  3. the accepting server checks it and proves itself in turn with WELCOME, an
     HMAC over the same values in the other direction. Only then does the
     connecting server send anything else.
  With TLS (mutual, with the cluster's CA) the certificates bind each
  connection to a server id as well; the handshake is the same with or without.
- SNAPSHOT_CHUNK carries a piece of a snapshot file, base64 in JSON. The chunks
  come in order, followed by the INSTALL_SNAPSHOT message that names them.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Annotated, Any, Literal

import msgspec

from chorus.raft import (
    Membership,
    Message,
    MessageError,
    SnapshotMeta,
    from_envelope,
    to_envelope,
)
from chorus.raft.messages import Number, ServerId

from .frames import MAX_DEPTH, too_deep

_encoder = msgspec.json.Encoder()

HANDSHAKE_MAX_FRAME = 4096  # what a peer may send before it has proven itself
Nonce = Annotated[str, msgspec.Meta(min_length=32, max_length=64, pattern="^[0-9a-f]+$")]
Mac = Annotated[str, msgspec.Meta(max_length=128)]
Fingerprint = Annotated[str, msgspec.Meta(max_length=64)]


def new_nonce() -> str:
    return secrets.token_hex(16)


DiskState = Literal["fresh", "member", "recovering"]
# What a server says of its disk in the handshake: "fresh" (an empty disk that has
# never known a cluster: maybe one being created), "member" (it holds the cluster's
# data), "recovering" (it may have lost what it promised, and is catching up).


def _mac(secret: bytes, what: str, sender: int, to: int, challenge: str, nonce: str, cluster: str,
         state: str) -> str:
    text = f"chorus-peer-{what}/2:{sender}->{to}:{challenge}:{nonce}:{cluster}:{state}"
    return hmac.new(secret, text.encode(), hashlib.sha256).hexdigest()


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())  # bytes: any text is safe


class Challenge(msgspec.Struct, frozen=True, kw_only=True):
    """Accepting server -> connecting server, first: "prove yourself against this"."""

    server_id: ServerId
    nonce: Nonce


class Hello(msgspec.Struct, frozen=True, kw_only=True):
    """Connecting server -> accepting server: the answer to its CHALLENGE."""

    server_id: ServerId
    to: ServerId
    challenge: Nonce  # the accepting server's, echoed
    nonce: Nonce  # the connecting server's own, for WELCOME
    cluster: Fingerprint  # the fingerprint of the sender's server list
    mac: Mac
    state: DiskState = "member"  # the sender's disk (signed too)

    @staticmethod
    def sign(secret: bytes, server_id: int, to: int, challenge: str, cluster: str, nonce: str | None = None,
             state: DiskState = "member") -> Hello:
        nonce = nonce or new_nonce()
        return Hello(server_id=server_id, to=to, challenge=challenge, nonce=nonce, cluster=cluster, state=state,
                     mac=_mac(secret, "hello", server_id, to, challenge, nonce, cluster, state))

    def valid(self, secret: bytes, challenge: str, cluster: str) -> bool:
        """Whether it answers ``challenge`` (the one this server sent) with the secret."""
        expected = _mac(secret, "hello", self.server_id, self.to, challenge, self.nonce, cluster, self.state)
        return _same(self.challenge, challenge) and _same(self.mac, expected)

    def welcome(self, secret: bytes, state: DiskState = "member") -> Welcome:
        """The accepting server's proof, in answer to this HELLO (once it checked it)."""
        return Welcome(server_id=self.to, to=self.server_id, state=state,
                       mac=_mac(secret, "welcome", self.to, self.server_id, self.challenge, self.nonce, self.cluster,
                                state))


class Welcome(msgspec.Struct, frozen=True, kw_only=True):
    """Accepting server -> connecting server: HELLO accepted, and proof that the
    accepting server knows the secret too."""

    server_id: ServerId
    to: ServerId
    mac: Mac
    state: DiskState = "member"  # the accepting server's disk (signed too)

    def valid(self, secret: bytes, hello: Hello) -> bool:
        return (self.server_id == hello.to and self.to == hello.server_id
                and _same(self.mac, hello.welcome(secret, self.state).mac))


class SnapshotChunk(msgspec.Struct, frozen=True, kw_only=True):
    server_id: ServerId
    to: ServerId
    term: Number
    index: Number
    snapshot_term: Number
    membership: Membership
    size: Number
    sha256: Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]
    digest: Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{16}$")]  # (a 64-bit number does not fit every JSON reader)
    offset: Number
    data: bytes

    @property
    def meta(self) -> SnapshotMeta:
        return SnapshotMeta(self.index, self.snapshot_term, self.membership)


PeerFrame = Message | Challenge | Hello | Welcome | SnapshotChunk
_HANDSHAKE = {"CHALLENGE": Challenge, "HELLO": Hello, "WELCOME": Welcome}
_NAMES = {cls: name for name, cls in _HANDSHAKE.items()}


def encode_peer(frame: PeerFrame) -> bytes:
    if isinstance(frame, Message):
        return _encoder.encode(to_envelope(frame))
    kind = _NAMES.get(type(frame))
    if kind is not None:
        payload = msgspec.structs.asdict(frame)
        del payload["server_id"]
        env = {"type": kind, "term": 0, "server_id": frame.server_id, "to": payload.pop("to", 0), "payload": payload}
        return _encoder.encode(env)
    assert isinstance(frame, SnapshotChunk)
    payload = msgspec.structs.asdict(frame)
    for k in ("server_id", "to", "term"):
        del payload[k]
    env = {"type": "SNAPSHOT_CHUNK", "term": frame.term, "server_id": frame.server_id, "to": frame.to,
           "payload": payload}
    return _encoder.encode(env)


def decode_peer(body: bytes) -> PeerFrame:
    """Raises MessageError for anything that is not a well-formed peer frame."""
    if too_deep(body):
        raise MessageError(f"not a peer frame: JSON nested too deeply (more than {MAX_DEPTH})")
    try:
        obj: Any = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise MessageError(f"not JSON: {exc}") from None
    except RecursionError:
        raise MessageError("not a peer frame: JSON nested too deeply") from None
    if not isinstance(obj, dict):
        raise MessageError("a peer frame must be a JSON object")
    kind = obj.get("type")
    cls = _HANDSHAKE.get(kind) if isinstance(kind, str) else None
    if cls is not None or kind == "SNAPSHOT_CHUNK":
        payload = obj.get("payload")
        if not isinstance(payload, dict):
            raise MessageError(f"{kind}: payload must be an object")
        flat = {**payload, "server_id": obj.get("server_id")}
        if cls is not Challenge:
            flat["to"] = obj.get("to")
        if kind == "SNAPSHOT_CHUNK":
            flat["term"] = obj.get("term")
        try:
            frame: PeerFrame = msgspec.convert(flat, cls or SnapshotChunk)
            return frame
        except msgspec.ValidationError as exc:
            raise MessageError(f"{kind}: {exc}") from None
    return from_envelope(obj)
