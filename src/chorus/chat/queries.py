"""Read-only queries of the chat state, on any replica.

They take a read connection (WAL readers never block the writer) and the
published ConversationView (each conversation's newest message, unread counts).
Read the view before querying the tables: the view is published only after its
changes are committed, so every id it names is in what the query then sees.

Every message row is checked against its hash as it is read. A corrupt row, or a
chain that leads out of its conversation, raises CorruptRow instead of being
served.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import Any

import msgspec

from ..wire.results import Conversation, Message, Stats
from . import rules
from .schema import message_hash, to_signed
from .view import ConversationView, conv_key


class CorruptRow(Exception):
    """A stored row does not match its hash."""


class UserInfo(msgspec.Struct, frozen=True):
    id: int
    name: str
    pw_hash: str
    created_at: int
    last_logoff: int | None
    view_count: int


_COLUMNS = "m.id, m.sender, m.recipient, m.prev, m.sent_at, m.body, m.hash, s.name, r.name"
_JOINS = "JOIN users s ON s.id = m.sender JOIN users r ON r.id = m.recipient"


def _checked(rows: Iterable[tuple[Any, ...]], key: tuple[int, int] | None = None) -> list[Message]:
    out = []
    for mid, s, r, prev, t, body, h, sname, rname in rows:
        if to_signed(message_hash(mid, s, r, prev, t, body)) != h:
            raise CorruptRow(f"message {mid} does not match its checksum")
        if key is not None and conv_key(s, r) != key:
            raise CorruptRow(f"message {mid} is not part of the conversation {key}")
        out.append(Message(mid, sname, rname, body, t))
    return out


def _by_ids(conn: sqlite3.Connection, ids: list[int]) -> list[Message]:
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM messages m {_JOINS} WHERE m.id IN (SELECT value FROM json_each(?)) ORDER BY m.id",
        (msgspec.json.encode(ids),),
    )
    return _checked(rows)


def _user_id(conn: sqlite3.Connection, name: str) -> int | None:
    row = conn.execute("SELECT id FROM users WHERE name_key = ?", (rules.name_key(name),)).fetchone()
    return row[0] if row else None


def find_user(conn: sqlite3.Connection, name: str) -> UserInfo | None:
    """For logging in (the caller verifies the password against pw_hash)."""
    row = conn.execute(
        "SELECT id, name, pw_hash, created_at, last_logoff, view_count FROM users WHERE name_key = ?",
        (rules.name_key(name),),
    ).fetchone()
    return UserInfo(*row) if row else None


def user_by_id(conn: sqlite3.Connection, uid: int) -> UserInfo | None:
    row = conn.execute(
        "SELECT id, name, pw_hash, created_at, last_logoff, view_count FROM users WHERE id = ?", (uid,)
    ).fetchone()
    return UserInfo(*row) if row else None


def login_record(conn: sqlite3.Connection, name: str) -> tuple[UserInfo, int] | None:
    """The user of that name and their session epoch, read together (one statement:
    one view of the tables, whatever is being applied meanwhile)."""
    row = conn.execute(
        "SELECT u.id, u.name, u.pw_hash, u.created_at, u.last_logoff, u.view_count, COALESCE(e.epoch, 0) "
        "FROM users u LEFT JOIN session_epochs e ON e.user_id = u.id WHERE u.name_key = ?",
        (rules.name_key(name),),
    ).fetchone()
    return (UserInfo(*row[:6]), row[6]) if row else None


def session_epoch(conn: sqlite3.Connection, uid: int) -> int:
    """The epoch a token issued now carries: it is refused once this moves on."""
    row = conn.execute("SELECT epoch FROM session_epochs WHERE user_id = ?", (uid,)).fetchone()
    return row[0] if row else 0


def session_ended(conn: sqlite3.Connection, uid: int, session: str, epoch: int) -> bool:
    """Whether a token of ``uid`` with this session id and epoch may no longer be used."""
    if epoch != session_epoch(conn, uid):
        return True
    return conn.execute("SELECT 1 FROM ended_sessions WHERE user_id = ? AND session = ?",
                        (uid, session)).fetchone() is not None


def _like(pattern: str) -> str:
    """Shell wildcards (* and ?) to a LIKE pattern, everything else literal."""
    out = []
    for ch in rules.name_key(pattern):
        if ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        elif ch in "%_\\":
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


def list_users(conn: sqlite3.Connection, pattern: str = "*", *, after: str = "", limit: int = 50) -> list[str]:
    """User names matching ``pattern`` (``*`` any run, ``?`` one character,
    case-insensitive), in order, after the name ``after`` (for the next page)."""
    rows = conn.execute(
        "SELECT name FROM users WHERE name_key LIKE ? ESCAPE '\\' AND name_key > ? ORDER BY name_key LIMIT ?",
        (_like(pattern), rules.name_key(after), max(0, min(limit, 1000))),
    )
    return [r[0] for r in rows]


def conversations(conn: sqlite3.Connection, view: ConversationView, uid: int) -> list[Conversation]:
    """A user's conversations, most recent activity first, with unread counts."""
    convs = sorted(view.conversations_of(uid), key=lambda c: -c[1])
    if not convs:
        return []
    last = {m.id: m for m in _by_ids(conn, [head for _, head, _, _ in convs])}
    names = dict(
        conn.execute(
            "SELECT id, name FROM users WHERE id IN (SELECT value FROM json_each(?))",
            (msgspec.json.encode([peer for peer, _, _, _ in convs]),),
        )
    )
    return [
        Conversation(names[peer], unread, upto, last[head])
        for peer, head, unread, upto in convs
        if head in last and peer in names
    ]


