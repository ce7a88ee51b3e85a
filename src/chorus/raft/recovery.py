"""Recovery from a lost or damaged disk (docs/architecture.md, "Storage
faults"; after protocol-aware recovery, Alagappan et al., FAST 2018): a server
that may have lost what it promised neither votes nor counts until it knows a
bound on its past (PROBE) and holds what a primary of at least that term
committed without it. Incarnations fence off what the lost store promised."""

from __future__ import annotations

from .errors import Refused
from .messages import (
    Probe,
    ProbeResp,
)
from .ready import NONE, Role
from .state import NodeState


class Recovery(NodeState):
    """Part of :class:`chorus.raft.node.RaftNode`: recovery from a lost disk."""

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
        if self._probe_term is None or self.primary == NONE or self.role is not Role.BACKUP:
            return
        if self.term < self._probe_term or self.log.term(self.commit) != self.term:
            return
        target = self._recover_target
        if target is None or target[0] != self.term or self.commit < target[1] or self._persisted < self.commit:
            return
        self.recovering = False
        if self.vote == NONE:
            # Its vote in this term may have been lost: it is the primary's, which won it.
            self.vote = self.primary

    def _tick_probe(self) -> None:
        """Ask the voters that have not answered yet, every two heartbeat intervals."""
        self._probe_elapsed -= 1
        if self._probe_elapsed <= 0:
            self._probe_elapsed = self.cfg.heartbeat_ticks * 2
            for pid in sorted(self.membership.voters - {self.id} - set(self._probe)):
                self._send(Probe(term=self.term, server_id=self.id, to=pid, incarnation=self.incarnation))

    def _answer_probe(self, m: Probe) -> None:
        """Answered whatever the terms: nobody changes term for a probe. The
        prober's incarnation is in the hard state of the same Ready, so it is on
        disk before the answer leaves: from then on this node passes it in its
        votes, and any vote the prober gave before its loss is void."""
        self._raise_fence(m.server_id, m.incarnation)
        self._send(ProbeResp(term=self.term, server_id=self.id, to=m.server_id, recovering=self.recovering,
                             known=self._fence[m.server_id]))
