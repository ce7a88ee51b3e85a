"""The durable storage of one replica: one SQLite file (WAL) holding the Raft log,
the hard state, the snapshot metadata, what has been applied, and the chat tables.

The replica loop calls, for each Ready of the consensus core, either:

- ``save(ready)``: ONE transaction (group commit, however many entries):
  install a received snapshot, replace a conflicting suffix of the log, store
  the hard state, apply the committed entries to the chat tables and record
  "applied up to i"; or
- ``persist(ready)`` then ``apply(ready.committed)``, with the Ready's ``after``
  sent in between, so that peers start on their copies while this replica
  applies.

A write commits with synchronous=FULL (one fsync) when the Ready is
``must_sync`` (the core decides: see ``chorus.raft.Ready``), without one
(synchronous=NORMAL) otherwise; an apply alone never syncs. If a power cut
loses an apply, its entries are still in the durable log and are applied again
on restart, exactly once, since the applied index travels with the state. The
next fsync makes it durable anyway, because WAL frames reach the disk in order.

The log is stored in segments: each write of entries appends one row holding
them all (up to ``SEGMENT_BYTES``), so a batch of a hundred entries costs one
B-tree insert, not a hundred. A conflicting suffix is cut off inside the same
transaction: segments after the cut are deleted, the one it falls in is
shortened. Every entry in a segment carries a CRC-32 of (index, term, kind,
data), checked when the log is read back at start. A replica whose file is
corrupt or torn refuses to start and names the file and the index; it never
serves corrupt data.
"""

from __future__ import annotations

import errno
import sqlite3
import struct
import time
import zlib
from collections.abc import Sequence
from pathlib import Path

import msgspec

from chorus.chat import ChatMachine, schema
from chorus.chat.records import Effects
from chorus.raft import (
    Entry,
    EntryKind,
    HardState,
    Membership,
    Persisted,
    Ready,
    SnapshotMeta,
)

from . import wal
from .snapshots import SnapshotFile, StateDamaged, copy_chat_tables_from, write_snapshot

# PRAGMA user_version: 2 has the log in segments and the client log; 3 adds the
# ended sessions (created in a file of format 2 as it is opened: nothing to convert).
FORMAT = 3
_HEADER = struct.Struct("<qqq")
ENTRY_HEADER = struct.Struct("<qBII")  # term, kind, size of data, CRC-32; the index is implied
SEGMENT_BYTES = 1 << 20  # a longer write is stored as several segments

_RAFT_LOG_DDL = """
CREATE TABLE IF NOT EXISTS raft_log (  -- consecutive entries, one segment per write
    first INTEGER PRIMARY KEY,            -- the index of the segment's first entry
    last  INTEGER NOT NULL,               -- and of its last
    data  BLOB    NOT NULL                -- per entry: ENTRY_HEADER (term, kind, size, crc), its bytes
)"""
DDL = _RAFT_LOG_DDL + """;
CREATE TABLE IF NOT EXISTS raft_state (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    term   INTEGER NOT NULL,
    vote   INTEGER NOT NULL,
    commit_index INTEGER NOT NULL,
    crc    INTEGER NOT NULL,
    recovering INTEGER NOT NULL DEFAULT 0, -- (format 3) may have lost what it promised
    joined INTEGER NOT NULL DEFAULT 1,     -- (format 3) has known the cluster exists (0: a new file)
    incarnation INTEGER NOT NULL DEFAULT 0, -- (format 3) names this store: its creation time in µs
    fenced TEXT NOT NULL DEFAULT '',        -- (format 3) [[server_id, incarnation], ...] it knows of the others
    cluster TEXT NOT NULL DEFAULT '',       -- (format 3) the cluster's id, once known ('' before)
    joined_as TEXT NOT NULL DEFAULT ''      -- (format 3) the membership a member gave when this server joined
);
CREATE TABLE IF NOT EXISTS snapshot_meta (  -- the log starts after idx
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    idx    INTEGER NOT NULL,
    term   INTEGER NOT NULL,
    membership BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS applied_state (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    applied INTEGER NOT NULL,
    applied_term INTEGER NOT NULL,
    membership BLOB NOT NULL              -- as of the applied index
);
"""


class StoreCorrupt(Exception):
    """The replica's file is damaged; it must not start from it."""