def history(
    conn: sqlite3.Connection,
    view: ConversationView,
    uid: int,
    peer: str,
    *,
    before: int | None = None,
    limit: int = 50,
) -> list[Message]:
    """One conversation, newest first, at most ``limit`` messages; ``before`` (a
    message id, usually the oldest one shown) pages back."""
    pid = _user_id(conn, peer)
    if pid is None:
        return []
    key = conv_key(uid, pid)
    head = view.heads.get(key)
    limit = max(0, min(limit, 1000))
    if not head or not limit:
        return []
    start, bound = head, (1 << 62) if before is None else before
    if before is not None:
        row = conn.execute("SELECT sender, recipient, prev FROM messages WHERE id = ?", (before,)).fetchone()
        if row is not None and conv_key(row[0], row[1]) == key:
            if not row[2]:
                return []
            start = row[2]  # jump straight past the cursor
    # Walk the chain from `start`, counting only messages older than `before`.
    rows = conn.execute(
        f"""WITH RECURSIVE chain(id, prev, n) AS (
                SELECT id, prev, (id < :bound) FROM messages WHERE id = :start
                UNION ALL
                SELECT m.id, m.prev, c.n + (m.id < :bound) FROM chain c JOIN messages m ON m.id = c.prev
                WHERE c.prev > 0 AND c.n < :limit
            )
            SELECT {_COLUMNS} FROM chain JOIN messages m ON m.id = chain.id {_JOINS}
            WHERE chain.id < :bound ORDER BY m.id DESC""",
        {"start": start, "bound": bound, "limit": limit},
    ).fetchall()
    return _checked(rows, key)


def messages_after(conn: sqlite3.Connection, view: ConversationView, uid: int, after: int, *, limit: int = 1000) -> list[Message]:
    """Everything a user sent or received after message id ``after``, oldest
    first: what a reconnecting client missed."""
    limit = max(0, min(limit, 10_000))
    ids: list[int] = []
    for _, head, _, _ in view.conversations_of(uid):
        if head > after:
            ids.extend(
                r[0]
                for r in conn.execute(
                    """WITH RECURSIVE chain(id, prev) AS (
                           SELECT id, prev FROM messages WHERE id = ?
                           UNION ALL
                           SELECT m.id, m.prev FROM chain c JOIN messages m ON m.id = c.prev WHERE c.prev > ?
                       ) SELECT id FROM chain""",
                    (head, after),
                )
            )
    ids.sort()
    return _by_ids(conn, ids[:limit]) if ids else []


def user_stats(conn: sqlite3.Connection, view: ConversationView, uid: int) -> Stats | None:
    u = user_by_id(conn, uid)
    if u is None:
        return None
    convs = view.conversations_of(uid)
    return Stats(u.name, u.last_logoff, u.view_count, sum(c[2] for c in convs), len(convs))
