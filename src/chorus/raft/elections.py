"""Leader election (Raft §5.2, §5.4.1), with pre-vote (dissertation §9.6) and
elections started by a leadership transfer (§3.10)."""

from __future__ import annotations

from . import quorum
from .messages import (
    MAX_NUMBER,
    Heartbeat,
    InstallSnapshot,
    Message,
    Replicate,
    RequestVote,
    VoteResponse,
)
from .ready import NONE, Role
from .state import NodeState


class Elections(NodeState):
    """Part of :class:`chorus.raft.node.RaftNode`: elections."""

    def _campaign(self, *, pre_vote: bool, transfer: bool = False) -> None:
        self._reset_randomized_timeout()
        self.election_elapsed = 0
        if self.term >= MAX_NUMBER:
            return  # no term beyond what the wire carries (only a hostile member gets here)
        if pre_vote:
            # Pre-candidates keep their term and vote (dissertation §9.6).
            self.role = Role.PRE_CANDIDATE
            self.primary = NONE
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

    def _won_election(self) -> None:
        if self.role is Role.PRE_CANDIDATE:
            self._campaign(pre_vote=False)
        else:
            self._become_primary()

    def _handle_vote_request(self, m: RequestVote) -> None:
        can_vote = not self.recovering and (  # (it may have promised its vote already, and lost it)
            self.vote == m.server_id
            or (self.vote == NONE and self.primary == NONE)
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

    def _step_candidate(self, m: Message) -> None:
        match m:
            case Replicate() | Heartbeat() | InstallSnapshot():
                # Somebody won this term (Raft §5.2).
                self._become_backup(m.term, m.server_id)
                self._step_backup(m)
            case VoteResponse():
                if m.pre_vote != (self.role is Role.PRE_CANDIDATE):
                    return  # an answer to an earlier phase
                if m.server_id not in self.membership.voters:
                    return
                if m.server_id not in self.votes:
                    self.votes[m.server_id] = m.granted
                    self._vote_incarnation[m.server_id] = m.incarnation
                    fence = self._vote_fence
                    for pid, inc in m.fenced:
                        if inc > fence.get(pid, 0):
                            fence[pid] = inc
                won = quorum.outcome(*self._tally(), len(self.membership.voters))
                if won:
                    self._won_election()
                elif won is False:
                    self._become_backup(self.term, NONE)
