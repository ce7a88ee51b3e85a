"""The in-memory Raft log of one node: a snapshot base followed by entries.

The core keeps the entries since the last snapshot in memory; the caller keeps
them on disk too (the core tells it what to persist) and hands them back on
restart. Entry terms never decrease along a log, which lets term look-ups in
conflict resolution use binary search.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from itertools import accumulate, repeat
from operator import add, attrgetter

from .messages import Entry, Membership, SnapshotMeta

ENTRY_OVERHEAD = 16  # bytes counted per entry on top of its data, for flow control
_term_of = attrgetter("term")
_data_of = attrgetter("data")


def entry_size(e: Entry) -> int:
    return len(e.data) + ENTRY_OVERHEAD


class RaftLog:
    __slots__ = ("_cum", "entries", "last_index", "snapshot")

    def __init__(self, snapshot: SnapshotMeta | None = None) -> None:
        self.snapshot = snapshot or SnapshotMeta(0, 0, Membership())
        self.entries: list[Entry] = []  # (changed only here: ``last_index`` follows them)
        # The index of the last entry (the snapshot's if none): read on every message,
        # so kept up to date by each change rather than computed.
        self.last_index = self.snapshot.index
        # _cum[k] = bytes of entries[0..k] inclusive: byte counts of any range in O(1).
        self._cum: list[int] = []

    def __repr__(self) -> str:
        return f"log(snap={self.snapshot.index}/{self.snapshot.term} last={self.last_index}/{self.last_term})"

    # ---- positions
    @property
    def first_index(self) -> int:
        """Index of the first entry held in memory (the one after the snapshot)."""
        return self.snapshot.index + 1

    @property
    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.snapshot.term

    def term(self, index: int) -> int | None:
        """The term of the entry at ``index``; None if compacted away or beyond the end."""
        k = index - self.snapshot.index
        if k > 0:
            return self.entries[k - 1].term if k <= len(self.entries) else None
        return self.snapshot.term if k == 0 else None

    def match_term(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Raft §5.4.1: is a log ending at (last_index, last_term) at least as
        up to date as this one?"""
        my_term = self.last_term
        return last_term > my_term or (last_term == my_term and last_index >= self.last_index)

    def entry(self, index: int) -> Entry:
        return self.entries[index - self.snapshot.index - 1]

    def slice(self, lo: int, hi: int) -> list[Entry]:
        """Entries lo..hi inclusive (both within first_index..last_index)."""
        base = self.snapshot.index + 1
        return self.entries[lo - base : hi - base + 1]

    def slice_bytes(self, lo: int, max_bytes: int) -> tuple[Entry, ...]:
        """Entries from ``lo`` totalling at most ``max_bytes`` (always at least one)."""
        base = self.snapshot.index + 1
        k = lo - base
        if k >= len(self.entries):
            return ()
        start = self._cum[k - 1] if k > 0 else 0
        end = bisect_right(self._cum, start + max_bytes, k)
        end = max(end, k + 1)
        return tuple(self.entries[k:end])

    def bytes_between(self, lo: int, hi: int) -> int:
        """Total size of entries lo..hi inclusive, for those still in memory."""
        base = self.snapshot.index + 1
        lo_k, hi_k = max(lo - base, 0), min(hi - base, len(self.entries) - 1)
        if hi_k < lo_k:
            return 0
        return self._cum[hi_k] - (self._cum[lo_k - 1] if lo_k > 0 else 0)

    # ---- changes
    def append(self, entries: Sequence[Entry]) -> None:
        """Append contiguous entries that follow the last one directly."""
        if not entries:
            return
        first = self.last_index + 1
        assert entries[0].index == first and entries[-1].index == first + len(entries) - 1, (
            f"append of {entries[0].index}..{entries[-1].index} after {first - 1}"
        )
        cum = self._cum
        sizes = map(add, map(len, map(_data_of, entries)), repeat(ENTRY_OVERHEAD))
        running = accumulate(sizes, initial=cum[-1] if cum else 0)
        next(running)  # (the initial value is already there)
        cum.extend(running)
        self.entries.extend(entries)
        self.last_index = entries[-1].index

    def truncate_after(self, index: int) -> None:
        """Drop every entry after ``index`` (a conflicting suffix)."""
        k = index - self.snapshot.index
        assert k >= 0, "cannot truncate into the snapshot"
        del self.entries[k:]
        del self._cum[k:]
        self.last_index = min(self.last_index, index)

    def find_conflict(self, entries: Sequence[Entry]) -> int:
        """Index of the first of ``entries`` that is not in this log with the same
        term (a conflict or a new entry); 0 if all are already present."""
        last = self.last_index
        for e in entries:
            if e.index > last or self.term(e.index) != e.term:
                return e.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The largest index <= ``index`` whose term is <= ``term``, and that term.
        Terms never decrease along the log, so this is a binary search."""
        index = min(index, self.last_index)
        base = self.snapshot.index
        if index <= base:
            return index, (self.snapshot.term if index == base else 0)
        hi = index - base  # entries[0:hi] are indexes base+1..index
        k = bisect_right(self.entries, term, 0, hi, key=_term_of)
        if k == 0:
            return base, self.snapshot.term
        e = self.entries[k - 1]
        return e.index, e.term

    def compact(self, snapshot: SnapshotMeta) -> None:
        """Forget entries up to ``snapshot.index`` (which must be in this log)."""
        k = snapshot.index - self.snapshot.index
        assert 0 < k <= len(self.entries), "compaction point must be a held entry"
        assert self.entries[k - 1].term == snapshot.term
        drop = self._cum[k - 1]
        del self.entries[:k]
        self._cum = [c - drop for c in self._cum[k:]]
        self.snapshot = snapshot

    def restore(self, snapshot: SnapshotMeta) -> None:
        """Replace everything with a received snapshot."""
        self.snapshot = snapshot
        self.entries = []
        self.last_index = snapshot.index
        self._cum = []
