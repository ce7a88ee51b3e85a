"""The peer protocol: what servers send each other, in frames of JSON.

Every frame has the envelope of the original design, ``{"type", "term",
"server_id", "payload"}``, plus ``to``. The types are the consensus core's
(HEARTBEAT, REQUEST_VOTE, VOTE_RESPONSE, REPLICATE, FORWARD, ...), and two of
the transport's own:

- HELLO opens every peer connection. It proves the sender knows the cluster
  secret and has the same list of servers: an HMAC over (sender, addressee,
  nonce, fingerprint of the server list). Servers with different lists would
  bootstrap different logs. A server that cannot prove both, or claims an id that
  is not in the configuration, is cut off.
- SNAPSHOT_CHUNK carries a piece of a snapshot file, base64 in JSON. The chunks
  come in order, followed by the INSTALL_SNAPSHOT message that names the
  snapshot.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import msgspec

from chorus.raft import Membership, Message, MessageError, SnapshotMeta, from_envelope, to_envelope

_encoder = msgspec.json.Encoder()


class Hello(msgspec.Struct, frozen=True, kw_only=True):
    server_id: int
    to: int
    nonce: str
    cluster: str  # the fingerprint of the sender's server list
    mac: str

    @staticmethod
    def sign(secret: bytes, server_id: int, to: int, nonce: str, cluster: str) -> Hello:
        return Hello(server_id=server_id, to=to, nonce=nonce, cluster=cluster,
                     mac=_mac(secret, server_id, to, nonce, cluster))

    def valid(self, secret: bytes, cluster: str) -> bool:
        expected = _mac(secret, self.server_id, self.to, self.nonce, cluster)
        return hmac.compare_digest(self.mac.encode(), expected.encode())  # bytes: any text is safe


def _mac(secret: bytes, server_id: int, to: int, nonce: str, cluster: str) -> str:
    text = f"chorus-peer:{server_id}->{to}:{nonce}:{cluster}"
    return hmac.new(secret, text.encode(), hashlib.sha256).hexdigest()


class SnapshotChunk(msgspec.Struct, frozen=True, kw_only=True):
    server_id: int
    to: int
    term: int
    index: int
    snapshot_term: int
    membership: Membership
    size: int
    sha256: str
    digest: str  # 16 hex digits (an unsigned 64-bit number does not fit every JSON reader)
    offset: int
    data: bytes

    @property
    def meta(self) -> SnapshotMeta:
        return SnapshotMeta(self.index, self.snapshot_term, self.membership)


PeerFrame = Message | Hello | SnapshotChunk


def encode_peer(frame: PeerFrame) -> bytes:
    if isinstance(frame, Message):
        return _encoder.encode(to_envelope(frame))
    if isinstance(frame, Hello):
        env = {"type": "HELLO", "term": 0, "server_id": frame.server_id, "to": frame.to,
               "payload": {"nonce": frame.nonce, "cluster": frame.cluster, "mac": frame.mac}}
        return _encoder.encode(env)
    payload = msgspec.structs.asdict(frame)
    for k in ("server_id", "to", "term"):
        del payload[k]
    env = {"type": "SNAPSHOT_CHUNK", "term": frame.term, "server_id": frame.server_id, "to": frame.to,
           "payload": payload}
    return _encoder.encode(env)


def decode_peer(body: bytes) -> PeerFrame:
    """Raises MessageError for anything that is not a well-formed peer frame."""
    try:
        obj: Any = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise MessageError(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise MessageError("a peer frame must be a JSON object")
    kind = obj.get("type")
    if kind in ("HELLO", "SNAPSHOT_CHUNK"):
        payload = obj.get("payload")
        if not isinstance(payload, dict):
            raise MessageError(f"{kind}: payload must be an object")
        flat = {**payload, "server_id": obj.get("server_id"), "to": obj.get("to")}
        if kind == "SNAPSHOT_CHUNK":
            flat["term"] = obj.get("term")
        try:
            return msgspec.convert(flat, Hello if kind == "HELLO" else SnapshotChunk)
        except msgspec.ValidationError as exc:
            raise MessageError(f"{kind}: {exc}") from None
    return from_envelope(obj)
