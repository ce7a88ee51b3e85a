"""Links between servers.

Each server keeps one outgoing TCP connection to every other member, for what
it sends, and accepts their connections on its peer port, for what it
receives. A connection starts with HELLO, which proves knowledge of the cluster
secret; frames from an unknown or unproven server are refused with an ERROR
frame and the connection is closed. Each outgoing link has a bounded buffer: a
slow or dead peer gets messages dropped (Raft expects lossy links) and the core
is told the link is unreachable, so nothing ever blocks on a peer. Snapshots
are streamed in chunks before the INSTALL_SNAPSHOT message that names them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from typing import TYPE_CHECKING

import msgspec

from chorus.raft import InstallSnapshot, Membership, Message, MessageError
from chorus.store import SnapshotInvalid, SnapshotReceiver, chunks
from chorus.wire import FrameError, encode_frame
from chorus.wire.peer import Hello, SnapshotChunk, decode_peer, encode_peer

from .config import Config, ServerSpec

if TYPE_CHECKING:
    from .replica import Replica

log = logging.getLogger("chorus.peers")
MAX_BUFFERED = 16 << 20  # bytes waiting for one peer before messages are dropped
_LEN = 4


async def read_frame(reader: asyncio.StreamReader, max_frame: int) -> bytes:
    head = await reader.readexactly(_LEN)
    n = int.from_bytes(head, "big")
    if n == 0 or n > max_frame:
        raise FrameError(f"frame of {n} bytes announced; the limit is {max_frame}")
    return await reader.readexactly(n)


def _error_frame(text: str) -> bytes:
    return encode_frame(msgspec.json.encode(
        {"type": "ERROR", "term": 0, "server_id": 0, "to": 0, "payload": {"message": text}}
    ))


class PeerLink:
    """The outgoing connection to one peer."""

    def __init__(self, transport: PeerTransport, peer: ServerSpec) -> None:
        self.t = transport
        self.peer = peer
        self.writer: asyncio.StreamWriter | None = None
        self.pending: list[bytes] = []  # frames waiting while (re)connecting
        self.pending_bytes = 0
        self.task: asyncio.Task | None = None
        self.snapshot_task: asyncio.Task | None = None
        self.closed = False
        self.peer_is_back = asyncio.Event()  # it connected to us: retry at once

    async def _pause(self, seconds: float) -> None:
        """Wait before connecting again, unless the peer shows up first."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.peer_is_back.wait(), seconds)
        self.peer_is_back.clear()

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._connect_loop())

    def send(self, m: Message) -> None:
        if type(m) is InstallSnapshot:
            if self.snapshot_task is None or self.snapshot_task.done():
                self.snapshot_task = asyncio.get_running_loop().create_task(self._send_snapshot(m))
            return
        self._write(encode_frame(encode_peer(m), self.t.cfg.peer_max_frame))

    def _write(self, frame: bytes) -> None:
        w = self.writer
        if w is not None and not w.is_closing():
            if w.transport.get_write_buffer_size() > MAX_BUFFERED:
                self.t.replica.node.report_unreachable(self.peer.id)  # it does not keep up: drop
                return
            w.write(frame)
        elif self.pending_bytes + len(frame) <= MAX_BUFFERED:
            self.pending.append(frame)
            self.pending_bytes += len(frame)

    async def _connect_loop(self) -> None:
        backoff = 0.05
        while not self.closed:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(self.peer.host, self.peer.peer_port), timeout=2.0
                )
            except (OSError, TimeoutError):
                await self._pause(backoff * (0.5 + secrets.randbelow(1000) / 1000))
                backoff = min(backoff * 2, 1.0)
                continue
            backoff = 0.05
            hello = Hello.sign(self.t.cfg.secret_bytes, self.t.replica.id, self.peer.id, secrets.token_hex(8),
                               self.t.cfg.fingerprint)
            writer.write(encode_frame(encode_peer(hello)))
            for frame in self.pending:
                writer.write(frame)
            self.pending, self.pending_bytes = [], 0
            self.writer = writer
            try:
                # Nothing is expected back but an ERROR before a close; wait for the close.
                while not self.closed:
                    data = await reader.read(4096)
                    if not data:
                        break
                    log.warning("server %d refused our link: %r", self.peer.id, data[4:200])
            except (OSError, asyncio.IncompleteReadError):
                pass
            self.writer = None
            with contextlib.suppress(Exception):
                writer.close()
            if not self.closed:
                self.t.replica.node.report_unreachable(self.peer.id)
                await self._pause(backoff)

    async def _send_snapshot(self, m: InstallSnapshot) -> None:
        replica = self.t.replica
        snap = replica.latest_snapshot()
        ok = False
        try:
            if snap is None or snap.meta.index < m.snapshot.index:
                return
            loop = asyncio.get_running_loop()
            for offset, data in await loop.run_in_executor(None, lambda: list(chunks(snap))):
                w = self.writer
                if w is None or w.is_closing():
                    return
                chunk = SnapshotChunk(
                    server_id=replica.id, to=self.peer.id, term=m.term, index=snap.meta.index,
                    snapshot_term=snap.meta.term, membership=snap.meta.membership, size=snap.size,
                    sha256=snap.sha256, digest=f"{snap.digest:016x}", offset=offset, data=data,
                )
                w.write(encode_frame(encode_peer(chunk), self.t.cfg.peer_max_frame))
                await w.drain()
            self._write(encode_frame(encode_peer(msgspec.structs.replace(m, snapshot=snap.meta)), self.t.cfg.peer_max_frame))
            ok = True
            log.info("sent snapshot at %d (%d bytes) to %d", snap.meta.index, snap.size, self.peer.id)
        except (OSError, ConnectionError):
            pass
        finally:
            replica.node.report_snapshot(self.peer.id, ok)
            replica._kick()

    def close(self) -> None:
        self.closed = True
        if self.writer is not None:
            self.writer.close()
        for t in (self.task, self.snapshot_task):
            if t is not None:
                t.cancel()


