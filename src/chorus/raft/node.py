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

from . import quorum
from .config import RaftConfig
from .elections import Elections
from .errors import Refused
from .log import RaftLog
from .membership import History
from .messages import (
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
from .output import Output
from .progress import Progress, ProgressState
from .reads import ReadQueue
from .ready import NONE, Hard, HardState, Persisted, ReadState, Ready, Role
from .reconfig import Reconfig
from .recovery import Recovery
from .replication import Replication
from .validate import validate


class RaftNode(Elections, Replication, Recovery, Reconfig, Output):
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
        self.primary = NONE
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
        self.transferee = NONE
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
        self._prev_soft = (self.role, self.primary)  # a BACKUP that knows no primary: not news
        self._outstanding: Ready | None = None

    def __repr__(self) -> str:
        lead = f" lead={self.primary}" if self.primary else ""
        return (
            f"n{self.id} {self.role.value} t{self.term}"
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

    def _hard(self) -> Hard:
        """The hard state's fields, in HardState's order."""
        return (self.term, self.vote, self.commit, self.recovering, self.incarnation, self._fenced)

    def hard_state(self) -> HardState:
        return HardState(*self._hard())

    # ------------------------------------------------------------------ role changes
    def _reset(self, term: int) -> None:
        if self.term != term:
            self.term = term
            self.vote = NONE
        self.primary = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self._reset_randomized_timeout()
        self.progress = {}
        self.votes = {}
        self._vote_incarnation = {}
        self._vote_fence = {}
        self.transferee = NONE
        self.reads.clear()

    def _reset_randomized_timeout(self) -> None:
        lo, hi = self.cfg.election_ticks_min, self.cfg.election_ticks_max
        self.randomized_timeout = self.rng.randrange(lo, hi) if hi > lo else lo

    def _become_backup(self, term: int, primary: int) -> None:
        self._reset(term)
        self.role = Role.BACKUP
        self.primary = primary

    def _become_primary(self) -> None:
        assert self.role is Role.CANDIDATE
        self._reset(self.term)
        self.role = Role.PRIMARY
        self.primary = self.id
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

    # ------------------------------------------------------------------ inputs
    def tick(self) -> None:
        """One unit of time passed (``config.tick_ms``)."""
        if self.recovering and self._probe_term is None:
            self._tick_probe()
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
            if self.transferee != NONE:
                self.transferee = NONE  # transfer did not finish in time: abort it
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
        if self.primary != NONE:
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
        if self.transferee != NONE:
            raise Refused(
                "transferring", f"leadership is moving to server {self.transferee}", self.primary
            )
        uncommitted = self.log.bytes_between(self.commit + 1, self.log.last_index)
        if uncommitted and uncommitted + size > self.cfg.max_uncommitted_bytes:
            raise Refused("busy", f"{uncommitted} bytes are waiting for commit; try again", self.primary)

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
        elif self.primary != NONE:
            self._send(ReadIndex(term=self.term, server_id=self.id, to=self.primary, request_id=request_id))
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
            [(self.reads.ctx if pid == self.id else self.progress[pid].acked_ctx)
             for pid in voters if pid in self.progress and not self.progress[pid].recovering],
            len(voters),
        )
        if confirmed is not None:
            for origin, req, index in self.reads.confirmed(confirmed):
                self._deliver_read(origin, req, index)

    # ---- snapshots
    def compact(self, index: int) -> None:
        """The caller took a snapshot of the applied state at ``index``: forget the
        log up to it. Followers that need those entries will get the snapshot."""
        if index <= self.log.snapshot.index:
            return
        if index > self.applied:
            raise ValueError(f"snapshot at {index} is beyond the applied index {self.applied}")
        term = self.log.term(index)
        assert term is not None  # (index is applied, so it is in the log)
        meta = SnapshotMeta(index, term, self.history.at(index))
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
            self._answer_probe(m)
            return
        if type(m) is ProbeResp:
            self._probed(m)
            return
        if type(m) is RequestVote and self.role is Role.PRIMARY:
            self._tell_removed(m)
        if not self._term_rule(m):
            return
        if type(m) is RequestVote:
            self._handle_vote_request(m)
        elif self.role is Role.PRIMARY:
            self._step_primary(m)
        elif self.role is Role.CANDIDATE or self.role is Role.PRE_CANDIDATE:
            self._step_candidate(m)
        else:
            self._step_backup(m)
        if self.recovering:
            self._maybe_end_recovery()

    def _term_rule(self, m: Message) -> bool:
        """Raft §5.1: a message of a later term makes this node adopt it, as a
        BACKUP (following the sender if it is that term's primary); one of an
        earlier term is stale and dropped. Whether to go on with ``m``.

        The exceptions: a vote request while we hear from a primary is ignored
        (dissertation §4.2.3), unless a leadership transfer sent it; a pre-vote,
        and a granted pre-vote, change nobody's term (§9.6); a stale primary
        gets our term back, so that it steps down (without this, pre-vote and
        check-quorum could leave it stuck), and a stale pre-vote an answer."""
        if m.term > self.term:
            if type(m) is RequestVote:
                in_lease = (
                    self.cfg.check_quorum
                    and self.primary != NONE
                    and self.election_elapsed < self.cfg.election_ticks_min
                )
                if in_lease and not m.transfer:
                    # Dissertation §4.2.3: while we hear from a primary, a vote request
                    # is from a disruptive server; ignore it (and keep our term).
                    return False
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
            return False  # anything else from an older term is ignored
        return True

    def _check_against_state(self, m: Message) -> None:
        """Reject what an honest peer cannot send us, before anything changes."""
        if m.term != self.term or self.role is not Role.PRIMARY:
            return  # (stale messages are ignored anyway)
        match m:
            case Replicate() | Heartbeat() | InstallSnapshot():
                raise MessageError(f"server {m.server_id} claims to be primary of term {m.term}, which is ours")
            case ReplicateAck() if m.index > self.log.last_index:
                raise MessageError(f"REPLICATE_ACK for index {m.index} beyond our last entry {self.log.last_index}")
            case HeartbeatAck() if m.ctx > self.reads.ctx:
                # It would confirm reads we have not asked about (and all later ones).
                raise MessageError(f"HEARTBEAT_ACK for read round {m.ctx}, but only {self.reads.ctx} were sent")

    def _step_backup(self, m: Message) -> None:
        match m:
            case Replicate() | Heartbeat() | InstallSnapshot():
                self.election_elapsed = 0
                self.primary = m.server_id
                match m:
                    case Replicate():
                        self._handle_replicate(m)
                    case Heartbeat():
                        self._handle_heartbeat(m)
                    case InstallSnapshot():
                        self._handle_snapshot(m)
            case TimeoutNow():
                if self.promotable:
                    self._campaign(pre_vote=False, transfer=True)
            case ReadIndexResp():
                self._reads_out.append(ReadState(m.request_id, m.index))
        # FORWARD, READ_INDEX (we are not primary) and answers meant for a primary or a
        # candidate are dropped: the sender times out and retries.

    def _step_primary(self, m: Message) -> None:
        if type(m) is Forward:
            with contextlib.suppress(Refused):  # dropped: the backup times out and retries
                self.propose_batch(m.commands)
            return
        pr = self.progress.get(m.server_id)
        if pr is None:
            return  # not (or no longer) a member: drop
        match m:
            case ReplicateAck() | HeartbeatAck() if not self._raise_fence(m.server_id, m.incarnation) \
                    and not m.recovering:
                # From a store that is gone (it lost its disk since): what it says it
                # holds is not held any more. (That it may have lost something is
                # believed from any store.)
                return
            case ReplicateAck():
                self._handle_replicate_ack(m, pr)
            case HeartbeatAck():
                self._handle_heartbeat_ack(m, pr)
            case ReadIndex():
                self._primary_read(m.server_id, m.request_id)
