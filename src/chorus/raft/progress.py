"""What the primary knows of each follower's log, and the flow control of
replication to it (after etcd-io/raft's tracker package).

A follower is in one of three states:
- PROBE: the primary does not know where the logs diverge; it sends one REPLICATE
  at a time and waits for the answer (or the next heartbeat answer).
- REPLICATE: the logs are known to match up to ``match``; the primary streams
  batches without waiting (pipelining), bounded by messages and bytes in flight.
- SNAPSHOT: the follower needs entries that were compacted away; a snapshot is
  on its way and nothing else is sent until it is acknowledged.
"""

from __future__ import annotations

import enum
from collections import deque


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Progress:
    __slots__ = (
        "acked_ctx",
        "inflight",
        "inflight_bytes",
        "is_learner",
        "match",
        "next",
        "pending_snapshot",
        "probe_sent",
        "recent_active",
        "recovering",
        "sent_commit",
        "snapshot_ticks",
        "state",
    )

    def __init__(self, next_index: int, *, is_learner: bool = False) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.pending_snapshot = 0
        self.snapshot_ticks = 0
        self.inflight: deque[tuple[int, int]] = deque()  # (last index, bytes) per message
        self.inflight_bytes = 0
        self.recent_active = False
        self.is_learner = is_learner
        self.acked_ctx = 0  # highest ReadIndex context this follower confirmed
        self.sent_commit = 0  # highest commit index sent to it
        # It may have lost what it promised: its acknowledgements do not count. Until
        # it has said otherwise (every acknowledgement says), assume it might have.
        self.recovering = True

    def __repr__(self) -> str:
        extra = f" snap={self.pending_snapshot}" if self.state is ProgressState.SNAPSHOT else ""
        return (
            f"{self.state.value} match={self.match} next={self.next}"
            f" inflight={len(self.inflight)}{extra}{' learner' if self.is_learner else ''}"
            f"{' recovering' if self.recovering else ''}"
        )

    def _reset(self, state: ProgressState) -> None:
        self.state = state
        self.probe_sent = False
        self.pending_snapshot = 0
        self.snapshot_ticks = 0
        self.inflight.clear()
        self.inflight_bytes = 0

    def become_probe(self) -> None:
        # Coming back from a snapshot, resume right after it (etcd: BecomeProbe).
        if self.state is ProgressState.SNAPSHOT:
            pending = self.pending_snapshot
            self._reset(ProgressState.PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset(ProgressState.PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        self._reset(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, index: int) -> None:
        self._reset(ProgressState.SNAPSHOT)
        self.pending_snapshot = index

    def is_paused(self, max_msgs: int, max_bytes: int) -> bool:
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return len(self.inflight) >= max_msgs or self.inflight_bytes >= max_bytes
        return True

    def sent(self, last_index: int, nbytes: int) -> None:
        """A REPLICATE carrying entries up to ``last_index`` left for this follower."""
        if self.state is ProgressState.REPLICATE:
            self.next = last_index + 1
            self.inflight.append((last_index, nbytes))
            self.inflight_bytes += nbytes
        elif self.state is ProgressState.PROBE:
            self.probe_sent = True

    def maybe_update(self, index: int) -> bool:
        """An acknowledgement up to ``index`` arrived; True if it was news."""
        updated = index > self.match
        if updated:
            self.match = index
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        inflight = self.inflight
        while inflight and inflight[0][0] <= index:
            self.inflight_bytes -= inflight.popleft()[1]
        return updated

    def maybe_decrease_to(self, rejected: int, match_hint: int) -> bool:
        """A rejection of the entry at ``rejected``; True unless it is stale.
        ``match_hint`` is the highest index that may match, from the term hints."""
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False  # stale: we already know the logs match beyond it
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False  # stale: not the probe we are waiting for
        self.next = max(min(rejected, match_hint + 1), self.match + 1, 1)
        self.probe_sent = False
        return True
