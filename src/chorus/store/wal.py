"""A look at a SQLite WAL file before SQLite opens it.

When SQLite opens a database it replays the WAL up to the first frame whose
checksum fails, and silently drops everything after it (sqlite.org/walformat.html,
"the WAL ends at the first frame that fails its checksum"). A torn last write
ends the WAL that way, harmlessly: that transaction was never finished, so never
acknowledged. But a flipped bit in the middle drops every transaction after it,
fsynced and acknowledged as they were, and the replica starts without them as if
nothing happened.

``damage`` tells the two apart: frames that carry this WAL's salts after the
first frame that fails its checksum were written after it, in the same WAL, so
the failure is damage, not a torn tail. (A flip in the very last frame cannot be
told from a torn write this way; the peers notice that loss instead: a primary's
heartbeat then names a commit index beyond the log, see raft/node.py. The other
way round, a crash while a transaction was being written may leave one of its
frames unwritten and its commit frame written: taken for damage, the replica
rebuilds from its peers, which costs time and loses nothing.)
"""

from __future__ import annotations

import struct
from pathlib import Path

_HEADER = struct.Struct(">IIIIIIII")  # magic, version, page size, checkpoint seq, salt1, salt2, cksum1, cksum2
_FRAME = struct.Struct(">IIIIII")  # page, db size after commit (0: not a commit), salt1, salt2, cksum1, cksum2
_MAGIC_LE, _MAGIC_BE = 0x377F0682, 0x377F0683
_MASK = 0xFFFFFFFF


def _checksum(data: bytes | memoryview, s0: int, s1: int, little: bool) -> tuple[int, int]:
    """SQLite's WAL checksum over ``data`` (a multiple of 8 bytes), from (s0, s1)."""
    for x0, x1 in struct.iter_unpack("<II" if little else ">II", data):
        s0 = (s0 + x0 + s1) & _MASK
        s1 = (s1 + x1 + s0) & _MASK
    return s0, s1


def damage(path: Path) -> str | None:
    """What is wrong with the WAL at ``path`` that SQLite would hide, or None."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    if len(data) < _HEADER.size:
        return None  # (empty, or a header never written: nothing in it)
    magic, _version, page_size, _seq, salt1, salt2, c1, c2 = _HEADER.unpack_from(data)
    if magic not in (_MAGIC_LE, _MAGIC_BE) or not 512 <= page_size <= 65536 or page_size & (page_size - 1):
        return f"{path}: its header is damaged"
    little = magic == _MAGIC_LE
    s0, s1 = _checksum(memoryview(data)[:24], 0, 0, little)
    if (s0, s1) != (c1, c2):
        return f"{path}: its header fails its checksum"
    size = _FRAME.size + page_size
    bad = None  # the first frame that is not a valid continuation: the end of the WAL for SQLite
    n = (len(data) - _HEADER.size) // size
    for k in range(n):
        off = _HEADER.size + k * size
        _page, commit, f1, f2, k1, k2 = _FRAME.unpack_from(data, off)
        if bad is not None:
            # A later commit of the same WAL (salts are new at every reset of the WAL,
            # so an older WAL's frames never carry them): written after the frame
            # that fails, so that frame was damaged, not torn.
            if (f1, f2) == (salt1, salt2) and commit:
                return (f"{path}: frame {bad + 1} of {n} is damaged, and a commit in frame {k + 1} after it is "
                        "of the same WAL: SQLite would drop every transaction from there on")
            continue
        if (f1, f2) != (salt1, salt2):
            bad = k  # (an older WAL's frame, or a damaged header)
            continue
        t0, t1 = _checksum(memoryview(data)[off : off + 8], s0, s1, little)
        t0, t1 = _checksum(memoryview(data)[off + _FRAME.size : off + size], t0, t1, little)
        if (t0, t1) != (k1, k2):
            bad = k
            continue
        s0, s1 = t0, t1
    return None
