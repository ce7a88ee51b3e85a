"""The membership changes in a server's log (Raft dissertation §4.1): the latest
one takes effect as soon as it is in the log, committed or not, so a truncation
of the log can take a change back, and the membership in force at an earlier
index must be known (for a snapshot, for a removal not yet committed)."""

from __future__ import annotations

from collections.abc import Iterable

from .messages import Entry, EntryKind, Membership


class History:
    def __init__(self, base: Membership, entries: Iterable[Entry] = ()) -> None:
        """``base``: the membership of the snapshot the log starts after."""
        self.base = base
        self._changes: list[tuple[int, Membership]] = [
            (e.index, Membership.decode(e.data)) for e in entries if e.kind == EntryKind.CONFIG
        ]

    def __repr__(self) -> str:
        changes = ", ".join(f"{i}: {m!r}" for i, m in self._changes)
        return f"History(base={self.base!r}{', ' + changes if changes else ''})"

    @property
    def latest(self) -> Membership:
        return self._changes[-1][1] if self._changes else self.base

    @property
    def latest_index(self) -> int:
        """The index of the latest change in the log (0 if there is none after the snapshot)."""
        return self._changes[-1][0] if self._changes else 0

    def add(self, index: int, membership: Membership) -> None:
        self._changes.append((index, membership))

    def truncate_from(self, first: int) -> bool:
        """The log loses its entries from ``first`` on: forget the changes among
        them. Whether any was forgotten (then ``latest`` is in force again)."""
        changed = False
        while self._changes and self._changes[-1][0] >= first:
            self._changes.pop()
            changed = True
        return changed

    def at(self, index: int) -> Membership:
        """The membership in force at ``index`` (the latest change at or before it)."""
        found = self.base
        for i, m in self._changes:
            if i > index:
                break
            found = m
        return found

    def compact(self, index: int) -> None:
        """The log now starts after a snapshot at ``index``."""
        self.base = self.at(index)
        self._changes = [(i, m) for i, m in self._changes if i > index]

    def restore(self, base: Membership) -> None:
        """The log was replaced by a snapshot of this membership."""
        self.base = base
        self._changes = []