class StoreUnreadable(StoreCorrupt):
    """The file is of a storage format this chorus does not read (a newer one):
    not damage, and not to be set aside; the server refuses to start."""


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the file system is out of space (or of quota): a
    write that may succeed later, unlike a damaged file."""
    if isinstance(exc, sqlite3.OperationalError):
        return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in str(exc)
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def entry_crc(index: int, term: int, kind: int, data: bytes) -> int:
    return zlib.crc32(data, zlib.crc32(_HEADER.pack(index, term, kind)))


def segments(entries: Sequence[Entry]) -> list[tuple[int, int, bytes]]:
    """(first, last, data) rows for consecutive entries, each about SEGMENT_BYTES at most."""
    pack, head = ENTRY_HEADER.pack, ENTRY_HEADER.size
    rows: list[tuple[int, int, bytes]] = []
    parts: list[bytes] = []
    size, first = 0, entries[0].index
    for e in entries:
        index, term, kind, data = e.index, e.term, e.kind, e.data
        parts += (pack(term, kind, len(data), entry_crc(index, term, kind, data)), data)
        size += head + len(data)
        if size >= SEGMENT_BYTES:
            rows.append((first, index, b"".join(parts)))
            parts, size, first = [], 0, index + 1
    if parts:
        rows.append((first, entries[-1].index, b"".join(parts)))
    return rows


class _Damaged(Exception):
    def __init__(self, index: int, what: str) -> None:
        self.index, self.what = index, what


def unpack_segment(first: int, last: int, blob: bytes, *, check: bool = True) -> list[Entry]:
    """The entries of one segment, each checked against its CRC (with ``check``).
    Raises _Damaged naming the first entry that is not sound."""
    out = []
    unpack, head = ENTRY_HEADER.unpack_from, ENTRY_HEADER.size
    view = memoryview(blob)
    pos, index, end = 0, first, len(blob)
    while pos < end:
        if pos + head > end:
            raise _Damaged(index, "is cut short")
        term, kind, size, crc = unpack(blob, pos)
        pos += head
        if pos + size > end:
            raise _Damaged(index, "is cut short")
        data = bytes(view[pos : pos + size])
        pos += size
        if check and crc != entry_crc(index, term, kind, data):
            raise _Damaged(index, "fails its checksum")
        out.append(Entry(index, term, kind, data))
        index += 1
    if index - 1 != last:
        raise _Damaged(index, f"is missing: the segment from {first} should end at {last}")
    return out


def _offset_of(first: int, blob: bytes, index: int) -> int:
    """Where entry ``index`` starts in a segment (found by its headers alone)."""
    pos = 0
    for _ in range(index - first):
        pos += ENTRY_HEADER.size + ENTRY_HEADER.unpack_from(blob, pos)[2]
    return pos


def _state_crc(term: int, vote: int, commit: int, recovering: bool = False, incarnation: int = 0,
               fenced: str = "") -> int:
    # (The same as before for what an older format held.)
    crc = zlib.crc32(_HEADER.pack(term, vote, commit))
    if recovering:
        crc = zlib.crc32(b"recovering", crc)
    if incarnation or fenced:
        crc = zlib.crc32(f"{incarnation} {fenced}".encode(), crc)
    return crc


def _encode_fenced(fenced: tuple[tuple[int, int], ...]) -> str:
    return msgspec.json.encode(fenced).decode() if fenced else ""


def _decode_fenced(text: str) -> tuple[tuple[int, int], ...]:
    return tuple(msgspec.json.decode(text, type=list[tuple[int, int]])) if text else ()


def new_incarnation() -> int:
    """A new store's name: its creation time in microseconds (below 2**53 for
    another 200 years), so that a store made later has a higher one."""
    return max(1, time.time_ns() // 1000)


def connect(path: Path | str, *, readonly: bool = False) -> sqlite3.Connection:
    uri = f"file:{path}?mode=ro" if readonly else f"file:{path}"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 5000")
    return conn


class ReplicaStore:
    """Owns the write connection; use it from one thread at a time."""

    def __init__(self, path: Path | str, bootstrap: Membership | None = None, *, check: bool = True,
                 manual_checkpoints: bool = False) -> None:
        """``manual_checkpoints``: the WAL is checkpointed only by ``checkpoint``
        (which the replica calls on its I/O thread when ``checkpoint_due``), never
        by a commit, so that a commit made on the event loop never copies pages
        and fsyncs there."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._manual = manual_checkpoints
        self._commits = 0  # since the last checkpoint
        if check:
            problem = wal.damage(Path(f"{self.path}-wal"))  # (before SQLite opens it, and hides it)
            if problem:
                raise StoreCorrupt(problem)
        try:
            self.conn = connect(self.path)
            c = self.conn
            c.execute("PRAGMA journal_mode = WAL")
            c.execute("PRAGMA synchronous = FULL")
            if manual_checkpoints:
                c.execute("PRAGMA wal_autocheckpoint = 0")
            version = c.execute("PRAGMA user_version").fetchone()[0]
            fresh = c.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == 0
            if check and not fresh:
                problems = [r[0] for r in c.execute("PRAGMA quick_check")]
                if problems != ["ok"]:
                    raise StoreCorrupt(f"{self.path}: the database is damaged: {'; '.join(problems[:3])}")
            if not fresh and version == 0:
                self._upgrade_from_format_1()
            elif not fresh and version not in (2, FORMAT):
                raise StoreUnreadable(f"{self.path}: written in storage format {version}, "
                                   f"and this chorus reads format {FORMAT} (and upgrades formats 1 and 2)")
            # Created in one transaction with its format: a crash half way leaves an empty file.
            # (A file of format 1 or 2 gains the recovery state in the same transaction.)
            have = set() if fresh else {r[1] for r in c.execute("PRAGMA table_info(raft_state)")}
            add = "".join(f"ALTER TABLE raft_state ADD COLUMN {col};" for name, col in (
                ("recovering", "recovering INTEGER NOT NULL DEFAULT 0"), ("joined", "joined INTEGER NOT NULL DEFAULT 1"),
                ("incarnation", "incarnation INTEGER NOT NULL DEFAULT 0"), ("fenced", "fenced TEXT NOT NULL DEFAULT ''"),
                ("cluster", "cluster TEXT NOT NULL DEFAULT ''"), ("joined_as", "joined_as TEXT NOT NULL DEFAULT ''"),
            ) if not fresh and name not in have)
            if not fresh and "incarnation" not in have:
                # A store of an older chorus is named when it is first opened (in the
                # same transaction as its new columns).
                row = c.execute("SELECT term, vote, commit_index, crc, "
                                + ("recovering" if "recovering" in have else "0") + " FROM raft_state").fetchone()
                if row is not None:
                    term, vote, commit, crc, rec = row
                    inc = new_incarnation()
                    if crc == _state_crc(term, vote, commit, bool(rec)):  # (damage stays damage)
                        crc = _state_crc(term, vote, commit, bool(rec), inc)
                    add += f"UPDATE raft_state SET incarnation = {int(inc)}, crc = {int(crc)};"
            c.executescript(f"BEGIN; {DDL} {add} {schema.DDL} PRAGMA user_version = {FORMAT}; COMMIT;")
            boot = (bootstrap or Membership()).encode()
            # A file made now is of an empty disk: until the other servers say whether
            # the cluster is being created, it may have lost what it promised (durable
            # from the first moment: a crash before anything else is written must not
            # make it a member that never promised anything).
            inc = new_incarnation()
            c.execute("INSERT OR IGNORE INTO raft_state (id, term, vote, commit_index, crc, recovering, joined, "
                      "incarnation) VALUES (1, 0, 0, 0, ?, 1, 0, ?)", (_state_crc(0, 0, 0, True, inc), inc))
            self.created = fresh  # this file was made now (an empty data directory)
            c.execute("INSERT OR IGNORE INTO snapshot_meta VALUES (1, 0, 0, ?)", (boot,))
            c.execute("INSERT OR IGNORE INTO applied_state VALUES (1, 0, 0, ?)", (boot,))
            self.chat = ChatMachine(c)
            self._applied: int = self.applied()
        except (sqlite3.DatabaseError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise StoreCorrupt(f"{self.path}: cannot be read: {exc}") from None

    def _upgrade_from_format_1(self) -> None:
        """Format 1 (before user_version was set) kept a row per log entry and a row
        per client. Convert the file in place, in one transaction: the log into
        segments (every entry's CRC checked first), the client rows into one row
        of the client log. The digest is unchanged: a client record hashes the same
        in both formats."""
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            entries: list[Entry] = []
            for idx, term, kind, data, crc in c.execute(
                "SELECT idx, term, kind, data, crc FROM raft_log ORDER BY idx"
            ):
                if crc != entry_crc(idx, term, kind, data):
                    raise StoreCorrupt(f"{self.path}: raft log entry {idx} fails its checksum")
                if entries and idx != entries[-1].index + 1:
                    raise StoreCorrupt(f"{self.path}: raft log entry {idx} is out of place "
                                       f"(expected {entries[-1].index + 1})")
                entries.append(Entry(idx, term, kind, data))
            c.execute("DROP TABLE raft_log")
            c.execute(_RAFT_LOG_DDL)
            if entries:
                c.executemany("INSERT INTO raft_log (first, last, data) VALUES (?,?,?)", segments(entries))
            c.execute(schema.CLIENT_LOG_DDL)
            schema.upgrade_clients_from_format_1(c)
            c.execute("DROP TABLE clients")
            c.execute(f"PRAGMA user_version = {FORMAT}")
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    def __repr__(self) -> str:
        return f"ReplicaStore({self.path}, applied {self._applied}, {self._commits} commits since the checkpoint)"

    def close(self) -> None:
        self.conn.close()

    @property
    def joined(self) -> bool:
        """Whether this replica has known the cluster exists (a file made empty and
        never told so may belong to a cluster being created)."""
        return bool(self.conn.execute("SELECT joined FROM raft_state").fetchone()[0])

    def mark_joined(self) -> None:
        """(On the thread the rounds use: it is a write of its own.)"""
        self.conn.execute("UPDATE raft_state SET joined = 1 WHERE id = 1")

    @property
    def cluster_id(self) -> str:
        """The id of the cluster this replica belongs to ('' until it is set)."""
        return str(self.conn.execute("SELECT cluster FROM raft_state").fetchone()[0])

    def set_cluster_id(self, cluster: str) -> None:
        self.conn.execute("UPDATE raft_state SET cluster = ? WHERE id = 1", (cluster,))

    @property
    def joined_as(self) -> Membership | None:
        """The membership a member gave when this server joined (--join), if it did."""
        text = self.conn.execute("SELECT joined_as FROM raft_state").fetchone()[0]
        return Membership.decode(text.encode()) if text else None

    def set_joined_as(self, membership: Membership) -> None:
        self.conn.execute("UPDATE raft_state SET joined_as = ? WHERE id = 1", (membership.encode().decode(),))

    def reader(self) -> sqlite3.Connection:
        """A read-only connection for queries (any thread; WAL readers never block)."""
        return connect(self.path, readonly=True)

    # ------------------------------------------------------------------ reading back
    def restore(self) -> Persisted:
        """What the consensus core needs to restart, every entry checked."""
        c = self.conn
        try:
            term, vote, commit, crc, recovering, inc, fenced = c.execute(
                "SELECT term, vote, commit_index, crc, recovering, incarnation, fenced FROM raft_state"
            ).fetchone()
            if crc != _state_crc(term, vote, commit, bool(recovering), inc, fenced):
                raise StoreCorrupt(f"{self.path}: the hard state (term, vote) fails its checksum")
            try:
                fenced_pairs = _decode_fenced(fenced)
            except (msgspec.DecodeError, msgspec.ValidationError):
                raise StoreCorrupt(f"{self.path}: the hard state's incarnations cannot be read") from None
            snap = self.snapshot_meta()
            entries: list[Entry] = []
            expect = snap.index + 1
            last_term = snap.term
            for first, last, blob in c.execute("SELECT first, last, data FROM raft_log ORDER BY first"):
                try:
                    segment = unpack_segment(first, last, blob)
                except _Damaged as bad:
                    raise StoreCorrupt(f"{self.path}: raft log entry {bad.index} {bad.what}") from None
                for e in segment:
                    if e.index <= snap.index and not entries:
                        continue  # compacted: kept only as part of a segment that goes on
                    if e.index != expect or e.term < last_term:
                        raise StoreCorrupt(f"{self.path}: raft log entry {e.index} is out of place (expected {expect})")
                    entries.append(e)
                    expect, last_term = e.index + 1, e.term
            applied = self.applied()
        except sqlite3.DatabaseError as exc:
            raise StoreCorrupt(f"{self.path}: cannot be read: {exc}") from None
        return Persisted(
            HardState(term, vote, commit, bool(recovering), inc, fenced_pairs),
            snap if snap.index else None,
            entries,
            applied,
        )

    def snapshot_meta(self) -> SnapshotMeta:
        idx, term, members = self.conn.execute("SELECT idx, term, membership FROM snapshot_meta").fetchone()
        return SnapshotMeta(idx, term, Membership.decode(members))

    def applied(self) -> int:
        (applied,) = self.conn.execute("SELECT applied FROM applied_state").fetchone()
        return int(applied)

    def digest(self) -> int:
        """The chat state's digest at the applied index (kept up to date: O(1)).
        Safe from any thread: never the digest of a batch half applied."""
        return self.chat.published_digest

    def last_index(self) -> int:
        row = self.conn.execute("SELECT last FROM raft_log ORDER BY first DESC LIMIT 1").fetchone()
        return row[0] if row is not None else self.snapshot_meta().index

    # ------------------------------------------------------------------ the replica loop
    def save(self, rd: Ready, snapshot: SnapshotFile | None = None) -> Effects:
        """Persist a Ready and apply its committed entries in ONE transaction with
        one fsync (group commit, as the replica loop's steps 1 and 3 together).
        Returns what applying them did."""
        return self._write(rd.snapshot, snapshot, rd.entries, rd.hard_state, rd.committed, rd.must_sync)

    def save_restored(self, snapshot: SnapshotFile, hs: HardState) -> None:
        """Install a backup as this new store's whole state (``chorus restore``)."""
        self._write(snapshot.meta, snapshot, (), hs, (), True)

    def save_recovered(self, entry: Entry, hs: HardState) -> None:
        """Append ``entry`` and set the hard state, with an fsync (``chorus recover``)."""
        self._write(None, None, (entry,), hs, (), True)

    def persist(self, rd: Ready, snapshot: SnapshotFile | None = None) -> None:
        """Step 1 of the replica loop alone: snapshot, entries, hard state; one fsync."""
        self._write(rd.snapshot, snapshot, rd.entries, rd.hard_state, (), rd.must_sync)

    def apply(self, entries: Sequence[Entry]) -> Effects:
        """Step 3 alone: apply committed entries and record the applied index, in
        one transaction, without an fsync (see the module's docstring)."""
        return self._write(None, None, (), None, entries, False)

    def _write(
        self,
        snap_meta: SnapshotMeta | None,
        snapshot: SnapshotFile | None,
        entries: Sequence[Entry],
        hs: HardState | None,
        committed: Sequence[Entry],
        promise: bool,
    ) -> Effects:
        """``promise``: the Ready's ``must_sync``: commit with an fsync. (The commit
        index alone need not be durable: a restart recovers it as at least the
        applied index; nor need an apply: the log it comes from is.)"""
        c = self.conn
        if not (promise or hs is not None or committed):
            return Effects()
        if committed:
            expect = (snap_meta.index if snap_meta is not None else self._applied) + 1
            if committed[0].index != expect:
                raise ValueError(f"applying {committed[0].index} after {expect - 1}")
        if snap_meta is not None:
            if snapshot is None or snapshot.meta != snap_meta:
                raise ValueError(f"installing {snap_meta!r} needs its received file")
            c.execute("ATTACH DATABASE ? AS snap", (f"file:{snapshot.path}?mode=ro",))
        if not promise:
            c.execute("PRAGMA synchronous = NORMAL")
        results = Effects()
        try:
            c.execute("BEGIN IMMEDIATE")
            try:
                if snap_meta is not None:
                    self._install(snap_meta, snapshot)  # type: ignore[arg-type]
                if entries:
                    # Replacing a conflicting suffix is part of this one transaction.
                    self._cut_log(entries[0].index)
                    c.executemany("INSERT INTO raft_log (first, last, data) VALUES (?,?,?)", segments(entries))
                if hs is not None:
                    fenced = _encode_fenced(hs.fenced)
                    c.execute(
                        "UPDATE raft_state SET term = ?, vote = ?, commit_index = ?, crc = ?, recovering = ?, "
                        "incarnation = ?, fenced = ? WHERE id = 1",
                        (hs.term, hs.vote, hs.commit,
                         _state_crc(hs.term, hs.vote, hs.commit, hs.recovering, hs.incarnation, fenced),
                         int(hs.recovering), hs.incarnation, fenced),
                    )
                if committed:
                    results = self._apply_in_transaction(committed)
                c.execute("COMMIT")
            except BaseException:
                if c.in_transaction:  # (SQLite may have rolled back by itself: a full disk)
                    c.execute("ROLLBACK")
                if committed or snap_meta is not None:
                    self.chat.load()
                self._applied = self.applied()
                raise
            self._commits += 1
            if snap_meta is not None:
                self._applied = snap_meta.index
            if committed:
                self._applied = committed[-1].index
        finally:
            if not promise:
                c.execute("PRAGMA synchronous = FULL")
            if snap_meta is not None:
                c.execute("DETACH DATABASE snap")
                self.chat.load()  # the chat tables were replaced (or the install rolled back)
        if committed:
            self.chat.publish()
        return results

    def _cut_log(self, index: int) -> None:
        """Remove entries ``index`` and after (inside the caller's transaction).
        An append after the last entry finds nothing to cut and reads no data."""
        c = self.conn
        c.execute("DELETE FROM raft_log WHERE first >= ?", (index,))
        row = c.execute("SELECT first, last FROM raft_log ORDER BY first DESC LIMIT 1").fetchone()
        if row is not None and row[1] >= index:  # the cut falls inside the last segment left
            first = row[0]
            (blob,) = c.execute("SELECT data FROM raft_log WHERE first = ?", (first,)).fetchone()
            c.execute("UPDATE raft_log SET last = ?, data = ? WHERE first = ?",
                      (index - 1, blob[: _offset_of(first, blob, index)], first))

    def _apply_in_transaction(self, entries: Sequence[Entry]) -> Effects:
        membership: bytes | None = None
        commands = []
        for e in entries:
            if e.kind == EntryKind.COMMAND:
                commands.append((e.index, e.data))
            elif e.kind == EntryKind.CONFIG:
                membership = e.data
        effects = self.chat.apply_batch(commands)
        last = entries[-1]
        if membership is None:
            self.conn.execute("UPDATE applied_state SET applied = ?, applied_term = ? WHERE id = 1",
                              (last.index, last.term))
        else:
            self.conn.execute("UPDATE applied_state SET applied = ?, applied_term = ?, membership = ? WHERE id = 1",
                              (last.index, last.term, membership))
        return effects

    def _install(self, meta: SnapshotMeta, snapshot: SnapshotFile) -> None:
        c = self.conn
        copy_chat_tables_from(c, "snap")
        digest = schema.full_digest(c)
        if digest != snapshot.digest:
            raise StoreCorrupt(
                f"snapshot {snapshot.path} at {meta.index}: state digest {digest:016x} "
                f"does not match {snapshot.digest:016x}"
            )
        c.execute("DELETE FROM raft_log")
        members = meta.membership.encode()
        c.execute("UPDATE snapshot_meta SET idx = ?, term = ?, membership = ? WHERE id = 1",
                  (meta.index, meta.term, members))
        c.execute("UPDATE applied_state SET applied = ?, applied_term = ?, membership = ? WHERE id = 1",
                  (meta.index, meta.term, members))

    def checkpoint_due(self, every: int = 200) -> bool:
        """With manual checkpoints: whether ``every`` commits went by since the last."""
        return self._manual and self._commits >= every

    def checkpoint(self) -> None:
        """Copy the WAL into the database (passive: readers are not blocked)."""
        self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        self._commits = 0

    # ------------------------------------------------------------------ snapshots
    def create_snapshot(self, directory: Path | str) -> SnapshotFile:
        """A consistent copy of the chat state at the applied index, in a file of
        its own (for sending to a replica that fell behind). Safe to call from
        another thread while entries are being applied. Its rows are checked
        against the chat state's digest: ``StoreCorrupt`` if they differ."""
        try:
            return write_snapshot(self.path, Path(directory))
        except StateDamaged as exc:
            raise StoreCorrupt(str(exc)) from None

    def compact(self, index: int) -> SnapshotMeta:
        """Forget the log up to ``index`` (at most the applied index)."""
        c = self.conn
        if index > self.applied():
            raise ValueError(f"cannot compact to {index}: only {self.applied()} is applied")
        current = self.snapshot_meta()
        if index <= current.index:
            return current
        membership = current.membership
        term = None
        for first, last, blob in c.execute(
            "SELECT first, last, data FROM raft_log WHERE first <= ? ORDER BY first", (index,)
        ).fetchall():
            for e in unpack_segment(first, last, blob, check=False):
                if current.index < e.index <= index:
                    term = e.term
                    if e.kind == EntryKind.CONFIG:
                        membership = Membership.decode(e.data)
        if term is None:
            raise ValueError(f"cannot compact to {index}: the log does not hold it")
        meta = SnapshotMeta(index, term, membership)
        c.execute("BEGIN IMMEDIATE")
        try:
            # Whole segments up to the index go; one that goes on past it stays.
            c.execute("DELETE FROM raft_log WHERE first <= ? AND last <= ?", (index, index))
            c.execute("UPDATE snapshot_meta SET idx = ?, term = ?, membership = ? WHERE id = 1",
                      (index, term, membership.encode()))
            c.execute("COMMIT")
        except BaseException:
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise
        return meta
