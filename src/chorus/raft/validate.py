"""Checks that a peer message is well formed before the core looks at it.

A message that fails raises :class:`MessageError` and changes nothing. These are
the checks that need no state; checks against the node's own log (an index
beyond its last entry, say) are made in ``RaftNode.step`` before any change.
Messages decoded from JSON by msgspec already have the right types; messages
built in memory (the simulator's liars) may not, so types are checked here too.
"""

from __future__ import annotations

from operator import attrgetter

import msgspec

from .messages import (
    MAX_NUMBER,
    MESSAGE_TYPES,
    Entry,
    EntryKind,
    Forward,
    Heartbeat,
    HeartbeatAck,
    InstallSnapshot,
    Membership,
    Message,
    MessageError,
    Probe,
    ProbeResp,
    ReadIndex,
    ReadIndexResp,
    Replicate,
    ReplicateAck,
    RequestVote,
    SnapshotMeta,
    VoteResponse,
)

_KNOWN = frozenset(MESSAGE_TYPES.values())
_KINDS = frozenset(int(k) for k in EntryKind)


def _count(m: Message, name: str, value: object) -> int:
    if type(value) is not int or not 0 <= value <= MAX_NUMBER:
        raise MessageError(f"{m.type}: {name} must be an integer from 0 to 2**53-1, got {value!r}")
    return value


def _flag(m: Message, name: str, value: object) -> None:
    if type(value) is not bool:
        raise MessageError(f"{m.type}: {name} must be true or false, got {value!r}")


def _ids(m: Message, name: str, value: object) -> None:
    if type(value) is not frozenset or any(type(i) is not int or not 0 < i <= MAX_NUMBER for i in value):
        raise MessageError(f"{m.type}: {name} must be a set of server ids")


MAX_FENCED = 256  # pairs in a VOTE_RESPONSE: more than any membership holds


def _fenced(m: Message, value: object) -> None:
    if type(value) is not tuple or len(value) > MAX_FENCED or any(
        type(p) is not tuple or len(p) != 2 or type(p[0]) is not int or not 0 < p[0] <= MAX_NUMBER
        or type(p[1]) is not int or not 0 <= p[1] <= MAX_NUMBER
        for p in value
    ):
        raise MessageError(f"{m.type}: fenced must be at most {MAX_FENCED} [server_id, incarnation] pairs")


def validate(m: object, self_id: int) -> None:
    if type(m) not in _KNOWN:
        raise MessageError(f"not a peer message: {type(m).__name__}")
    assert isinstance(m, Message)
    term = _count(m, "term", m.term)
    sender = m.server_id
    if type(sender) is not int or not 0 < sender <= MAX_NUMBER:
        raise MessageError(f"{m.type}: server_id must be a positive integer, got {sender!r}")
    if sender == self_id:
        raise MessageError(f"{m.type}: server {sender} is this server")
    if m.to != self_id:
        raise MessageError(f"{m.type}: addressed to server {m.to!r}, this is server {self_id}")

    match m:
        case Replicate():
            prev_index = _count(m, "prev_index", m.prev_index)
            prev_term = _count(m, "prev_term", m.prev_term)
            _count(m, "commit", m.commit)
            _flag(m, "recovering", m.recovering)
            if prev_term > term:
                raise MessageError(f"REPLICATE: prev_term {prev_term} is after the message's term {term}")
            if (prev_index == 0) != (prev_term == 0):
                raise MessageError("REPLICATE: only index 0 has term 0")
            entries = m.entries
            if type(entries) is not tuple:
                raise MessageError("REPLICATE: entries must be a list")
            if entries:
                _entries(m, entries, prev_index, prev_term, term)
        case ReplicateAck():
            _count(m, "index", m.index)
            _flag(m, "reject", m.reject)
            _count(m, "hint_index", m.hint_index)
            _count(m, "hint_term", m.hint_term)
            _flag(m, "recovering", m.recovering)
            _count(m, "incarnation", m.incarnation)
        case Heartbeat():
            _count(m, "commit", m.commit)
            _count(m, "ctx", m.ctx)
        case HeartbeatAck():
            _count(m, "ctx", m.ctx)
            _flag(m, "recovering", m.recovering)
            _count(m, "incarnation", m.incarnation)
        case ProbeResp():
            _flag(m, "recovering", m.recovering)
            _count(m, "known", m.known)
        case Probe():
            _count(m, "incarnation", m.incarnation)
        case RequestVote():
            _count(m, "last_index", m.last_index)
            if _count(m, "last_term", m.last_term) > term:
                raise MessageError("REQUEST_VOTE: last_term is after the election's term")
            _flag(m, "pre_vote", m.pre_vote)
            _flag(m, "transfer", m.transfer)
        case VoteResponse():
            _flag(m, "granted", m.granted)
            _flag(m, "pre_vote", m.pre_vote)
            _count(m, "incarnation", m.incarnation)
            _fenced(m, m.fenced)
        case InstallSnapshot():
            s = m.snapshot
            if type(s) is not SnapshotMeta or type(s.membership) is not Membership:
                raise MessageError("INSTALL_SNAPSHOT: snapshot metadata missing")
            if _count(m, "snapshot.index", s.index) == 0 or not 0 < _count(m, "snapshot.term", s.term) <= term:
                raise MessageError("INSTALL_SNAPSHOT: impossible snapshot index or term")
            _check_membership(m, s.membership)
        case Forward():
            if type(m.commands) is not tuple or any(type(c) is not bytes for c in m.commands):
                raise MessageError("FORWARD: commands must be a list of byte strings")
        case ReadIndex():
            _count(m, "request_id", m.request_id)
        case ReadIndexResp():
            _count(m, "request_id", m.request_id)
            _count(m, "index", m.index)


