"""What the node hands its caller (etcd-io/raft's rawnode.go): messages made
since the last Ready, and the Ready itself with its plan, then ``advance``."""

from __future__ import annotations

import contextlib

from .errors import Refused
from .messages import Message
from .ready import NONE, HardState, Ready, Role, SoftState, split
from .state import NodeState


class Output(NodeState):
    """Part of :class:`chorus.raft.node.RaftNode`: the Ready."""

    def _send(self, m: Message) -> None:
        self._outbox.append(m)

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
            if self.reads.unsent and self.reads.start_round():
                self._broadcast_heartbeat()
            self._replicate()
        elif self._forward_buf:
            if self.primary != NONE:
                self._forward(self._forward_buf)
            self._forward_buf.clear()

    def has_ready(self) -> bool:
        self._emit()
        return bool(
            self._outbox
            or self._reads_out
            or self._snapshot_out is not None
            or self._unsaved_from <= self.log.last_index
            or self._apply_from <= self.commit
            or self._membership_changed
            or self._prev_hard != self._hard()
            or self._prev_soft != (self.role, self.primary)
        )

    def ready(self) -> Ready:
        assert self._outstanding is None, "advance() the previous Ready first"
        self._emit()
        log = self.log
        last = log.last_index
        entries = tuple(log.slice(self._unsaved_from, last)) if self._unsaved_from <= last else ()
        committed = tuple(log.slice(self._apply_from, self.commit)) if self._apply_from <= self.commit else ()
        hard = self._hard()
        soft = (self.role, self.primary)
        messages = tuple(self._outbox)
        # The plan (see Ready). self._prev_hard is on disk: the previous Ready was
        # persisted before advance. Anything but the commit index is a promise.
        prev = self._prev_hard
        changed = hard != prev
        if entries or self._snapshot_out is not None or (changed and (
                hard[0] != prev[0] or hard[1] != prev[1] or hard[3:] != prev[3:])):
            must_sync = True
            now, after = split(self.id, messages, prev) if messages else ((), ())
        else:
            must_sync, now, after = False, messages, ()
        rd = Ready(
            hard_state=HardState(*hard) if changed else None,
            soft_state=SoftState(self.role, self.primary, self.term) if soft != self._prev_soft else None,
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
