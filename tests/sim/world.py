"""A deterministic simulation of a chorus cluster's consensus, driven by one seed.

One seed decides everything (after TigerBeetle's VOPR): the cluster size, how
lossy, slow, duplicating and reordering the network is, each node's clock rate,
how slow its disk is, and a schedule of faults: crashes and restarts (including
a crash after persisting and before sending), partitions (symmetric, one-way, a
bridge node that sees both sides), membership changes, snapshots, leadership
transfers and lying peers, with clients proposing and reading all along.

Safety is checked after every event; then everything is healed and the cluster
must elect a primary, commit a new proposal and converge within a bound of
simulated time. A failure names its seed; ``make sim SEED=n`` replays it with a
trace of every event.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec

from chorus.raft import (
    MAX_NUMBER,
    Entry,
    EntryKind,
    HardState,
    Heartbeat,
    HeartbeatAck,
    InstallSnapshot,
    Member,
    Membership,
    Message,
    MessageError,
    ProbeResp,
    RaftConfig,
    RaftNode,
    Ready,
    Refused,
    Replicate,
    ReplicateAck,
    RequestVote,
    Role,
    SnapshotMeta,
    VoteResponse,
)
from chorus.server.admin import promote_caught_up

from .storage import AppState, SimStorage


def _port(now: int) -> int:
    """A port number that differs from one move to the next."""
    return 1 + now % 65000

MS = 1_000  # the simulation counts microseconds
SEC = 1_000_000

# Event kinds.
TICK, DELIVER, IO_DONE, CLIENT, NEMESIS, RESTART, LIVENESS_PROBE, REPORT_SNAPSHOT = range(8)


FAULTS = ("crash", "restart", "partition", "heal", "snapshot", "membership", "transfer", "lie", "clock", "diskfull",
          "lostdisk")


class SimFailure(AssertionError):
    """A safety or liveness property was violated."""


@dataclass
class Params:
    """Everything about a run that the seed decides."""

    nodes: int
    loss: float
    dup: float
    delay_us: tuple[int, int]
    spike: float  # chance that a message is held back for up to a second (reordering)
    disk_us: tuple[int, int]
    rates: dict[int, float]  # clock rate per node
    safety_us: int
    fault_gap_us: int
    client_gap_us: int
    crash_in_io: float  # chance, per persisted Ready, of a crash before its messages leave
    faults: dict[str, int]  # relative weight of each kind of fault in this run
    compact_every: int  # a node snapshots when this many entries follow its last snapshot (0: never)
    config: RaftConfig = field(default_factory=RaftConfig)

    @classmethod
    def from_seed(cls, seed: int) -> Params:
        r = random.Random(seed)
        nodes = r.choice((3, 3, 5, 5, 5))
        lo = r.choice((100, 500, 2 * MS))
        return cls(
            nodes=nodes,
            loss=r.choice((0.0, 0.01, 0.05, 0.1, 0.2, 0.3)),
            dup=r.choice((0.0, 0.0, 0.02, 0.1)),
            delay_us=(lo, lo + r.choice((1, 5, 20, 60)) * MS),
            spike=r.choice((0.0, 0.001, 0.01)),
            disk_us=(0, r.choice((100, 2 * MS, 10 * MS))),
            rates={i: r.uniform(0.7, 1.3) for i in range(1, 16)},
            safety_us=r.randint(6, 20) * SEC,
            fault_gap_us=r.choice((200, 700, 1500, 3000)) * MS,
            client_gap_us=r.choice((5, 20, 80)) * MS,
            crash_in_io=r.choice((0.0, 0.0005, 0.003)),
            faults={kind: r.choice((0, 1, 2, 4)) for kind in FAULTS},
            compact_every=r.choice((0, 10, 50, 200)),
            config=_flow_control(r),
        )

    def __str__(self) -> str:
        return (
            f"nodes={self.nodes} loss={self.loss} dup={self.dup} delay={self.delay_us[0]}-{self.delay_us[1]}us "
            f"spike={self.spike} disk<={self.disk_us[1]}us safety={self.safety_us / SEC:.0f}s "
            f"fault_gap={self.fault_gap_us / MS:.0f}ms client_gap={self.client_gap_us / MS:.0f}ms "
            f"crash_in_io={self.crash_in_io} compact_every={self.compact_every} "
            f"msg_bytes={self.config.max_msg_bytes} inflight={self.config.max_inflight_msgs}/"
            f"{self.config.max_inflight_bytes}B faults="
            + ",".join(f"{k}:{w}" for k, w in self.faults.items() if w)
        )


def _flow_control(r: random.Random) -> RaftConfig:
    """Flow control from one entry per message and one message in flight to the
    defaults. A primary that replicates slowly must also refuse ("busy") early,
    or the backlog outgrows any liveness bound, as it would in production."""
    msg_bytes = r.choice((1, 64, 256 * 1024))
    inflight = r.choice((1, 4, 256))
    slow = msg_bytes == 1 or inflight == 1
    return RaftConfig(
        max_msg_bytes=msg_bytes,
        max_inflight_msgs=inflight,
        max_inflight_bytes=r.choice((64, 8 * 1024 * 1024)),
        max_uncommitted_bytes=2048 if slow else r.choice((8192, 64 * 1024 * 1024)),
        snapshot_timeout_ms=r.choice((3000, 10_000)),  # within the liveness bound
    )


class SimNode:
    def __init__(self, node_id: int, bootstrap: Membership, rate: float) -> None:
        self.id = node_id
        self.bootstrap = bootstrap
        self.storage = SimStorage()
        self.raft: RaftNode | None = None
        self.gen = 0  # incarnation: events scheduled for an earlier one are void
        self.tick_us = 0
        self.rate = rate
        self.outstanding: Ready | None = None
        self.late: list[Message] | None = None  # with early sends: what waits for the disk
        self.incoming: dict[int, AppState] = {}  # snapshot states received, by index
        self.seen_commit = 0
        self.primary_checked = 0  # the last term in which we checked it as a new primary
        self.retired = False
        self.reads: list[tuple[int, int]] = []  # (request id, index) awaiting apply
        self.proposals: dict[bytes, int] = {}  # data -> client op id, proposed through this node
        self.disk_full_until = 0  # a full disk: the outstanding Ready is written only from then on
        self.lost_disk = False  # restarts empty, knowing the cluster exists: recovering
        self.last_voters: frozenset[int] = frozenset()  # the voters it knew of when it went down

    @property
    def up(self) -> bool:
        return self.raft is not None


@dataclass
class ClientOp:
    op_id: int
    kind: str  # "write" or "read"
    node: int
    start: int
    data: bytes = b""
    acked_at: int = -1
    index: int = 0
    floor: int = 0  # reads: the highest acknowledged write index when the read began


class World:
    empty_disk_votes = False  # a mutant (test_checker.py): a server back with an empty disk votes at once

    def __init__(self, seed: int, *, trace: Callable[[str], None] | None = None, early_send: bool = False) -> None:
        """``early_send``: drive the nodes as the real replica does, sending a
        Ready's ``now`` before it is persisted and its ``after`` once it is (the
        crash windows then fall after the first ones left). Without it, every
        message waits for the write (the core's rules alone, without the
        overlap)."""
        self.early_send = early_send
        self.seed = seed
        self.p = Params.from_seed(seed)
        self.rng = random.Random(seed * 7919 + 1)
        self.trace_fn = trace
        self.now = 0
        self._seq = 0
        self.queue: list[tuple[int, int, int, object, object]] = []
        members = frozenset(range(1, self.p.nodes + 1))
        self.nodes: dict[int, SimNode] = {
            i: SimNode(i, Membership(voters=members), self.p.rates[i]) for i in members
        }
        self.blocked: set[tuple[int, int]] = set()  # (from, to) pairs that cannot talk
        self.loss = self.p.loss
        self.dup = self.p.dup
        self.healed = False
        # The checker's global knowledge.
        self.primaries: dict[int, int] = {}  # term -> the one primary of that term
        self.committed: dict[int, int] = {}  # index -> term of the entry committed there
        self.applied: dict[int, tuple[int, int, bytes]] = {}  # index -> (term, kind, data) applied there
        self.log_facts: dict[tuple[int, int], tuple[int, bytes, int]] = {}  # (index, term) -> (kind, data, prev term)
        self.incarnations = 0  # the last store made (the first stores are all 0)
        self.votes: dict[tuple[int, int], int] = {}  # (node, term) -> vote cast, as persisted
        # (node, term) -> the candidate it granted a vote to, as sent: never forgotten,
        # not even when the node's disk is (two grants in a term elect two primaries).
        self.ballots: dict[tuple[int, int], int] = {}
        self.ops: list[ClientOp] = []
        self.max_acked_index = 0
        self.removals: list[tuple[int, int, int]] = []  # (config index, term, removed node)
        self.next_node_id = self.p.nodes + 1
        self.stats = {"delivered": 0, "dropped": 0, "crashes": 0, "elections": 0, "bad_input": 0,
                      "reads": 0, "acked": 0, "snapshots_sent": 0, "changes": 0, "transfers": 0,
                      "disk_full": 0, "disk_full_retries": 0, "lost_disks": 0, "waits_for_recovering": 0}
        for node in self.nodes.values():
            self._start(node)

    # ------------------------------------------------------------------ plumbing
    def trace(self, text: str) -> None:
        if self.trace_fn is not None:
            self.trace_fn(f"[{self.now / SEC:9.6f}] {text}")

    def fail(self, text: str) -> None:
        raise SimFailure(f"seed {self.seed} at {self.now / SEC:.6f}s: {text}")

    def schedule(self, delay: int, kind: int, a: object = None, b: object = None) -> None:
        self._seq += 1
        heapq.heappush(self.queue, (self.now + delay, self._seq, kind, a, b))

    def _start(self, node: SimNode) -> None:
        node.gen += 1
        node.raft = RaftNode(
            node.id,
            node.bootstrap,
            config=self.p.config,
            rng=random.Random(self.rng.getrandbits(64)),
            persisted=node.storage.restore(),
        )
        node.lost_disk = False
        node.seen_commit = node.raft.commit
        node.tick_us = int(self.p.config.tick_ms * MS * node.rate)
        node.outstanding = None
        node.late = None
        node.incoming.clear()
        node.reads.clear()
        self.schedule(self.rng.randrange(node.tick_us), TICK, node.id, node.gen)
        self.trace(f"n{node.id} starts: {node.raft!r}")

    def crash(self, node: SimNode, why: str) -> None:
        if not node.up:
            return
        self.trace(f"n{node.id} CRASH ({why})")
        self.stats["crashes"] += 1
        node.last_voters = node.raft.membership.voters  # type: ignore[union-attr]
        node.raft = None
        node.gen += 1
        node.outstanding = None
        node.late = None
        node.proposals.clear()

    # ------------------------------------------------------------------ the run
    def run(self) -> dict[str, int]:
        self.trace(f"seed {self.seed}: {self.p}")
        self.schedule(self.p.client_gap_us, CLIENT)
        self.schedule(self.p.fault_gap_us, NEMESIS)
        self._run_until(self.p.safety_us)
        self.heal()
        self.liveness()
        return self.stats

    def _run_until(self, t_end: int, done: Callable[[], bool] | None = None) -> bool:
        q = self.queue
        while q and q[0][0] <= t_end:
            t, _, kind, a, b = heapq.heappop(q)
            self.now = t
            self._dispatch(kind, a, b)
            if done is not None and done():
                return True
        self.now = max(self.now, t_end)
        return done() if done is not None else True

    def _dispatch(self, kind: int, a: object, b: object) -> None:
        if kind == TICK:
            node = self.nodes[a]  # type: ignore[index]
            if node.gen != b or node.raft is None:
                return
            node.raft.tick()
            if node.raft.membership.promoting:  # (the replica's rule, on its tick)
                promote_caught_up(node.raft, node.raft.cfg.promote_max_lag)
            self._after(node)
            self.schedule(node.tick_us, TICK, a, b)
        elif kind == DELIVER:
            self._deliver(a, b)  # type: ignore[arg-type]
        elif kind == IO_DONE:
            node = self.nodes[a]  # type: ignore[index]
            if node.gen == b and node.raft is not None:
                self._io_done(node)
        elif kind == CLIENT:
            if not self.healed:
                self._client_op()
                self.schedule(self.rng.randint(1, 2 * self.p.client_gap_us), CLIENT)
        elif kind == NEMESIS:
            if not self.healed:
                self._nemesis()
                self.schedule(self.rng.randint(1, 2 * self.p.fault_gap_us), NEMESIS)
        elif kind == RESTART:
            node = self.nodes[a]  # type: ignore[index]
            if not node.up and not node.retired and node.gen == b:
                self._start(node)
        elif kind == LIVENESS_PROBE:
            self._liveness_probe()
        elif kind == REPORT_SNAPSHOT:
            node = self.nodes[a.server_id]  # type: ignore[attr-defined]
            if node.raft is not None:
                node.raft.report_snapshot(a.to, ok=False)  # type: ignore[attr-defined]
                self._after(node)

    # ------------------------------------------------------------------ network
    def send(self, m: Message, attachment: object = None) -> None:
        if self.rng.random() < self.loss:
            self.stats["dropped"] += 1
            if type(m) is InstallSnapshot and self.rng.random() < 0.5:
                # A snapshot travels as a stream: its sender sees it break.
                self.schedule(self.rng.randint(MS, 100 * MS), REPORT_SNAPSHOT, m, None)
            return
        copies = 2 if self.rng.random() < self.dup else 1
        lo, hi = self.p.delay_us
        for _ in range(copies):
            delay = self.rng.randint(lo, hi)
            if self.p.spike and self.rng.random() < self.p.spike:
                delay += self.rng.randint(0, SEC)
            self.schedule(delay, DELIVER, m, attachment)

    def _deliver(self, m: Message, attachment: object) -> None:
        node = self.nodes.get(m.to)
        if node is None or node.raft is None or (m.server_id, m.to) in self.blocked:
            self.stats["dropped"] += 1
            return
        self.stats["delivered"] += 1
        if self.trace_fn is not None:
            self.trace(f"n{m.to} <- {m!r}")
        if type(m) is InstallSnapshot:
            node.incoming[m.snapshot.index] = attachment  # type: ignore[assignment]
        try:
            node.raft.step(m)
        except MessageError as exc:
            self.fail(f"n{node.id} rejected an honest message {m!r}: {exc}")
        self._after(node)

    # ------------------------------------------------------------------ the replica loop
    def _after(self, node: SimNode) -> None:
        """Check what an input changed, then hand the node's Ready to its disk."""
        raft = node.raft
        assert raft is not None
        self._check_node(node)  # may retire (stop) the node
        if node.raft is raft and node.outstanding is None and raft.has_ready():
            rd = node.outstanding = raft.ready()
            self._check_plan(node, rd)
            if self.early_send:
                # As the replica loop does: the Ready's plan, ``now`` before the write.
                now, after = self.plan(rd)
                node.late = list(after)
                for m in now:
                    self._send_from(node, m)
            lo, hi = self.p.disk_us
            self.schedule(self.rng.randint(lo, hi), IO_DONE, node.id, node.gen)

    def _io_done(self, node: SimNode) -> None:
        raft, rd, st = node.raft, node.outstanding, node.storage
        assert raft is not None and rd is not None
        if node.disk_full_until > self.now:
            # As the replica loop does with a full disk: the write fails, nothing of
            # the Ready is done, and it is tried again later (the node keeps stepping).
            self.stats["disk_full_retries"] += 1
            self.schedule(min(node.disk_full_until - self.now, SEC), IO_DONE, node.id, node.gen)
            return
        if not self.healed and self.rng.random() < self.p.crash_in_io / 2:
            # A crash while the Ready is written, before its fsync returned: none of it
            # is on disk (SQLite rolls a torn transaction back), what left early is out.
            self.crash(node, "while writing, before the fsync returned: nothing of this Ready is on disk")
            self._schedule_restart(node)
            return
        if self.trace_fn is not None:
            self.trace(f"n{node.id} {rd!r}")
        # 1. persist (atomically), checking what gets written.
        snap_state = node.incoming.pop(rd.snapshot.index, None) if rd.snapshot else None
        old_commit, old_applied = st.hard_state.commit, st.applied
        st.persist(rd, snap_state)
        if st.hard_state.commit < old_commit or st.applied < old_applied:
            self.fail(f"n{node.id} persisted commit/applied went backwards")
        if rd.snapshot is not None:
            self._check_snapshot_install(node)
        self._check_persisted(node, rd)
        if not self.healed and self.rng.random() < self.p.crash_in_io:  # (no faults once healed)
            self.crash(node, "after persisting, before sending")
            self._schedule_restart(node)
            return
        # 2. send, checking that every promise made is on disk.
        for m in rd.messages if node.late is None else node.late:
            self._send_from(node, m)
        # 3. apply.
        for e in rd.committed:
            self._check_apply(node, e)
            st.apply(e)
            if e.kind == EntryKind.COMMAND and e.data in node.proposals:
                self._ack_write(node.proposals.pop(e.data), e.index)
        node.reads.extend((r.request_id, r.index) for r in rd.reads)
        if node.reads:
            self._serve_reads(node)
        if not self.healed and self.rng.random() < self.p.crash_in_io / 2:
            self.crash(node, "after applying, before advance")
            self._schedule_restart(node)
            return
        # 4. advance.
        raft.advance(rd)
        node.outstanding = None
        node.late = None
        if raft.applied != st.applied:
            self.fail(f"n{node.id} core applied={raft.applied} but storage applied={st.applied}")
        every = self.p.compact_every
        if every and st.applied - st.base >= every:
            self._snapshot(node)
        self._after(node)

    def _schedule_restart(self, node: SimNode) -> None:
        self.schedule(self.rng.randint(10 * MS, 3 * SEC), RESTART, node.id, node.gen)

    # ------------------------------------------------------------------ checks
    def _check_node(self, node: SimNode) -> None:
        raft = node.raft
        assert raft is not None
        if raft.role is Role.PRIMARY:
            holder = self.primaries.setdefault(raft.term, node.id)
            if holder != node.id:
                self.fail(f"two primaries in term {raft.term}: n{holder} and n{node.id}")
            if node.primary_checked != raft.term:
                node.primary_checked = raft.term
                self.stats["elections"] += 1
                self.trace(f"n{node.id} is PRIMARY of term {raft.term}")
                self._check_leader_completeness(node)
        c = raft.commit
        if c < node.seen_commit:
            self.fail(f"n{node.id} commit went backwards {node.seen_commit} -> {c}")
        if c > node.seen_commit:
            log = raft.log
            for i in range(node.seen_commit + 1, c + 1):
                t = log.term(i)
                if t is None:
                    continue  # below a snapshot this node installed: checked on install
                known = self.committed.setdefault(i, t)
                if known != t:
                    self.fail(f"n{node.id} committed {i}/{t} but {i}/{known} was committed before")
            node.seen_commit = c
            self._check_removals()

    def _check_leader_completeness(self, node: SimNode) -> None:
        """Raft §5.4: a primary's log holds every entry committed in earlier terms."""
        log = node.raft.log  # type: ignore[union-attr]
        base = log.snapshot.index
        for i, t in self.committed.items():
            if i < base:
                continue
            if log.term(i) != t:
                self.fail(f"primary n{node.id} of term {node.raft.term} lacks committed entry {i}/{t}")  # type: ignore[union-attr]

    def _check_snapshot_install(self, node: SimNode) -> None:
        s = node.storage.snapshot
        assert s is not None
        known = self.committed.get(s.index)
        if known is not None and known != s.term:
            self.fail(f"n{node.id} installed {s!r} but {s.index}/{known} is committed")
        entry = self.applied.get(s.index)
        if entry is not None and entry[0] != s.term:
            self.fail(f"n{node.id} installed {s!r} but {s.index}/{entry[0]} was applied")

    def _send_from(self, node: SimNode, m: Message) -> None:
        self._check_promise(node, m)
        attachment = None
        if type(m) is InstallSnapshot:
            st = node.storage
            # The caller sends the snapshot it holds: the one named, or a newer one
            # if it compacted again since (then the message names that one).
            if st.snapshot is None or st.snapshot.index < m.snapshot.index:
                self.fail(f"n{node.id} asked to send {m.snapshot!r} but holds {st.snapshot!r}")
            if st.snapshot != m.snapshot:
                m = msgspec.structs.replace(m, snapshot=st.snapshot)
            attachment = st.snapshot_state
            self.stats["snapshots_sent"] += 1
        self.send(m, attachment)

    def _check_persisted(self, node: SimNode, rd: Ready) -> None:
        st = node.storage
        facts = self.log_facts
        for e in rd.entries:
            # Log matching (Raft §5.3) by induction: an (index, term) pair always
            # names the same command and the same previous term.
            fact = (e.kind, e.data, st.term(e.index - 1))
            known = facts.setdefault((e.index, e.term), fact)
            if known != fact:
                self.fail(f"n{node.id} log holds {e!r} after term {fact[2]}, elsewhere {known}")
        hs = rd.hard_state
        if hs is not None and hs.vote:
            cast = self.votes.setdefault((node.id, hs.term), hs.vote)
            if cast != hs.vote:
                self.fail(f"n{node.id} voted for n{cast} and n{hs.vote} in term {hs.term}")

    @staticmethod
    def plan(rd: Ready) -> tuple[tuple[Message, ...], tuple[Message, ...]]:
        """What leaves before the write and what after it (a mutant replaces it)."""
        return rd.now, rd.after

    def _check_plan(self, node: SimNode, rd: Ready) -> None:
        """The core says whether the write must be synced: it must not say no to
        a promise the disk does not hold yet."""
        if sorted(map(id, rd.now + rd.after)) != sorted(map(id, rd.messages)):
            self.fail(f"n{node.id} Ready's plan does not hold its messages once each: {rd!r}")
        if rd.must_sync:
            return
        hs, st = rd.hard_state, node.storage.hard_state
        if rd.entries or rd.snapshot is not None or (hs is not None and (
                (hs.term, hs.vote, hs.recovering, hs.incarnation, hs.fenced)
                != (st.term, st.vote, st.recovering, st.incarnation, st.fenced))):
            self.fail(f"n{node.id} Ready not marked must_sync holds what its disk does not: {rd!r}")
        if rd.after:
            self.fail(f"n{node.id} Ready with nothing to sync keeps messages for after the write")

    def _check_promise(self, node: SimNode, m: Message) -> None:
        st = node.storage
        if type(m) is ReplicateAck and not m.reject:
            if m.index > st.last_index and m.index > st.base:
                self.fail(f"n{node.id} acknowledged {m.index} but has only {st.last_index} on disk")
        elif type(m) is VoteResponse and m.granted and not m.pre_vote:
            cast = self.ballots.setdefault((node.id, m.term), m.to)
            if cast != m.to:
                self.fail(f"n{node.id} granted votes to n{cast} and n{m.to} in term {m.term}")
            # What is on disk must rule out any other vote in that term: the vote
            # itself, or a later term (terms never go back, and a vote is given only
            # in the current term). A Ready written after a long wait (a full disk)
            # holds the votes of several terms, and the last term's state covers them.
            hs = st.hard_state
            if hs.term < m.term or (hs.term == m.term and hs.vote != m.to):
                self.fail(f"n{node.id} sent a vote for n{m.to} in term {m.term} before persisting it")
        elif type(m) is ProbeResp and dict(st.hard_state.fenced).get(m.to, 0) < m.known:
            # What it answered fences the prober's older votes only once it is on disk.
            self.fail(f"n{node.id} answered n{m.to}'s probe with incarnation {m.known} before persisting it")

    def _check_apply(self, node: SimNode, e: Entry) -> None:
        fact = (e.term, e.kind, e.data)
        known = self.applied.setdefault(e.index, fact)
        if known != fact:
            self.fail(f"n{node.id} applied {e!r} at {e.index} where {known} was applied elsewhere")
        t = self.committed.get(e.index)
        if t is not None and t != e.term:
            self.fail(f"n{node.id} applied {e!r} but {e.index}/{t} is committed")

    # ------------------------------------------------------------------ clients
    def _live_nodes(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.up]

    def _client_op(self) -> None:
        live = self._live_nodes()
        if not live:
            return
        node = self.rng.choice(live)
        raft = node.raft
        assert raft is not None
        op = ClientOp(len(self.ops), "write" if self.rng.random() < 0.7 else "read", node.id, self.now)
        self.ops.append(op)
        try:
            if op.kind == "write":
                op.data = b"w%d" % op.op_id
                node.proposals[op.data] = op.op_id
                raft.propose(op.data)
            else:
                op.floor = self.max_acked_index
                raft.read_index(op.op_id)
        except Refused as exc:
            node.proposals.pop(op.data, None)
            self.trace(f"client op {op.op_id} at n{node.id} refused: {exc.code}")
            return
        self._after(node)

    def _ack_write(self, op_id: int, index: int) -> None:
        op = self.ops[op_id]
        if op.acked_at < 0:
            op.acked_at, op.index = self.now, index
            self.max_acked_index = max(self.max_acked_index, index)
            self.stats["acked"] += 1

    def _serve_reads(self, node: SimNode) -> None:
        applied = node.storage.applied
        waiting = []
        for req, index in node.reads:
            if index > applied:
                waiting.append((req, index))
                continue
            op = self.ops[req]
            # Linearizability: a read sees every write acknowledged before it began.
            if index < op.floor:
                self.fail(f"read {req} at n{node.id} served at index {index}, but {op.floor} was acknowledged before it began")
            op.acked_at, op.index = self.now, index
            self.stats["reads"] += 1
        node.reads = waiting

    # ------------------------------------------------------------------ nemesis
    def _nemesis(self) -> None:
        weights = self.p.faults
        if not any(weights.values()):
            return
        kind = self.rng.choices(FAULTS, weights=[weights[k] for k in FAULTS])[0]
        live = self._live_nodes()
        primary = self._primary()
        if kind == "crash":
            if live:
                victim = primary if primary and self.rng.random() < 0.6 else self.rng.choice(live)
                self.crash(victim, "nemesis")
                self._schedule_restart(victim)
        elif kind == "restart":
            for n in self.nodes.values():
                if not n.up and not n.retired:
                    self._start(n)
        elif kind == "partition":
            self._partition()
        elif kind == "heal":
            self.blocked.clear()
            self.trace("network heals")
        elif kind == "snapshot":
            self._compact(live)
        elif kind == "membership":
            self._membership_change(primary)
        elif kind == "transfer":
            if primary is not None:
                target = self.rng.choice(sorted(primary.raft.membership.voters))  # type: ignore[union-attr]
                try:
                    primary.raft.hand_over(target)  # type: ignore[union-attr]
                    self.stats["transfers"] += 1
                    self.trace(f"n{primary.id} transfers leadership to n{target}")
                except Refused as exc:
                    self.trace(f"transfer to n{target} refused: {exc.code}")
                self._after(primary)
        elif kind == "lie":
            self._lie(live)
        elif kind == "lostdisk":
            self._lose_disk()
        elif kind == "diskfull":
            if live:
                victim = primary if primary and self.rng.random() < 0.4 else self.rng.choice(live)
                victim.disk_full_until = self.now + self.rng.randint(50 * MS, 4 * SEC)
                self.stats["disk_full"] += 1
                self.trace(f"n{victim.id}'s disk is full until {victim.disk_full_until / SEC:.3f}s")
        else:
            for n in live:
                n.rate = self.rng.uniform(0.7, 1.3)
                n.tick_us = int(self.p.config.tick_ms * MS * n.rate)
            self.trace("clock rates change")

    def _lose_disk(self) -> None:
        """A server's disk is replaced (or found damaged and set aside): it comes back
        empty, knowing the cluster exists. At most as many at a time as the cluster
        survives: a majority of lost disks may lose anything."""
        views = [n.raft.membership.voters if n.raft is not None else n.last_voters
                 for n in self.nodes.values() if not n.retired and (n.raft is not None or n.last_voters)]
        if not views:
            return
        voters = frozenset().union(*views)
        tolerated = min(len(v) - (len(v) // 2 + 1) for v in views)  # (the smallest configuration anyone is in)
        lost = self._recovering()
        candidates = [self.nodes[i] for i in sorted(voters) if not self.nodes[i].retired and self.nodes[i] not in lost]
        if len(lost) + 1 > tolerated or not candidates:
            return
        victim = self.rng.choice(candidates)
        self.trace(f"n{victim.id}'s disk is lost")
        self.crash(victim, "its disk is lost")
        self.incarnations = max(self.incarnations, victim.storage.hard_state.incarnation)  # (one it raised itself)
        victim.storage = SimStorage()
        # As the store makes a new file: "recovering" on disk from the first moment.
        # Its incarnation is newer than any before (the store names it by the time).
        self.incarnations += 1
        victim.storage.hard_state = HardState(recovering=not self.empty_disk_votes, incarnation=self.incarnations)
        victim.incoming.clear()
        victim.lost_disk = True
        for key in [k for k in self.votes if k[0] == victim.id]:
            del self.votes[key]  # (what its disk held is gone: the ballots it sent are not)
        self.stats["lost_disks"] += 1
        self._schedule_restart(victim)

    def _recovering(self) -> list[SimNode]:
        return [n for n in self.nodes.values()
                if n.lost_disk or n.storage.hard_state.recovering or (n.raft is not None and n.raft.recovering)]

    def _primary(self) -> SimNode | None:
        best = None
        for n in self.nodes.values():
            if n.raft is not None and n.raft.role is Role.PRIMARY and (best is None or n.raft.term > best.raft.term):  # type: ignore[union-attr]
                best = n
        return best

    def _partition(self) -> None:
        ids = sorted(i for i, n in self.nodes.items() if not n.retired)
        self.rng.shuffle(ids)
        kind = self.rng.choice(("split", "isolate", "bridge", "one-way"))
        self.blocked.clear()
        if kind == "isolate":
            a, rest = ids[:1], ids[1:]
            self._cut(a, rest, both=True)
        elif kind == "split":
            k = self.rng.randint(1, len(ids) - 1)
            self._cut(ids[:k], ids[k:], both=True)
        elif kind == "bridge" and len(ids) >= 3:
            bridge, rest = ids[0], ids[1:]
            k = self.rng.randint(1, len(rest) - 1)
            self._cut(rest[:k], rest[k:], both=True)
            kind = f"bridge n{bridge}"
        else:
            k = self.rng.randint(1, len(ids) - 1)
            self._cut(ids[:k], ids[k:], both=False)
        self.trace(f"partition ({kind}): blocked {sorted(self.blocked)}")

    def _cut(self, left: list[int], right: list[int], *, both: bool) -> None:
        for a in left:
            for b in right:
                self.blocked.add((a, b))
                if both:
                    self.blocked.add((b, a))

    def _compact(self, live: list[SimNode]) -> None:
        candidates = [n for n in live if n.storage.applied > n.storage.base]
        if not candidates:
            return
        self._snapshot(self.rng.choice(candidates))

    def _snapshot(self, node: SimNode) -> None:
        raft, st = node.raft, node.storage
        assert raft is not None
        index = st.applied
        raft.compact(index)
        if raft.log.snapshot.index == index:  # (not when a received snapshot is being installed)
            st.compact(raft.log.snapshot)
            self.trace(f"n{node.id} snapshots at {index}")

    def _membership_change(self, primary: SimNode | None) -> None:
        if primary is None:
            return
        raft = primary.raft
        assert raft is not None
        m = raft.membership
        choice = self.rng.random()
        try:
            if m.learners and choice < 0.6:
                target = self.rng.choice(sorted(m.learners))
                index = raft.promote(target)
                self.trace(f"n{primary.id} promotes n{target} (entry {index})")
            elif len(m.voters) < 6 and choice < 0.8 and self.next_node_id < 16:
                # Added with its address, as `chorus member add` does; half of them to be
                # promoted by whoever is primary once caught up. The new server's core
                # starts empty (with --join, what a member told it is the server's, not
                # the core's: entry 1 is the seed's, on every server).
                target = self.next_node_id
                promote = self.rng.random() < 0.5
                index = raft.add_learner(target, Member(target, f"h{target}:1", f"h{target}:2"), promote=promote)
                self.next_node_id += 1
                node = self.nodes[target] = SimNode(target, Membership(), self.p.rates[target])
                self._start(node)
                self.trace(f"n{primary.id} adds learner n{target} (entry {index}"
                           f"{', to be promoted' if promote else ''})")
            elif m.members and choice < 0.84:
                target = self.rng.choice(sorted(m.members))
                index = raft.move(Member(target, f"h{target}:{_port(self.now)}", f"h{target}:2"))
                self.trace(f"n{primary.id} moves n{target} (entry {index})")
            elif len(m.voters) > 2 and not self._recovering():
                # (Not while a server recovers a lost disk: an operator replacing a disk
                # does not also shrink the cluster, which could leave it without a
                # quorum of servers that have theirs.)
                target = self.rng.choice(sorted(m.members))
                index = raft.remove(target)
                self.removals.append((index, raft.term, target))
                self.trace(f"n{primary.id} removes n{target} (entry {index})")
            else:
                return
            self.stats["changes"] += 1
        except Refused as exc:
            self.trace(f"membership change refused: {exc.code}: {exc}")
        self._after(primary)

    def _check_removals(self) -> None:
        """A removed server stops once it knows its removal is committed (its own
        commit index reaches the entry, as the server's replica loop checks when
        it applies it); one that is down when the removal commits is not started
        again. Until it knows, it runs on, and may campaign: the primary tells it
        the commit when it asks for a vote (``_tell_removed``)."""
        keep = []
        for index, term, target in self.removals:
            t = self.committed.get(index)
            node = self.nodes[target]
            if t is None:
                keep.append((index, term, target))
            elif t != term or node.retired:
                continue  # (that removal was lost in a change of primary, or is done)
            elif not node.up or node.raft is None:
                node.retired = True
                self.trace(f"n{target} stays down: removed from the cluster")
            elif node.raft.commit >= index and node.raft.log.term(index) in (term, None):
                node.retired = True
                self.crash(node, "knows it was removed from the cluster: stops")
            else:
                keep.append((index, term, target))
        self.removals = keep

    def _lie(self, live: list[SimNode]) -> None:
        """A peer sends something malformed or impossible: it is rejected, nothing changes."""
        if not live:
            return
        node = self.rng.choice(live)
        raft = node.raft
        assert raft is not None
        other = self.rng.choice([i for i in self.nodes if i != node.id] or [node.id + 1])
        t = raft.term
        last = raft.log.last_index
        lies: list[object] = [
            Heartbeat(term=t, server_id=other, to=node.id + 100, commit=0),
            Heartbeat(term=-1, server_id=other, to=node.id, commit=0),
            Heartbeat(term=t, server_id=node.id, to=node.id, commit=0),
            Heartbeat(term="7", server_id=other, to=node.id, commit=0),  # type: ignore[arg-type]
            Replicate(term=t + 1, server_id=other, to=node.id, prev_index=last, prev_term=t,
                      entries=(Entry(last + 3, t, 0, b"x"),)),
            Replicate(term=t + 1, server_id=other, to=node.id, prev_index=last, prev_term=t,
                      entries=(Entry(last + 1, t + 5, 0, b"x"),)),
            Replicate(term=t + 1, server_id=other, to=node.id, prev_index=last, prev_term=t,
                      entries=(Entry(last + 1, t, 2, b"{not json"),)),
            Replicate(term=t + 1, server_id=other, to=node.id, prev_index=last, prev_term=t,
                      entries=[Entry(last + 1, t, 0, b"x")]),  # type: ignore[arg-type]
            Replicate(term=t + 1, server_id=other, to=node.id, prev_index=-4, prev_term=0),
            ReplicateAck(term=t, server_id=other, to=node.id, index=-1),
            RequestVote(term=t + 1, server_id=other, to=node.id, last_index=1, last_term=t + 2),
            VoteResponse(term=t, server_id=other, to=node.id, granted="yes"),  # type: ignore[arg-type]
            "REQUEST_VOTE",
            # Numbers past what the wire carries (2**53 - 1): a term that would overflow
            # the store, or the next election's term; indexes and ids out of range.
            Heartbeat(term=2**63, server_id=other, to=node.id, commit=0),
            Heartbeat(term=2**63 - 1, server_id=other, to=node.id, commit=0),
            Heartbeat(term=MAX_NUMBER + 1, server_id=other, to=node.id, commit=0),
            Heartbeat(term=t, server_id=other, to=node.id, commit=2**64),
            RequestVote(term=2**63 - 1, server_id=other, to=node.id, last_index=last, last_term=t),
            Replicate(term=t + 1, server_id=other, to=node.id, prev_index=last, prev_term=t,
                      entries=(Entry(last + 1, 2**63, 0, b"x"),)),
            Replicate(term=t + 1, server_id=other, to=node.id, prev_index=2**63, prev_term=t),
            InstallSnapshot(term=t + 1, server_id=other, to=node.id,
                            snapshot=SnapshotMeta(2**63, t + 1, raft.membership)),
            Heartbeat(term=t, server_id=2**60, to=node.id, commit=0),
            HeartbeatAck(term=t, server_id=other, to=node.id, ctx=2**63),
        ]
        if raft.role is Role.PRIMARY:
            lies.append(ReplicateAck(term=t, server_id=other, to=node.id, index=last + 10))
            lies.append(Heartbeat(term=t, server_id=other, to=node.id, commit=0))
            lies.append(HeartbeatAck(term=t, server_id=other, to=node.id, ctx=raft.reads.ctx + 7))
        lie = self.rng.choice(lies)
        before = _fingerprint(raft)
        try:
            raft.step(lie)  # type: ignore[arg-type]
        except MessageError as exc:
            self.stats["bad_input"] += 1
            self.trace(f"n{node.id} rejects a lie: {exc}")
        else:
            self.fail(f"n{node.id} accepted a malformed message {lie!r}")
        if _fingerprint(raft) != before:
            self.fail(f"n{node.id} changed state on a rejected message {lie!r}")

    # ------------------------------------------------------------------ liveness
    def heal(self) -> None:
        self.healed = True
        self.blocked.clear()
        self.loss = 0.0
        self.dup = 0.0
        self.trace("HEAL: network whole, no loss, every server restarted, every disk with room")
        for n in self.nodes.values():
            n.disk_full_until = 0
            if not n.up and not n.retired:
                self._start(n)

    def liveness(self) -> None:
        """After healing: a primary, a new committed proposal, every member converged."""
        bound = 40 * SEC
        start = self.now
        self.final_op: ClientOp | None = None
        self.final_gen = 0
        self.schedule(0, LIVENESS_PROBE)
        done = self._run_until(start + bound, self._converged)
        if not done and self._waits_for_recovering():
            # No server can be elected without the vote of one that is recovering,
            # which it may not give: the cluster waits for an operator (the price of
            # the disk-loss rule: docs/architecture.md, "What it costs"). What was
            # acknowledged must still be on a disk that was not lost.
            self.stats["waits_for_recovering"] += 1
            self.trace("no primary can be elected without a recovering server's vote: waiting, as it should")
            self._check_kept()
            return
        if not done:
            primary = self._primary()
            members = sorted(primary.raft.membership.members) if primary else []  # type: ignore[union-attr]
            self.fail(
                f"no convergence within {bound / SEC:.0f}s of healing; primary "
                f"{f'n{primary.id}' if primary else 'none'}, final write "
                f"{'acknowledged' if self.final_op and self.final_op.acked_at >= 0 else 'not acknowledged'}, "
                f"members {members}: "
                + "; ".join(
                    (f"{n.raft!r}" if n.raft is not None else f"n{n.id} DOWN{' (retired)' if n.retired else ''}")
                    + f" disk-applied={n.storage.applied}"
                    for n in self.nodes.values()
                )
            )
        self.trace(f"converged {(self.now - start) / SEC:.3f}s after healing")
        self._check_final()

    def _liveness_probe(self) -> None:
        """Propose a final write to the primary; again if the primary (or its
        incarnation: a crash forgets pending proposals) changed before it was acknowledged."""
        primary = self._primary()
        op = self.final_op
        pending = op is None or op.acked_at < 0
        if primary is not None and pending and (op is None or (op.node, self.final_gen) != (primary.id, primary.gen)):
            op = ClientOp(len(self.ops), "write", primary.id, self.now, data=b"final%d" % len(self.ops))
            self.ops.append(op)
            try:
                primary.raft.propose(op.data)  # type: ignore[union-attr]
                primary.proposals[op.data] = op.op_id
                self.final_op, self.final_gen = op, primary.gen
                self._after(primary)
            except Refused:
                pass
        self.schedule(500 * MS, LIVENESS_PROBE)

    def _converged(self) -> bool:
        op = self.final_op
        if op is None or op.acked_at < 0:
            return False
        primary = self._primary()
        if primary is None:
            return False
        raft = primary.raft
        assert raft is not None
        target = raft.commit
        if raft.log.term(target) != raft.term:
            return False  # a new primary does not know the commit index until it commits in its term
        for i in raft.membership.members:
            n = self.nodes.get(i)
            if n is None or n.raft is None or n.storage.applied != target or n.outstanding is not None:
                return False
        return True

    def _waits_for_recovering(self) -> bool:
        """Whether no server may win an election without a recovering server's
        vote: every one that may campaign (not recovering, a voter of the latest
        membership in its log) lacks a majority of its voters that are not
        recovering and whose logs are not more up to date than its own (§5.4.1)."""
        live = {n.id: n.raft for n in self.nodes.values() if n.raft is not None}
        if not any(r.recovering for r in live.values()):
            return False
        for c in live.values():
            if c.recovering or not c.promotable:
                continue
            voters = c.membership.voters
            grants = sum(1 for v in voters if v in live and not live[v].recovering
                         and live[v].log.is_up_to_date(c.log.last_index, c.log.last_term))
            if grants >= len(voters) // 2 + 1:
                return False
        return True

    def _check_kept(self) -> None:
        """Every acknowledged write is on the disk of a server that is not recovering."""
        kept = [n for n in self.nodes.values() if n.raft is not None and not n.raft.recovering]
        for op in self.ops:
            if op.kind != "write" or op.acked_at < 0:
                continue
            if not any(n.storage.applied >= op.index or self._holds(n, op.index, op.data) for n in kept):
                self.fail(f"acknowledged write {op.data!r} at {op.index} is on no disk that was not lost")

    @staticmethod
    def _holds(n: SimNode, index: int, data: bytes) -> bool:
        k = index - n.storage.base
        return 0 < k <= len(n.storage.entries) and n.storage.entries[k - 1].data == data

    def _check_final(self) -> None:
        primary = self._primary()
        assert primary is not None
        raft = primary.raft
        assert raft is not None
        members = [self.nodes[i] for i in sorted(raft.membership.members)]
        # Every replica applied the same commands: equal states at equal indexes.
        applied = {n.storage.applied for n in members}
        states = {n.storage.state for n in members}
        if len(applied) != 1 or len(states) != 1:
            self.fail(
                "replicas differ after convergence: "
                + ", ".join(f"n{n.id}@{n.storage.applied}={n.storage.state}" for n in members)
            )
        top = applied.pop()
        # Every acknowledged write is applied, at the index it was acknowledged at.
        for op in self.ops:
            if op.kind == "write" and op.acked_at >= 0:
                fact = self.applied.get(op.index)
                if fact is None or fact[2] != op.data or op.index > top:
                    self.fail(f"acknowledged write {op.data!r} at {op.index} is not applied everywhere")


def _fingerprint(raft: RaftNode) -> tuple[object, ...]:
    return (
        raft.term, raft.vote, raft.commit, raft.role, raft.primary, raft.log.last_index,
        raft.log.last_term, raft.membership, raft.election_elapsed, len(raft._outbox),
    )


def run_seed(seed: int, trace: Callable[[str], None] | None = None, *, early_send: bool = False) -> dict[str, int]:
    return World(seed, trace=trace, early_send=early_send).run()
