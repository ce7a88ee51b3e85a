"""The replica store: persistence, atomic apply, checksums, snapshots."""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chorus.chat import commands as C
from chorus.chat import queries, schema
from chorus.raft import Entry, EntryKind, HardState, Membership, Ready
from chorus.store import (
    ReplicaStore,
    SnapshotFile,
    SnapshotInvalid,
    SnapshotReceiver,
    StoreCorrupt,
    chunks,
    latest_snapshot,
)
from chorus.store.snapshots import file_sha256, read_snapshot_info

HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA"
MEMBERS = Membership(frozenset({1, 2, 3}))


def ready(entries=(), hs: HardState | None = None, snapshot=None, *, must_sync: bool = True) -> Ready:
    return Ready(hard_state=hs, soft_state=None, snapshot=snapshot, entries=tuple(entries),
                 messages=(), committed=(), reads=(), membership=None, must_sync=must_sync)


def chat_log(n_messages: int, term: int = 1, start: int = 1) -> list[Entry]:
    """Two registrations, then messages back and forth."""
    cmds: list[C.AnyCommand] = [
        C.Register(client="c", seq=1, ts=1000, name="alice", pw_hash=HASH),
        C.Register(client="c", seq=2, ts=1001, name="bob", pw_hash=HASH),
    ]
    for k in range(n_messages):
        cmds.append(C.Send(client="c", seq=3 + k, acked=2 + k, ts=2000 + k, user=1 if k % 2 else 2,
                           to="bob" if k % 2 else "alice", body=f"message {k:04d} payload"))
    return [Entry(start + i, term, EntryKind.COMMAND, C.encode(c)) for i, c in enumerate(cmds)]


def sends(n: int, start: int, term: int = 1) -> list[Entry]:
    """n more messages, at log indexes start, start + 1, ..."""
    return [
        Entry(start + k, term, EntryKind.COMMAND,
              C.encode(C.Send(client="d", seq=start + k, ts=5000 + k, user=1, to="bob", body=f"later {k}")))
        for k in range(n)
    ]


def fill(store: ReplicaStore, entries: list[Entry], term: int = 1) -> None:
    store.persist(ready(entries, HardState(term, 1, entries[-1].index)))
    store.apply(entries)


def test_persist_and_restore(tmp_path: Path) -> None:
    s = ReplicaStore(tmp_path / "r.db", MEMBERS)
    log = chat_log(10)
    s.persist(ready(log, HardState(3, 2, 5)))
    s.close()
    p = ReplicaStore(tmp_path / "r.db").restore()
    assert p.hard_state == HardState(3, 2, 5)
    assert list(p.entries) == log and p.snapshot is None and p.applied == 0


def test_a_conflicting_suffix_is_replaced_in_one_transaction(tmp_path: Path) -> None:
    s = ReplicaStore(tmp_path / "r.db", MEMBERS)
    s.persist(ready(chat_log(10, term=1), HardState(1, 1, 0)))
    replacement = [Entry(8, 2, EntryKind.NOOP, b""), Entry(9, 2, EntryKind.COMMAND, b"x")]
    s.persist(ready(replacement, HardState(2, 1, 0)))
    entries = s.restore().entries
    assert [(e.index, e.term) for e in entries] == [(i, 1) for i in range(1, 8)] + [(8, 2), (9, 2)]


def test_apply_records_the_applied_index_with_the_state(tmp_path: Path) -> None:
    s = ReplicaStore(tmp_path / "r.db", MEMBERS)
    log = chat_log(6)
    s.persist(ready(log, HardState(1, 1, 8)))
    results = s.apply(log[:5])
    assert [a[0] for a in results.answers] == [1, 2, 3, 4, 5] and all(r.ok for r in results.results)
    with pytest.raises(ValueError, match="applying 7 after 5"):
        s.apply(log[6:])  # a gap
    s.apply(log[5:])
    s.close()
    s2 = ReplicaStore(tmp_path / "r.db")
    assert s2.applied() == 8
    assert [m.body for m in queries.history(s2.reader(), s2.chat.view, 1, "bob", limit=2)] == [
        "message 0005 payload", "message 0004 payload"]


