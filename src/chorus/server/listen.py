"""Accepting connections, and what a connection may cost before it proves anything.

Both ports accept through :class:`Listener`, which does, for every connection,
before any protocol code sees it:

- a cap on the connections from one source address that have not
  authenticated yet (a client without a session, a peer before its HELLO):
  beyond it, a new one is closed at once, without a word;
- a deadline for the first byte, and for the TLS handshake;
- a look at the first byte (without reading it): a TLS handshake starts with
  0x16, a chorus frame with 0x00 (a length under 16 MiB). A plaintext client on
  a TLS port gets one plaintext error frame saying so; a TLS client on a
  plaintext port is closed;
- then the protocol, over TLS with the contexts current at that moment (so a
  renewed certificate is used from the next connection on).

Once authenticated, the connection gives its slot back (``Gate.authenticated``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl
from collections.abc import Callable

log = logging.getLogger("chorus.listen")
TLS_HANDSHAKE = 0x16


class Admission:
    """Connections counted by source address: all of them (``max_open``), and
    those that have not authenticated yet (``per_source``)."""

    def __init__(self, per_source: int, max_open: int = 1 << 30) -> None:
        self.per_source = per_source
        self.max_open = max_open
        self.pending: dict[str, int] = {}
        self.open: dict[str, int] = {}

    def admit(self, source: str) -> bool:
        if self.open.get(source, 0) >= self.max_open or not self.take(source):
            return False
        self.open[source] = self.open.get(source, 0) + 1
        return True

    def take(self, source: str) -> bool:
        n = self.pending.get(source, 0)
        if n >= self.per_source:
            return False
        self.pending[source] = n + 1
        return True

    def release(self, source: str) -> None:
        _down(self.pending, source)

    def gone(self, source: str) -> None:
        _down(self.open, source)


def _down(counts: dict[str, int], key: str) -> None:
    n = counts.get(key, 0) - 1
    if n > 0:
        counts[key] = n
    else:
        counts.pop(key, None)


class Gate:
    """One connection's places in its source's counts: the place among those
    not authenticated yet is given back when it authenticates (and taken again,
    if there is one, when it loses its session); both when it closes."""

    __slots__ = ("_admission", "_pending", "source")

    def __init__(self, admission: Admission | None, source: str) -> None:
        self._admission = admission
        self._pending = admission is not None
        self.source = source

    def authenticated(self) -> None:
        if self._pending and self._admission is not None:
            self._admission.release(self.source)
            self._pending = False

    def unauthenticated(self) -> bool:
        """The connection has no session again: whether it may stay (there is a place)."""
        if self._pending or self._admission is None:
            return True
        self._pending = self._admission.take(self.source)
        return self._pending

    def closed(self) -> None:
        if self._admission is not None:
            self.authenticated()
            self._admission.gone(self.source)
            self._admission = None


class Listener:
    def __init__(self, host: str, port: int, *, name: str, admission: Admission,
                 handshake_timeout: float, tls: Callable[[], ssl.SSLContext | None],
                 protocol: Callable[[Gate], asyncio.BaseProtocol],
                 refuse_plaintext: Callable[[], bytes], plaintext_speaks_first: bool = True) -> None:
        """``tls``: the context for a new connection, or None for plaintext;
        ``protocol``: makes the protocol of an admitted connection;
        ``refuse_plaintext``: the frame for a plaintext client on a TLS port (and
        for a TLS client on a plaintext port, whose handshake it ends);
        ``plaintext_speaks_first``: False where, without TLS, the server speaks
        first (the peer port's CHALLENGE): then there is nothing to look at."""
        self.host, self.port, self.name = host, port, name
        self.admission = admission
        self.handshake_timeout = handshake_timeout
        self.tls = tls
        self.protocol = protocol
        self.refuse_plaintext = refuse_plaintext
        self.plaintext_speaks_first = plaintext_speaks_first
        self.sock: socket.socket | None = None
        self.task: asyncio.Task | None = None
        self.refused = 0  # connections closed at the door (for tests and logs)
        self._handshakes: set[asyncio.Task] = set()

    async def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.create_server((self.host, self.port), family=family, backlog=1024, reuse_port=False)
        sock.setblocking(False)
        self.sock = sock
        self.task = asyncio.get_running_loop().create_task(self._accept())

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        for t in list(self._handshakes):
            t.cancel()
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        assert self.sock is not None
        while True:
            try:
                conn, addr = await loop.sock_accept(self.sock)
            except asyncio.CancelledError:
                raise
            except OSError as exc:
                # Out of file descriptors (or a connection reset before accept): wait
                # a little rather than spin; what is open already keeps being served.
                level = logging.WARNING if exc.errno in (errno.EMFILE, errno.ENFILE) else logging.DEBUG
                log.log(level, "%s port: accept failed: %s", self.name, exc)
                await asyncio.sleep(0.05)
                continue
            source = str(addr[0])
            if not self.admission.admit(source):
                self.refused += 1
                conn.close()
                continue
            task = loop.create_task(self._handshake(conn, Gate(self.admission, source)))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    async def _handshake(self, conn: socket.socket, gate: Gate) -> None:
        loop = asyncio.get_running_loop()
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        handed_over = False
        try:
            deadline = loop.time() + self.handshake_timeout
            ctx = self.tls()
            if ctx is None and not self.plaintext_speaks_first:
                first: int | None = 0  # (the protocol sends first; it keeps the deadline itself)
            else:
                first = await _peek(loop, conn, self.handshake_timeout)
                if first is None:
                    return  # silent, or closed at once
            if ctx is not None and first != TLS_HANDSHAKE:
                with contextlib.suppress(OSError):
                    conn.send(self.refuse_plaintext())
                return
            if ctx is None and first == TLS_HANDSHAKE:
                # A TLS client on a plaintext port: bytes that are no TLS record make
                # its handshake fail at once ("wrong version number"), not time out.
                with contextlib.suppress(OSError):
                    conn.send(self.refuse_plaintext())
                return
            proto = self.protocol(gate)
            left = max(0.1, deadline - loop.time())
            if ctx is None:
                await loop.connect_accepted_socket(lambda: proto, conn)
            else:
                # A closing TLS connection waits for the peer's goodbye at most this long.
                await loop.connect_accepted_socket(lambda: proto, conn, ssl=ctx, ssl_handshake_timeout=left,
                                                   ssl_shutdown_timeout=min(5.0, self.handshake_timeout))
            handed_over = True
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            log.debug("%s port: handshake with %s failed: %s", self.name, gate.source, exc)
        finally:
            if not handed_over:
                gate.closed()
                with contextlib.suppress(OSError):
                    conn.close()


async def _peek(loop: asyncio.AbstractEventLoop, conn: socket.socket, timeout: float) -> int | None:
    """The first byte the peer sent, left unread; None if nothing came in time."""
    fut = loop.create_future()
    fd = conn.fileno()

    def readable() -> None:
        if not fut.done():
            fut.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await asyncio.wait_for(fut, timeout)
    except TimeoutError:
        return None
    finally:
        loop.remove_reader(fd)
    try:
        data = conn.recv(1, socket.MSG_PEEK)
    except (BlockingIOError, InterruptedError):
        return None
    return data[0] if data else None


def raise_open_file_limit() -> int:
    """Allow as many open files as the system lets this process have (the soft
    limit is often 1,024, which a few idle clients exhaust)."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
