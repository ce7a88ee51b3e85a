"""What the consensus core hands its caller: the :class:`Ready` and the state it
carries, and the plan that says in what order the caller acts on it."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from .messages import Entry, Forward, Heartbeat, Membership, Message, Replicate, SnapshotMeta

NONE = 0  # "no server": node ids are positive integers


class Role(enum.Enum):
    PRIMARY = "PRIMARY"
    BACKUP = "BACKUP"
    PRE_CANDIDATE = "PRE_CANDIDATE"  # asking pre-votes (dissertation §9.6): term and vote unchanged
    CANDIDATE = "CANDIDATE"


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be on disk before any message that depends on it is sent."""

    term: int = 0
    vote: int = NONE
    commit: int = 0
    # This node may have lost what it promised (its disk was lost or damaged): it
    # neither votes nor counts towards any quorum until it has caught up (see
    # RaftNode's docstring). Durable, like the vote: a restart does not forget it.
    recovering: bool = False
    # This node's store (a number chosen when the store was made, see ``Probe``),
    # and the highest incarnation it knows of each other voter, as sorted
    # (server_id, incarnation) pairs: what it answered to probes is on disk
    # before the answer leaves.
    incarnation: int = 0
    fenced: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile facts the caller may want to show or act on."""

    role: Role
    primary: int
    term: int


@dataclass(frozen=True, slots=True)
class ReadState:
    """A linearizable read may be served once the local applied index >= ``index``."""

    request_id: int
    index: int


@dataclass(frozen=True, slots=True)
class Ready:
    """What the caller must do, and in what order (Raft Figure 2, "respond to RPCs
    only after updating stable storage"; dissertation §3.8 and §10.2.1):

    1. send ``now``;
    2. persist ``snapshot``, ``entries`` and ``hard_state``, in one atomic write,
       synced to disk if ``must_sync``;
    3. send ``after``;
    4. apply ``committed``, serve ``reads``; then ``advance`` the node.

    The node decides the plan: ``must_sync`` when the write holds a promise to
    peers not yet on disk (entries, a snapshot, a new term, vote, recovery
    state or incarnation; a commit index alone need not be durable). When it
    need not sync, every message may leave at once (what it promises is on
    disk already). Otherwise ``now`` holds FORWARDs (client commands on their
    way to the primary: they promise nothing) and a primary's REPLICATEs and
    HEARTBEATs of a term whose vote for itself is on disk: the primary writes
    its log in parallel with its followers (§10.2.1), which is safe because it
    counts itself towards a commit only once its own write is done
    (``advance``). (A term not yet on disk would be unsafe: a primary that
    crashed before writing it could win the same term again after a restart
    and send other entries under it.) Votes, acknowledgements and answers to
    probes are promises about the disk: ``after``."""

    hard_state: HardState | None
    soft_state: SoftState | None
    snapshot: SnapshotMeta | None
    entries: tuple[Entry, ...]
    messages: tuple[Message, ...]  # all of them, in the order made: ``now`` and ``after``
    committed: tuple[Entry, ...]
    reads: tuple[ReadState, ...]
    membership: Membership | None  # the latest membership in the log, when it changed
    must_sync: bool
    now: tuple[Message, ...] = ()
    after: tuple[Message, ...] = ()

    def __repr__(self) -> str:
        parts = []
        if self.soft_state:
            s = self.soft_state
            parts.append(f"{s.role.value} t{s.term} lead={s.primary}")
        if self.hard_state:
            h = self.hard_state
            extra = (" recovering" if h.recovering else "") + (f" inc={h.incarnation}" if h.incarnation else "")
            parts.append(f"hs(t{h.term} vote={h.vote} commit={h.commit}{extra})")
        if self.snapshot:
            parts.append(f"install {self.snapshot!r}")
        if self.entries:
            parts.append(f"persist {self.entries[0].index}..{self.entries[-1].index}")
        if self.committed:
            parts.append(f"apply {self.committed[0].index}..{self.committed[-1].index}")
        if self.must_sync:
            parts.append("sync")
        if self.now:
            parts.append(f"send {len(self.now)} now")
        if self.after:
            parts.append(f"send {len(self.after)} after")
        if self.reads:
            parts.append("reads " + ",".join(f"{r.request_id}@{r.index}" for r in self.reads))
        if self.membership:
            parts.append(repr(self.membership))
        return "Ready(" + "; ".join(parts) + ")"


@dataclass(frozen=True, slots=True)
class Persisted:
    """What a restarting node gets back from its storage."""

    hard_state: HardState = HardState()
    snapshot: SnapshotMeta | None = None
    entries: Sequence[Entry] = ()  # the entries after the snapshot, in order
    applied: int = 0  # the state machine's applied index


Hard = tuple[int, int, int, bool, int, tuple[tuple[int, int], ...]]  # HardState's fields, in order


def split(node_id: int, messages: tuple[Message, ...], durable: Hard
          ) -> tuple[tuple[Message, ...], tuple[Message, ...]]:
    """(now, after) of a Ready that must be synced (see its docstring):
    ``durable`` is the hard state on disk."""
    now: list[Message] = []
    after: list[Message] = []
    own_term = durable[0] if durable[1] == node_id else -1  # a term of ours, on disk with our vote
    for m in messages:
        t = type(m)
        if t is Forward or ((t is Replicate or t is Heartbeat) and m.term == own_term):
            now.append(m)
        else:
            after.append(m)
    return tuple(now), tuple(after)
