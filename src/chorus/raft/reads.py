"""Linearizable reads without writing to the log: ReadIndex (Raft dissertation
§6.4; etcd's read_only.go). The primary serves a read at the commit index it
had when the read was asked, once

1. it has committed an entry of its own term (before that it does not know
   the latest commit index: ``need_commit``), and
2. a majority answered a heartbeat round that began after the read was asked
   (it was still the primary then: ``unsent`` until the round is sent, then
   ``pending`` with the round's number, ``ctx``).

The rules are the node's; this holds the queues."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

Read = tuple[int, int]  # (origin server, request id)


class ReadQueue:
    def __init__(self) -> None:
        self.ctx = 0  # the last heartbeat round sent for reads
        self.need_commit: list[Read] = []
        self.unsent: list[tuple[int, int, int]] = []  # (origin, request, index)
        self.pending: deque[tuple[int, int, int, int]] = deque()  # (ctx, origin, request, index)

    def __repr__(self) -> str:
        return (f"ReadQueue(ctx={self.ctx}, need_commit={len(self.need_commit)}, unsent={len(self.unsent)}, "
                f"pending={len(self.pending)})")

    def clear(self) -> None:
        """Leadership is lost (or changes): the reads asked of it are dropped (their
        askers time out and retry). The round counter goes on."""
        self.need_commit.clear()
        self.unsent.clear()
        self.pending.clear()

    def take_need_commit(self) -> list[Read]:
        waiting, self.need_commit = self.need_commit, []
        return waiting

    def start_round(self) -> bool:
        """Number a new heartbeat round for the reads asked since the last one;
        False if there are none."""
        if not self.unsent:
            return False
        self.ctx += 1
        for origin, request, index in self.unsent:
            self.pending.append((self.ctx, origin, request, index))
        self.unsent.clear()
        return True

    def confirmed(self, ctx: int) -> Iterator[tuple[int, int, int]]:
        """The reads of every round up to ``ctx``: (origin, request, index)."""
        pending = self.pending
        while pending and pending[0][0] <= ctx:
            _, origin, request, index = pending.popleft()
            yield origin, request, index