def test_a_failed_apply_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = ReplicaStore(tmp_path / "r.db", MEMBERS)
    log = chat_log(6)
    s.persist(ready(log, HardState(1, 1, 8)))
    s.apply(log[:4])
    digest, applied = s.digest(), s.applied()
    real = s.chat.apply_batch

    def fails_half_way(commands):
        real(list(commands)[:2])  # writes some rows ...
        raise OSError("disk full")  # ... and then the disk is full

    monkeypatch.setattr(s.chat, "apply_batch", fails_half_way)
    with pytest.raises(OSError):
        s.apply(log[4:])
    monkeypatch.undo()
    assert (s.digest(), s.applied()) == (digest, applied)
    assert s.digest() == schema.full_digest(s.conn)
    s.apply(log[4:])
    assert s.applied() == 8


class FailingConnection:
    """Passes everything to the real connection, but the first executemany fails."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def executemany(self, *args):
        raise sqlite3.OperationalError("disk I/O error")

    def __getattr__(self, name):
        return getattr(self.conn, name)


def test_a_persist_that_fails_half_way_leaves_the_log_as_it_was(tmp_path: Path) -> None:
    s = ReplicaStore(tmp_path / "r.db", MEMBERS)
    s.persist(ready(chat_log(10, term=1), HardState(1, 1, 0)))
    before = s.restore()
    real, s.conn = s.conn, FailingConnection(s.conn)  # type: ignore[assignment]
    replacement = [Entry(8, 2, EntryKind.NOOP, b""), Entry(9, 2, EntryKind.COMMAND, b"x")]
    with pytest.raises(sqlite3.OperationalError):
        s.persist(ready(replacement, HardState(2, 1, 0)))  # the truncation ran, the append failed
    s.conn = real
    assert s.restore() == before  # nothing of it stuck: not the truncation, not the new term


def test_save_persists_and_applies_in_one_transaction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = ReplicaStore(tmp_path / "r.db", MEMBERS)
    log = chat_log(8)
    rd = Ready(hard_state=HardState(1, 1, 6), soft_state=None, snapshot=None, entries=tuple(log),
               messages=(), committed=tuple(log[:6]), reads=(), membership=None, must_sync=True)
    results = s.save(rd)
    assert [a[0] for a in results.answers] == [1, 2, 3, 4, 5, 6] and s.applied() == 6
    more = sends(2, start=11)
    rd2 = Ready(hard_state=HardState(1, 1, 12), soft_state=None, snapshot=None, entries=tuple(more),
                messages=(), committed=tuple(log[6:]) + tuple(more), reads=(), membership=None, must_sync=True)
    before = (s.restore(), s.digest())
    monkeypatch.setattr(s.chat, "apply_batch", lambda commands: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        s.save(rd2)
    monkeypatch.undo()
    assert (s.restore(), s.digest()) == before  # neither the new entries nor the apply
    s.save(rd2)
    assert s.applied() == 12 and s.restore().entries[-1].index == 12


def test_an_entry_that_fails_its_checksum_stops_the_replica(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    s = ReplicaStore(path, MEMBERS)
    s.persist(ready(chat_log(40), HardState(1, 1, 0)))
    s.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    s.close()
    raw = bytearray(path.read_bytes())
    at = raw.find(b"message 0017 payload")  # entry 20 (two registrations, then message 0 at 3)
    assert at > 0
    raw[at + 9] ^= 0x01  # one flipped bit inside the entry's data
    path.write_bytes(bytes(raw))
    with pytest.raises(StoreCorrupt, match=rf"{path}: raft log entry 20 fails its checksum"):
        ReplicaStore(path).restore()


def test_a_torn_file_stops_the_replica(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    s = ReplicaStore(path, MEMBERS)
    fill(s, chat_log(300))
    s.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    s.close()
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])  # the second half never reached the disk
    with pytest.raises(StoreCorrupt, match=str(path)):
        ReplicaStore(path).restore()


def test_a_tampered_hard_state_stops_the_replica(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    s = ReplicaStore(path, MEMBERS)
    s.persist(ready((), HardState(5, 2, 0)))
    s.close()
    with sqlite3.connect(path) as c:
        c.execute("UPDATE raft_state SET vote = 3")  # a second vote in term 5, out of nowhere
    with pytest.raises(StoreCorrupt, match="hard state"):
        ReplicaStore(path).restore()


def test_a_store_is_named_when_it_is_made_and_keeps_what_it_knows_of_the_others(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    s = ReplicaStore(path, MEMBERS)
    inc = s.restore().hard_state.incarnation
    assert inc > 0 and ReplicaStore(tmp_path / "later.db", MEMBERS).restore().hard_state.incarnation > inc
    s.persist(ready((), HardState(5, 2, 0, False, inc, ((1, 7), (3, 9)))))
    s.close()
    again = ReplicaStore(path)
    assert again.restore().hard_state == HardState(5, 2, 0, False, inc, ((1, 7), (3, 9)))
    again.close()
    with sqlite3.connect(path) as c:
        c.execute("""UPDATE raft_state SET fenced = '[[1,7],[3,8]]'""")  # it forgets that 3 is a new store
    with pytest.raises(StoreCorrupt, match="hard state"):
        ReplicaStore(path).restore()


def test_an_older_store_is_named_when_it_is_first_opened(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    s = ReplicaStore(path, MEMBERS)
    s.persist(ready((), HardState(5, 2, 0)))
    s.close()
    with sqlite3.connect(path) as c:  # as an older chorus left it
        c.execute("ALTER TABLE raft_state DROP COLUMN fenced")
        c.execute("ALTER TABLE raft_state DROP COLUMN incarnation")
    hs = ReplicaStore(path).restore().hard_state
    assert (hs.term, hs.vote, hs.fenced) == (5, 2, ()) and hs.incarnation > 0


def test_the_same_log_gives_the_same_digest_and_a_snapshot_carries_it(tmp_path: Path) -> None:
    one, two = ReplicaStore(tmp_path / "1.db", MEMBERS), ReplicaStore(tmp_path / "2.db", MEMBERS)
    log = chat_log(50)
    for s in (one, two):
        fill(s, log)
    assert one.digest() == two.digest() == schema.full_digest(one.conn)
    snap = one.create_snapshot(tmp_path / "snaps")
    assert snap.meta.index == 52 and snap.meta.membership == MEMBERS and snap.digest == one.digest()
    # Sent in small chunks to a new replica, reassembled, checked, installed.
    three = ReplicaStore(tmp_path / "3.db", Membership())
    rx = SnapshotReceiver(tmp_path / "incoming", snap.meta, snap.size, snap.sha256, snap.digest)
    pieces = list(chunks(snap, 1000))
    assert len(pieces) > 5
    for offset, data in pieces:
        rx.write(offset, data)
    received = rx.finish()
    three.persist(ready((), HardState(1, 0, 52), snapshot=snap.meta), received)
    assert three.digest() == one.digest() and three.applied() == 52
    assert three.restore().snapshot == snap.meta and not three.restore().entries
    assert queries.history(three.reader(), three.chat.view, 1, "bob") == queries.history(one.reader(), one.chat.view, 1, "bob")
    # The log goes on after the snapshot.
    more = sends(3, start=53)
    for s in (one, three):
        s.persist(ready(more, HardState(1, 0, 55)))
        s.apply(more)
    assert three.digest() == one.digest()


def test_a_damaged_snapshot_is_refused(tmp_path: Path) -> None:
    one = ReplicaStore(tmp_path / "1.db", MEMBERS)
    fill(one, chat_log(20))
    snap = one.create_snapshot(tmp_path / "snaps")
    rx = SnapshotReceiver(tmp_path / "in", snap.meta, snap.size, snap.sha256, snap.digest)
    for offset, data in chunks(snap, 4096):
        rx.write(offset, data[:-1] + bytes([data[-1] ^ 1]) if offset == 0 else data)
    with pytest.raises(SnapshotInvalid, match="checksum differs"):
        rx.finish()
    rx = SnapshotReceiver(tmp_path / "in", snap.meta, snap.size, snap.sha256, snap.digest)
    with pytest.raises(SnapshotInvalid, match="expected 0"):
        rx.write(4096, b"out of order")
    rx.abort()


def test_a_snapshot_whose_state_does_not_match_its_digest_is_not_installed(tmp_path: Path) -> None:
    one = ReplicaStore(tmp_path / "1.db", MEMBERS)
    fill(one, chat_log(20))
    snap = one.create_snapshot(tmp_path / "snaps")
    with sqlite3.connect(snap.path) as c:
        c.execute("UPDATE messages SET body = 'forged' WHERE id = 10")
    two = ReplicaStore(tmp_path / "2.db", MEMBERS)
    fill(two, chat_log(2))
    before = (two.digest(), two.applied(), two.restore())
    with pytest.raises(StoreCorrupt, match="does not match"):
        two.persist(ready((), HardState(1, 0, 22), snapshot=snap.meta), snap)
    assert (two.digest(), two.applied(), two.restore()) == before


def test_a_snapshot_file_damaged_after_it_was_made_is_named_before_it_is_sent(tmp_path: Path) -> None:
    one = ReplicaStore(tmp_path / "1.db", MEMBERS)
    fill(one, chat_log(20))
    snap = one.create_snapshot(tmp_path / "snaps")
    assert latest_snapshot(tmp_path / "snaps") == snap  # (read back, checked, unchanged)
    data = bytearray(snap.path.read_bytes())
    data[len(data) // 2] ^= 0x10
    snap.path.write_bytes(bytes(data))
    with pytest.raises(SnapshotInvalid, match="damaged"):
        latest_snapshot(tmp_path / "snaps")


def test_a_received_snapshot_whose_rows_do_not_hash_to_its_digest_is_refused_on_receipt(tmp_path: Path) -> None:
    """A sender whose file was damaged (or forged) and announced with the SHA-256 of
    the damaged bytes: the rows are checked before the snapshot reaches the core."""
    one = ReplicaStore(tmp_path / "1.db", MEMBERS)
    fill(one, chat_log(20))
    snap = one.create_snapshot(tmp_path / "snaps")
    with sqlite3.connect(snap.path) as c:
        c.execute("UPDATE messages SET body = 'forged' WHERE id = 10")
    forged = latest_snapshot_unchecked(snap.path)
    rx = SnapshotReceiver(tmp_path / "in", snap.meta, forged.size, forged.sha256, snap.digest)
    for offset, data in chunks(forged, 4096):
        rx.write(offset, data)
    with pytest.raises(SnapshotInvalid, match="hash to"):
        rx.finish()
    assert not list((tmp_path / "in").iterdir())  # (nothing left behind)


def latest_snapshot_unchecked(path: Path) -> SnapshotFile:
    meta, digest = read_snapshot_info(path)
    return SnapshotFile(meta, path, path.stat().st_size, file_sha256(path), digest)


def test_a_chat_state_damaged_on_disk_is_found_when_the_next_snapshot_is_made(tmp_path: Path) -> None:
    """A flipped byte in a message's text that SQLite's own checks cannot see: every
    snapshot hashes every row it copies against the digest kept while applying."""
    one = ReplicaStore(tmp_path / "1.db", MEMBERS)
    fill(one, chat_log(20))
    with sqlite3.connect(tmp_path / "1.db") as c:  # (behind the store's back, as a disk would)
        c.execute("UPDATE messages SET body = 'mess4ge 0007 payload' WHERE id = 8")
    with pytest.raises(StoreCorrupt, match="the chat state is damaged"):
        one.create_snapshot(tmp_path / "snaps")
    assert not list((tmp_path / "snaps").glob("snapshot-*"))  # none made from it


def test_compaction_and_membership(tmp_path: Path) -> None:
    s = ReplicaStore(tmp_path / "r.db", MEMBERS)
    log = chat_log(10)
    grow = Membership(frozenset({1, 2, 3}), frozenset({4}))
    log.append(Entry(13, 1, EntryKind.CONFIG, grow.encode()))
    log.extend(sends(3, start=14))
    fill(s, log)
    with pytest.raises(ValueError, match="only 16 is applied"):
        s.compact(17)
    meta = s.compact(12)
    assert (meta.index, meta.membership) == (12, MEMBERS)
    meta = s.compact(14)
    assert (meta.index, meta.term, meta.membership) == (14, 1, grow)
    p = s.restore()
    assert p.snapshot == meta and [e.index for e in p.entries] == [15, 16]
    snap = s.create_snapshot(tmp_path / "snaps")
    assert snap.meta.index == 16 and snap.meta.membership == grow


def test_a_commit_index_alone_is_stored_too(tmp_path: Path) -> None:
    s = ReplicaStore(tmp_path / "r.db", MEMBERS)
    s.persist(ready(chat_log(1), HardState(1, 1, 0)))
    s.persist(ready((), HardState(1, 1, 3), must_sync=False))  # no fsync: recoverable if lost
    assert s.restore().hard_state == HardState(1, 1, 3)


def test_manual_checkpoints_happen_only_when_asked(tmp_path: Path) -> None:
    """The replica checkpoints the WAL on its I/O thread: a commit never does it."""
    s = ReplicaStore(tmp_path / "c.db", manual_checkpoints=True)
    assert s.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    log = chat_log(300)
    for k in range(0, 300, 2):
        fill(s, log[k:k + 2])
    assert s.checkpoint_due()
    s.checkpoint()
    assert not s.checkpoint_due()
    digest = s.digest()
    s.close()
    assert ReplicaStore(tmp_path / "c.db").digest() == digest
    plain = ReplicaStore(tmp_path / "p.db")
    fill(plain, chat_log(300)[:10])
    assert not plain.checkpoint_due()  # SQLite checkpoints a plain store on its own


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(1, 12), st.integers(0, 8), st.booleans()), min_size=1, max_size=12))
def test_the_log_in_segments_reads_back_as_written(tmp_path: Path, steps: list[tuple[int, int, bool]]) -> None:
    """Writes of any length, cutting back into earlier segments, and compactions
    to any applied index: the log read back is the model's, entry for entry."""
    s = ReplicaStore(Path(tempfile.mkdtemp(dir=tmp_path)) / "r.db", MEMBERS)
    model: list[Entry] = []
    snap = 0
    for term, (count, back, compact) in enumerate(steps, 1):
        start = max(snap + 1, len(model) + 1 - back)  # a new primary rewrites up to `back` entries
        new = [Entry(i, term, EntryKind.COMMAND, b"e%d.%d" % (i, term)) for i in range(start, start + count)]
        s.persist(ready(new, HardState(term, 1, 0)))
        model = model[: start - 1] + new
        if compact and len(model) > snap + 1:
            snap = (snap + len(model)) // 2
            s.conn.execute("UPDATE applied_state SET applied = ?", (snap,))  # as if applied up to it
            assert s.compact(snap).index == snap
        p = s.restore()
        assert list(p.entries) == model[snap:]
        assert s.last_index() == len(model)
    s.close()


