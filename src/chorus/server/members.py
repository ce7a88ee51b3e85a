"""Who the members are and where, as one server sees them: the membership in
its log (or, for a server that joined and has no log yet, what the member it
joined through said), each member's address (the membership's, else the
configuration's), whether a peer was heard from lately, and this server's own
removal (once applied, it stops)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from chorus.raft import Membership, RaftNode

from .config import Config, ConfigError, ServerSpec, spec_of

log = logging.getLogger("chorus.replica")


class RemovedFromCluster(Exception):
    """This server's removal was committed: it stops, for good (its id is not used again)."""


class Members:
    """Part of :class:`chorus.server.replica.Replica`."""

    # Made by Replica.__init__.
    id: int
    cfg: Config
    node: RaftNode
    applied: int
    joined_as: Membership | None
    heard: dict[int, float]  # when each peer's last message arrived (monotonic)
    failed: asyncio.Future | None
    _stopped: bool

    if TYPE_CHECKING:
        def _fail_requests(self, why: str) -> None: ...  # (Requests)

    @property
    def membership(self) -> Membership:
        """The core's, or, until the log of a server that joined has one, what the
        member it joined through said."""
        m = self.node.membership
        if not m.voters and self.joined_as is not None:
            return self.joined_as
        return m

    def address_of(self, server_id: int) -> ServerSpec | None:
        """Where a server is: as the membership in the log says, or else (a
        cluster made before the membership carried addresses) the configuration."""
        return self.cfg.address_of(self.membership, server_id)

    def _own_spec(self) -> ServerSpec:
        """Where this server listens: its [[server]] table, or its address in the
        membership (a server that joined without one)."""
        for s in self.cfg.servers:
            if s.id == self.id:
                return s
        member = self.membership.address(self.id)
        if member is None:
            raise ConfigError(f"server {self.id} is neither in the configuration nor a member of the cluster: "
                              "add it (chorus member add) and start it with --join")
        return spec_of(member)

    def is_removed(self) -> bool:
        """This server's removal is applied here (committed: it cannot be undone)."""
        return self.id in self.node.history.at(self.applied).removed

    def _leave(self) -> None:
        log.warning("replica %d: removed from the cluster (applied at %d): it serves no more requests and stops",
                    self.id, self.applied)
        self._fail_requests("this server was removed from the cluster")
        self._stopped = True
        if self.failed is not None and not self.failed.done():
            self.failed.set_result(RemovedFromCluster(f"server {self.id} was removed from the cluster"))

    def reachable(self, peer: int) -> bool:
        """Whether ``peer`` was heard from within two election timeouts."""
        return peer == self.id or time.monotonic() - self.heard.get(peer, -1e9) <= \
            2 * self.cfg.election_timeout_ms[1] / 1000
