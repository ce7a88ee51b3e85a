"""The chat tables, and how each row is hashed.

Each row's 64-bit hash serves twice. Summed over all rows (mod 2**64), with the
log clock, it gives the state digest: order-independent, updated in O(1) per
change, and recomputable from scratch to check it. For messages, the hash is
also stored in the row and verified on every read, so a corrupt row is refused
rather than served. What is derived from the tables (each conversation's newest
message, unread counts) is not hashed: it is a function of what is.
"""

from __future__ import annotations

import hashlib
import sqlite3
from typing import Any

import msgspec

from ..wire.results import Done, Outcome, Refused, write_result

CLIENT_LOG_DDL = """
CREATE TABLE IF NOT EXISTS client_log (
    id          INTEGER PRIMARY KEY,
    records     BLOB    NOT NULL
)"""

# Ended sessions (storage format 3). A token names its user, a session id and the
# user's session epoch when it was issued: it is refused once the epoch moved on
# (logout --all, a password change) or once its session was ended (log_off).
SESSIONS_DDL = """
CREATE TABLE IF NOT EXISTS session_epochs (   -- no row: epoch 0
    user_id     INTEGER PRIMARY KEY,
    epoch       INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS ended_sessions (   -- kept until the token would have expired anyway
    user_id     INTEGER NOT NULL,
    session     TEXT    NOT NULL,
    expires     INTEGER NOT NULL,         -- seconds since the epoch
    PRIMARY KEY (user_id, session)
) WITHOUT ROWID"""
SESSION_TABLES = ("session_epochs", "ended_sessions")

DDL = """
CREATE TABLE IF NOT EXISTS users (
    id          INTEGER PRIMARY KEY,      -- the log index of the registration
    name        TEXT    NOT NULL,
    name_key    TEXT    NOT NULL UNIQUE,  -- lower case: names are unique regardless of case
    pw_hash     TEXT    NOT NULL,         -- argon2id
    created_at  INTEGER NOT NULL,
    last_logoff INTEGER,
    view_count  INTEGER NOT NULL
);
-- Messages are appended in id order and never indexed otherwise: each one points
-- at the previous message of its conversation (prev), so a conversation is a chain
-- walked newest first by primary key. The newest message of each conversation and
-- the unread counts are derived from these tables (see ConversationView).
CREATE TABLE IF NOT EXISTS messages (
    id          INTEGER PRIMARY KEY,      -- the log index of the send
    sender      INTEGER NOT NULL,
    recipient   INTEGER NOT NULL,
    prev        INTEGER NOT NULL,         -- the conversation's previous message, 0 for none
    sent_at     INTEGER NOT NULL,
    body        TEXT    NOT NULL,
    hash        INTEGER NOT NULL          -- message_hash of the row, checked when read
);
CREATE TABLE IF NOT EXISTS read_markers (  -- "user has read the conversation with peer up to"
    user_id     INTEGER NOT NULL,
    peer_id     INTEGER NOT NULL,
    read_upto   INTEGER NOT NULL,
    PRIMARY KEY (user_id, peer_id)
) WITHOUT ROWID;
-- Exactly-once bookkeeping, as a log of changes: each apply that changed client
-- records appends one row holding them all (ClientRecord, msgpack), and the log
-- is rewritten as one row once it holds twice what is live. Replaying it in id
-- order gives every client's (acked, last_seen, kept results). A row per client,
-- updated on every request, cost more than everything else a send does.
""" + CLIENT_LOG_DDL + """;
""" + SESSIONS_DDL + """;
CREATE TABLE IF NOT EXISTS chat_state (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    log_time    INTEGER NOT NULL,         -- the log's own clock: max of command times
    rows_digest INTEGER NOT NULL          -- sum of row and client hashes mod 2**64, stored signed
);
INSERT OR IGNORE INTO chat_state (id, log_time, rows_digest) VALUES (1, 0, 0);
"""

CHAT_TABLES = ("users", "messages", "read_markers", "client_log", *SESSION_TABLES)
MASK = (1 << 64) - 1
_pack = msgspec.msgpack.Encoder().encode


def create(conn: sqlite3.Connection) -> None:
    conn.executescript(DDL)


def row_hash(tag: str, *values: object) -> int:
    """A 64-bit hash of one row, the same on every machine and every run."""
    return int.from_bytes(hashlib.blake2b(_pack((tag, values)), digest_size=8).digest(), "little")


def user_hash(row: tuple[object, ...]) -> int:
    return row_hash("u", *row)


def message_hash(mid: int, sender: int, recipient: int, prev: int, sent_at: int, body: str) -> int:
    return row_hash("m", mid, sender, recipient, prev, sent_at, body)


def marker_hash(user_id: int, peer_id: int, read_upto: int) -> int:
    return row_hash("r", user_id, peer_id, read_upto)


def epoch_hash(user_id: int, epoch: int) -> int:
    return row_hash("e", user_id, epoch)


