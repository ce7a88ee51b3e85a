"""What each request answers: one Struct per result, defined once.

The chat machine makes the results of writes (and keeps them, for a retry to
get the same answer); the server makes the results of reads, of logging in and
of status; the client decodes each reply into the result of the request it
sent. On the wire each is a JSON object with these fields, in this order (the
examples in docs/protocol.md).

The results of writes are also stored, in the client records of the chat
state (chat/schema.py), as they were when results were plain dicts: the same
bytes, so every replica's digest is the same whichever version wrote them.
``write_result`` tells their type from their fields.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

# ---------------------------------------------------------------- what is read


class Message(msgspec.Struct, frozen=True):
    id: int  # its log index: ids grow with time, across all conversations
    sender: str
    recipient: str
    body: str
    sent_at: int  # ms since the epoch, the primary's clock


class Conversation(msgspec.Struct, frozen=True):
    peer: str
    unread: int
    read_upto: int
    last: Message


class Stats(msgspec.Struct, frozen=True):
    name: str
    last_logoff: int | None
    view_count: int
    unread: int  # across all conversations
    conversations: int


# ---------------------------------------------------------------- writes: the chat machine's answers


class Answer(msgspec.Struct, frozen=True):
    """Any result of a write; ``ok`` unless it is a Refused."""

    @property
    def ok(self) -> bool:
        return True


class Refused(Answer, frozen=True):
    """The chat refused the command and changed nothing; ``code`` is stable
    (wire.client.ERROR_CODES)."""

    code: str
    message: str

    @property
    def ok(self) -> bool:
        return False


class Registered(Answer, frozen=True):
    id: int
    name: str


class Sent(Answer, frozen=True):
    id: int
    sent_at: int
    to: str  # the recipient's name as registered


class Deleted(Answer, frozen=True):
    deleted: list[int]
    not_deleted: list[int]  # not the user's, or gone


class MarkedRead(Answer, frozen=True):
    read_upto: int
    unread: int


class ViewCountSet(Answer, frozen=True):
    view_count: int


class LoggedOff(Answer, frozen=True, omit_defaults=True):
    last_logoff: int
    ended: str | None = None  # the session ended
    epoch: int | None = None  # set when every session of the user ended with it


class LoggedOutAll(Answer, frozen=True):
    last_logoff: int
    epoch: int


class PasswordChanged(Answer, frozen=True):
    epoch: int


class AccountDeleted(Answer, frozen=True):
    deleted_messages: int


Done = Registered | Sent | Deleted | MarkedRead | ViewCountSet | LoggedOff | LoggedOutAll | PasswordChanged | AccountDeleted
Outcome = Refused | Done  # what applying a command gives

def code_of(result: Outcome) -> str:
    """"ok", or the code it was refused with."""
    return result.code if isinstance(result, Refused) else "ok"


_BY_FIELDS: dict[frozenset[str], type[Done]] = {
    frozenset(cls.__struct_fields__): cls
    for cls in (Registered, Sent, Deleted, MarkedRead, ViewCountSet, LoggedOutAll, PasswordChanged, AccountDeleted)
}
_BY_FIELDS |= {frozenset({"last_logoff"}): LoggedOff, frozenset({"last_logoff", "ended"}): LoggedOff,
               frozenset({"last_logoff", "ended", "epoch"}): LoggedOff}


def write_result(fields: dict[str, Any]) -> Done:
    """The result a stored dict of fields is (raises ValueError if none)."""
    cls = _BY_FIELDS.get(frozenset(fields))
    if cls is None:
        raise ValueError(f"not the result of a write: {sorted(fields)}")
    return msgspec.convert(fields, cls)


# ---------------------------------------------------------------- writes: the server's answers


class Accepted(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """An ``async`` write, on the primary's disk and not yet applied: what applying
    it will give (the id is its log index; a send's time and recipient as sent)."""

    id: int
    sent_at: int | None = None
    to: str | None = None
    concern: Literal["async"]


class NewToken(msgspec.Struct, frozen=True):
    """A changed password: every other session ended, this one goes on with this token."""

    epoch: int
    token: str
    expires_at: int


# ---------------------------------------------------------------- sessions and reads


class LoggedIn(msgspec.Struct, frozen=True):
    token: str
    id: int
    name: str
    expires_at: int  # s since the epoch
    last_logoff: int | None
    view_count: int


class Authenticated(msgspec.Struct, frozen=True):
    id: int
    name: str
    last_logoff: int | None
    view_count: int


class UserPage(msgspec.Struct, frozen=True):
    users: list[str]
    next: str | None  # a full page may have a next one: ask again with after = next


class ConversationList(msgspec.Struct, frozen=True):
    conversations: list[Conversation]


class HistoryPage(msgspec.Struct, frozen=True):
    messages: list[Message]


class Subscribed(msgspec.Struct, frozen=True):
    subscribed: bool
    upto: int | None  # pushed up to this message id


class Status(msgspec.Struct, frozen=True):
    """One server's view of the cluster (any server answers, without logging in)."""

    id: int
    role: str  # PRIMARY, BACKUP, PRE_CANDIDATE or CANDIDATE
    term: int
    commit_index: int
    applied_index: int
    last_index: int
    snapshot_index: int
    digest: str  # of the chat state as applied (hex): equal on servers that applied as far
    primary: int | None
    primary_address: str | None
    voters: list[int]
    learners: list[int]
    health: str  # "ok", "out of disk" or "recovering"
    health_reason: str | None
    disk: str  # the disk state of the handshake: fresh, member or recovering


class ServerStatus(msgspec.Struct, frozen=True):
    """A server's status as a client polled it: ``status``, or why there is none."""

    address: str
    status: Status | None = None
    error: str | None = None

    def row(self) -> dict[str, Any]:
        """Flat, as ``chorus status --json`` prints it: the address, and the
        status's fields or the error."""
        if self.status is None:
            return {"address": self.address, "error": self.error}
        return {"address": self.address, **msgspec.to_builtins(self.status)}


# ---------------------------------------------------------------- operating the cluster


class AdminChallenge(msgspec.Struct, frozen=True):
    """A fresh nonce for this connection's ``admin_auth`` (hex)."""

    nonce: str
    server: int  # the server answering (the proof names it)


class AdminAuthenticated(msgspec.Struct, frozen=True):
    server: int


class MemberInfo(msgspec.Struct, frozen=True, omit_defaults=True):
    id: int
    role: str  # "voter" or "learner"
    peer: str | None = None  # its addresses, as the membership (or the configuration) gives them
    client: str | None = None
    promoting: bool = False  # a learner the primary makes a voter once it has caught up
    primary: bool = False
    match: int | None = None  # (from the primary) the last index it is known to hold
    lag: int | None = None  # (from the primary) entries it lacks
    recovering: bool = False  # (from the primary) recovering a lost disk
    reachable: bool | None = None  # (from the primary) heard from within two election timeouts


class MemberList(msgspec.Struct, frozen=True):
    cluster: str  # the cluster's id (a joining server takes it)
    server: int  # the server answering
    primary: int | None
    primary_address: str | None
    last_index: int  # the answering server's
    change_pending: bool  # a membership change is in the log and not yet committed
    removed: list[int]  # ids that may not be used again
    members: list[MemberInfo]
    membership: str  # the membership as the log holds it (JSON), for a joining server


class MemberChanged(msgspec.Struct, frozen=True):
    """A membership change committed: at ``index``, the members it made."""

    index: int
    voters: list[int]
    learners: list[int]


class BackupTaken(msgspec.Struct, frozen=True):
    """A snapshot of the chat state, consistent at ``index``, ready to be read."""

    index: int
    term: int
    size: int  # bytes
    sha256: str
    digest: str  # the chat state's digest at index (hex), as chorus status shows it
    chunk: int  # the bytes backup_chunk returns at most


class BackupPiece(msgspec.Struct, frozen=True):
    offset: int
    data: bytes  # (base64 in JSON)
