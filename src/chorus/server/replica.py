"""One replica: the consensus core driven with real time, real storage and real
peers. The only place, with peers.py and sessions.py, that knows asyncio.

The replica loop, for each Ready of the core:

- Send the Ready's ``now`` (its plan is the core's: ``chorus.raft.Ready``).
- If it must be synced, or its apply is heavy: on the I/O thread, persist (one
  transaction, one fsync if ``must_sync``), hand ``after`` (votes,
  acknowledgements: promises about the disk) back to the event loop, apply the
  committed entries.
- Otherwise (a new commit index and a few committed entries: what a primary
  that just learned of a commit, or a backup, mostly gets; every message has
  left already): write the commit index and apply in one transaction without
  an fsync, right here on the event loop (a trip to the thread and back costs
  more).

Then answer the clients waiting for the applied entries, push new messages to
the users connected here, and advance the core.

A full disk stalls the round, not the server: the write is tried again every
second, the Ready is kept (it is advanced only once written), nothing that
needed it on disk leaves, and requests here are answered ``unavailable`` at
once, naming the primary, so clients go elsewhere. Meanwhile this replica is
silent to its peers (a primary sends no heartbeats), so the others carry on
without it. When the write goes through, the round completes and the replica
catches up as after any pause. Any other failure of the loop ends the process
with a non-zero status (``failed``), for a supervisor to restart it.

Everything that touches the core runs on the event loop thread. The store's
write connection is used by one round of the loop at a time (on either thread),
and between rounds for compaction and WAL checkpoints (on the I/O thread).
Incoming messages are stepped into the core while a Ready is being written, and
come out in the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from chorus.chat import commands as C
from chorus.chat.records import Effects
from chorus.raft import Membership, RaftNode, Ready, Refused, Role
from chorus.store import (
    ReplicaStore,
    SnapshotFile,
    SnapshotInvalid,
    StoreCorrupt,
    StoreUnreadable,
    disk_full,
    latest_snapshot,
    latest_snapshot_path,
)
from chorus.wire import results as R
from chorus.wire.peer import DiskState

from .admin import BACKUPS, Joining, promote_caught_up
from .config import Config
from .io_thread import IOThread
from .members import Members
from .metrics import Metrics
from .requests import Requests

log = logging.getLogger("chorus.replica")
Q = TypeVar("Q")  # what a query gives


# A snapshot is due once snapshot_every entries and log bytes of at least this
# share of the last snapshot's size were applied since it.
DAMAGED_MARK = "DAMAGED"  # in a data directory: damage was found while running (what, inside)
SNAPSHOT_RATIO = 4  # (bytes x 4 >= snapshot size: a quarter)

# Applied on the event loop when there is nothing to persist and at most this many
# entries (more would hold up the loop longer than the trip to the I/O thread costs).
INLINE_APPLY_MAX = 64
RETRY_FULL_DISK_S = 1.0  # how often a write stalled by a full disk is tried again


@dataclass
class _Round:
    """One Ready being written: what of it is done already (a write the disk
    refused is tried again from where it stopped)."""

    rd: Ready
    snap: SnapshotFile | None
    heavy: bool  # persisted (then its ``after`` sent) on the I/O thread, then applied
    persisted: bool = False


class Replica(Requests, Members):
    """One server's replica: its store, its core, the replica loop that drives
    them (``_pump``), snapshots; what requests wait for is in requests.py."""

    def __init__(self, cfg: Config, server_id: int, join: Joining | None = None) -> None:
        """``join``: what a member told this server of the cluster it joins (used
        when its disk is empty: ``chorus serve --join``)."""
        self.cfg = cfg
        self.id = server_id
        self.join = join
        self.dir = cfg.replica_dir(server_id)
        self.snap_dir = self.dir / "snapshots"
        self.in_dir = self.dir / "incoming"
        self.damage: str | None = None  # what was wrong with the disk at start (set aside)
        shutil.rmtree(self.dir / BACKUPS, ignore_errors=True)  # (backups that were being read when it stopped)
        self.store, persisted = self._open_store()
        self.reader = self.store.reader()
        # A new file: the disk was empty. Maybe the cluster is being created, maybe this
        # server's disk was replaced: until the others say which, it may have lost what
        # it promised, and behaves so (it neither votes nor counts: raft/node.py).
        self.joined = self.store.joined
        self.node = RaftNode(
            server_id,
            self.store.snapshot_meta().membership,  # (as the store began: from the configuration, or a join)
            config=cfg.raft_config(),
            rng=random.Random(),
            persisted=persisted,  # (a new file says "recovering" itself)
        )
        # The cluster's id, in every peer handshake: the seed configuration's
        # fingerprint, kept from the first start on (so the file may change later).
        self.cluster_id = self.store.cluster_id
        if not self.cluster_id:
            self.cluster_id = join.cluster if join is not None else cfg.fingerprint
            self.store.set_cluster_id(self.cluster_id)
        self.joined_as = self.store.joined_as
        self.spec = self._own_spec()
        self._mark_joined = False
        self.peer_disks: dict[int, str] = {}
        self.heard: dict[int, float] = {}  # when each peer's last message arrived (monotonic)  # what each peer said of its disk in its last handshake
        if len(cfg.servers) == 1 and not self.joined and self.node.recovering:
            # Nobody else to ask: alone, it is the cluster (also after a crash between
            # making the file and its first write: a file that holds more refuses).
            with contextlib.suppress(Refused):
                self.node.declare_new_cluster()
        self.metrics = Metrics(server_id)
        self.io = IOThread(f"chorus-io-{server_id}")
        self.snap_io = ThreadPoolExecutor(1, thread_name_prefix=f"chorus-snap-{server_id}")
        self.loop: asyncio.AbstractEventLoop | None = None
        self.transport: Any = None  # peers.PeerTransport, set by the server
        self.push: Callable[[int, int, R.Message], None] = lambda s, r, m: None
        self.account_deleted: Callable[[int], None] = lambda uid: None
        self.sessions_ended: Callable[[int, str | None, int | None], None] = lambda uid, sid, epoch: None
        self.state_replaced: Callable[[], None] = lambda: None  # a snapshot was installed
        self.received_snapshots: dict[int, SnapshotFile] = {}
        self._pumping = False
        self._stopped = False
        self._tick_handle: asyncio.TimerHandle | None = None
        self._init_requests()
        self._snapshotting = False
        # (A damaged snapshot file was removed, or none is on disk although the log
        # starts after one, as after chorus restore: a new one at once.)
        self._snapshot_wanted = self.node.log.snapshot.index > 0 and latest_snapshot_path(self.snap_dir) is None
        self._snapshot_retry_at = 0.0  # after a failed snapshot, not before this (monotonic)
        self._compact_to = 0  # asked for by a finished snapshot; done by the replica loop
        self._stalled: _Round | None = None  # a round the disk refused, tried again
        self._retry_at = 0.0
        self.out_of_disk: str | None = None  # why, while the disk is full
        self.failed: asyncio.Future | None = None  # set to the exception if the loop fails
        # A snapshot copies the whole state: take one only once the log since the last
        # one is a fair share of it, so that the copying stays proportional to what is
        # written (a 200 MB state snapshotted every 20,000 sends halved the throughput).
        last = latest_snapshot_path(self.snap_dir)
        self._snapshot_size = last.stat().st_size if last is not None else 0
        self._log_bytes = 0  # command bytes applied since the last snapshot
        self.applied = self.node.applied

    def __repr__(self) -> str:
        disk = f", out of disk: {self.out_of_disk}" if self.out_of_disk else ""
        return f"Replica({self.id}: {self.node!r}, applied {self.applied}, {len(self._waiters)} writes waiting{disk})"

    def _open_store(self) -> tuple[ReplicaStore, Any]:
        """The store and what it holds; a damaged one is set aside (kept, renamed)
        and replaced by an empty one that knows the cluster exists: the replica then
        recovers from the others, by itself. (Damage found while running, by the
        check of every snapshot, is marked in the directory and the server stops:
        it is set aside here at the next start.)"""
        path = self.dir / "chorus.db"
        mark = self.dir / DAMAGED_MARK
        store = None
        try:
            if mark.exists():
                raise StoreCorrupt(mark.read_text(errors="replace").strip() or "marked damaged")
            # A server that joins starts with an empty log: the cluster's entries, entry
            # 1 included, come from its primary. What the member said is kept beside
            # (for the addresses until the log has them).
            store = ReplicaStore(path, Membership() if self.join is not None else self.cfg.membership,
                                 manual_checkpoints=True)
            if store.created and self.join is not None:
                store.mark_joined()  # (told by a member: the cluster exists, and this server is in it)
                store.set_joined_as(self.join.membership)
            return store, store.restore()
        except StoreCorrupt as exc:
            if store is not None:
                with contextlib.suppress(Exception):
                    store.close()
            if len(self.cfg.servers) == 1 or isinstance(exc, StoreUnreadable):
                raise  # alone, there is nobody to recover from; a newer format is no damage
            stamp = time.strftime("%Y%m%d-%H%M%S")
            aside = self.dir.with_name(f"{self.dir.name}.damaged-{stamp}")
            k = 1
            while aside.exists():
                k += 1
                aside = self.dir.with_name(f"{self.dir.name}.damaged-{stamp}-{k}")
            self.dir.rename(aside)
            self.damage = f"{exc} (set aside as {aside})"
            log.error("replica %d: %s. It starts again with an empty disk and recovers from the other "
                      "servers: until it has caught up it neither votes nor counts towards a commit. "
                      "The damaged files are kept in %s; remove them once you no longer need them.",
                      self.id, exc, aside)
            store = ReplicaStore(path, self.cfg.membership, manual_checkpoints=True)
            store.mark_joined()  # (it was a member: its disk held data)
            return store, store.restore()

    def _damaged(self, exc: StoreCorrupt) -> None:
        """Damage found while running: marked in the data directory (durably), then
        the server stops; started again, it sets the directory aside and rebuilds."""
        mark = self.dir / DAMAGED_MARK
        with contextlib.suppress(OSError), open(mark, "w") as f:
            f.write(f"{exc}\n")
            f.flush()
            os.fsync(f.fileno())
        log.error("replica %d: %s. The server stops; start it again (a supervisor does): it sets the "
                  "data directory aside and recovers from the other servers", self.id, exc)
        self._stopped = True
        if self.failed is not None and not self.failed.done():
            self.failed.set_result(exc)

    def disk_state(self) -> DiskState:
        """What this replica says of its disk in each peer handshake (wire/peer.py)."""
        n = self.node
        if not self.joined and n.log.last_index <= 1 and n.term <= 1 and not n.log.snapshot.index:
            return "fresh"
        return "recovering" if n.recovering else "member"

    def peer_disk(self, peer: int, state: str) -> None:
        """A peer said what its disk is: a new cluster starts once every server of the
        configuration has said "fresh"; one that holds data makes this one a member
        that must recover."""
        self.peer_disks[peer] = state
        if not self.node.recovering or self.joined:
            return
        if state != "fresh":
            self.joined = self._mark_joined = True
            log.warning("replica %d: its disk is empty, and server %d holds the cluster's data: it recovers "
                        "from the others before it votes again", self.id, peer)
            self._kick()
            return
        others = {s.id for s in self.cfg.servers} - {self.id}
        if all(self.peer_disks.get(i) == "fresh" for i in others):
            log.info("replica %d: no server of the configuration has ever held data: a new cluster", self.id)
            self.node.declare_new_cluster()
            self._kick()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.failed = self.loop.create_future()
        self._primary_changed = asyncio.Event()
        self._schedule_tick()
        self._kick()
        log.info("replica %d starts: %r", self.id, self.node)

    def _schedule_tick(self) -> None:
        assert self.loop is not None
        self._tick_handle = self.loop.call_later(self.cfg.tick_ms / 1000, self._tick)

    async def hand_over_now(self, why: str = "") -> bool:
        """A primary hands leadership to its most caught-up voter and waits (an
        election timeout at most) until it is no longer primary: whether it is not."""
        target = self.node.most_caught_up()
        if not target:
            return False
        log.info("replica %d hands leadership to %d %s", self.id, target, why)
        with contextlib.suppress(Refused):
            self.node.hand_over(target)
            self._kick()
        deadline = time.monotonic() + self.cfg.election_timeout_ms[1] / 1000
        while self.node.role is Role.PRIMARY and time.monotonic() < deadline:
            await self._wait_primary_change(0.05)
        return self.node.role is not Role.PRIMARY

    def _tick(self) -> None:
        if self._stopped:
            return
        self.node.tick()
        if self.node.membership.promoting:
            promote_caught_up(self.node, self.node.cfg.promote_max_lag)
        self._kick()
        self._schedule_tick()

    async def stop(self, *, graceful: bool = True) -> None:
        """Hand over leadership first (so that clients see no error), then stop."""
        if graceful and self.node.role is Role.PRIMARY and len(self.node.membership.voters) > 1:
            await self.hand_over_now("before stopping")
            # Give writes already proposed here a moment to be applied and answered.
            deadline = time.monotonic() + 1.0
            while self._waiters and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        self._stopped = True
        if self._tick_handle:
            self._tick_handle.cancel()
        deadline = time.monotonic() + 10.0  # a round of the replica loop ends long before this
        while self._pumping and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        self._fail_requests("the server is shutting down")
        self.io.shutdown()
        self.snap_io.shutdown(wait=True)
        self.reader.close()
        self.store.close()

    # ------------------------------------------------------------------ the replica loop
    def _kick(self) -> None:
        if not self._pumping and not self._stopped and self.loop is not None:
            self._pumping = True
            self.loop.create_task(self._pump())

    async def _pump(self) -> None:
        node = self.node
        if self._stalled is not None and time.monotonic() < self._retry_at:
            self._pumping = False  # (a tick or a message woke it: the disk is tried at its time)
            return
        try:
            while not self._stopped:
                if self._mark_joined and self._stalled is None:
                    try:
                        self.store.mark_joined()  # (between rounds: the store is free)
                    except Exception as exc:
                        if not disk_full(exc):
                            raise
                        self._disk_is_full(exc)
                        return  # (tried again in a second, like a round)
                    self._mark_joined = False
                if self._stalled is None:
                    if self._compact_to:
                        await self._compact()
                        continue
                    if self.store.checkpoint_due():
                        await self._checkpoint()
                    if not node.has_ready():
                        break
                    rd = node.ready()
                    snap = self.received_snapshots.pop(rd.snapshot.index, None) if rd.snapshot else None
                    # The Ready's plan (see chorus.raft.Ready): what leaves now, what
                    # after the write. Nothing to sync and a light apply: the commit
                    # index is written and the entries applied here, in one
                    # transaction without an fsync (a trip to the thread costs more).
                    heavy = rd.must_sync or not self._light(rd.committed)
                    if rd.now:
                        self.transport.send(rd.now)
                    self._stalled = _Round(rd, snap, heavy)
                r = self._stalled
                try:
                    if r.heavy:
                        applied = await self.io.call(self._write, r)
                    else:
                        t0 = time.perf_counter()
                        applied = self.store.save(r.rd)
                        if r.rd.committed:
                            self.metrics.apply_seconds.observe(time.perf_counter() - t0)
                except Exception as exc:
                    if not disk_full(exc):
                        raise
                    self._disk_is_full(exc)
                    return  # (tried again in a second; the Ready stays where it is)
                self._stalled = None
                if self.out_of_disk is not None:
                    log.warning("replica %d: the disk takes writes again; going on", self.id)
                    self.out_of_disk = None
                self._after(r.rd, applied)
                node.advance(r.rd)
        except Exception as exc:
            log.exception("replica %d: the replica loop failed; the server stops", self.id)
            self._stopped = True
            if self.failed is not None and not self.failed.done():
                self.failed.set_result(exc)
            return
        finally:
            self._pumping = False
        if not self._stopped and (self._compact_to or node.has_ready()):
            self._kick()

    def _disk_is_full(self, exc: BaseException) -> None:
        """Say so (once), refuse requests here meanwhile, and try again in a second."""
        try:
            st = os.statvfs(self.dir)
            free = f"{st.f_bavail * st.f_frsize // 1024:,} KiB free of {st.f_blocks * st.f_frsize // 1024:,} KiB"
        except OSError:
            free = "free space unknown"
        why = f"the file system of {self.dir} is full ({free}): {exc}"
        if self.out_of_disk is None:
            log.error("replica %d: %s; it takes no writes and answers no requests until there is room "
                      "(tried again every %.0f s; the other servers go on without it)", self.id, why,
                      RETRY_FULL_DISK_S)
            self._fail_requests(f"this server is out of disk space: {why}")
        self.out_of_disk = why
        self._retry_at = time.monotonic() + RETRY_FULL_DISK_S
        assert self.loop is not None
        self.loop.call_later(RETRY_FULL_DISK_S, self._kick)

    async def _checkpoint(self) -> None:
        try:
            await self.io.call(self.store.checkpoint)
        except Exception as exc:
            if not disk_full(exc):
                raise
            log.warning("replica %d: the WAL could not be checkpointed (%s); it is tried again later", self.id, exc)

    @staticmethod
    def _light(committed: tuple) -> bool:
        """Cheap enough to apply on the event loop: a few entries, none of them a
        command of unbounded cost (deleting an account deletes all its messages)."""
        return len(committed) <= INLINE_APPLY_MAX and not any(C.is_heavy(e.data) for e in committed)

    def _write(self, r: _Round) -> Effects:
        """On the I/O thread: persist, let the messages go, apply (what is not done yet)."""
        rd = r.rd
        if not r.persisted:
            t0 = time.perf_counter()
            self.store.persist(rd, r.snap)
            if rd.must_sync:
                self.metrics.persist_seconds.observe(time.perf_counter() - t0)
            r.persisted = True
            if rd.after:
                assert self.loop is not None
                self.loop.call_soon_threadsafe(self.transport.send, rd.after)
            if r.snap is not None:
                r.snap.path.unlink(missing_ok=True)  # installed: its tables are in the database now
        if not rd.committed:
            return self.store.apply(rd.committed)
        t0 = time.perf_counter()
        applied = self.store.apply(rd.committed)
        self.metrics.apply_seconds.observe(time.perf_counter() - t0)
        return applied

    def _after(self, rd: Ready, applied: Effects) -> None:
        if rd.soft_state is not None:
            ss = rd.soft_state
            log.info("replica %d: %s in term %d%s", self.id, ss.role.value, ss.term,
                     f", primary {ss.primary}" if ss.primary and ss.primary != self.id else "")
            self.metrics.role_changed(ss.role)
            self._primary_change()
        if rd.membership is not None and self.transport is not None:
            self.transport.membership_changed(rd.membership)
        for sender, recipient, msg in applied.delivered:
            self.push(sender, recipient, msg)
        for uid in applied.accounts_deleted:
            self.account_deleted(uid)
        for uid, session, epoch in applied.sessions_ended:
            self.sessions_ended(uid, session, epoch)
        if rd.snapshot is not None:
            log.info("replica %d: installed the snapshot at %d", self.id, rd.snapshot.index)
            self.state_replaced()
        if rd.committed:
            self.metrics.applied_entries += len(rd.committed)
            self.applied = rd.committed[-1].index
            self._log_bytes += sum(len(e.data) for e in rd.committed)
        elif rd.snapshot is not None:
            self.applied = rd.snapshot.index
        self._settle(rd, applied)
        if rd.committed and self.id not in self.node.membership.members and self.is_removed():
            self._leave()
            return
        if (
            not self._snapshotting
            and (self._snapshot_wanted or (
                self.applied - self.node.log.snapshot.index >= self.cfg.snapshot_every + self.cfg.snapshot_keep
                and self._log_bytes * SNAPSHOT_RATIO >= self._snapshot_size))
            and time.monotonic() >= self._snapshot_retry_at
        ):
            self._snapshotting, self._snapshot_wanted = True, False
            assert self.loop is not None
            self.loop.create_task(self._snapshot())

    async def _snapshot(self) -> None:
        """Snapshot the applied state (in its own thread: it only reads); the
        replica loop then forgets the log before it, keeping a little for
        followers just behind."""
        loop = self.loop
        assert loop is not None
        counted = self._log_bytes  # what is applied while the snapshot is taken counts towards the next
        try:
            snap = await loop.run_in_executor(self.snap_io, self.store.create_snapshot, self.snap_dir)
            log.info("replica %d: snapshot at %d (%d bytes)", self.id, snap.meta.index, snap.size)
            self._snapshot_size = snap.size
            self._log_bytes -= counted
            point = snap.meta.index - self.cfg.snapshot_keep
            if point > self.node.log.snapshot.index:
                self._compact_to = point
                self._kick()
                return
        except StoreCorrupt as exc:
            self._damaged(exc)
            return
        except Exception as exc:
            if disk_full(exc):
                log.warning("replica %d: no snapshot for now, the disk is full: %s", self.id, exc)
            else:
                log.exception("replica %d: snapshot failed", self.id)
            self._snapshot_retry_at = time.monotonic() + 10.0  # not again at once
        self._snapshotting = False

    async def _compact(self) -> None:
        """Between two rounds of the replica loop (the store is free)."""
        point, self._compact_to = self._compact_to, 0
        try:
            await self.io.call(self.store.compact, point)
            self.node.compact(point)
            log.info("replica %d: log kept from %d", self.id, self.node.log.first_index)
        except Exception:
            log.exception("replica %d: compaction failed", self.id)
        finally:
            self._snapshotting = False

    def latest_snapshot(self) -> SnapshotFile | None:
        """The snapshot to send a follower (checked: call it off the event loop).
        A damaged file is removed and a new snapshot taken soon."""
        try:
            return latest_snapshot(self.snap_dir)
        except SnapshotInvalid as exc:
            log.error("replica %d: %s; removed, a new snapshot is taken", self.id, exc)
            path = latest_snapshot_path(self.snap_dir)
            if path is not None:
                path.unlink(missing_ok=True)
                path.with_name(path.name + ".sha256").unlink(missing_ok=True)
            self._snapshot_wanted = True
            if self.loop is not None:
                self.loop.call_soon_threadsafe(self._kick)
            return None

    # ------------------------------------------------------------------ peers
    def step(self, message: Any) -> None:
        """A message from a peer (already authenticated by the transport)."""
        self.heard[message.server_id] = time.monotonic()
        self.node.step(message)
        self._kick()

    def peer_unreachable(self, peer: int) -> None:
        """The link to ``peer`` dropped what it was sending: replicate to it afresh."""
        self.node.report_unreachable(peer)

    def snapshot_sent(self, peer: int, ok: bool) -> None:
        self.node.report_snapshot(peer, ok)
        self._kick()

    # ------------------------------------------------------------------ status
    def status(self) -> R.Status:
        n = self.node
        health, reason = self._health()
        return R.Status(
            id=self.id, role=n.role.value, term=n.term, commit_index=n.commit, applied_index=self.applied,
            last_index=n.last_index, snapshot_index=n.log.snapshot.index, digest=f"{self.store.digest():016x}",
            primary=n.primary or None, primary_address=self.primary_address(),
            voters=sorted(n.membership.voters), learners=sorted(n.membership.learners),
            health=health, health_reason=reason, disk=self.disk_state(),
        )

    def _health(self) -> tuple[str, str | None]:
        if self.out_of_disk is not None:
            return "out of disk", self.out_of_disk
        n = self.node
        if n.recovering:
            if not self.joined:
                waiting = sorted(i for i in {s.id for s in self.cfg.servers} - {self.id}
                                 if self.peer_disks.get(i) != "fresh")
                return "recovering", ("an empty disk: a new cluster starts once every server has said it has one "
                                      f"too (not yet: {', '.join(map(str, waiting))})")
            why = f"{self.damage}; " if self.damage else ""
            return "recovering", (f"{why}it may have lost what it promised: catching up from the primary "
                                  f"(applied {self.applied}, commit {n.commit}); not voting until then")
        return "ok", None

