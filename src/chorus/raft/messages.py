"""Log entries and peer messages of the consensus core.

Every peer message carries the envelope of the original design: ``type``,
``term``, ``server_id`` (the sender) and a ``payload`` (the type's own fields),
plus ``to`` (the addressee). In memory a message is a flat frozen msgspec
Struct, so the core reads ``m.prev_index`` rather than ``m.payload["prev_index"]``;
:func:`to_envelope` and :func:`from_envelope` convert to and from the nested JSON
shape, validating every field's type on the way in.

The seed's five names are kept: HEARTBEAT, REQUEST_VOTE, VOTE_RESPONSE,
REPLICATE, FORWARD. Raft needs a few more: REPLICATE_ACK, HEARTBEAT_ACK,
INSTALL_SNAPSHOT, TIMEOUT_NOW, READ_INDEX and READ_INDEX_RESP, and recovery from
a lost disk PROBE and PROBE_RESP.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, ClassVar, cast

import msgspec

# Every number a peer sends is bounded when it is decoded (terms, indexes, ids,
# counters). 2**53 - 1 is exact in any JSON reader, and far enough below
# SQLite's 2**63 - 1 that no term or index the core derives from an accepted one
# (a new term is the old one plus one) can overflow the store.
MAX_NUMBER = 2**53 - 1
Number = Annotated[int, msgspec.Meta(ge=0, le=MAX_NUMBER)]
ServerId = Annotated[int, msgspec.Meta(ge=1, le=MAX_NUMBER)]


class EntryKind(enum.IntEnum):
    COMMAND = 0  # an application command: the caller applies ``data``
    NOOP = 1  # appended by a new primary so that it can commit (Raft §5.4.2)
    CONFIG = 2  # a membership change; ``data`` is an encoded Membership


class Entry(msgspec.Struct, frozen=True, array_like=True, gc=False):
    index: Number
    term: Number
    kind: Annotated[int, msgspec.Meta(ge=0, le=255)]
    data: bytes

    def __repr__(self) -> str:
        kind = EntryKind(self.kind).name if self.kind in EntryKind._value2member_map_ else self.kind
        body = self.data if len(self.data) <= 24 else self.data[:21] + b"..."
        return f"{self.index}/{self.term}:{kind}:{body!r}" if self.kind else f"{self.index}/{self.term}:{body!r}"


def entries_repr(entries: tuple[Entry, ...]) -> str:
    if not entries:
        return "[]"
    if len(entries) <= 3:
        return "[" + " ".join(repr(e) for e in entries) + "]"
    return f"[{entries[0].index}..{entries[-1].index} t{entries[0].term}..{entries[-1].term} ({len(entries)})]"


Text = Annotated[str, msgspec.Meta(max_length=300)]


class Member(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """Where a member is reached: its peer and client addresses ("host:port").
    The core carries them in the log and snapshots without reading them."""

    id: ServerId
    peer: Text
    client: Text


class Membership(msgspec.Struct, frozen=True, gc=False):
    """Who is in the cluster: voters decide elections and commits; learners only
    follow. ``removed`` remembers every id ever removed: a server that comes back
    with an empty disk must come back under a new id, or answers meant for its
    old self could be taken for its own. ``addresses``: where each member is
    (by id; a member without one is found in the configuration file, as in a
    cluster made before membership carried addresses). ``promoting``: learners
    to be made voters once they have caught up (whoever is primary then does)."""

    voters: frozenset[ServerId] = frozenset()
    learners: frozenset[ServerId] = frozenset()
    removed: frozenset[ServerId] = frozenset()
    addresses: tuple[Member, ...] = ()
    promoting: frozenset[ServerId] = frozenset()

    def address(self, server_id: int) -> Member | None:
        for a in self.addresses:
            if a.id == server_id:
                return a
        return None

    def with_address(self, member: Member | None) -> tuple[Member, ...]:
        """The addresses with ``member``'s set (or left as they are, for None)."""
        if member is None:
            return self.addresses
        return tuple(sorted((*(a for a in self.addresses if a.id != member.id), member), key=lambda a: a.id))

    def without(self, server_id: int) -> tuple[Member, ...]:
        return tuple(a for a in self.addresses if a.id != server_id)

    def __repr__(self) -> str:
        def ids(s: frozenset[int]) -> str:
            return ",".join(map(str, sorted(s)))

        text = f"voters={{{ids(self.voters)}}}"
        if self.learners:
            text += f" learners={{{ids(self.learners)}}}"
        if self.removed:
            text += f" removed={{{ids(self.removed)}}}"
        if self.promoting:
            text += f" promoting={{{ids(self.promoting)}}}"
        return text

    @property
    def members(self) -> frozenset[int]:
        return self.voters | self.learners

    def encode(self) -> bytes:
        body: dict[str, Any] = {"voters": sorted(self.voters), "learners": sorted(self.learners),
                                "removed": sorted(self.removed)}
        if self.addresses:  # (absent before membership carried addresses: those entries read as before)
            body["addresses"] = self.addresses
        if self.promoting:
            body["promoting"] = sorted(self.promoting)
        return msgspec.json.encode(body)

    @classmethod
    def decode(cls, data: bytes) -> Membership:
        return msgspec.json.decode(data, type=cls)


