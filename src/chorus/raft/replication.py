"""Log replication (Raft §5.3), both sides: a follower's checks of what the
primary sends and its acknowledgements (persisted before they leave: see
``Ready``), and the primary's bookkeeping of each follower (``Progress``,
after etcd-io/raft's progress tracking), the commit rule (§5.3, §5.4.2),
heartbeats, and FORWARDs of client commands from a backup to the primary."""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter

from . import quorum
from .messages import (
    Entry,
    EntryKind,
    Forward,
    Heartbeat,
    HeartbeatAck,
    InstallSnapshot,
    Membership,
    Replicate,
    ReplicateAck,
    TimeoutNow,
)
from .progress import Progress, ProgressState
from .ready import NONE
from .state import NodeState

_kind_of = attrgetter("kind")


class Replication(NodeState):
    """Part of :class:`chorus.raft.node.RaftNode`: replication."""

    def _handle_replicate(self, m: Replicate) -> None:
        """AppendEntries, the receiver's rules (Raft Figure 2; the term, rule 1,
        was ``_term_rule``): 2. refuse if the log has no entry at prev_index of
        prev_term (with a hint, §5.3's "fast backup"); 3. delete a conflicting
        entry and all that follow; 4. append the new entries; 5. commit up to
        min(leaderCommit, index of the last new entry). The acknowledgement
        leaves once the entries are on disk (the Ready's ``after``)."""
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
        if m.server_id == self.transferee and pr.match == self.log.last_index:
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
        index = quorum.reached([progress[pid].match for pid in voters if pid in progress and not progress[pid].recovering],
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
        if len(self.progress) <= len(self.membership.members):
            return
        at = self.history.latest_index
        if not at or at > self.commit:
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
                self._send(Forward(term=self.term, server_id=self.id, to=self.primary, commands=tuple(batch)))
                batch, size = [], 0
            batch.append(data)
            size += len(data)
        self._send(Forward(term=self.term, server_id=self.id, to=self.primary, commands=tuple(batch)))
