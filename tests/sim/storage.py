"""What a simulated node keeps on disk: everything that survives kill -9.

It follows the contract of the real store: one Ready is persisted atomically,
applying entries and recording the applied index happen together, and a snapshot
is a copy of the applied state. The replicated "application" is a running CRC of
the commands applied plus their count: two replicas with equal states applied the
same commands in the same order.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from chorus.raft import Entry, EntryKind, HardState, Persisted, Ready, SnapshotMeta


@dataclass(frozen=True, slots=True)
class AppState:
    crc: int = 0
    count: int = 0

    def apply(self, data: bytes) -> AppState:
        return AppState(zlib.crc32(data, self.crc), self.count + 1)


class SimStorage:
    def __init__(self) -> None:
        self.hard_state = HardState()
        self.snapshot: SnapshotMeta | None = None
        self.snapshot_state = AppState()
        self.entries: list[Entry] = []  # the entries after the snapshot
        self.state = AppState()  # the applied state
        self.applied = 0

    @property
    def base(self) -> int:
        return self.snapshot.index if self.snapshot else 0

    @property
    def last_index(self) -> int:
        return self.base + len(self.entries)

    def term(self, index: int) -> int | None:
        k = index - self.base
        if k == 0:
            return self.snapshot.term if self.snapshot else 0
        if 0 < k <= len(self.entries):
            return self.entries[k - 1].term
        return None

    def persist(self, rd: Ready, snapshot_state: AppState | None) -> None:
        """Step 1 of the replica loop, atomically: snapshot, entries, hard state."""
        if rd.snapshot is not None:
            assert snapshot_state is not None, "a snapshot to install arrived without its data"
            self.snapshot = rd.snapshot
            self.snapshot_state = snapshot_state
            self.entries = []
            self.state = snapshot_state
            self.applied = rd.snapshot.index
        if rd.entries:
            k = rd.entries[0].index - self.base - 1
            assert 0 <= k <= len(self.entries), "entries to persist leave a gap"
            del self.entries[k:]
            self.entries.extend(rd.entries)
        if rd.hard_state is not None:
            self.hard_state = rd.hard_state

    def apply(self, e: Entry) -> None:
        assert e.index == self.applied + 1, f"apply {e.index} after {self.applied}"
        if e.kind == EntryKind.COMMAND:
            self.state = self.state.apply(e.data)
        self.applied = e.index

    def compact(self, meta: SnapshotMeta) -> None:
        """A snapshot of the applied state at ``meta.index`` (== applied)."""
        assert meta.index == self.applied
        k = meta.index - self.base
        del self.entries[:k]
        self.snapshot = meta
        self.snapshot_state = self.state

    def restore(self) -> Persisted:
        return Persisted(self.hard_state, self.snapshot, tuple(self.entries), self.applied)