class SnapshotMeta(msgspec.Struct, frozen=True, gc=False):
    """What a state snapshot covers: everything up to and including ``index``."""

    index: Number
    term: Number
    membership: Membership

    def __repr__(self) -> str:
        return f"snapshot@{self.index}/{self.term} {self.membership!r}"


_SHOWN = object()
_QUIET: dict[str, Any] = {"recovering": False, "incarnation": 0, "fenced": (), "known": 0}


class Message(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Base of every peer message: the envelope fields."""

    ENVELOPE: ClassVar[tuple[str, ...]] = ("term", "server_id", "to")

    term: Number
    server_id: ServerId
    to: ServerId

    @property
    def type(self) -> str:
        return cast(str, self.__struct_config__.tag)

    @property
    def payload(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__struct_fields__ if f not in Message.ENVELOPE}

    def _head(self) -> str:
        return f"{self.type} t{self.term} {self.server_id}->{self.to}"

    def __repr__(self) -> str:
        # (Recovery's fields are shown only when set: they are rare, and transcripts stay short.)
        body = " ".join(f"{k}={v!r}" for k, v in self.payload.items() if _QUIET.get(k, _SHOWN) != v)
        return f"{self._head()} {body}" if body else self._head()


class Heartbeat(Message, frozen=True, kw_only=True, tag="HEARTBEAT"):
    """Primary -> backup: "I am still primary". ``ctx`` confirms pending ReadIndex requests."""

    commit: Number
    ctx: Number = 0


class HeartbeatAck(Message, frozen=True, kw_only=True, tag="HEARTBEAT_ACK"):
    ctx: Number = 0
    recovering: bool = False  # the sender may have lost what it promised: not counted
    incarnation: Number = 0  # the sender's store (see ``Probe``)


class RequestVote(Message, frozen=True, kw_only=True, tag="REQUEST_VOTE"):
    """Candidate -> voter. With ``pre_vote`` the term is the one the candidate *would*
    use; nobody changes term or vote for a pre-vote (Raft dissertation §9.6).
    ``transfer`` marks an election started by leadership transfer, which voters
    honour even while they still hear from a primary."""

    last_index: Number
    last_term: Number
    pre_vote: bool = False
    transfer: bool = False


class VoteResponse(Message, frozen=True, kw_only=True, tag="VOTE_RESPONSE"):
    """``incarnation``: the voter's store (see ``Probe``); ``fenced``: the highest
    incarnation the voter knows of each other voter, as [server_id, incarnation]
    pairs. The candidate does not count a vote from a store older than one that
    any of them knows: a store that lost its disk since it voted."""

    granted: bool
    pre_vote: bool = False
    incarnation: Number = 0
    fenced: tuple[tuple[ServerId, Number], ...] = ()


class Replicate(Message, frozen=True, kw_only=True, tag="REPLICATE"):
    """Primary -> backup: entries following (prev_index, prev_term), and the commit index."""

    prev_index: Number
    prev_term: Number
    entries: tuple[Entry, ...] = ()
    commit: Number = 0
    # The primary counts none of this follower's acknowledgements (it takes it for
    # recovering a lost disk): every commit it made with them is <= ``commit``.
    recovering: bool = False

    def __repr__(self) -> str:
        return (
            f"{self._head()} prev={self.prev_index}/{self.prev_term} "
            f"entries={entries_repr(self.entries)} commit={self.commit}{' recovering' if self.recovering else ''}"
        )


class ReplicateAck(Message, frozen=True, kw_only=True, tag="REPLICATE_ACK"):
    """Backup -> primary. Accepted: the backup's log matches the primary's up to
    ``index``, durably. Rejected: the entry at ``index`` did not match;
    (hint_index, hint_term) is the backup's last entry at or below ``index`` whose
    term is <= the primary's term there, so the primary skips a whole term per
    round trip."""

    index: Number
    reject: bool = False
    hint_index: Number = 0
    hint_term: Number = 0
    recovering: bool = False  # the sender may have lost what it promised: not counted
    incarnation: Number = 0  # the sender's store (see ``Probe``)


class InstallSnapshot(Message, frozen=True, kw_only=True, tag="INSTALL_SNAPSHOT"):
    """Primary -> backup whose next entry was compacted away. The state itself is
    not in the message: the caller streams it alongside (in chunks) and steps this
    message into the receiving core once the whole snapshot has arrived.

    When the core asks for one, the caller sends the latest snapshot it holds; if
    it took a newer one since the core produced this message, it sends that one and
    names it here instead (a newer snapshot covers everything the older one did)."""

    snapshot: SnapshotMeta


class TimeoutNow(Message, frozen=True, kw_only=True, tag="TIMEOUT_NOW"):
    """Primary -> chosen successor: campaign now (leadership transfer)."""


class Forward(Message, frozen=True, kw_only=True, tag="FORWARD"):
    """Backup -> primary: client commands to append. Fire and forget: the backup
    learns the outcome by applying the log like everyone else."""

    commands: tuple[bytes, ...]

    def __repr__(self) -> str:
        return f"{self._head()} commands={len(self.commands)}"


class Probe(Message, frozen=True, kw_only=True, tag="PROBE"):
    """A recovering server (one that may have lost what it promised: an empty or
    damaged disk) -> each voter: "what term do you know?". Nobody changes term for
    it. The answers of enough servers bound every term the recovering one may have
    taken part in before its loss.

    ``incarnation`` names the sender's store: a number chosen when the store was
    made (its creation time in microseconds), above any incarnation a peer knows
    of it. A voter that answers records it on disk first, and from then on
    passes it in its votes and ignores acknowledgements of older incarnations:
    a vote or an acknowledgement given before the loss, still on its way,
    counts for nothing once the answer that helped end the recovery was sent."""

    incarnation: Number = 0


class ProbeResp(Message, frozen=True, kw_only=True, tag="PROBE_RESP"):
    """The answer to PROBE: the envelope's ``term`` is the sender's current term;
    ``known``, the highest incarnation of the prober it knows (now on its disk).
    When that is above the prober's own, the prober takes a higher one and asks
    again."""

    recovering: bool = False  # a recovering server's term says nothing of the past
    known: Number = 0


class ReadIndex(Message, frozen=True, kw_only=True, tag="READ_INDEX"):
    """Backup -> primary: "what commit index may I serve a linearizable read at?"."""

    request_id: Number


class ReadIndexResp(Message, frozen=True, kw_only=True, tag="READ_INDEX_RESP"):
    request_id: Number
    index: Number


PeerMessage = (
    Heartbeat
    | HeartbeatAck
    | RequestVote
    | VoteResponse
    | Replicate
    | ReplicateAck
    | InstallSnapshot
    | TimeoutNow
    | Forward
    | Probe
    | ProbeResp
    | ReadIndex
    | ReadIndexResp
)

MESSAGE_TYPES: dict[str, type[Message]] = {
    str(cls.__struct_config__.tag): cls
    for cls in (
        Heartbeat,
        HeartbeatAck,
        RequestVote,
        VoteResponse,
        Replicate,
        ReplicateAck,
        InstallSnapshot,
        TimeoutNow,
        Forward,
        Probe,
        ProbeResp,
        ReadIndex,
        ReadIndexResp,
    )
}


class MessageError(ValueError):
    """A peer sent something that is not a well-formed message of this protocol."""


def to_envelope(msg: Message) -> dict[str, Any]:
    """The JSON-ready envelope {"type", "term", "server_id", "to", "payload"}."""
    return {
        "type": msg.type,
        "term": msg.term,
        "server_id": msg.server_id,
        "to": msg.to,
        "payload": msgspec.to_builtins(msg.payload),
    }


def from_envelope(obj: Any) -> Message:
    """Build a typed message from a decoded envelope, checking every field's type."""
    if not isinstance(obj, dict):
        raise MessageError(f"a peer message must be an object, got {type(obj).__name__}")
    kind = obj.get("type")
    cls = MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise MessageError(f"unknown peer message type {kind!r}")
    payload = obj.get("payload", {})
    if not isinstance(payload, dict):
        raise MessageError(f"{kind}: payload must be an object")
    flat = dict(payload)
    for field in Message.ENVELOPE:
        if field not in obj:
            raise MessageError(f"{kind}: missing envelope field {field!r}")
        flat[field] = obj[field]
    try:
        return msgspec.convert(flat, cls)
    except msgspec.ValidationError as exc:
        raise MessageError(f"{kind}: {exc}") from None
