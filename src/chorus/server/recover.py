"""``chorus recover``: when only a minority of the voters survives, make one
surviving replica the seed of a new cluster, knowingly.

Raft cannot go on without a majority, and should not: what the dead majority
alone had may have been acknowledged. An operator who knows that the dead are
not coming back can accept the loss. Run with the server stopped, on its data
directory, ``recover`` makes the replica a cluster of one voter:

- every entry in its log counts as committed (the entries after its commit
  index may never have reached a majority, or may have: both are kept);
- a membership entry of a new term makes it the only voter, and puts every
  other member among the removed (they come back only under new ids, with
  empty disks: ``chorus member add`` then ``chorus serve --join``).

What may be lost is what the others had beyond this replica's log: writes
acknowledged after the last entry here. :func:`inspect` says how far this
replica's log goes, and what of it was known committed, so the command can say
so before it does anything.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from chorus.raft import Entry, EntryKind, HardState, Membership, RaftNode
from chorus.store import ReplicaStore

from .config import Config, ConfigError


@dataclass(frozen=True)
class Survivor:
    id: int
    term: int
    commit: int  # known committed here
    last_index: int  # the last entry of its log
    applied: int
    membership: Membership
    log_time: int  # ms: the time of the last command applied here


def _open(cfg: Config, server_id: int) -> tuple[ReplicaStore, RaftNode]:
    path = cfg.replica_dir(server_id) / "chorus.db"
    if not path.exists():
        raise ConfigError(f"{path}: no data: recover runs on a surviving server's data directory")
    store = ReplicaStore(path)
    persisted = store.restore()
    node = RaftNode(server_id, store.snapshot_meta().membership, rng=random.Random(), persisted=persisted)
    return store, node


def inspect(cfg: Config, server_id: int) -> Survivor:
    store, node = _open(cfg, server_id)
    try:
        return Survivor(server_id, node.term, node.commit, node.log.last_index, store.applied(), node.membership,
                        store.chat.log_time)
    finally:
        store.close()


def recover(cfg: Config, server_id: int) -> Survivor:
    """Make this replica the only voter of its cluster (see the module's docstring)."""
    store, node = _open(cfg, server_id)
    try:
        old = node.membership
        if server_id not in old.voters:
            raise ConfigError(f"server {server_id} is not a voter of its membership ({old!r}): recover a voter")
        if node.recovering:
            raise ConfigError(f"server {server_id} is recovering a lost disk: it may lack what it promised; "
                              "recover another survivor")
        others = old.members - {server_id}
        new = Membership(voters=frozenset({server_id}), removed=old.removed | others,
                         addresses=tuple(a for a in old.addresses if a.id == server_id))
        last = node.log.last_index
        term = node.term + 1
        entry = Entry(last + 1, term, int(EntryKind.CONFIG), new.encode())
        p = store.restore().hard_state
        store.save_recovered(entry, HardState(term=term, vote=server_id, commit=last + 1, recovering=False,
                                              incarnation=p.incarnation, fenced=p.fenced))
        store.mark_joined()
        return Survivor(server_id, term, last + 1, last + 1, store.applied(), new, store.chat.log_time)
    finally:
        store.close()
