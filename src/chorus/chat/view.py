"""Conversation state derived from the chat tables: for each conversation its
newest message, and for each user and peer the unread count and read marker.

None of it is written per message. Writing it would scatter page writes over a
table that grows with the number of conversations, which is what limits the
apply rate. It is rebuilt from the tables with three aggregate queries
(``from_db``), kept up to date by the state machine while it applies, and
published to readers after each commit.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

Key = tuple[int, int]


def conv_key(a: int, b: int) -> Key:
    return (a, b) if a <= b else (b, a)


class ConversationView:
    __slots__ = ("heads", "peers", "read_upto", "unread")

    def __init__(self) -> None:
        self.heads: dict[Key, int] = {}  # (lo, hi) -> newest message id
        self.unread: dict[Key, int] = {}  # (user, peer) -> peer's messages after the marker
        self.read_upto: dict[Key, int] = {}  # (user, peer) -> marker, where one was set
        # user -> peers with a conversation (in a published view, copies never changed once published)
        self.peers: dict[int, set[int]] = {}

    @classmethod
    def from_db(cls, conn: sqlite3.Connection) -> ConversationView:
        v = cls()
        for lo, hi, head in conn.execute(
            "SELECT min(sender, recipient), max(sender, recipient), MAX(id) FROM messages GROUP BY 1, 2"
        ):
            v.heads[(lo, hi)] = head
            v.peers.setdefault(lo, set()).add(hi)
            v.peers.setdefault(hi, set()).add(lo)
        for u, p, upto in conn.execute("SELECT user_id, peer_id, read_upto FROM read_markers"):
            v.read_upto[(u, p)] = upto
        for u, p, n in conn.execute(
            "SELECT m.recipient, m.sender, COUNT(*) FROM messages m LEFT JOIN read_markers r "
            "ON r.user_id = m.recipient AND r.peer_id = m.sender "
            "WHERE m.sender != m.recipient AND m.id > COALESCE(r.read_upto, 0) GROUP BY 1, 2"
        ):
            v.unread[(u, p)] = n
        return v

    def copy(self) -> ConversationView:
        v = ConversationView()
        v.heads, v.unread, v.read_upto = dict(self.heads), dict(self.unread), dict(self.read_upto)
        v.peers = {u: set(p) for u, p in self.peers.items()}
        return v

    def head(self, a: int, b: int) -> int:
        return self.heads.get(conv_key(a, b), 0)

    def conversations_of(self, uid: int) -> list[tuple[int, int, int, int]]:
        """(peer, newest id, unread, read marker) for each of uid's conversations."""
        out = []
        for peer in self.peers.get(uid, ()):
            head = self.heads.get(conv_key(uid, peer))
            if head:
                out.append((peer, head, self.unread.get((uid, peer), 0), self.read_upto.get((uid, peer), 0)))
        return out

    def publish(self, work: ConversationView, keys: Iterable[Key], marks: Iterable[Key], users: Iterable[int]) -> None:
        """Copy what changed in ``work`` (the state machine's own view) into this
        published one. Each assignment is atomic for a concurrent reader."""
        for src, dst, changed in (
            (work.heads, self.heads, keys),
            (work.unread, self.unread, marks),
            (work.read_upto, self.read_upto, marks),
        ):
            dst.update({k: src[k] for k in changed if k in src})
            for k in [k for k in changed if k not in src and k in dst]:
                del dst[k]
        for u in users:
            peers = work.peers.get(u)
            if peers:
                self.peers[u] = set(peers)
            else:
                self.peers.pop(u, None)
