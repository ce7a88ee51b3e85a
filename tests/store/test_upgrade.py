"""A replica's file and a snapshot written in storage format 1 (fixtures/, made by
the chorus of that format: see make_format1.py) open in the current format with
everything they held: the log, the chat, the exactly-once answers, the digest."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import msgspec
import pytest

from chorus.chat import queries, schema
from chorus.raft import HardState, Membership, Ready
from chorus.store import ReplicaStore, StoreCorrupt
from chorus.store.snapshots import open_snapshot
from chorus.wire import results as R

from .fixtures import make_format1 as f1

FIXTURES = Path(__file__).parent / "fixtures"
EXPECT = json.loads((FIXTURES / "format1.json").read_text())


def copy(name: str, tmp_path: Path) -> Path:
    shutil.copy(FIXTURES / name, tmp_path / name)
    return tmp_path / name


def test_a_format_1_file_is_upgraded_in_place_with_all_it_held(tmp_path: Path) -> None:
    path = copy("format1.db", tmp_path)
    s = ReplicaStore(path)
    assert s.conn.execute("PRAGMA user_version").fetchone() == (3,)
    p = s.restore()
    assert p.snapshot is not None and p.snapshot.index == f1.COMPACTED
    assert list(p.entries) == f1.entries()[f1.COMPACTED:]  # every entry after the snapshot, as written
    assert p.applied == f1.APPLIED and p.hard_state.commit == f1.APPLIED
    assert f"{s.digest():016x}" == EXPECT["digest"] == f"{schema.full_digest(s.conn):016x}"
    for client, saved in EXPECT["saved"].items():  # the answers a retry would get
        assert s.chat.clients[client].acked == EXPECT["acked"][client]
        assert {str(seq): None if isinstance(r, R.Refused) else msgspec.to_builtins(r)
                for seq, r in s.chat.clients[client].results.items()} == saved
    page = queries.history(s.reader(), s.chat.view, 1, "bob", limit=3)
    assert [m.body for m in page] and all(m.id <= f1.APPLIED for m in page)
    # It goes on from there: the rest of the log applies, and it reopens as format 2.
    s.apply(f1.entries()[f1.APPLIED:])
    digest = s.digest()
    s.close()
    again = ReplicaStore(path)
    assert again.applied() == f1.PERSISTED and again.digest() == digest == schema.full_digest(again.conn)


def test_a_format_1_file_with_a_damaged_entry_is_refused_not_upgraded(tmp_path: Path) -> None:
    path = copy("format1.db", tmp_path)
    with sqlite3.connect(path) as c:
        c.execute("UPDATE raft_log SET data = CAST('x' AS BLOB) WHERE idx = 200")
    with pytest.raises(StoreCorrupt, match=rf"{path}: raft log entry 200 fails its checksum"):
        ReplicaStore(path)
    with sqlite3.connect(path) as c:  # nothing of the upgrade stuck
        assert c.execute("PRAGMA user_version").fetchone() == (0,)
        assert c.execute("SELECT COUNT(*) FROM clients").fetchone() == (6,)


def test_a_snapshot_from_a_format_1_server_installs(tmp_path: Path) -> None:
    snap = open_snapshot(copy("format1-snapshot.db", tmp_path))
    assert snap.meta.index == EXPECT["snapshot_index"] and f"{snap.digest:016x}" == EXPECT["snapshot_digest"]
    s = ReplicaStore(tmp_path / "new.db", Membership())
    s.persist(Ready(hard_state=HardState(2, 0, snap.meta.index), soft_state=None, snapshot=snap.meta, entries=(),
                    messages=(), committed=(), reads=(), membership=None, must_sync=True), snap)
    assert s.digest() == snap.digest == schema.full_digest(s.conn)
    assert s.chat.clients["client4"].results == ReplicaStore(copy("format1.db", tmp_path)).chat.clients[
        "client4"].results
