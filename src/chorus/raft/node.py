"""The Raft state machine of one server, with no I/O at all.

The caller drives it with ``tick()``, ``step(message)``, ``propose(data)``,
``read_index(request_id)``, membership and transfer requests, and collects what
it must do, and in what order, in a :class:`Ready` (whose docstring is the
contract). Persist-before-send is what makes a vote or an acknowledgement a
promise. ``step()``, ``tick()`` and ``propose()`` may be called between ``ready()`` and
``advance()``; what they produce comes out in the next Ready.

The structure follows etcd-io/raft: the term is handled once in ``step()``, then
the message goes to the handler of the current role.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Sequence
from operator import attrgetter

from . import quorum
from .config import RaftConfig
from .errors import Refused
from .log import RaftLog
from .membership import History
from .messages import (
    MAX_NUMBER,
    Entry,
    EntryKind,
    Forward,
    Heartbeat,
    HeartbeatAck,
    InstallSnapshot,
    Membership,
    Message,
    MessageError,
    Probe,
    ProbeResp,
    ReadIndex,
    ReadIndexResp,
    Replicate,
    ReplicateAck,
    RequestVote,
    SnapshotMeta,
    TimeoutNow,
    VoteResponse,
)
from .progress import Progress, ProgressState
from .reads import ReadQueue
from .ready import NONE, HardState, Persisted, ReadState, Ready, Role, SoftState, plan
from .validate import validate

_kind_of = attrgetter("kind")


class RaftNode:
    def __init__(
        self,
        node_id: int,
        membership: Membership,
        *,
        config: RaftConfig | None = None,
        rng: random.Random,
        persisted: Persisted | None = None,
        recovering: bool = False,
    ) -> None:
        """``recovering``: start as a node that may have lost what it promised (the
        caller found its disk empty or damaged in a cluster that exists)."""
        if type(node_id) is not int or node_id <= 0:
            raise ValueError("node ids are positive integers")
        self.id = node_id
        self.cfg = config or RaftConfig()
        self.rng = rng
        p = persisted or Persisted()

        # Persistent state (Raft Figure 2), restored from storage.
        self.term = p.hard_state.term
        self.vote = p.hard_state.vote
        self.recovering = p.hard_state.recovering or recovering
        self.incarnation = p.hard_state.incarnation
        self._fence: dict[int, int] = dict(p.hard_state.fenced)
        self._fenced = p.hard_state.fenced  # (the same, as the hard state holds it)
        self.log = RaftLog(p.snapshot or SnapshotMeta(0, 0, membership))
        self.log.append(p.entries)
        hs = p.hard_state
        # (A store made empty may say "recovering" from the start: still a fresh log.)
        fresh = (hs.term, hs.vote, hs.commit, hs.fenced) == (0, NONE, 0, ()) and p.snapshot is None and not p.entries
        if fresh and membership.voters:
            # Bootstrap (as etcd does): the initial membership is entry 1 of every initial
            # member's log, the same on each, committed by construction. A server that
            # joins later starts empty and learns it from the log like any other change,
            # so every index has the same membership on every server (snapshots carry it).
            self.term = 1
            self.log.append([Entry(1, 1, int(EntryKind.CONFIG), membership.encode())])
        self.commit = max(p.hard_state.commit, p.applied, self.log.snapshot.index, 1 if fresh and membership.voters else 0)
        assert self.commit <= self.log.last_index, "storage lost committed entries"

        # Membership: the latest configuration in the log takes effect at once,
        # committed or not (Raft dissertation §4.1). History lets a truncation revert it.
        self.history = History(self.log.snapshot.membership, self.log.entries)
        self.membership = self.history.latest

        # Volatile state.
        self.role = Role.BACKUP
        self.leader = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_timeout = 0
        self._reset_randomized_timeout()
        self.progress: dict[int, Progress] = {}
        self.votes: dict[int, bool] = {}
        # This election's vote responses: the incarnation of each voter, and the
        # highest incarnation of each voter that any of them knows.
        self._vote_incarnation: dict[int, int] = {}
        self._vote_fence: dict[int, int] = {}
        self.pre_campaign = False  # CANDIDATE only: asking pre-votes, term not bumped yet
        self.lead_transferee = NONE
        self.pending_conf_index = 0

        # ReadIndex (Raft dissertation §6.4): reads wait for a heartbeat round.
        self.reads = ReadQueue()

        # Recovery from a lost disk: the terms other voters answered to PROBE, until
        # enough did (then the highest of them, ``_probe_term``).
        self._probe: dict[int, int] = {}
        self._probe_term: int | None = None
        self._probe_elapsed = 0
        # The commit index of this term's primary, as of a REPLICATE it sent knowing it
        # counted none of our acknowledgements: every commit it made with our lost
        # promises is at or below it.
        self._recover_target: tuple[int, int] | None = None  # (term, index)

        # Output bookkeeping.
        self.applied = max(p.applied, self.log.snapshot.index)
        self._outbox: list[Message] = []
        self._reads_out: list[ReadState] = []
        self._forward_buf: list[bytes] = []
        self._unsaved_from = self.log.snapshot.index + len(p.entries) + 1  # first entry not yet handed out to persist
        self._persisted = self._unsaved_from - 1  # last entry known to be durable
        self._apply_from = self.applied + 1  # first committed entry not yet handed out to apply
        self._snapshot_out: SnapshotMeta | None = None
        self._membership_changed = True
        hs = p.hard_state  # as last handed out: what is on disk
        self._prev_hard = (hs.term, hs.vote, hs.commit, hs.recovering, hs.incarnation, hs.fenced)
        self._prev_soft = (self.role, self.leader)  # a BACKUP that knows no primary: not news
        self._outstanding: Ready | None = None

    def __repr__(self) -> str:
        lead = f" lead={self.leader}" if self.leader else ""
        return (
            f"n{self.id} {self.role.value}{'(pre)' if self.pre_campaign else ''} t{self.term}"
            f"{lead} vote={self.vote} commit={self.commit} applied={self.applied} {self.log!r}"
        )

    # ------------------------------------------------------------------ queries
    @property
    def last_index(self) -> int:
        return self.log.last_index

    @property
    def promotable(self) -> bool:
        """Only voters campaign: learners, removed servers and recovering ones never do.
        A server whose removal is in its log but not yet committed is still a voter of
        the configuration before it, and may hold the only log that others accept:
        it campaigns (it does not count its own vote, and hands over once its removal
        is committed, as a primary that removes itself does, dissertation §4.2.2)."""
        if self.recovering:
            return False
        if self.id in self.membership.voters:
            return True
        return self.history.latest_index > self.commit and self.id in self.history.at(self.commit).voters

    def quorum(self) -> int:
        return quorum.size(len(self.membership.voters))

    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.commit, self.recovering, self.incarnation, self._fenced)

    def soft_state(self) -> SoftState:
        return SoftState(self.role, self.leader, self.term)

    # ------------------------------------------------------------------ role changes
    def _reset(self, term: int) -> None:
        if self.term != term:
            self.term = term
            self.vote = NONE
        self.leader = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self._reset_randomized_timeout()
        self.progress = {}
        self.votes = {}
        self._vote_incarnation = {}
        self._vote_fence = {}
        self.pre_campaign = False
        self.lead_transferee = NONE
        self.reads.clear()

    def _reset_randomized_timeout(self) -> None:
        lo, hi = self.cfg.election_ticks_min, self.cfg.election_ticks_max
        self.randomized_timeout = self.rng.randrange(lo, hi) if hi > lo else lo

    def _become_backup(self, term: int, leader: int) -> None:
        self._reset(term)
        self.role = Role.BACKUP
        self.leader = leader

    def _become_primary(self) -> None:
        assert self.role is Role.CANDIDATE and not self.pre_campaign
        self._reset(self.term)
        self.role = Role.PRIMARY
        self.leader = self.id
        last = self.log.last_index
        members = self.membership
        replicate_to = set(members.members)
        change = self.history.latest_index
        if change > self.commit:
            # A removal may not be committed yet: keep its server informed until it is.
            replicate_to |= self.history.at(change - 1).members
        for pid in replicate_to:
            self.progress[pid] = Progress(last + 1, is_learner=pid not in members.voters)
        if self.id in self.progress:
            me = self.progress[self.id]
            me.match = self._persisted
            me.recent_active = True
            me.recovering = False  # (a recovering node never leads)
        # Conservatively assume the log may hold an uncommitted membership change.
        self.pending_conf_index = last
        # Raft §5.4.2 / §8: a new primary commits an entry of its own term at once,
        # which commits everything before it and makes ReadIndex safe.
        self._append_local(EntryKind.NOOP, b"")

    def _campaign(self, *, pre_vote: bool, transfer: bool = False) -> None:
        self._reset_randomized_timeout()
        self.election_elapsed = 0
        if self.term >= MAX_NUMBER:
            return  # no term beyond what the wire carries (only a hostile member gets here)
        if pre_vote:
            # Pre-candidates keep their term and vote (dissertation §9.6).
            self.role = Role.CANDIDATE
            self.pre_campaign = True
            self.leader = NONE
            self.votes = {}
            self._vote_incarnation = {}
            self._vote_fence = {}
            term = self.term + 1
        else:
            self._reset(self.term + 1)
            self.role = Role.CANDIDATE
            self.vote = self.id
            term = self.term
        self.votes[self.id] = True
        if self._tally()[0] >= self.quorum():
            # A single voter wins at once.
            self._won_election()
            return
        for pid in sorted(self.membership.voters):
            if pid != self.id:
                self._send(
                    RequestVote(
                        term=term,
                        server_id=self.id,
                        to=pid,
                        last_index=self.log.last_index,
                        last_term=self.log.last_term,
                        pre_vote=pre_vote,
                        transfer=transfer,
                    )
                )

    def _tally(self) -> tuple[int, int]:
        """(granted, rejected) among the voters. A vote from a store older than one
        this node or any voter that answered knows of the same server is not
        counted: that server lost its disk since it voted, and may vote again."""
        voters = self.membership.voters
        inc, fence, own = self._vote_incarnation, self._vote_fence, self._fence
        granted = sum(1 for pid, ok in self.votes.items() if ok and pid in voters and (
            pid == self.id or inc.get(pid, 0) >= max(fence.get(pid, 0), own.get(pid, 0))))
        rejected = sum(1 for pid, ok in self.votes.items() if not ok and pid in voters)
        return granted, rejected

    def _voters_fenced(self) -> tuple[tuple[int, int], ...]:
        """What a vote tells of the voters' stores (only of the voters: bounded)."""
        voters = self.membership.voters
        return tuple(p for p in self._fenced if p[0] in voters)

    def _raise_fence(self, pid: int, incarnation: int) -> bool:
        """Learn that ``pid``'s store is ``incarnation`` or newer; False if a newer
        one is known already (the message is from a store that is gone)."""
        known = self._fence.get(pid, 0)
        if incarnation > known:
            self._fence[pid] = incarnation
            self._fenced = tuple(sorted(self._fence.items()))
        return incarnation >= known

    def _won_election(self) -> None:
        if self.pre_campaign:
            self._campaign(pre_vote=False)
        else:
            self._become_primary()

    # ------------------------------------------------------------------ recovery from a lost disk
    def _start_recovery(self) -> None:
        if not self.recovering:
            self.recovering = True
            self.incarnation += 1  # (what it promised before is fenced off by the probe's answers)
            self._probe, self._probe_term, self._probe_elapsed = {}, None, 0
            if self.role is not Role.BACKUP:
                self._become_backup(self.term, NONE)

    def declare_new_cluster(self) -> None:
        """The caller learned that no server of the configuration ever held data: a
        cluster being created. A server that started recovering because its disk was
        empty (it could not know yet) then takes part as a new member."""
        if not self.recovering:
            return
        if self.log.last_index > 1 or self.term > 1 or self.log.snapshot.index:
            raise Refused("not_new", "this server holds more than the bootstrap entry: it is no new member")
        self.recovering = False

    def _probed(self, m: ProbeResp) -> None:
        if not self.recovering or self._probe_term is not None or m.recovering:
            return  # (a recovering server's term says nothing of what came before)
        if m.server_id not in self.membership.voters:
            return
        if m.known > self.incarnation:
            # It knows a newer store of ours than this one (a clock set back): take
            # a higher incarnation, and ask everyone again under it.
            self.incarnation = m.known + 1
            self._probe, self._probe_elapsed = {}, 0
            return
        if m.known < self.incarnation:
            return  # an answer to an earlier incarnation's probe: it fences nothing of this one's
        self._probe[m.server_id] = m.term
        voters = self.membership.voters
        # Enough that any quorum of the past, less this node, has one among them:
        # then every term this node may have voted or acknowledged in is <= one of them.
        # (Of a quorum that was still voting while these answers came, that is not
        # shown: see docs/architecture.md, "What is not covered".)
        needed = len(voters) - self.quorum() + 1
        if len(self._probe) >= needed:
            self._probe_term = max(self._probe.values())
            self._maybe_end_recovery()

    def _maybe_end_recovery(self) -> None:
        """Recovered once this node holds, on disk and committed, everything a
        primary had committed when it already counted none of our
        acknowledgements (``_recover_target``), provided that primary's term is at
        least every term we may have taken part in before the loss
        (``_probe_term``) and it has committed in its own term. By Leader
        Completeness that primary's log held everything any earlier quorum
        committed, and it made every commit of its own that used our lost
        promises before it stopped counting us: all of it is ours again."""
        if self._probe_term is None or self.leader == NONE or self.role is not Role.BACKUP:
            return
        if self.term < self._probe_term or self.log.term(self.commit) != self.term:
            return
        target = self._recover_target
        if target is None or target[0] != self.term or self.commit < target[1] or self._persisted < self.commit:
            return
        self.recovering = False
        if self.vote == NONE:
            # Its vote in this term may have been lost: it is the primary's, which won it.
            self.vote = self.leader

    # ------------------------------------------------------------------ inputs
    def tick(self) -> None:
        """One unit of time passed (``config.tick_ms``)."""
        if self.recovering and self._probe_term is None:
            self._probe_elapsed -= 1
            if self._probe_elapsed <= 0:
                self._probe_elapsed = self.cfg.heartbeat_ticks * 2
                for pid in sorted(self.membership.voters - {self.id} - set(self._probe)):
                    self._send(Probe(term=self.term, server_id=self.id, to=pid, incarnation=self.incarnation))
        if self.role is Role.PRIMARY:
            self._tick_primary()
        else:
            self.election_elapsed += 1
            if self.promotable and self.election_elapsed >= self.randomized_timeout:
                self._campaign(pre_vote=self.cfg.pre_vote)

    def campaign(self) -> None:
        """Start an election now rather than waiting for the timeout (as after it)."""
        if self.role is not Role.PRIMARY and self.promotable:
            self._campaign(pre_vote=self.cfg.pre_vote)

    def _tick_primary(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        for pr in self.progress.values():
            if pr.state is ProgressState.SNAPSHOT:
                pr.snapshot_ticks += 1
                if pr.snapshot_ticks > self.cfg.snapshot_timeout_ticks:
                    pr.become_probe()  # the snapshot got lost: try again
        if self.election_elapsed >= self.cfg.election_ticks_min:
            self.election_elapsed = 0
            if self.cfg.check_quorum and not self._quorum_active():
                # Dissertation §6.2: we cannot reach a majority; stop claiming to lead.
                self._become_backup(self.term, NONE)
                return
            if self.lead_transferee != NONE:
                self.lead_transferee = NONE  # transfer did not finish in time: abort it
        if self.heartbeat_elapsed >= self.cfg.heartbeat_ticks:
            self.heartbeat_elapsed = 0
            self._broadcast_heartbeat()

    def _quorum_active(self) -> bool:
        active = 0
        for pid in self.membership.voters:
            pr = self.progress.get(pid)
            if pid == self.id or (pr is not None and pr.recent_active and not pr.recovering):
                active += 1
        for pid, pr in self.progress.items():
            pr.recent_active = pid == self.id
        return active >= self.quorum()

    def propose(self, data: bytes) -> int | None:
        """Append a command. On the primary, returns its log index (the command is
        committed when ``committed`` of a Ready reaches it). On a backup that knows
        the primary, forwards the command and returns None: the caller recognises it
        when it is applied. Raises :class:`Refused` otherwise."""
        return self.propose_batch((data,))

    def propose_batch(self, commands: Sequence[bytes]) -> int | None:
        """Append several commands at once (cheaper than one by one): all or none.
        Returns the index of the first on the primary, as ``propose`` does."""
        if self.role is Role.PRIMARY:
            self._check_can_append(sum(map(len, commands)))
            first = self.log.last_index + 1
            term = self.term
            self.log.append([Entry(i, term, 0, d) for i, d in enumerate(commands, first)])
            return first
        if self.leader != NONE:
            self._forward_buf.extend(commands)
            return None
        raise self._no_primary()

    def _no_primary(self) -> Refused:
        voters = len(self.membership.voters)
        return Refused(
            "no_primary",
            f"no primary is known: an election is under way, or fewer than {self.quorum()} "
            f"of the {voters} voting servers can reach each other",
        )

    def _check_can_append(self, size: int) -> None:
        if self.lead_transferee != NONE:
            raise Refused(
                "transferring", f"leadership is moving to server {self.lead_transferee}", self.leader
            )
        uncommitted = self.log.bytes_between(self.commit + 1, self.log.last_index)
        if uncommitted and uncommitted + size > self.cfg.max_uncommitted_bytes:
            raise Refused("busy", f"{uncommitted} bytes are waiting for commit; try again", self.leader)

    def _append_local(self, kind: int, data: bytes) -> int:
        index = self.log.last_index + 1
        entry = Entry(index, self.term, int(kind), data)  # plain ints on the wire
        self.log.append((entry,))
        if kind == EntryKind.CONFIG:
            self._set_membership(index, Membership.decode(data))
        return index

    def read_index(self, request_id: int) -> None:
        """Ask for a linearizable read without writing to the log. A ReadState with
        this request id comes out in a later Ready (or never, if leadership is lost:
        the caller times out and retries). On a backup the primary is asked."""
        if type(request_id) is not int:
            raise TypeError("request_id must be an int")
        if self.role is Role.PRIMARY:
            self._primary_read(self.id, request_id)
        elif self.leader != NONE:
            self._send(ReadIndex(term=self.term, server_id=self.id, to=self.leader, request_id=request_id))
        else:
            raise self._no_primary()

    def _primary_read(self, origin: int, request_id: int) -> None:
        if self.log.term(self.commit) != self.term:
            # Dissertation §6.4 step 1: until an entry of its own term is committed,
            # the primary does not know the latest commit index.
            self.reads.need_commit.append((origin, request_id))
        elif self.membership.voters == {self.id}:
            self._deliver_read(origin, request_id, self.commit)
        else:
            self.reads.unsent.append((origin, request_id, self.commit))

    def _deliver_read(self, origin: int, request_id: int, index: int) -> None:
        if origin == self.id:
            self._reads_out.append(ReadState(request_id, index))
        else:
            self._send(
                ReadIndexResp(term=self.term, server_id=self.id, to=origin, request_id=request_id, index=index)
            )

    def _release_reads(self) -> None:
        """Serve every pending read whose heartbeat round a quorum has answered."""
        if not self.reads.pending:
            return
        voters = self.membership.voters
        confirmed = quorum.reached(
            ((self.reads.ctx if pid == self.id else self.progress[pid].acked_ctx)
             for pid in voters if pid in self.progress and not self.progress[pid].recovering),
            len(voters),
        )
        if confirmed is not None:
            for origin, req, index in self.reads.confirmed(confirmed):
                self._deliver_read(origin, req, index)

    # ---- leadership transfer (dissertation §3.10)
    def transfer_leadership(self, target: int) -> None:
        if self.role is not Role.PRIMARY:
            raise Refused("not_primary", "only the primary can hand over leadership", self.leader)
        if target == self.id:
            return
        if target not in self.membership.voters:
            raise Refused("invalid", f"server {target} is not a voting member")
        if self.progress[target].recovering:
            raise Refused("invalid", f"server {target} is recovering a lost disk: it cannot lead yet")
        if self.lead_transferee == target:
            return
        self.lead_transferee = target
        self.election_elapsed = 0  # the transfer must finish within an election timeout
        if self.progress[target].match == self.log.last_index:
            self._send(TimeoutNow(term=self.term, server_id=self.id, to=target))

    def most_caught_up(self) -> int:
        """The voter (not this node) with the longest matching log, or 0."""
        best, best_match = NONE, -1
        for pid in sorted(self.membership.voters):
            pr = self.progress.get(pid)
            if pid != self.id and pr is not None and not pr.recovering and pr.match > best_match:
                best, best_match = pid, pr.match
        return best

    # ---- membership changes, one server at a time (dissertation §4.1)
    def add_learner(self, node_id: int) -> int:
        self._require_primary()
        if type(node_id) is not int or node_id <= 0:
            raise Refused("invalid", "server ids are positive integers")
        m = self.membership
        if node_id in m.members:
            raise Refused("invalid", f"server {node_id} is already a member")
        if node_id in m.removed:
            raise Refused("invalid", f"server {node_id} was removed before: a returning server needs a new id")
        return self._change_membership(Membership(m.voters, m.learners | {node_id}, m.removed))

    def promote(self, node_id: int) -> int:
        self._require_primary()
        m = self.membership
        if node_id not in m.learners:
            raise Refused("invalid", f"server {node_id} is not a learner")
        pr = self.progress[node_id]
        lag = self.log.last_index - pr.match
        if pr.match == 0 or lag > self.cfg.promote_max_lag:
            raise Refused("not_caught_up", f"server {node_id} is {lag} entries behind; try later")
        return self._change_membership(Membership(m.voters | {node_id}, m.learners - {node_id}, m.removed))

    def remove(self, node_id: int) -> int:
        self._require_primary()
        m = self.membership
        if node_id not in m.members:
            raise Refused("invalid", f"server {node_id} is not a member")
        voters = m.voters - {node_id}
        if not voters:
            raise Refused("invalid", "cannot remove the last voting member")
        return self._change_membership(Membership(voters, m.learners - {node_id}, m.removed | {node_id}))

    def _require_primary(self) -> None:
        if self.role is not Role.PRIMARY:
            raise Refused("not_primary", "membership changes go to the primary", self.leader)

    def _change_membership(self, new: Membership) -> int:
        self._require_primary()
        if self.pending_conf_index > self.commit:
            raise Refused("change_pending", "a membership change is already in progress")
        if self.log.term(self.commit) != self.term:
            # The single-server change bug fix (raft-dev, 2015): a primary must commit an
            # entry of its own term before it changes the configuration.
            raise Refused("not_ready", "the primary has not committed an entry of its term yet")
        healthy = [v for v in new.voters if v == self.id or (v in self.progress and not self.progress[v].recovering)]
        if len(healthy) < len(new.voters) // 2 + 1:
            # A recovering voter counts for nothing until it has caught up, and it can
            # only catch up from a primary elected without it: a configuration without a
            # quorum of others could never elect one again.
            raise Refused("unsafe", f"that would leave {len(healthy)} of {len(new.voters)} voters not recovering "
                                    "a lost disk: fewer than a quorum")
        data = new.encode()
        self._check_can_append(len(data))
        index = self._append_local(EntryKind.CONFIG, data)
        self.pending_conf_index = index
        return index

    def _set_membership(self, index: int, membership: Membership) -> None:
        self.history.add(index, membership)
        self._membership_became(membership)

    def _membership_became(self, membership: Membership) -> None:
        self.membership = membership
        self._membership_changed = True
        if self.role is Role.PRIMARY:
            # A server being removed keeps getting entries (as a non-voter) until the
            # removal commits, so that it learns of it and stops campaigning.
            for pid, pr in self.progress.items():
                pr.is_learner = pid not in membership.voters
            for pid in membership.members:
                pr = self.progress.get(pid)
                if pr is None:
                    pr = self.progress[pid] = Progress(self.log.last_index + 1)
                    if pid == self.id:
                        pr.match = self._persisted
                pr.is_learner = pid not in membership.voters
            if self.lead_transferee not in membership.voters:
                self.lead_transferee = NONE

    # ---- snapshots
    def compact(self, index: int) -> None:
        """The caller took a snapshot of the applied state at ``index``: forget the
        log up to it. Followers that need those entries will get the snapshot."""
        if index <= self.log.snapshot.index:
            return
        if index > self.applied:
            raise ValueError(f"snapshot at {index} is beyond the applied index {self.applied}")
        meta = SnapshotMeta(index, self.log.term(index), self.history.at(index))  # type: ignore[arg-type]
        self.log.compact(meta)
        self.history.compact(index)

    def report_snapshot(self, node_id: int, ok: bool) -> None:
        """The caller finished (or failed) sending a snapshot to ``node_id``."""
        pr = self.progress.get(node_id)
        if self.role is Role.PRIMARY and pr is not None and pr.state is ProgressState.SNAPSHOT:
            if not ok:
                pr.pending_snapshot = 0
            pr.become_probe()
            pr.probe_sent = ok  # after success, wait for the follower's answer

    def report_unreachable(self, node_id: int) -> None:
        """The link to ``node_id`` broke: stop pipelining to it, probe instead."""
        pr = self.progress.get(node_id)
        if self.role is Role.PRIMARY and pr is not None and pr.state is ProgressState.REPLICATE:
            pr.become_probe()

    # ------------------------------------------------------------------ messages
    def step(self, m: Message) -> None:
        """Take one message from a peer. Raises :class:`MessageError` for a message
        that is malformed or impossible; the node's state is then unchanged."""
        validate(m, self.id)
        self._check_against_state(m)
        if type(m) is Probe:
            # Answered whatever the terms: nobody changes term for a probe. The
            # prober's incarnation is in the hard state of the same Ready, so it is
            # on disk before the answer leaves: from then on this node passes it
            # in its votes, and any vote the prober gave before its loss is void.
            self._raise_fence(m.server_id, m.incarnation)
            self._send(ProbeResp(term=self.term, server_id=self.id, to=m.server_id, recovering=self.recovering,
                                 known=self._fence[m.server_id]))
            return
        if type(m) is ProbeResp:
            self._probed(m)
            return
        if m.term > self.term:
            if type(m) is RequestVote:
                in_lease = (
                    self.cfg.check_quorum
                    and self.leader != NONE
                    and self.election_elapsed < self.cfg.election_ticks_min
                )
                if in_lease and not m.transfer:
                    # Dissertation §4.2.3: while we hear from a primary, a vote request
                    # is from a disruptive server; ignore it (and keep our term).
                    return
            if type(m) is RequestVote and m.pre_vote:
                pass  # a pre-vote never changes anybody's term
            elif type(m) is VoteResponse and m.pre_vote and m.granted:
                pass  # the term moves when the real election starts
            else:
                from_leader = type(m) in (Replicate, Heartbeat, InstallSnapshot)
                self._become_backup(m.term, m.server_id if from_leader else NONE)
        elif m.term < self.term:
            if (self.cfg.check_quorum or self.cfg.pre_vote) and type(m) in (Heartbeat, Replicate):
                # A stale primary (maybe cut off while we moved on) learns our term and
                # steps down; without this, pre-vote and check-quorum could leave it stuck.
                self._send(HeartbeatAck(term=self.term, server_id=self.id, to=m.server_id,
                                        incarnation=self.incarnation))
            elif type(m) is RequestVote and m.pre_vote:
                self._send(
                    VoteResponse(term=self.term, server_id=self.id, to=m.server_id, granted=False, pre_vote=True)
                )
            return  # anything else from an older term is ignored

        if type(m) is RequestVote:
            self._handle_vote_request(m)
        elif self.role is Role.PRIMARY:
            self._step_primary(m)
        elif self.role is Role.CANDIDATE:
            self._step_candidate(m)
        else:
            self._step_backup(m)
        if self.recovering:
            self._maybe_end_recovery()

    def _check_against_state(self, m: Message) -> None:
        """Reject what an honest peer cannot send us, before anything changes."""
        t = type(m)
        if m.term < self.term:
            return  # stale messages are ignored anyway
        if m.term != self.term or self.role is not Role.PRIMARY:
            return
        if t is Replicate or t is Heartbeat or t is InstallSnapshot:
            raise MessageError(f"server {m.server_id} claims to be primary of term {m.term}, which is ours")
        if t is ReplicateAck and m.index > self.log.last_index:  # type: ignore[attr-defined]
            raise MessageError(f"REPLICATE_ACK for index {m.index} beyond our last entry {self.log.last_index}")  # type: ignore[attr-defined]
        if t is HeartbeatAck and m.ctx > self.reads.ctx:  # type: ignore[attr-defined]
            # It would confirm reads we have not asked about (and all later ones).
            raise MessageError(f"HEARTBEAT_ACK for read round {m.ctx}, but only {self.reads.ctx} were sent")  # type: ignore[attr-defined]

    def _handle_vote_request(self, m: RequestVote) -> None:
        can_vote = not self.recovering and (  # (it may have promised its vote already, and lost it)
            self.vote == m.server_id
            or (self.vote == NONE and self.leader == NONE)
            or (m.pre_vote and m.term > self.term)
        )
        if can_vote and self.log.is_up_to_date(m.last_index, m.last_term):
            # Raft §5.4.1: only a candidate whose log is at least as up to date as ours.
            self._send(
                VoteResponse(term=m.term, server_id=self.id, to=m.server_id, granted=True, pre_vote=m.pre_vote,
                             incarnation=self.incarnation, fenced=self._voters_fenced())
            )
            if not m.pre_vote:
                # One vote per term; it is in the hard state of the same Ready, so it
                # is on disk before this response leaves.
                self.vote = m.server_id
                self.election_elapsed = 0
        else:
            self._send(
                VoteResponse(term=self.term, server_id=self.id, to=m.server_id, granted=False, pre_vote=m.pre_vote,
                             incarnation=self.incarnation, fenced=self._voters_fenced())
            )

    def _step_backup(self, m: Message) -> None:
        t = type(m)
        if t is Replicate or t is Heartbeat or t is InstallSnapshot:
            self.election_elapsed = 0
            self.leader = m.server_id
            if t is Replicate:
                self._handle_replicate(m)  # type: ignore[arg-type]
            elif t is Heartbeat:
                self._handle_heartbeat(m)  # type: ignore[arg-type]
            else:
                self._handle_snapshot(m)  # type: ignore[arg-type]
        elif t is TimeoutNow:
            if self.promotable:
                self._campaign(pre_vote=False, transfer=True)
        elif t is ReadIndexResp:
            self._reads_out.append(ReadState(m.request_id, m.index))  # type: ignore[attr-defined]
        # FORWARD, READ_INDEX (we are not primary) and answers meant for a primary or a
        # candidate are dropped: the sender times out and retries.

    def _step_candidate(self, m: Message) -> None:
        t = type(m)
        if t is Replicate or t is Heartbeat or t is InstallSnapshot:
            # Somebody won this term (Raft §5.2).
            self._become_backup(m.term, m.server_id)
            self._step_backup(m)
        elif t is VoteResponse:
            if m.pre_vote != self.pre_campaign:  # type: ignore[attr-defined]
                return  # an answer to an earlier phase
            if m.server_id not in self.membership.voters:
                return
            if m.server_id not in self.votes:
                self.votes[m.server_id] = m.granted  # type: ignore[attr-defined]
                self._vote_incarnation[m.server_id] = m.incarnation  # type: ignore[attr-defined]
                fence = self._vote_fence
                for pid, inc in m.fenced:  # type: ignore[attr-defined]
                    if inc > fence.get(pid, 0):
                        fence[pid] = inc
            won = quorum.outcome(*self._tally(), len(self.membership.voters))
            if won:
                self._won_election()
            elif won is False:
                self._become_backup(self.term, NONE)

    def _step_primary(self, m: Message) -> None:
        t = type(m)
        if t is Forward:
            with contextlib.suppress(Refused):  # dropped: the backup times out and retries
                self.propose_batch(m.commands)  # type: ignore[attr-defined]
            return
        pr = self.progress.get(m.server_id)
        if pr is None:
            return  # not (or no longer) a member: drop
        if (t is ReplicateAck or t is HeartbeatAck) and not self._raise_fence(m.server_id, m.incarnation) \
                and not m.recovering:  # type: ignore[attr-defined]
            # From a store that is gone (it lost its disk since): what it says it
            # holds is not held any more. (That it may have lost something is
            # believed from any store.)
            return
        if t is ReplicateAck:
            self._handle_replicate_ack(m, pr)  # type: ignore[arg-type]
        elif t is HeartbeatAck:
            self._handle_heartbeat_ack(m, pr)  # type: ignore[arg-type]
        elif t is ReadIndex:
            self._primary_read(m.server_id, m.request_id)  # type: ignore[attr-defined]

    # ---- backup side of replication
    def _handle_replicate(self, m: Replicate) -> None:
        if self.recovering and m.recovering and m.term == self.term:
            t = self._recover_target
            if t is None or t[0] != m.term or t[1] < m.commit:
                self._recover_target = (m.term, m.commit)
        if m.prev_index < self.commit:
            # Everything up to our commit index already matches the primary.
            self._ack(m.server_id, self.commit)
            return
        if not self.log.match_term(m.prev_index, m.prev_term):
            # Raft §5.3 consistency check failed. Hint where our log may match, a
            # whole term at a time (the "fast backup" of the Raft paper, §5.3 end).
            hint_index, hint_term = self.log.find_conflict_by_term(m.prev_index, m.prev_term)
            self._send(
                ReplicateAck(
                    term=self.term,
                    server_id=self.id,
                    to=m.server_id,
                    index=m.prev_index,
                    reject=True,
                    hint_index=hint_index,
                    hint_term=hint_term,
                    recovering=self.recovering,
                    incarnation=self.incarnation,
                )
            )
            return
        entries = m.entries
        last_new = m.prev_index + len(entries)
        if entries:
            # The conflict is after prev_index >= commit: a committed entry is never replaced.
            conflict = self.log.find_conflict(entries)
            if conflict:
                self._append_from(entries[conflict - entries[0].index :])
        self._commit_to(min(m.commit, last_new))
        self._ack(m.server_id, last_new)

    def _ack(self, to: int, index: int) -> None:
        self._send(ReplicateAck(term=self.term, server_id=self.id, to=to, index=index, recovering=self.recovering,
                                incarnation=self.incarnation))

    def _append_from(self, entries: Sequence[Entry]) -> None:
        """Append entries, first dropping any suffix of ours that conflicts with them."""
        first = entries[0].index
        if first <= self.log.last_index:
            self.log.truncate_after(first - 1)
            self._unsaved_from = min(self._unsaved_from, first)
            self._persisted = min(self._persisted, first - 1)
            # An acknowledgement not yet handed out in a Ready may name entries just
            # dropped (acked to the previous primary before this one's entries came):
            # sent with this Ready it would claim what the disk no longer holds.
            self._outbox = [
                m for m in self._outbox if not (type(m) is ReplicateAck and not m.reject and m.index >= first)
            ]
            if self.history.truncate_from(first):
                self._membership_became(self.history.latest)
        self.log.append(entries)
        if EntryKind.CONFIG in set(map(_kind_of, entries)):
            for e in entries:
                if e.kind == EntryKind.CONFIG:
                    self._set_membership(e.index, Membership.decode(e.data))

    def _commit_to(self, index: int) -> None:
        if index > self.commit:
            self.commit = index

    def _handle_heartbeat(self, m: Heartbeat) -> None:
        if m.commit > self.log.last_index:
            # The primary sends min(what we acknowledged, its commit): we acknowledged
            # entries we no longer hold. Our disk lost what we promised (it was
            # replaced, or damaged in a way nobody noticed): recover, and tell the
            # primary where our log really ends.
            self._start_recovery()
            last = self.log.last_index
            self._send(ReplicateAck(term=self.term, server_id=self.id, to=m.server_id, index=m.commit, reject=True,
                                    hint_index=last, hint_term=self.log.term(last) or 0, recovering=True,
                                    incarnation=self.incarnation))
            return
        self._commit_to(m.commit)
        self._send(HeartbeatAck(term=self.term, server_id=self.id, to=m.server_id, ctx=m.ctx,
                                recovering=self.recovering, incarnation=self.incarnation))

    def _handle_snapshot(self, m: InstallSnapshot) -> None:
        s = m.snapshot
        if s.index <= self.commit:
            self._ack(m.server_id, self.commit)
            return
        if self.log.match_term(s.index, s.term):
            # We already hold the snapshot's last entry: just learn that it is committed.
            self._commit_to(s.index)
            self._ack(m.server_id, self.commit)
            return
        self.log.restore(s)
        self.history.restore(s.membership)
        self._membership_became(s.membership)
        self.commit = s.index
        self._snapshot_out = s
        self._unsaved_from = s.index + 1
        self._persisted = 0  # nothing of the new log is durable until the snapshot is
        self._apply_from = s.index + 1
        self._ack(m.server_id, s.index)

    # ---- primary side of replication
    def _handle_replicate_ack(self, m: ReplicateAck, pr: Progress) -> None:
        pr.recent_active = True
        pr.recovering = m.recovering
        if m.reject and m.recovering and m.hint_index < pr.match:
            # It lost entries it had acknowledged (a replaced disk): start again from
            # where its log really ends. Its acknowledgements count for nothing until
            # it has recovered, so forgetting them changes no commit.
            pr.match = m.hint_index
            pr.become_probe()
            pr.next = m.hint_index + 1
            return
        if m.reject:
            match_hint = m.hint_index
            if m.hint_term > 0:
                match_hint = self.log.find_conflict_by_term(m.hint_index, m.hint_term)[0]
            if pr.maybe_decrease_to(m.index, match_hint) and pr.state is ProgressState.REPLICATE:
                pr.become_probe()
            return
        if not pr.maybe_update(m.index):
            return
        if pr.state is ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state is ProgressState.SNAPSHOT and pr.match + 1 >= self.log.first_index:
            pr.become_probe()
            pr.become_replicate()
        self._maybe_commit()
        if m.server_id == self.lead_transferee and pr.match == self.log.last_index:
            self._send(TimeoutNow(term=self.term, server_id=self.id, to=m.server_id))

    def _handle_heartbeat_ack(self, m: HeartbeatAck, pr: Progress) -> None:
        pr.recent_active = True
        pr.recovering = m.recovering
        pr.probe_sent = False
        if pr.match < self.log.last_index and pr.state is not ProgressState.SNAPSHOT:
            if pr.state is ProgressState.REPLICATE and pr.is_paused(
                self.cfg.max_inflight_msgs, self.cfg.max_inflight_bytes
            ):
                # Something we sent may be lost: free a slot so a probe gets through.
                pr.inflight_bytes -= pr.inflight.popleft()[1]
            if not pr.is_paused(self.cfg.max_inflight_msgs, self.cfg.max_inflight_bytes):
                self._send_append(m.server_id, pr, allow_empty=True)
        if m.ctx > pr.acked_ctx:
            pr.acked_ctx = m.ctx
            self._release_reads()

    def _maybe_commit(self) -> bool:
        """Raft §5.3/§5.4.2: commit the highest index a quorum of voters holds, but
        only by counting replicas of an entry of the current term."""
        self._forget_removed()
        voters = self.membership.voters
        progress = self.progress
        # A recovering voter's acknowledgements count for nothing (nor does it vote).
        index = quorum.reached((progress[pid].match for pid in voters if pid in progress and not progress[pid].recovering),
                               len(voters))
        if index is None or index <= self.commit or self.log.term(index) != self.term:
            return False
        first_in_term = self.log.term(self.commit) != self.term
        self.commit = index
        self._committed(first_in_term)
        return True

    def _committed(self, first_in_term: bool) -> None:
        """What a primary's new commit index sets going: servers whose removal is
        now committed are let go; the reads that waited for a commit in this term
        go on (dissertation §6.4); a primary whose own removal is committed hands
        over and steps down (§4.2.2)."""
        self._forget_removed()
        if first_in_term and self.reads.need_commit:
            for origin, req in self.reads.take_need_commit():
                self._primary_read(origin, req)
        if self.id not in self.membership.voters and 0 < self.history.latest_index <= self.commit:
            successor = self.most_caught_up()
            if successor != NONE:
                self._send(TimeoutNow(term=self.term, server_id=self.id, to=successor))
            self._become_backup(self.term, NONE)

    def _forget_removed(self) -> None:
        """Once a membership change is committed, stop replicating to the servers it
        removed: each once it holds its removal, told the commit then (it knows its
        removal is committed, and no longer campaigns: see ``promotable``), or once
        it has not answered for an election timeout."""
        at = self.history.latest_index
        if not at or len(self.progress) <= len(self.membership.members):
            return
        if at > self.commit:
            return
        for pid in [p for p in self.progress if p not in self.membership.members]:
            pr = self.progress[pid]
            if pid == self.id or pr.match >= at or not pr.recent_active:  # (or gone quiet)
                del self.progress[pid]
                if pid != self.id:
                    self._send(Heartbeat(term=self.term, server_id=self.id, to=pid,
                                         commit=min(pr.match, self.commit), ctx=self.reads.ctx))

    def _send_append(self, pid: int, pr: Progress, *, allow_empty: bool) -> bool:
        """Send the next REPLICATE (or the snapshot) to ``pid``; False if nothing was sent."""
        log = self.log
        prev = pr.next - 1
        prev_term = log.term(prev)
        if prev_term is None:
            # The entries it needs were compacted: it needs the snapshot (Raft §7).
            pr.become_snapshot(log.snapshot.index)
            self._send(InstallSnapshot(term=self.term, server_id=self.id, to=pid, snapshot=log.snapshot))
            return True
        entries = log.slice_bytes(pr.next, self.cfg.max_msg_bytes) if pr.next <= log.last_index else ()
        if not entries and not allow_empty:
            return False
        self._send(
            Replicate(
                term=self.term,
                server_id=self.id,
                to=pid,
                prev_index=prev,
                prev_term=prev_term,
                entries=entries,
                commit=self.commit,
                recovering=pr.recovering,
            )
        )
        pr.sent_commit = self.commit
        if entries:
            pr.sent(entries[-1].index, log.bytes_between(entries[0].index, entries[-1].index))
        elif pr.state is ProgressState.PROBE:
            pr.probe_sent = True
        return True

    def _broadcast_heartbeat(self) -> None:
        for pid, pr in self.progress.items():
            if pid != self.id:
                self._send(
                    Heartbeat(
                        term=self.term,
                        server_id=self.id,
                        to=pid,
                        commit=min(pr.match, self.commit),
                        ctx=self.reads.ctx,
                    )
                )

    def _send(self, m: Message) -> None:
        self._outbox.append(m)

    # ------------------------------------------------------------------ output
    def _emit(self) -> None:
        """Turn what accumulated since the last Ready into messages: on a primary,
        one heartbeat round for new reads, then entries and commit updates for
        every follower; on a backup, the client commands to forward."""
        if self.role is Role.PRIMARY:
            if self._forward_buf:
                # Accepted for forwarding while a backup; we are primary now.
                with contextlib.suppress(Refused):
                    self.propose_batch(self._forward_buf)
                self._forward_buf.clear()
            if self.reads.start_round():
                self._broadcast_heartbeat()
            self._replicate()
        elif self._forward_buf:
            if self.leader != NONE:
                self._forward(self._forward_buf)
            self._forward_buf.clear()

    def _replicate(self) -> None:
        """Send every follower the entries it lacks, pipelined up to the in-flight
        limits, or at least the new commit index (Raft §5.3)."""
        max_msgs, max_bytes = self.cfg.max_inflight_msgs, self.cfg.max_inflight_bytes
        last, commit = self.log.last_index, self.commit
        for pid, pr in self.progress.items():
            if pid == self.id or (pr.next > last and pr.sent_commit >= commit):
                continue  # nothing new for it
            sent = False
            while not pr.is_paused(max_msgs, max_bytes) and self._send_append(pid, pr, allow_empty=False):
                sent = True
            if not sent and pr.sent_commit < commit and not pr.is_paused(max_msgs, max_bytes):
                self._send_append(pid, pr, allow_empty=True)  # tell it the new commit index

    def _forward(self, commands: list[bytes]) -> None:
        """FORWARD client commands to the primary, in pieces of at most
        max_msg_bytes (at least one command each)."""
        batch: list[bytes] = []
        size = 0
        for data in commands:
            if batch and size + len(data) > self.cfg.max_msg_bytes:
                self._send(Forward(term=self.term, server_id=self.id, to=self.leader, commands=tuple(batch)))
                batch, size = [], 0
            batch.append(data)
            size += len(data)
        self._send(Forward(term=self.term, server_id=self.id, to=self.leader, commands=tuple(batch)))

    def has_ready(self) -> bool:
        self._emit()
        return bool(
            self._outbox
            or self._reads_out
            or self._snapshot_out is not None
            or self._unsaved_from <= self.log.last_index
            or self._apply_from <= self.commit
            or self._membership_changed
            or self._prev_hard != (self.term, self.vote, self.commit, self.recovering, self.incarnation, self._fenced)
            or self._prev_soft != (self.role, self.leader)
        )

    def ready(self) -> Ready:
        assert self._outstanding is None, "advance() the previous Ready first"
        self._emit()
        log = self.log
        last = log.last_index
        entries = tuple(log.slice(self._unsaved_from, last)) if self._unsaved_from <= last else ()
        committed = tuple(log.slice(self._apply_from, self.commit)) if self._apply_from <= self.commit else ()
        hard = (self.term, self.vote, self.commit, self.recovering, self.incarnation, self._fenced)
        soft = (self.role, self.leader)
        messages = tuple(self._outbox)
        # (self._prev_hard is on disk: the previous Ready was persisted before advance.)
        must_sync, now, after = plan(self.id, messages, hard, self._prev_hard,
                                     bool(entries) or self._snapshot_out is not None)
        rd = Ready(
            hard_state=HardState(*hard) if hard != self._prev_hard else None,
            soft_state=SoftState(self.role, self.leader, self.term) if soft != self._prev_soft else None,
            snapshot=self._snapshot_out,
            entries=entries,
            messages=messages,
            committed=committed,
            reads=tuple(self._reads_out),
            membership=self.membership if self._membership_changed else None,
            must_sync=must_sync,
            now=now,
            after=after,
        )
        self._prev_hard, self._prev_soft = hard, soft
        self._outbox = []
        self._reads_out = []
        self._snapshot_out = None
        self._membership_changed = False
        self._unsaved_from = last + 1
        self._apply_from = max(self._apply_from, self.commit + 1)
        self._outstanding = rd
        return rd

    def advance(self, rd: Ready) -> None:
        """The caller persisted, sent and applied everything in ``rd``."""
        assert rd is self._outstanding, "advance() takes the Ready that ready() returned"
        self._outstanding = None
        if rd.snapshot is not None:
            self.applied = max(self.applied, rd.snapshot.index)
            if self.log.snapshot is rd.snapshot:
                self._persisted = max(self._persisted, rd.snapshot.index)
        if rd.entries:
            last = rd.entries[-1]
            if self.log.term(last.index) == last.term:
                self._persisted = max(self._persisted, last.index)
        if rd.committed:
            self.applied = max(self.applied, rd.committed[-1].index)
        if self.role is Role.PRIMARY:
            me = self.progress.get(self.id)
            if me is not None and self._persisted > me.match:
                me.match = self._persisted
                self._maybe_commit()
        if self.recovering:
            self._maybe_end_recovery()