_index_of, _term_of, _kind_of, _data_of = (attrgetter(a) for a in ("index", "term", "kind", "data"))


def _entries(m: Message, entries: tuple[Entry, ...], prev_index: int, prev_term: int, term: int) -> None:
    """Contiguous after prev_index, terms never decreasing and within
    [prev_term, term], known kinds, byte data. Whole-batch checks with C-level
    map() rather than a Python loop: replication's hot path goes through here."""
    if set(map(type, entries)) != {Entry}:
        raise MessageError("REPLICATE: entries must be [index, term, kind, data] lists")
    indexes = list(map(_index_of, entries))
    terms = list(map(_term_of, entries))
    kinds = set(map(_kind_of, entries))
    if set(map(type, indexes)) != {int} or indexes != list(range(prev_index + 1, prev_index + 1 + len(entries))):
        raise MessageError(f"REPLICATE: entries must be numbered {prev_index + 1} onwards without gaps")
    if set(map(type, terms)) != {int} or terms[0] < prev_term or terms[-1] > term or terms != sorted(terms):
        raise MessageError(f"REPLICATE: entry terms must not decrease and must lie in {prev_term}..{term}")
    if not kinds <= _KINDS or not set(map(type, kinds)) <= {int, EntryKind}:  # (not bool)
        raise MessageError(f"REPLICATE: unknown entry kind in {sorted(map(repr, kinds))}")
    if set(map(type, map(_data_of, entries))) != {bytes}:
        raise MessageError("REPLICATE: entry data must be bytes")
    if EntryKind.CONFIG in kinds:
        for e in entries:
            if e.kind == EntryKind.CONFIG:
                _membership(m, e.data)


def _membership(m: Message, data: bytes) -> None:
    try:
        ms = Membership.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise MessageError(f"{m.type}: bad membership entry: {exc}") from None
    _check_membership(m, ms)


def _check_membership(m: Message, ms: Membership) -> None:
    _ids(m, "voters", ms.voters)
    _ids(m, "learners", ms.learners)
    _ids(m, "removed", ms.removed)
    _ids(m, "promoting", ms.promoting)
    if not ms.voters or ms.voters & ms.learners or ms.removed & (ms.voters | ms.learners):
        raise MessageError(f"{m.type}: impossible membership {ms!r}")
    if not ms.promoting <= ms.learners:
        raise MessageError(f"{m.type}: only learners are promoted, not {sorted(ms.promoting - ms.learners)}")
    ids = [a.id for a in ms.addresses]
    if len(set(ids)) != len(ids) or not set(ids) <= ms.voters | ms.learners:
        raise MessageError(f"{m.type}: addresses must be of members, one each")
