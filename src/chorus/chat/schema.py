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

import msgspec

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
CREATE TABLE IF NOT EXISTS clients (        -- exactly-once bookkeeping
    client_id   TEXT    PRIMARY KEY,
    acked       INTEGER NOT NULL,
    last_seen   INTEGER NOT NULL,
    results     BLOB    NOT NULL          -- [[seq, result], ...] for seqs above acked
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chat_state (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    log_time    INTEGER NOT NULL,         -- the log's own clock: max of command times
    rows_digest INTEGER NOT NULL          -- sum of row hashes mod 2**64, stored signed
);
INSERT OR IGNORE INTO chat_state (id, log_time, rows_digest) VALUES (1, 0, 0);
"""

CHAT_TABLES = ("users", "messages", "read_markers", "clients")
MASK = (1 << 64) - 1
_pack = msgspec.msgpack.Encoder().encode


def create(conn: sqlite3.Connection) -> None:
    conn.executescript(DDL)


_blake2b = hashlib.blake2b
_from_bytes = int.from_bytes


def row_hash(tag: str, *values: object) -> int:
    """A 64-bit hash of one row, the same on every machine and every run."""
    return _from_bytes(_blake2b(_pack((tag, values)), digest_size=8).digest(), "little")


def user_hash(row: tuple) -> int:
    return row_hash("u", *row)


def message_hash(mid: int, sender: int, recipient: int, prev: int, sent_at: int, body: str) -> int:
    # row_hash("m", ...), one call less: it runs for every message sent
    return _from_bytes(_blake2b(_pack(("m", (mid, sender, recipient, prev, sent_at, body))), digest_size=8).digest(),
                       "little")


def marker_hash(user_id: int, peer_id: int, read_upto: int) -> int:
    return row_hash("r", user_id, peer_id, read_upto)


def client_hash(client_id: str, acked: int, last_seen: int, results: bytes) -> int:
    return _from_bytes(_blake2b(_pack(("k", (client_id, acked, last_seen, results))), digest_size=8).digest(),
                       "little")


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
    for row in conn.execute("SELECT client_id, acked, last_seen, results FROM clients"):
        total += client_hash(*row)
    (log_time,) = conn.execute("SELECT log_time FROM chat_state").fetchone()
    return state_digest(total & MASK, log_time)
