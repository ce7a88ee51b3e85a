"""Links between servers.

Each server keeps one outgoing connection to every other member, for what it
sends, and accepts their connections on its peer port, for what it receives.
With TLS (the default off loopback) both ends present a certificate of the
cluster CA, and a connection is the server its certificate names. Every
connection then opens with a challenge and response each way (CHALLENGE, HELLO,
WELCOME: wire/peer.py), which proves knowledge of the cluster secret against a
fresh nonce, so nothing captured can be replayed. A frame from an unknown or
unproven server, or one that names another sender than its connection, is
refused with an ERROR frame and the connection is closed.

Before its HELLO, a connection may send only small frames, must finish within
the handshake deadline, and counts against its source address's cap (listen.py).

Each outgoing link has a bounded buffer: a slow or dead peer gets messages
dropped (Raft expects lossy links) and the core is told the link is
unreachable, so nothing ever blocks on a peer. Snapshots are streamed in chunks
before the INSTALL_SNAPSHOT message that names them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import ssl
from typing import TYPE_CHECKING

import msgspec

from chorus.chat import commands as C
from chorus.raft import Forward, InstallSnapshot, Membership, Message, MessageError
from chorus.store import SnapshotInvalid, SnapshotReceiver, chunks
from chorus.wire import FrameError, encode_frame
from chorus.wire.peer import (
    HANDSHAKE_MAX_FRAME,
    Challenge,
    Hello,
    SnapshotChunk,
    Welcome,
    decode_peer,
    encode_peer,
    new_nonce,
)

from .config import Config, ServerSpec
from .listen import Admission, Gate, Listener
from .tls import TLS, peer_id

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


class _Error(msgspec.Struct):
    type: str
    payload: dict


def refusal(body: bytes) -> str | None:
    """The message of an ERROR frame, or None if it is not one."""
    try:
        e = msgspec.json.decode(body, type=_Error)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None
    return str(e.payload.get("message", ""))[:500] if e.type == "ERROR" else None


def check_forward(m: Forward) -> None:
    """A primary appends forwarded commands as they are: each must be one that
    applying cannot fail on (every field within its bounds), or it is refused
    here, before it is proposed."""
    for i, data in enumerate(m.commands):
        try:
            C.decode(data)
        except C.BadCommand as exc:
            raise MessageError(f"FORWARD: command {i} is not a valid chat command: {exc}") from None


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

    def __repr__(self) -> str:
        state = "closed" if self.closed else "connected" if self.writer is not None else "connecting"
        return f"PeerLink(to {self.peer.id}, {state}, {len(self.pending)} frames pending)"

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
                self.t.replica.peer_unreachable(self.peer.id)  # it does not keep up: drop
                return
            w.write(frame)
        elif self.pending_bytes + len(frame) <= MAX_BUFFERED:
            self.pending.append(frame)
            self.pending_bytes += len(frame)

    async def _connect_loop(self) -> None:
        backoff = 0.05
        while not self.closed:
            try:
                reader, writer = await self._open()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # whatever it is, the link must keep trying (and say why)
                if not isinstance(exc, OSError | TimeoutError | asyncio.IncompleteReadError) or isinstance(
                        exc, ssl.SSLError):
                    log.warning("link to server %d not up: %s", self.peer.id, exc)
                await self._pause(backoff * (0.5 + secrets.randbelow(1000) / 1000))
                backoff = min(backoff * 2, 1.0)
                continue
            backoff = 0.05
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
                self.t.replica.peer_unreachable(self.peer.id)
                await self._pause(backoff)

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Connect, and prove who we are against the peer's challenge (and have it prove itself)."""
        t, peer = self.t, self.peer
        timeout = t.cfg.limits.handshake_timeout_s
        tls = t.tls.current().peer_client if t.tls is not None else None
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(peer.host, peer.peer_port, ssl=tls,
                                    server_hostname=peer.host if tls is not None else None,
                                    ssl_handshake_timeout=timeout if tls is not None else None),
            timeout=timeout,
        )
        try:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if tls is not None:
                named = peer_id(writer.get_extra_info("peercert"))
                if named != peer.id:
                    raise MessageError(f"{peer.peer_address} presented the certificate of "
                                       f"{f'server {named}' if named else 'no server'}, not of server {peer.id}")

            async def frame() -> object:
                body = await asyncio.wait_for(read_frame(reader, HANDSHAKE_MAX_FRAME), timeout)
                why = refusal(body)
                if why is not None:
                    raise MessageError(f"server {peer.id} refused our link: {why}")
                return decode_peer(body)

            challenge = await frame()
            if not isinstance(challenge, Challenge) or challenge.server_id != peer.id:
                raise MessageError(f"{peer.peer_address} did not open with the CHALLENGE of server {peer.id}")
            hello = Hello.sign(t.cfg.secret_bytes, t.replica.id, peer.id, challenge.nonce, t.replica.cluster_id,
                               state=t.replica.disk_state())
            writer.write(encode_frame(encode_peer(hello)))
            welcome = await frame()
            if not isinstance(welcome, Welcome) or not welcome.valid(t.cfg.secret_bytes, hello):
                raise MessageError(f"{peer.peer_address} does not know the cluster secret (its WELCOME is not valid)")
            t.replica.peer_disk(peer.id, welcome.state)
        except BaseException:
            writer.close()
            raise
        return reader, writer

    async def _send_snapshot(self, m: InstallSnapshot) -> None:
        replica = self.t.replica
        loop = asyncio.get_running_loop()
        ok = False
        try:
            snap = await loop.run_in_executor(None, replica.latest_snapshot)  # (reads and checks the file)
            if snap is None or snap.meta.index < m.snapshot.index:
                return
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
            replica.snapshot_sent(self.peer.id, ok)

    def close(self) -> None:
        self.closed = True
        if self.writer is not None:
            self.writer.close()
        for t in (self.task, self.snapshot_task):
            if t is not None:
                t.cancel()


