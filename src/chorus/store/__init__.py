"""Durable storage of one replica: the Raft log, hard state, snapshot metadata and
the chat tables in one SQLite file (WAL), plus snapshot files.

- ``ReplicaStore``: persist a Ready (one fsync), apply committed entries (applied
  index in the same transaction), restore at start, compact, create snapshots;
- ``snapshots``: snapshot files, chunked transfer (``chunks``, ``SnapshotReceiver``);
- ``StoreCorrupt``: the file is damaged and the replica must not start from it;
- ``disk_full``: whether an error is the file system being full (a write that
  may succeed later).
"""

from .replica import ReplicaStore, StoreCorrupt, StoreUnreadable, disk_full, entry_crc
from .snapshots import (
    SnapshotFile,
    SnapshotInvalid,
    SnapshotReceiver,
    chunks,
    latest_snapshot,
    latest_snapshot_path,
)

__all__ = [
    "ReplicaStore",
    "SnapshotFile",
    "SnapshotInvalid",
    "SnapshotReceiver",
    "StoreCorrupt",
    "StoreUnreadable",
    "chunks",
    "disk_full",
    "entry_crc",
    "latest_snapshot",
    "latest_snapshot_path",
]