class PeerTransport:
    def __init__(self, replica: Replica, cfg: Config) -> None:
        self.replica = replica
        self.cfg = cfg
        self.links: dict[int, PeerLink] = {}
        self.server: asyncio.AbstractServer | None = None
        self.receivers: dict[int, SnapshotReceiver] = {}
        self.inbound: set[asyncio.StreamWriter] = set()
        self.known = {s.id: s for s in cfg.servers}

    async def start(self) -> None:
        spec = self.replica.spec
        self.server = await asyncio.start_server(self._serve, spec.host, spec.peer_port, reuse_address=True)
        self.membership_changed(self.replica.node.membership)

    def membership_changed(self, membership: Membership) -> None:
        for pid in membership.members:
            if pid != self.replica.id and pid not in self.links and pid in self.known:
                link = self.links[pid] = PeerLink(self, self.known[pid])
                link.start()

    def send(self, messages) -> None:
        for m in messages:
            link = self.links.get(m.to)
            if link is not None:
                try:
                    link.send(m)
                except FrameError as exc:  # cannot happen with bounded commands; never stop the others
                    log.error("cannot send %s to %d: %s", m.type, m.to, exc)

    async def close(self) -> None:
        for link in self.links.values():
            link.close()
        if self.server is not None:
            self.server.close()
        for w in list(self.inbound):
            w.close()
        for r in self.receivers.values():
            r.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One incoming peer connection."""
        self.inbound.add(writer)
        sender = 0
        try:
            frame = decode_peer(await read_frame(reader, self.cfg.peer_max_frame))
            if not isinstance(frame, Hello):
                raise MessageError("a peer connection must start with HELLO")
            if frame.server_id not in self.known or frame.to != self.replica.id:
                raise MessageError(f"server {frame.server_id} is not a member of this cluster")
            if frame.cluster != self.cfg.fingerprint:
                raise MessageError(f"server {frame.server_id} has a different list of servers in its configuration")
            if not frame.valid(self.cfg.secret_bytes, self.cfg.fingerprint):
                raise MessageError(f"server {frame.server_id} does not know the cluster secret")
            sender = frame.server_id
            link = self.links.get(sender)
            if link is not None and link.writer is None:
                # A restarted peer: our link to it may be waiting out a backoff of up
                # to a second; an election could need it sooner than that.
                link.peer_is_back.set()
            while True:
                frame = decode_peer(await read_frame(reader, self.cfg.peer_max_frame))
                if isinstance(frame, SnapshotChunk):
                    await self._chunk(sender, frame)
                elif isinstance(frame, Message):
                    if frame.server_id != sender:
                        raise MessageError(f"server {sender} sent a message as server {frame.server_id}")
                    if type(frame) is InstallSnapshot and frame.snapshot.index not in self.replica.received_snapshots:
                        # Its chunks did not all arrive: without them it cannot be installed.
                        log.warning("INSTALL_SNAPSHOT at %d from %d without its data: dropped",
                                    frame.snapshot.index, sender)
                        continue
                    try:
                        self.replica.step(frame)
                    except MessageError as exc:
                        log.warning("rejected from server %d: %s", sender, exc)
                else:
                    raise MessageError("HELLO twice")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except (MessageError, FrameError) as exc:
            log.warning("peer connection from %s closed: %s", writer.get_extra_info("peername"), exc)
            with contextlib.suppress(Exception):
                writer.write(_error_frame(str(exc)))
                await writer.drain()
        finally:
            self.inbound.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    async def _chunk(self, sender: int, c: SnapshotChunk) -> None:
        loop = asyncio.get_running_loop()
        rx = self.receivers.get(sender)
        if c.offset == 0:
            if rx is not None:
                rx.abort()
            rx = self.receivers[sender] = SnapshotReceiver(self.replica.in_dir, c.meta, c.size, c.sha256,
                                                           int(c.digest, 16))
        if rx is None:
            return  # the start of this snapshot was lost; the primary will send it again
        try:
            await loop.run_in_executor(None, rx.write, c.offset, c.data)
            if rx.received == rx.size:
                del self.receivers[sender]
                done = await loop.run_in_executor(None, rx.finish)
                self.replica.received_snapshots[done.meta.index] = done
        except SnapshotInvalid as exc:
            log.warning("snapshot from %d refused: %s", sender, exc)
            self.receivers.pop(sender, None)
            rx.abort()