class PeerTransport:
    def __init__(self, replica: Replica, cfg: Config, tls: TLS | None = None) -> None:
        self.replica = replica
        self.cfg = cfg
        self.tls = tls
        self.links: dict[int, PeerLink] = {}
        self.listener: Listener | None = None
        self.receivers: dict[int, SnapshotReceiver] = {}
        self.inbound: set[asyncio.StreamWriter] = set()

    def known(self, server_id: int) -> ServerSpec | None:
        """Where a server is, if it is one this server talks to: a member, or a
        server of the configuration never removed."""
        m = self.replica.membership
        if server_id in m.removed or (server_id not in m.members
                                      and all(s.id != server_id for s in self.cfg.servers)):
            return None
        return self.replica.address_of(server_id)

    def __repr__(self) -> str:
        up = sorted(pid for pid, link in self.links.items() if link.writer is not None)
        return f"PeerTransport(server {self.replica.id}, links {sorted(self.links)}, connected {up})"

    async def start(self) -> None:
        spec = self.replica.spec
        tls = self.tls

        def protocol(gate: Gate) -> asyncio.BaseProtocol:
            reader = asyncio.StreamReader(limit=1 << 16)
            return asyncio.StreamReaderProtocol(reader, lambda r, w: self._serve(r, w, gate))

        self.listener = Listener(
            spec.host, spec.peer_port, name="peer", admission=Admission(self.cfg.limits.peer_pending_per_source),
            handshake_timeout=self.cfg.limits.handshake_timeout_s,
            tls=(lambda: tls.current().peer_server) if tls is not None else (lambda: None),
            protocol=protocol, refuse_plaintext=lambda: _error_frame("this server's peer port speaks TLS only"),
            plaintext_speaks_first=False,
        )
        await self.listener.start()
        self.membership_changed(self.replica.membership)

    def membership_changed(self, membership: Membership) -> None:
        """A link to each member (a server being removed keeps its link: it must
        hear of its removal); a member that moved is reached at its new address."""
        for pid in membership.members:
            if pid == self.replica.id:
                continue
            spec = self.known(pid)
            link = self.links.get(pid)
            if link is not None and spec is not None and (link.peer.host, link.peer.peer_port) != (
                    spec.host, spec.peer_port):
                link.close()
                link = None
            if link is None and spec is not None:
                link = self.links[pid] = PeerLink(self, spec)
                link.start()

    def send(self, messages) -> None:
        """Each peer's messages of one batch go out in one write (over TLS, one
        record instead of one per message)."""
        batches: dict[PeerLink, list[bytes]] = {}
        limit = self.cfg.peer_max_frame
        for m in messages:
            link = self.links.get(m.to)
            if link is None:
                continue
            if type(m) is InstallSnapshot:
                link.send(m)
                continue
            try:
                batches.setdefault(link, []).append(encode_frame(encode_peer(m), limit))
            except FrameError as exc:  # cannot happen with bounded commands; never stop the others
                log.error("cannot send %s to %d: %s", m.type, m.to, exc)
        for link, frames in batches.items():
            link._write(frames[0] if len(frames) == 1 else b"".join(frames))

    async def close(self) -> None:
        for link in self.links.values():
            link.close()
        if self.listener is not None:
            self.listener.close()
        for w in list(self.inbound):
            w.close()
        for r in self.receivers.values():
            r.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, gate: Gate) -> None:
        """One incoming peer connection."""
        self.inbound.add(writer)
        try:
            sender = await self._accept_hello(reader, writer)
            gate.authenticated()
            link = self.links.get(sender)
            if link is not None and link.writer is None:
                # A restarted peer: our link to it may be waiting out a backoff of up
                # to a second; an election could need it sooner than that.
                link.peer_is_back.set()
            while True:
                frame = decode_peer(await read_frame(reader, self.cfg.peer_max_frame))
                if isinstance(frame, SnapshotChunk):
                    if frame.server_id != sender:
                        raise MessageError(f"server {sender} sent a snapshot chunk as server {frame.server_id}")
                    await self._chunk(sender, frame)
                elif isinstance(frame, Message):
                    if frame.server_id != sender:
                        raise MessageError(f"server {sender} sent a message as server {frame.server_id}")
                    if type(frame) is Forward:
                        check_forward(frame)
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
                    raise MessageError(f"{type(frame).__name__.upper()} after the handshake")
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError, ssl.SSLError):
            pass
        except asyncio.CancelledError:
            # The server is stopping. Ending the handler normally: asyncio's stream
            # callback (Python 3.11) logs a cancelled handler as an error.
            pass
        except (MessageError, FrameError) as exc:
            log.warning("peer connection from %s closed: %s", writer.get_extra_info("peername"), exc)
            with contextlib.suppress(Exception):
                writer.write(_error_frame(str(exc)))
                await writer.drain()
        finally:
            gate.closed()
            self.inbound.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    async def _accept_hello(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
        """Challenge the connecting server, check its HELLO, prove ourselves: its id."""
        me = self.replica.id
        named = None
        if self.tls is not None:
            named = peer_id(writer.get_extra_info("peercert"))
            if named is None:
                raise MessageError("the certificate names no chorus server")
        challenge = Challenge(server_id=me, nonce=new_nonce())
        writer.write(encode_frame(encode_peer(challenge)))
        body = await asyncio.wait_for(read_frame(reader, HANDSHAKE_MAX_FRAME), self.cfg.limits.handshake_timeout_s)
        hello = decode_peer(body)
        if not isinstance(hello, Hello):
            raise MessageError("a peer connection must answer its CHALLENGE with HELLO")
        if self.known(hello.server_id) is None or hello.to != me:
            raise MessageError(f"server {hello.server_id} is not a member of this cluster")
        if named is not None and hello.server_id != named:
            raise MessageError(f"the certificate of server {named} was used to claim server {hello.server_id}")
        if hello.cluster != self.replica.cluster_id:
            raise MessageError(f"server {hello.server_id} is of another cluster (a different list of servers in "
                               "the configuration it started from)")
        if not hello.valid(self.cfg.secret_bytes, challenge.nonce, self.replica.cluster_id):
            raise MessageError(f"server {hello.server_id} does not know the cluster secret, "
                               "or answered another challenge than this connection's")
        writer.write(encode_frame(encode_peer(hello.welcome(self.cfg.secret_bytes, self.replica.disk_state()))))
        self.replica.peer_disk(hello.server_id, hello.state)
        return hello.server_id

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
        except (SnapshotInvalid, OSError) as exc:  # (OSError: the disk is full, say; sent again later)
            log.warning("snapshot from %d refused: %s", sender, exc)
            self.receivers.pop(sender, None)
            rx.abort()
