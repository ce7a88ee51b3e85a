"""Membership changes one server at a time (Raft dissertation §4.1), learners
and their promotion (§4.2.1), removal of the primary itself (§4.2.2), and
leadership transfer (§3.10)."""

from __future__ import annotations

from .errors import Refused
from .messages import (
    EntryKind,
    Heartbeat,
    Member,
    Membership,
    RequestVote,
    TimeoutNow,
)
from .progress import Progress
from .ready import NONE, Role
from .state import NodeState


class Reconfig(NodeState):
    """Part of :class:`chorus.raft.node.RaftNode`: membership and leadership transfer."""

    def hand_over(self, target: int) -> None:
        if self.role is not Role.PRIMARY:
            raise Refused("not_primary", "only the primary can hand over leadership", self.primary)
        if target == self.id:
            return
        if target not in self.membership.voters:
            raise Refused("invalid", f"server {target} is not a voting member")
        if self.progress[target].recovering:
            raise Refused("invalid", f"server {target} is recovering a lost disk: it cannot lead yet")
        if self.transferee == target:
            return
        self.transferee = target
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

    def add_learner(self, node_id: int, address: Member | None = None, *, promote: bool = False) -> int:
        """Add ``node_id`` as a learner (at ``address``); with ``promote``, to be
        made a voter by the primary once it has caught up."""
        self._require_primary()
        if type(node_id) is not int or node_id <= 0:
            raise Refused("invalid", "server ids are positive integers")
        if address is not None and address.id != node_id:
            raise Refused("invalid", "the address is of another server")
        m = self.membership
        if node_id in m.members:
            raise Refused("invalid", f"server {node_id} is already a member")
        if node_id in m.removed:
            raise Refused("invalid", f"server {node_id} was removed before: a returning server needs a new id")
        return self._change_membership(Membership(
            m.voters, m.learners | {node_id}, m.removed, m.with_address(address),
            m.promoting | {node_id} if promote else m.promoting))

    def move(self, address: Member) -> int:
        """Record a member's new address (the server moved to another host or port)."""
        self._require_primary()
        m = self.membership
        if address.id not in m.members:
            raise Refused("invalid", f"server {address.id} is not a member")
        if m.address(address.id) == address:
            raise Refused("invalid", f"server {address.id} is at that address already")
        return self._change_membership(Membership(m.voters, m.learners, m.removed, m.with_address(address),
                                                  m.promoting))

    def promote(self, node_id: int) -> int:
        self._require_primary()
        m = self.membership
        if node_id not in m.learners:
            raise Refused("invalid", f"server {node_id} is not a learner")
        pr = self.progress[node_id]
        lag = self.log.last_index - pr.match
        if pr.match == 0 or lag > self.cfg.promote_max_lag:
            raise Refused("not_caught_up", f"server {node_id} is {lag} entries behind; try later")
        return self._change_membership(Membership(m.voters | {node_id}, m.learners - {node_id}, m.removed,
                                                  m.addresses, m.promoting - {node_id}))

    def remove(self, node_id: int) -> int:
        self._require_primary()
        m = self.membership
        if node_id not in m.members:
            raise Refused("invalid", f"server {node_id} is not a member")
        voters = m.voters - {node_id}
        if not voters:
            raise Refused("invalid", "cannot remove the last voting member")
        return self._change_membership(Membership(voters, m.learners - {node_id}, m.removed | {node_id},
                                                  m.without(node_id), m.promoting - {node_id}))

    def _require_primary(self) -> None:
        if self.role is not Role.PRIMARY:
            raise Refused("not_primary", "membership changes go to the primary", self.primary)

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

    def _tell_removed(self, m: RequestVote) -> None:
        """A server whose removal is committed, and that the primary stopped
        replicating to, campaigns: the one heartbeat that told it the commit was
        lost. Tell it again, up to where its log matches ours (Log Matching: the
        same entry at its last index means the same log up to there), so that it
        learns its removal is committed and stops."""
        if m.server_id in self.membership.removed and m.server_id not in self.progress \
                and self.log.match_term(m.last_index, m.last_term):
            self._send(Heartbeat(term=self.term, server_id=self.id, to=m.server_id,
                                 commit=min(self.commit, m.last_index), ctx=self.reads.ctx))

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
                known = self.progress.get(pid)
                if known is None:
                    known = self.progress[pid] = Progress(self.log.last_index + 1)
                    if pid == self.id:
                        known.match = self._persisted
                known.is_learner = pid not in membership.voters
            if self.transferee not in membership.voters:
                self.transferee = NONE