def test_a_segment_shorter_than_it_says_stops_the_replica(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    s = ReplicaStore(path, MEMBERS)
    s.persist(ready(chat_log(10), HardState(1, 1, 0)))
    s.close()
    with sqlite3.connect(path) as c:
        c.execute("UPDATE raft_log SET last = last + 1")  # claims an entry it does not hold
    with pytest.raises(StoreCorrupt, match=rf"{path}: raft log entry 13 is missing"):
        ReplicaStore(path).restore()


def test_a_file_in_a_newer_storage_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    ReplicaStore(path, MEMBERS).close()
    with sqlite3.connect(path) as c:
        c.execute("PRAGMA user_version = 4")
    with pytest.raises(StoreCorrupt, match=rf"{path}: written in storage format 4, and this chorus reads format 3"):
        ReplicaStore(path)


def test_a_file_of_format_2_gains_the_session_tables_and_keeps_its_digest(tmp_path: Path) -> None:
    """Format 3 only adds the ended sessions: a file of format 2 (the tables
    dropped, as format 2 had none) opens as format 3 with everything it held."""
    path = tmp_path / "r.db"
    s = ReplicaStore(path, MEMBERS)
    fill(s, chat_log(10))
    digest = s.digest()
    s.close()
    with sqlite3.connect(path) as c:
        c.execute("DROP TABLE session_epochs")
        c.execute("DROP TABLE ended_sessions")
        c.execute("PRAGMA user_version = 2")
    s = ReplicaStore(path)
    assert s.conn.execute("PRAGMA user_version").fetchone() == (3,)
    assert s.digest() == digest == schema.full_digest(s.conn) and s.applied() == 12
    assert s.conn.execute("SELECT COUNT(*) FROM session_epochs").fetchone() == (0,)


def test_a_file_left_empty_by_a_crash_while_it_was_created_is_created_again(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    with sqlite3.connect(path) as c:
        c.execute("PRAGMA journal_mode = WAL")  # what the first start had done when it died
    s = ReplicaStore(path, MEMBERS)
    assert s.conn.execute("PRAGMA user_version").fetchone() == (3,) and s.restore().entries == []


def test_the_digest_other_threads_read_is_never_of_a_batch_half_applied(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = ReplicaStore(tmp_path / "r.db", MEMBERS)
    log = chat_log(20)
    fill(s, log[:10])
    before, seen = s.digest(), []
    real = s.chat.flush

    def flush() -> None:  # inside the apply's transaction, its rows counted in the working digest
        seen.append((s.chat.digest(), s.digest()))
        real()

    monkeypatch.setattr(s.chat, "flush", flush)
    s.apply(log[10:])
    assert seen and all(working != before and published == before for working, published in seen)
    assert s.digest() == schema.full_digest(s.conn) != before  # published with the commit
