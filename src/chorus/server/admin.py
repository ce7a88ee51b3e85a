"""Operating the cluster from the client port: an operator proves it knows the
cluster secret on one connection (a fresh nonce per connection, so nothing
captured replays), then lists the members and adds, removes or moves one.

A change goes to the primary (a backup answers "unavailable" naming it), one at
a time, as the core allows (raft/reconfig.py), and is answered once it is
committed and applied here. What the core does not check is checked here: an
address that is a member's already, and a removal that would leave too few
voters reachable to make a majority.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from chorus.raft import Member, Membership, RaftNode, Refused, Role
from chorus.raft.quorum import size as quorum_size
from chorus.store import SnapshotFile
from chorus.store.snapshots import CHUNK_BYTES
from chorus.wire import client as W
from chorus.wire import results as R
from chorus.wire.errors import ChorusError, Unavailable

if TYPE_CHECKING:
    from .replica import Replica

@dataclass(frozen=True)
class Joining:
    """What a server joining with ``--join`` learned from a member."""

    cluster: str  # the cluster's id
    membership: Membership  # with this server in it


BACKUPS = "backups"  # in a replica's directory: the backups being read (removed at start)

_CODES = {"invalid": "invalid_change", "unsafe": "unsafe_change", "change_pending": "change_pending",
          "not_ready": "not_ready", "not_caught_up": "not_ready", "busy": "busy", "transferring": "not_ready"}


def check_proof(secret: bytes, nonce: str | None, server_id: int, sent: str) -> bool:
    return nonce is not None and hmac.compare_digest(W.admin_proof(secret, nonce, server_id), sent)


def member_list(replica: Replica) -> R.MemberList:
    node = replica.node
    m = node.membership
    primary = node.role is Role.PRIMARY
    members = []
    for pid in sorted(m.members):
        spec = replica.address_of(pid)
        match = lag = None
        recovering = False
        if primary and pid == node.id:
            match, lag = node.last_index, 0
        elif primary and pid in node.progress:
            p = node.progress[pid]
            match, lag, recovering = p.match, max(0, node.last_index - p.match), p.recovering
        members.append(R.MemberInfo(
            id=pid, role="voter" if pid in m.voters else "learner", peer=spec.peer_address if spec else None,
            client=spec.client_address if spec else None, promoting=pid in m.promoting, primary=pid == node.primary,
            match=match, lag=lag, recovering=recovering, reachable=replica.reachable(pid) if primary else None))
    return R.MemberList(
        cluster=replica.cluster_id, server=replica.id, primary=node.primary or None,
        primary_address=replica.primary_address(), last_index=node.last_index,
        change_pending=node.history.latest_index > node.commit, removed=sorted(m.removed), members=members,
        membership=m.encode().decode())


def _address(req: W.MemberAdd | W.MemberMove) -> Member:
    for a in (req.peer, req.client):
        port = int(a.rpartition(":")[2])
        if not 0 < port < 65536:
            raise ChorusError("invalid_request", f"{a}: a port is 1 to 65535")
    if req.peer == req.client:
        raise ChorusError("invalid_request", "the peer and client addresses must differ")
    if req.peer.rpartition(":")[0] != req.client.rpartition(":")[0]:
        raise ChorusError("invalid_request", "the peer and client addresses must be of one host")
    return Member(req.server, req.peer, req.client)


def _taken(replica: Replica, member: Member) -> None:
    """Refuse an address another member has (two servers cannot listen on one)."""
    for pid in replica.node.membership.members:
        if pid == member.id:
            continue
        spec = replica.address_of(pid)
        if spec is not None and {spec.peer_address, spec.client_address} & {member.peer, member.client}:
            raise ChorusError("invalid_change", f"server {pid} has that address already")


def _reachable_after_removal(replica: Replica, removed: int) -> None:
    """A removal must leave a majority of the new voters able to take part: the
    primary itself and followers heard from lately, not recovering a lost disk."""
    node = replica.node
    voters = node.membership.voters - {removed}
    if not voters:
        return  # (the core refuses: the last voter)
    active = {v for v in voters if replica.reachable(v) and not (v in node.progress and node.progress[v].recovering)}
    if len(active) < quorum_size(len(voters)):
        raise ChorusError("unsafe_change", f"removing server {removed} would leave {len(active)} of {len(voters)} "
                                           "voters reachable: fewer than a majority")


async def change(replica: Replica, req: W.MemberAdd | W.MemberRemove | W.MemberMove) -> R.MemberChanged:
    node = replica.node
    if node.role is not Role.PRIMARY:
        raise Unavailable("unavailable", "membership changes go to the primary", replica.primary_address())
    if isinstance(req, W.MemberRemove) and req.server == node.id and len(node.membership.voters) > 1 and \
            await replica.hand_over_now("before its removal"):
        # The primary is to go: it hands over first, so that clients see no election
        # (the new primary then takes the removal, as the client retries it there).
        # (Without a voter to hand over to, it removes itself: the core steps down.)
        raise Unavailable("unavailable", f"server {node.id} handed over before its removal: send it to the new "
                                         "primary", replica.primary_address())
    try:
        match req:
            case W.MemberAdd():
                member = _address(req)
                _taken(replica, member)
                index = node.add_learner(req.server, member, promote=not req.learner)
            case W.MemberMove():
                member = _address(req)
                _taken(replica, member)
                index = node.move(member)
            case W.MemberRemove():
                _reachable_after_removal(replica, req.server)
                index = node.remove(req.server)
    except Refused as exc:
        if exc.code == "not_primary":
            raise Unavailable("unavailable", str(exc), replica.primary_address()) from None
        raise ChorusError(_CODES.get(exc.code, "invalid_change"), str(exc)) from None
    made, term = node.membership, node.term
    replica._kick()
    await replica.applied_up_to(index, time.monotonic() + replica.cfg.request_timeout_s)
    if replica.node.history.at(index) != made or replica.node.log.term(index) not in (term, None):
        raise Unavailable("unavailable", "the change was lost in a change of primary: see member_list, and retry",
                          replica.primary_address())
    return R.MemberChanged(index=index, voters=sorted(made.voters), learners=sorted(made.learners))


async def backup(replica: Replica) -> SnapshotFile:
    """A snapshot of everything committed before the request (a linearizable
    read first), made while writes go on, in the replica's backups directory."""
    await replica.read_barrier("linearizable")
    (replica.dir / BACKUPS).mkdir(exist_ok=True)
    directory = Path(tempfile.mkdtemp(dir=replica.dir / BACKUPS))  # (one per backup: none removes another's)
    loop = asyncio.get_running_loop()
    try:
        return await loop.run_in_executor(replica.snap_io, replica.store.create_snapshot, directory)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise


def taken(snap: SnapshotFile) -> R.BackupTaken:
    return R.BackupTaken(index=snap.meta.index, term=snap.meta.term, size=snap.size, sha256=snap.sha256,
                         digest=f"{snap.digest:016x}", chunk=CHUNK_BYTES)


def backup_piece(snap: SnapshotFile | None, offset: int) -> R.BackupPiece:
    if snap is None:
        raise ChorusError("invalid_request", "no backup on this connection: send backup first")
    if offset > snap.size:
        raise ChorusError("invalid_request", f"the backup has {snap.size} bytes")
    with open(snap.path, "rb") as f:
        f.seek(offset)
        return R.BackupPiece(offset=offset, data=f.read(CHUNK_BYTES))


def drop_backup(snap: SnapshotFile | None) -> None:
    if snap is not None:
        shutil.rmtree(snap.path.parent, ignore_errors=True)


def promote_caught_up(node: RaftNode, max_lag: int) -> None:
    """On the primary, each tick: make a voter of each learner to be promoted
    that has caught up (one change at a time; refused quietly otherwise)."""
    m: Membership = node.membership
    if node.role is not Role.PRIMARY or not m.promoting or node.history.latest_index > node.commit:
        return
    for pid in sorted(m.promoting):
        p = node.progress.get(pid)
        if p is not None and p.match and not p.recovering and node.last_index - p.match <= max_lag:
            with contextlib.suppress(Refused):
                node.promote(pid)
            return
