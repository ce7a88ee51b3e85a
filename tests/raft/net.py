"""A hand-driven network of Raft nodes for scenario tests (after etcd-io/raft's
``network`` in raft_test.go, and h11's ConnectionPair): no sockets, no time, no
randomness the test does not control. Messages wait in ``inflight`` until the test
delivers them; ``settle()`` delivers everything until the network is quiet.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

from chorus.raft import (
    Entry,
    EntryKind,
    HardState,
    InstallSnapshot,
    Membership,
    Message,
    Persisted,
    RaftConfig,
    RaftNode,
    ReadState,
    Role,
    SnapshotMeta,
)
from tests.sim.storage import SimStorage

# Short timeouts keep scenarios small: elections after 10-19 ticks, heartbeats every 2.
CONFIG = RaftConfig(tick_ms=1, election_timeout_ms=(10, 20), heartbeat_ms=2)


def entries_for_terms(terms: Iterable[int], start: int = 1) -> list[Entry]:
    """A log whose entry i has term terms[i]: the notation of the Raft paper's figures."""
    return [Entry(start + k, t, EntryKind.COMMAND, b"%d/%d" % (start + k, t)) for k, t in enumerate(terms)]


class Net:
    def __init__(
        self,
        n: int = 3,
        *,
        config: RaftConfig = CONFIG,
        logs: dict[int, list[int]] | None = None,
        terms: dict[int, int] | None = None,
        voters: Iterable[int] | None = None,
    ) -> None:
        self.config = config
        ids = list(range(1, n + 1))
        self.bootstrap = Membership(voters=frozenset(voters if voters is not None else ids))
        self.storage: dict[int, SimStorage] = {}
        self.nodes: dict[int, RaftNode] = {}
        self.down: set[int] = set()
        self.cut: set[tuple[int, int]] = set()
        self.inflight: list[Message] = []
        self.applied: dict[int, list[Entry]] = {}
        self.reads: dict[int, list[ReadState]] = {}
        self.sent: list[Message] = []  # every message that left a node, for assertions
        self.incoming: dict[int, object] = {}  # snapshot data received, waiting for its Ready
        self.filter: Callable[[Message], Message | None] | None = None
        self.transcript: list[str] | None = None  # when a list: what happened, line by line
        self.show_readies = False  # and, in it, every Ready handled
        self.incarnations = 0  # the last store made by lose_disk (the first are all 0)
        for i in ids:
            st = self.storage[i] = SimStorage()
            if logs and i in logs:
                st.entries = entries_for_terms(logs[i])
            if terms and i in terms:
                st.hard_state = HardState(terms[i], 0, 0)
            elif logs:
                # A member of a cluster whose history the test wrote by hand: not a
                # fresh start, so no bootstrap entry of its own.
                st.hard_state = HardState(1, 0, 0)
            self.start(i)

    # ---- nodes
    def start(self, i: int, bootstrap: Membership | None = None, *, recovering: bool = False) -> RaftNode:
        st = self.storage.setdefault(i, SimStorage())
        node = RaftNode(
            i,
            bootstrap or self.bootstrap,
            config=self.config,
            rng=random.Random(i),
            persisted=Persisted(st.hard_state, st.snapshot, tuple(st.entries), st.applied),
            recovering=recovering,
        )
        self.nodes[i] = node
        self.applied.setdefault(i, [])
        self.reads.setdefault(i, [])
        self.down.discard(i)
        return node

    def crash(self, i: int) -> None:
        """kill -9: the node loses everything but its storage."""
        self.down.add(i)
        self.inflight = [m for m in self.inflight if m.to != i]

    def lose_disk(self, i: int, *, recovering: bool = True, incarnation: int | None = None) -> RaftNode:
        """Node i comes back with an empty disk (knowing the cluster exists, unless
        ``recovering`` is False: a server that takes its new disk for a new member's).
        The new store is named above every one before it, unless ``incarnation``
        says otherwise (a clock set back)."""
        self.crash(i)
        if incarnation is None:
            self.incarnations = max(self.incarnations, self.storage[i].hard_state.incarnation) + 1
            incarnation = self.incarnations
        self.storage[i] = SimStorage()
        self.storage[i].hard_state = HardState(recovering=recovering, incarnation=incarnation)
        self.applied[i] = []
        return self.start(i)

    def restart(self, i: int) -> RaftNode:
        # A server that joined later starts knowing nobody; its storage tells it the rest.
        return self.start(i, None if i in self.bootstrap.members else Membership())

    def __getitem__(self, i: int) -> RaftNode:
        return self.nodes[i]

    # ---- links
    def isolate(self, i: int) -> None:
        for j in self.nodes:
            if j != i:
                self.cut |= {(i, j), (j, i)}

    def partition(self, *groups: Iterable[int]) -> None:
        sets = [set(g) for g in groups]
        for a in sets:
            for b in sets:
                if a is not b:
                    self.cut |= {(x, y) for x in a for y in b}

    def heal(self) -> None:
        self.cut.clear()

    # ---- driving
    def process(self, i: int) -> bool:
        """Handle node i's Ready the way a server does: persist, send, apply, advance."""
        node = self.nodes[i]
        if i in self.down or not node.has_ready():
            return False
        rd = node.ready()
        if self.transcript is not None and self.show_readies:
            self.transcript.append(f"n{i} {rd!r}")
        if self.transcript is not None and rd.soft_state is not None:
            ss = rd.soft_state
            lead = f", primary n{ss.primary}" if ss.primary and ss.primary != i else ""
            self.transcript.append(f"n{i} is {ss.role.value} in term {ss.term}{lead}")
        st = self.storage[i]
        st.persist(rd, self.incoming.pop(i) if rd.snapshot else None)  # type: ignore[arg-type]
        for m in rd.messages:
            if type(m) is InstallSnapshot and st.snapshot is not None and st.snapshot != m.snapshot:
                m = InstallSnapshot(term=m.term, server_id=m.server_id, to=m.to, snapshot=st.snapshot)
            self.sent.append(m)
            if (m.server_id, m.to) not in self.cut:
                self.inflight.append(m)
        for e in rd.committed:
            st.apply(e)
            self.applied[i].append(e)
        self.reads[i].extend(rd.reads)
        node.advance(rd)
        return True

    def deliver(self, m: Message) -> None:
        if m.to in self.down or m.to not in self.nodes or (m.server_id, m.to) in self.cut:
            return
        if self.filter is not None:
            filtered = self.filter(m)
            if filtered is None:
                return
            m = filtered
        if type(m) is InstallSnapshot:
            # The snapshot's data travels beside the message.
            self.incoming[m.to] = self.storage[m.server_id].snapshot_state
        if self.transcript is not None:
            self.transcript.append(repr(m))
        self.nodes[m.to].step(m)

    def settle(self, limit: int = 100_000) -> None:
        """Process and deliver until nothing moves."""
        for _ in range(limit):
            moved = any([self.process(i) for i in sorted(self.nodes)])
            if not self.inflight and not moved:
                return
            batch, self.inflight = self.inflight, []
            for m in batch:
                self.deliver(m)
        raise AssertionError("the network did not settle")

    def tick(self, *ids: int, times: int = 1) -> None:
        """Advance the clocks of the given nodes (all live ones by default)."""
        for _ in range(times):
            for i in ids or sorted(self.nodes):
                if i not in self.down:
                    self.nodes[i].tick()
            self.settle()

    def elect(self, i: int) -> None:
        """Make node i start an election now, and let it run to the end."""
        self.nodes[i].campaign()
        self.settle()

    def propose(self, i: int, data: bytes) -> int | None:
        index = self.nodes[i].propose(data)
        self.settle()
        return index

    # ---- looking
    def primary(self) -> int:
        found = [i for i, n in self.nodes.items() if i not in self.down and n.role is Role.PRIMARY]
        assert len(found) <= 1 or len({self.nodes[i].term for i in found}) == len(found)
        return max(found, key=lambda i: self.nodes[i].term) if found else 0

    def log_terms(self, i: int) -> list[int]:
        log = self.nodes[i].log
        return [e.term for e in log.entries]

    def status(self) -> str:
        return "\n".join(
            ("DOWN " if i in self.down else "") + repr(self.nodes[i]) for i in sorted(self.nodes)
        )

    def snapshot(self, i: int) -> SnapshotMeta:
        """Node i snapshots its applied state and compacts its log."""
        node, st = self.nodes[i], self.storage[i]
        node.compact(st.applied)
        st.compact(node.log.snapshot)
        return node.log.snapshot
