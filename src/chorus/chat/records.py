"""What the chat machine keeps in memory of each user and client, and what a
batch of commands did (its effects, for the server to act on)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..wire.results import Message, Outcome
from . import rules
from .schema import ClientTuple, stored


class User:
    __slots__ = ("created_at", "id", "last_logoff", "name", "pw_hash", "view_count")

    def __init__(self, uid: int, name: str, pw_hash: str, created_at: int, last_logoff: int | None, view_count: int):
        self.id, self.name, self.pw_hash = uid, name, pw_hash
        self.created_at, self.last_logoff, self.view_count = created_at, last_logoff, view_count

    def row(self) -> tuple[object, ...]:
        return (self.id, self.name, rules.name_key(self.name), self.pw_hash, self.created_at,
                self.last_logoff, self.view_count)


class Client:
    __slots__ = ("acked", "hash", "kept", "last_seen", "results")

    def __init__(self, acked: int = 0, last_seen: int = 0, results: dict[int, Outcome] | None = None,
                 kept: dict[int, object] | None = None):
        self.acked, self.last_seen = acked, last_seen
        self.results: dict[int, Outcome] = results if results is not None else {}
        # The same results in their stored form (made once, when a result is kept).
        self.kept: dict[int, object] = kept if kept is not None else {seq: stored(r) for seq, r in self.results.items()}
        self.hash = 0  # counted in the digest; 0 until the client is first written

    def record(self, client_id: str) -> ClientTuple:
        return (client_id, self.acked, self.last_seen, sorted(self.kept.items()))


@dataclass(slots=True)
class Effects:
    """What applying a batch did, for the server to act on: the answers of the
    commands, the messages to push, the accounts and sessions that ended."""

    results: list[Outcome] = field(default_factory=list)  # one per command, in order
    # (log index, client, seq, result) for each command that decoded: who waits for what.
    answers: list[tuple[int, str, int, Outcome]] = field(default_factory=list)
    delivered: list[tuple[int, int, Message]] = field(default_factory=list)  # (sender id, recipient id, new message)
    accounts_deleted: list[int] = field(default_factory=list)
    # (user, the session ended or None, the epoch every earlier session ended before, or None)
    sessions_ended: list[tuple[int, str | None, int | None]] = field(default_factory=list)
