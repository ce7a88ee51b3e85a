"""The WAL check that runs before SQLite opens a replica's database (store/wal.py).

SQLite replays a WAL up to the first frame that fails its checksum and silently
drops the rest; these tests damage WAL files byte by byte, as a disk would, and
check that damage in the middle is named while a torn tail is not."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from chorus.store import wal

PAGE = 4096
HEADER, FRAME = 32, 24


def _wal_copy(tmp_path: Path, transactions: int = 20) -> tuple[Path, Path]:
    """A database and its WAL holding ``transactions`` commits, copied while the
    writer still has them open (closing would checkpoint and delete the WAL)."""
    src = tmp_path / "src"
    src.mkdir()
    conn = sqlite3.connect(src / "x.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
    for k in range(transactions):
        conn.execute("INSERT INTO t VALUES (?, ?)", (k, bytes([k % 251]) * 3000))
    dst = tmp_path / "copy"
    dst.mkdir()
    shutil.copy(src / "x.db", dst / "x.db")
    shutil.copy(src / "x.db-wal", dst / "x.db-wal")
    conn.close()
    return dst / "x.db", dst / "x.db-wal"


def _rows(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT COUNT(*) FROM t").fetchone()[0]
    finally:
        conn.close()


def _frames(w: Path) -> int:
    return (w.stat().st_size - HEADER) // (FRAME + PAGE)


def _flip(w: Path, offset: int, count: int = 200) -> None:
    data = bytearray(w.read_bytes())
    for i in range(offset, offset + count):
        data[i] ^= 0xA5
    w.write_bytes(bytes(data))


def test_an_intact_wal_passes(tmp_path: Path) -> None:
    db, w = _wal_copy(tmp_path)
    assert wal.damage(w) is None
    assert _rows(db) == 20


def test_a_torn_last_frame_is_an_unfinished_write_not_damage(tmp_path: Path) -> None:
    db, w = _wal_copy(tmp_path)
    with open(w, "r+b") as f:
        f.truncate(w.stat().st_size - PAGE // 2)
    assert wal.damage(w) is None
    assert _rows(db) == 19  # (that transaction was never finished)


def test_flipped_bytes_in_a_middle_frame_are_named(tmp_path: Path) -> None:
    db, w = _wal_copy(tmp_path)
    n = _frames(w)
    _flip(w, HEADER + (n // 2) * (FRAME + PAGE) + FRAME + 1000)  # in its page
    problem = wal.damage(w)
    assert problem is not None and "SQLite would drop" in problem and str(w) in problem
    assert _rows(db) < 20  # what SQLite alone would have done: silently fewer


def test_a_damaged_frame_header_in_the_middle_is_named_too(tmp_path: Path) -> None:
    """Its salts damaged: SQLite takes the frame for the end of the WAL."""
    db, w = _wal_copy(tmp_path)
    n = _frames(w)
    _flip(w, HEADER + (n // 2) * (FRAME + PAGE) + 8, count=8)  # salt-1, salt-2 of that frame
    assert wal.damage(w) is not None
    assert _rows(db) < 20


def test_a_damaged_wal_header_is_named(tmp_path: Path) -> None:
    _db, w = _wal_copy(tmp_path)
    _flip(w, 16, count=4)
    assert "header" in (wal.damage(w) or "")
