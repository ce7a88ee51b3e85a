"""Snapshots of the chat state: made, cut into chunks, reassembled, installed.

A snapshot is a SQLite file of its own holding a copy of the chat tables and a
``snapshot_info`` row (index, term, membership, digest). It is copied inside one
read transaction of the replica's database, so it is consistent at exactly the
applied index even while entries keep being applied. A snapshot can be much
larger than one network frame, so it travels in chunks. The receiver checks the
size and SHA-256 before installing, and ``ReplicaStore.persist`` checks the state
digest after copying the tables in, within the same transaction, before anything
commits.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec

from chorus.chat import schema
from chorus.raft import Membership, SnapshotMeta

CHUNK_BYTES = 256 * 1024
TABLES = (*schema.CHAT_TABLES, "chat_state")


class SnapshotInvalid(Exception):
    """A received snapshot is incomplete or does not match what was announced."""


class StateDamaged(SnapshotInvalid):
    """The chat state a snapshot was made from does not hash to its recorded digest:
    the database it was copied from is damaged."""


@dataclass(frozen=True, slots=True)
class SnapshotFile:
    meta: SnapshotMeta
    path: Path
    size: int
    sha256: str
    digest: int  # the chat state digest at meta.index


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def write_snapshot(db_path: Path, directory: Path) -> SnapshotFile:
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".snapshot-", suffix=".tmp", dir=directory)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()  # SQLite creates it
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, isolation_level=None)
    try:
        conn.execute("ATTACH DATABASE ? AS snap", (str(tmp),))
        conn.execute("BEGIN")  # one read transaction: every table at the same applied index
        index, term, members = conn.execute(
            "SELECT applied, applied_term, membership FROM main.applied_state"
        ).fetchone()
        log_time, rows_digest = conn.execute("SELECT log_time, rows_digest FROM main.chat_state").fetchone()
        for table in TABLES:
            conn.execute(f"CREATE TABLE snap.{table} AS SELECT * FROM main.{table}")
        digest = schema.state_digest(schema.to_unsigned(rows_digest), log_time)
        conn.execute("CREATE TABLE snap.snapshot_info (idx INTEGER, term INTEGER, membership BLOB, digest TEXT)")
        conn.execute("INSERT INTO snap.snapshot_info VALUES (?, ?, ?, ?)", (index, term, members, f"{digest:016x}"))
        conn.execute("COMMIT")
        conn.execute("DETACH DATABASE snap")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        conn.close()
    # Every row copied hashes to the digest kept up to date as entries were applied:
    # a check of the whole chat state as it is on disk, at every snapshot.
    try:
        check_contents(tmp, digest)
    except SnapshotInvalid as exc:
        tmp.unlink(missing_ok=True)
        raise StateDamaged(f"{db_path}: the chat state is damaged: {exc}") from None
    _fsync(tmp)
    final = directory / f"snapshot-{index:012d}.db"
    sha = file_sha256(tmp)
    _write_sidecar(final, sha)
    os.replace(tmp, final)
    _fsync_dir(directory)
    for old in directory.glob("snapshot-*.db"):
        if old != final:
            old.unlink(missing_ok=True)
            _sidecar(old).unlink(missing_ok=True)
    return SnapshotFile(SnapshotMeta(index, term, Membership.decode(members)), final, final.stat().st_size, sha, digest)


def _sidecar(path: Path) -> Path:
    """The SHA-256 of a snapshot file, written when it was made: read back before
    the file is sent, so that a damaged file is named here, not at a receiver."""
    return path.with_name(path.name + ".sha256")


def _write_sidecar(path: Path, sha: str) -> None:
    side = _sidecar(path)
    tmp = side.with_name(side.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(sha + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, side)


def check_contents(path: Path, digest: int) -> None:
    """That the chat tables of the snapshot file at ``path`` hash to ``digest``.
    (A snapshot of a server still on format 1 or 2 lacks tables of today's
    digest: it is checked when installed, after conversion.)"""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not set(TABLES) <= names:
            return
        got = schema.full_digest(conn)
    except (sqlite3.DatabaseError, ValueError, msgspec.DecodeError) as exc:
        raise SnapshotInvalid(f"{path}: its tables cannot be read: {exc}") from None
    finally:
        conn.close()
    if got != digest:
        raise SnapshotInvalid(f"{path}: its rows hash to {got:016x}, and its digest says {digest:016x}")


def read_snapshot_info(path: Path) -> tuple[SnapshotMeta, int]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        index, term, members, digest = conn.execute("SELECT idx, term, membership, digest FROM snapshot_info").fetchone()
    except sqlite3.DatabaseError as exc:
        raise SnapshotInvalid(f"{path}: not a snapshot: {exc}") from None
    finally:
        conn.close()
    return SnapshotMeta(index, term, Membership.decode(members)), int(digest, 16)


def open_snapshot(path: Path) -> SnapshotFile:
    """A snapshot file already on disk (the latest one made here), checked
    against the SHA-256 written when it was made."""
    sha = file_sha256(path)
    side = _sidecar(path)
    if side.exists():  # (a snapshot made by an older chorus has none)
        want = side.read_text().strip()
        if want != sha:
            raise SnapshotInvalid(f"{path}: damaged (its SHA-256 is {sha[:16]}..., it was {want[:16]}... "
                                  "when it was made)")
    meta, digest = read_snapshot_info(path)
    return SnapshotFile(meta, path, path.stat().st_size, sha, digest)


def latest_snapshot_path(directory: Path) -> Path | None:
    files = sorted(directory.glob("snapshot-*.db")) if directory.exists() else []
    return files[-1] if files else None


def latest_snapshot(directory: Path) -> SnapshotFile | None:
    path = latest_snapshot_path(directory)
    return open_snapshot(path) if path is not None else None


def chunks(snapshot: SnapshotFile, size: int = CHUNK_BYTES) -> Iterator[tuple[int, bytes]]:
    """(offset, bytes) pieces of the file, in order."""
    with open(snapshot.path, "rb") as f:
        offset = 0
        while block := f.read(size):
            yield offset, block
            offset += len(block)


class SnapshotReceiver:
    """Reassembles a snapshot sent in chunks; ``finish()`` checks it whole."""

    def __init__(self, directory: Path, meta: SnapshotMeta, size: int, sha256: str, digest: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory, self.meta, self.size, self.sha256, self.digest = directory, meta, size, sha256, digest
        fd, name = tempfile.mkstemp(prefix=".incoming-", suffix=".tmp", dir=directory)
        self.tmp = Path(name)
        self._file = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self.received = 0

    def write(self, offset: int, data: bytes) -> None:
        if offset != self.received:
            raise SnapshotInvalid(f"chunk at {offset}, expected {self.received}")
        if self.received + len(data) > self.size:
            raise SnapshotInvalid(f"more than the announced {self.size} bytes")
        self._file.write(data)
        self._hash.update(data)
        self.received += len(data)

    def abort(self) -> None:
        self._file.close()
        self.tmp.unlink(missing_ok=True)

    def finish(self) -> SnapshotFile:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        if self.received != self.size or self._hash.hexdigest() != self.sha256:
            self.tmp.unlink(missing_ok=True)
            raise SnapshotInvalid(
                f"snapshot at {self.meta.index}: got {self.received} of {self.size} bytes, checksum "
                f"{'matches' if self._hash.hexdigest() == self.sha256 else 'differs'}"
            )
        try:
            meta, digest = read_snapshot_info(self.tmp)
        except SnapshotInvalid:
            self.tmp.unlink(missing_ok=True)
            raise
        if meta != self.meta or digest != self.digest:
            self.tmp.unlink(missing_ok=True)
            raise SnapshotInvalid(f"snapshot says {meta!r}, the sender announced {self.meta!r}")
        try:
            check_contents(self.tmp, digest)  # (a sender whose disk damaged it after its own check)
        except SnapshotInvalid:
            self.tmp.unlink(missing_ok=True)
            raise
        final = self.directory / f"received-{meta.index:012d}.db"
        os.replace(self.tmp, final)
        return SnapshotFile(meta, final, self.size, self.sha256, digest)


def copy_chat_tables_from(conn: sqlite3.Connection, source: str) -> None:
    """Replace the chat tables of ``main`` with those of the attached ``source``
    (inside the caller's transaction). A snapshot made by a server still on
    storage format 1 has a row per client instead of the client log: converted."""
    names = {r[0] for r in conn.execute(f"SELECT name FROM {source}.sqlite_master WHERE type = 'table'")}
    for table in TABLES:
        if table == "client_log" and "client_log" not in names and "clients" in names:
            conn.execute("DELETE FROM main.client_log")
            schema.upgrade_clients_from_format_1(conn, source)
            continue
        if table in schema.SESSION_TABLES and table not in names:
            conn.execute(f"DELETE FROM main.{table}")  # a snapshot of format 1 or 2: no session ended
            continue
        want = [r[1] for r in conn.execute(f"PRAGMA main.table_info({table})")]
        have = [r[1] for r in conn.execute(f"PRAGMA {source}.table_info({table})")]
        if want != have:
            raise SnapshotInvalid(f"the snapshot's {table} table has columns {have}, expected {want}")
        cols = ", ".join(want)
        conn.execute(f"DELETE FROM main.{table}")
        conn.execute(f"INSERT INTO main.{table} ({cols}) SELECT {cols} FROM {source}.{table}")
