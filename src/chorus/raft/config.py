"""Settings of the consensus core. Time is counted in ticks; the caller decides how
long a tick lasts (``tick_ms``) and calls ``tick()`` that often."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RaftConfig:
    tick_ms: int = 50
    # Raft §5.2: each server waits a random time in this range before campaigning.
    election_timeout_ms: tuple[int, int] = (1500, 3000)
    # Heartbeats must come well inside the shortest election timeout.
    heartbeat_ms: int = 150
    # Raft dissertation §9.6: ask for (pre-)votes before bumping the term, so a node
    # that was cut off cannot depose a healthy primary when it comes back.
    pre_vote: bool = True
    # Raft dissertation §6.2: a primary that has not heard from a majority for an
    # election timeout steps down; backups that hear from a primary ignore votes.
    check_quorum: bool = True
    # Replication flow control, per follower.
    max_msg_bytes: int = 256 * 1024  # entry bytes in one REPLICATE (at least one entry)
    max_inflight_msgs: int = 256  # REPLICATEs sent and not yet acknowledged
    max_inflight_bytes: int = 8 * 1024 * 1024  # entry bytes sent and not yet acknowledged
    # Proposals are refused ("busy") while this many bytes are appended but not committed.
    max_uncommitted_bytes: int = 64 * 1024 * 1024
    # A learner may be promoted when it is at most this many entries behind the primary.
    promote_max_lag: int = 1000
    # A snapshot not acknowledged within this long is sent again. The transport
    # normally reports failure first (report_snapshot); this is the backstop.
    snapshot_timeout_ms: int = 30_000

    def __post_init__(self) -> None:
        lo, hi = self.election_timeout_ms
        if self.tick_ms <= 0:
            raise ValueError("tick_ms must be positive")
        if not 0 < lo <= hi:
            raise ValueError("election_timeout_ms must be (min, max) with 0 < min <= max")
        if not 0 < self.heartbeat_ms * 2 <= lo:
            raise ValueError("heartbeat_ms must be at most half the shortest election timeout")
        if self.election_ticks_min < 2 or self.heartbeat_ticks < 1:
            raise ValueError("tick_ms is too coarse for these timeouts")
        if self.max_msg_bytes <= 0 or self.max_inflight_msgs <= 0 or self.max_inflight_bytes <= 0:
            raise ValueError("flow-control limits must be positive")

    @property
    def election_ticks_min(self) -> int:
        return self.election_timeout_ms[0] // self.tick_ms

    @property
    def election_ticks_max(self) -> int:
        return max(self.election_timeout_ms[1] // self.tick_ms, self.election_ticks_min)

    @property
    def snapshot_timeout_ticks(self) -> int:
        return max(1, self.snapshot_timeout_ms // self.tick_ms)

    @property
    def heartbeat_ticks(self) -> int:
        return max(1, self.heartbeat_ms // self.tick_ms)


# Election timeouts of 150-300 ms for a LAN or one machine (the benchmark's fast profile).
FAST = RaftConfig(tick_ms=10, election_timeout_ms=(150, 300), heartbeat_ms=30)
