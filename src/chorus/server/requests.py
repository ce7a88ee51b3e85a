"""What a client's request waits for on a replica: its write applied (or on
disk, or on every server), a linearizable read confirmed, a primary elected.

Part of :class:`chorus.server.replica.Replica`. A request registers a future;
the replica loop settles it (``_settle``) from what each round made durable and
applied, and a change of primary wakes whatever waits on the old one. Nothing
here blocks: the waits are futures and callbacks on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import sqlite3
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from chorus.chat.records import Effects
from chorus.raft import RaftNode, Ready, Refused, Role
from chorus.store import ReplicaStore
from chorus.wire import results as R
from chorus.wire.errors import Busy, Unavailable

from .config import Config, ServerSpec
from .metrics import Metrics

Q = TypeVar("Q")  # what a query gives
Heap = list[tuple[int, int, "asyncio.Future[None]"]]  # (index, n, future): waiting for an index


class Requests:
    # Made by Replica.__init__; what the waits read of the replica.
    cfg: Config
    node: RaftNode
    store: ReplicaStore
    reader: sqlite3.Connection
    loop: asyncio.AbstractEventLoop | None
    applied: int
    out_of_disk: str | None
    metrics: Metrics

    if TYPE_CHECKING:
        def _kick(self) -> None: ...
        def address_of(self, server_id: int) -> ServerSpec | None: ...

    def _init_requests(self) -> None:
        self._waiters: dict[tuple[str, int], asyncio.Future[R.Outcome]] = {}  # (client, seq): the answer
        self._reads: dict[int, asyncio.Future[int]] = {}  # ReadIndex request id: the index to apply up to
        self._read_ids = itertools.count(1)
        self._applied_waiters: Heap = []
        self._persisted_waiters: Heap = []
        self._heap_seq = itertools.count()
        self._primary_changed: asyncio.Event | None = None  # (made once the loop runs)
        self._on_primary_change: set[Callable[[], None]] = set()

    # ------------------------------------------------------------------ from the replica loop
    def _settle(self, rd: Ready, applied: Effects) -> None:
        """Answer what this round answered: the writes applied, the indexes reached,
        the reads confirmed."""
        for _index, client, seq, result in applied.answers:
            fut = self._waiters.pop((client, seq), None)
            if fut is not None and not fut.done():
                fut.set_result(result)
        _release(self._applied_waiters, self.applied)
        if rd.entries:
            _release(self._persisted_waiters, rd.entries[-1].index)
        for r in rd.reads:
            read = self._reads.pop(r.request_id, None)
            if read is not None and not read.done():
                read.set_result(r.index)

    def _primary_change(self) -> None:
        assert self._primary_changed is not None
        self._primary_changed.set()
        self._primary_changed = asyncio.Event()
        for wake in list(self._on_primary_change):
            wake()

    def _fail_requests(self, why: str) -> None:
        """Every write and read waiting here is told it is unavailable (a write is
        retried elsewhere, with the same seq: never applied twice)."""
        futures: list[asyncio.Future[Any]] = [*self._reads.values(), *self._waiters.values()]
        for fut in futures:
            if not fut.done():
                fut.set_exception(Unavailable("unavailable", why, self.primary_address()))

    # ------------------------------------------------------------------ who leads
    def primary_address(self) -> str | None:
        lead = self.node.primary
        if not lead:
            return None
        spec = self.address_of(lead)
        return spec.client_address if spec is not None else None

    async def _wait_primary_change(self, timeout: float) -> None:
        assert self._primary_changed is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._primary_changed.wait(), timeout)

    async def _until_primary_known(self, deadline: float) -> None:
        while not self.node.primary:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Unavailable("unavailable", "no primary: an election is under way or too few servers are reachable")
            await self._wait_primary_change(left)

    # ------------------------------------------------------------------ writes
    async def submit(self, data: bytes, client: str, seq: int, concern: str) -> R.Outcome | R.Accepted:
        """Propose a chat command and wait until it is applied here (majority),
        on every voting server (all), or only durable on this primary (async)."""
        if self.out_of_disk is not None:
            raise Unavailable("unavailable", f"this server is out of disk space: {self.out_of_disk}", self.primary_address())
        if len(self._waiters) >= self.cfg.max_pending_writes:
            raise Busy("busy", f"{len(self._waiters)} writes are waiting for commit on this server")
        if concern != "majority" and self.node.role is not Role.PRIMARY:
            raise Unavailable("unavailable", f"write concern '{concern}' is served by the primary", self.primary_address())
        key = (client, seq)
        assert self.loop is not None
        fut = self._waiters.get(key)
        if fut is None or fut.done():
            fut = self._waiters[key] = self.loop.create_future()
        deadline = time.monotonic() + self.cfg.request_timeout_s
        while True:
            await self._until_primary_known(min(deadline, time.monotonic() + self.cfg.election_wait_s))
            primary, term = self.node.primary, self.node.term
            try:
                index = self.node.propose(data)
            except Refused as exc:
                if exc.code == "busy":
                    raise Busy("busy", str(exc)) from None
                await self._wait_primary_change(min(0.2, max(0.0, deadline - time.monotonic())))
                if time.monotonic() >= deadline:
                    raise Unavailable("unavailable", str(exc), self.primary_address()) from None
                continue
            self.metrics.proposals += 1
            self._kick()
            if concern == "async" and index is not None:
                await self._wait_index(self._persisted_waiters, index, deadline)
                return R.Accepted(id=index, concern="async")
            # Wait for the answer; propose again if the primary changed meanwhile or
            # a forwarded command seems lost (exactly-once makes a repeat harmless).
            while not fut.done():
                left = deadline - time.monotonic()
                if left <= 0:
                    self._waiters.pop(key, None)
                    raise Unavailable("unavailable",
                        "the command was not applied in time; retry it with the same seq (it will not be applied twice)",
                        self.primary_address(),
                    )
                await self._answer_or_primary_change(fut, min(left, 1.0 if index is None else 2.0))
                if not fut.done() and (self.node.primary, self.node.term) != (primary, term):
                    break
                if not fut.done() and index is None:
                    break
            if fut.done():
                break
        result: R.Outcome = fut.result()
        if concern == "all" and result.ok:
            await self._all_have(self.applied, deadline)
        return result

    async def _answer_or_primary_change(self, fut: asyncio.Future, timeout: float) -> None:
        """Wait for the answer, but no longer than the primary stays the same: after
        a failover a command forwarded to the old primary is proposed again at
        once, not after the timeout. (Callbacks, not a task per request.)"""
        if fut.done():
            return
        assert self.loop is not None
        waker = self.loop.create_future()

        def wake(_: object = None) -> None:
            if not waker.done():
                waker.set_result(None)

        fut.add_done_callback(wake)
        self._on_primary_change.add(wake)
        timer = self.loop.call_later(timeout, wake)
        try:
            await waker
        finally:
            timer.cancel()
            self._on_primary_change.discard(wake)
            fut.remove_done_callback(wake)

    async def _wait_index(self, heap: Heap, index: int, deadline: float) -> None:
        assert self.loop is not None
        fut: asyncio.Future[None] = self.loop.create_future()
        heapq.heappush(heap, (index, next(self._heap_seq), fut))
        try:
            await asyncio.wait_for(fut, max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            raise Unavailable("unavailable", "timed out", self.primary_address()) from None

    async def _all_have(self, index: int, deadline: float) -> None:
        """Write concern "all": every voting server has the entry on disk."""
        node = self.node
        while True:
            if node.role is Role.PRIMARY and all(
                v in node.progress and node.progress[v].match >= index for v in node.membership.voters
            ):
                return
            if time.monotonic() >= deadline:
                raise Unavailable("unavailable", "committed on a majority, but not confirmed by every server in time")
            await asyncio.sleep(0.01)

    # ------------------------------------------------------------------ reads
    async def read_barrier(self, consistency: str) -> None:
        """Linearizable: wait until this replica has applied everything committed
        before the call (ReadIndex, via the primary). Local: return at once."""
        if consistency == "local":
            return
        if self.out_of_disk is not None:
            raise Unavailable("unavailable", f"this server is out of disk space: {self.out_of_disk}", self.primary_address())
        assert self.loop is not None
        deadline = time.monotonic() + self.cfg.request_timeout_s
        while True:
            await self._until_primary_known(min(deadline, time.monotonic() + self.cfg.election_wait_s))
            rid = next(self._read_ids)
            fut = self._reads[rid] = self.loop.create_future()
            try:
                self.node.read_index(rid)
            except Refused:
                self._reads.pop(rid, None)
                await self._wait_primary_change(0.2)
                if time.monotonic() >= deadline:
                    raise Unavailable("unavailable", "no primary to confirm the read", self.primary_address()) from None
                continue
            self._kick()
            # Asked of the primary; asked again if it changes meanwhile (or is silent for 1 s).
            await self._answer_or_primary_change(fut, min(1.0, max(0.01, deadline - time.monotonic())))
            if fut.done():
                index = fut.result()
                break
            self._reads.pop(rid, None)
            if time.monotonic() >= deadline:
                raise Unavailable("unavailable", "the primary did not confirm the read in time", self.primary_address())
        await self.applied_up_to(index, deadline)

    async def applied_up_to(self, index: int, deadline: float) -> None:
        """Wait until this replica has applied ``index``."""
        if self.applied < index:
            await self._wait_index(self._applied_waiters, index, deadline)

    def query(self, fn: Callable[..., Q], *args: Any, **kw: Any) -> Q:
        """Run a read query on this replica's state (view read before the tables)."""
        view = self.store.chat.view
        return fn(self.reader, view, *args, **kw)


def _release(heap: Heap, upto: int) -> None:
    while heap and heap[0][0] <= upto:
        _, _, fut = heapq.heappop(heap)
        if not fut.done():
            fut.set_result(None)