def ended_hash(user_id: int, session: str, expires: int) -> int:
    return row_hash("s", user_id, session, expires)


class StoredResult(msgspec.Struct, frozen=True, omit_defaults=True):
    """A result as a client record stores it: {"data": {...fields}} for a write
    that was done, {"code", "message"} for one refused. (The stored form of the
    results of wire/results.py, unchanged since results were plain dicts.)"""

    code: str = "ok"
    message: str = ""
    data: dict[str, Any] | None = None

    def outcome(self) -> Outcome:
        if self.code != "ok":
            return Refused(self.code, self.message)
        return write_result(self.data or {})


def stored(result: Outcome) -> Refused | dict[str, Done]:
    """A result as a client record stores it (the same bytes as a StoredResult)."""
    return result if isinstance(result, Refused) else {"data": result}


class ClientRecord(msgspec.Struct, array_like=True, frozen=True):
    """One client's exactly-once state; ``results`` None: the client was forgotten."""

    client: str
    acked: int = 0
    last_seen: int = 0
    results: list[tuple[int, StoredResult]] | None = None


_records = msgspec.msgpack.Decoder(list[ClientRecord]).decode
# A live ClientRecord, as written (its results as ``stored`` gives them, or StoredResults).
ClientTuple = tuple[str, int, int, list[tuple[int, Any]]]


def pack_client(record: ClientTuple | tuple[str]) -> bytes:
    """One client record as stored (msgpack); (client_id,) alone: forgotten."""
    return _pack(record)


def client_hash(record: ClientTuple) -> int:
    """Of a live client record (results sorted by seq). The same value as format 1
    gave its row (client_id, acked, last_seen, packed results), so that a file
    upgraded in place, and servers on either side of an upgrade, show the same digest."""
    cid, acked, last_seen, results = record
    return row_hash("k", cid, acked, last_seen, _pack(results))


def join_clients(packed: list[bytes]) -> bytes:
    """Packed records as one msgpack array (a row of the client log)."""
    n = len(packed)
    head = bytes((0x90 | n,)) if n < 16 else (b"\xdc" + n.to_bytes(2, "big") if n < 1 << 16 else
                                               b"\xdd" + n.to_bytes(4, "big"))
    return head + b"".join(packed)


_format_1_results = msgspec.msgpack.Decoder(list[tuple[int, StoredResult]]).decode


def upgrade_clients_from_format_1(conn: sqlite3.Connection, source: str = "main") -> None:
    """Format 1 kept a row per client in ``clients`` (of ``source``): write them as
    one row of the client log of ``main`` (inside the caller's transaction)."""
    rows = conn.execute(f"SELECT client_id, acked, last_seen, results FROM {source}.clients ORDER BY client_id")
    packed = [pack_client((cid, acked, seen, _format_1_results(blob))) for cid, acked, seen, blob in rows]
    if packed:
        conn.execute("INSERT INTO main.client_log (records) VALUES (?)", (join_clients(packed),))


def read_client_log(conn: sqlite3.Connection) -> tuple[dict[str, ClientRecord], int]:
    """Every live client, by replaying the client log; and the log's size in bytes."""
    clients: dict[str, ClientRecord] = {}
    size = 0
    for (blob,) in conn.execute("SELECT records FROM client_log ORDER BY id"):
        size += len(blob)
        for r in _records(blob):
            if r.results is None:
                clients.pop(r.client, None)
            else:
                clients[r.client] = r
    return clients, size


def to_signed(x: int) -> int:
    """SQLite integers are signed 64-bit."""
    return x - (1 << 64) if x >= (1 << 63) else x


def to_unsigned(x: int) -> int:
    return x & MASK


def state_digest(rows_digest: int, log_time: int) -> int:
    return (rows_digest + row_hash("t", log_time)) & MASK


def full_digest(conn: sqlite3.Connection) -> int:
    """The digest recomputed from every row: slow, for checks and tests."""
    total = 0
    for row in conn.execute(
        "SELECT id, name, name_key, pw_hash, created_at, last_logoff, view_count FROM users"
    ):
        total += user_hash(row)
    for row in conn.execute("SELECT id, sender, recipient, prev, sent_at, body FROM messages"):
        total += message_hash(*row)
    for row in conn.execute("SELECT user_id, peer_id, read_upto FROM read_markers"):
        total += marker_hash(*row)
    for row in conn.execute("SELECT user_id, epoch FROM session_epochs"):
        total += epoch_hash(*row)
    for row in conn.execute("SELECT user_id, session, expires FROM ended_sessions"):
        total += ended_hash(*row)
    for r in read_client_log(conn)[0].values():
        total += client_hash((r.client, r.acked, r.last_seen, r.results or []))
    (log_time,) = conn.execute("SELECT log_time FROM chat_state").fetchone()
    return state_digest(total & MASK, log_time)
