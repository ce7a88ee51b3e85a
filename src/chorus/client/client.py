"""The chorus client library.

    async with Client(["127.0.0.1:8091", "127.0.0.1:8092", "127.0.0.1:8093"]) as client:
        await client.register("alice", "Secret123")
        await client.login("alice", "Secret123")
        msg = await client.send("bob", "hello")        # returns once committed
        page = await client.history("bob", limit=50)   # newest first
        async for event in client.events(): ...        # pushed messages, resumed across failovers

It talks to one server at a time, any of them: backups forward writes to the
primary. When its server fails it moves to another (the primary, if a server
named it), with backoff and jitter, logs in again with its token, subscribes
again from the last message it saw, and retries whatever was in flight. Every
write carries (client id, seq): a retry is applied at most once, wherever it
lands, so a failover never loses or duplicates a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import secrets
import ssl
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, TypeVar

import msgspec

from chorus.wire import FrameDecoder, FrameError, encode_frame
from chorus.wire import client as W
from chorus.wire import results as R
from chorus.wire.results import Conversation, Message, Stats

from . import tls as T
from .errors import (
    Busy,
    ChorusError,
    InvalidRequest,
    NotConnected,
    Rejected,
    Throttled,
    Unauthenticated,
    Unavailable,
)

_RETRYABLE = {"unavailable", "busy"}
A = TypeVar("A", bound=msgspec.Struct)  # the type of answer a request gets
_ACCEPTED = b',"concern":"async"}'  # how an Accepted ends (its last field), and no other result does


def _decode(raw: msgspec.Raw, answer: type[A]) -> A | R.Accepted:
    """A reply's result, as the request's type of answer; or Accepted, for a write
    the server answered once it was on the primary's disk (write concern async)."""
    if bytes(raw).endswith(_ACCEPTED):
        return msgspec.json.decode(raw, type=R.Accepted)
    return msgspec.json.decode(raw, type=answer)


def _done(result: A | R.Accepted) -> A:
    """The answer of a write the caller waits for: a write concern of async gives none."""
    if isinstance(result, R.Accepted):
        raise InvalidRequest("invalid_request", "answered before it was applied (write concern async): "
                                                "this call needs the applied answer")
    return result


def _error(code: str, message: str, primary: str | None, retry_after: float | None = None) -> ChorusError:
    if code == "unavailable":
        return Unavailable(code, message, primary)
    if code == "busy":
        return Busy(code, message, primary)
    if code == "unauthenticated":
        return Unauthenticated(code, message, primary)
    if code == "throttled":
        return Throttled(code, message, primary, retry_after)
    if code in ("invalid_request", "malformed", "frame_too_large"):
        return InvalidRequest(code, message, primary)
    if code == "tls_required":
        return NotConnected(code, message, primary)
    return Rejected(code, message, primary)


def _from_reply(err: W.ErrorBody) -> ChorusError:
    return _error(err.code, err.message, err.primary, err.retry_after)


async def open_connection(address: str, ctx: ssl.SSLContext | None, timeout: float
                          ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to ``address`` (host:port), over TLS with ``ctx`` unless None.
    Raises NotConnected for a TLS failure (a certificate not trusted, a server
    without TLS): trying again does not help; OSError/TimeoutError otherwise."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        return await asyncio.wait_for(
            asyncio.open_connection(host, int(port), ssl=ctx, server_hostname=host if ctx is not None else None),
            timeout)
    except ssl.SSLError as exc:
        raise NotConnected("tls", T.explain(exc, address)) from None
    except ConnectionResetError as exc:
        if ctx is None:
            raise
        raise NotConnected("tls", T.explain(exc, address)) from None


def _time_out(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError("no answer in time"))


class _Connection:
    def __init__(self, address: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 on_event, max_frame: int, on_lost=None) -> None:
        self.address = address
        self.reader, self.writer = reader, writer
        self.waiting: dict[int, asyncio.Future] = {}
        self.on_event = on_event
        self.on_lost = on_lost
        self.decoder = FrameDecoder(max_frame)
        self.refused: NotConnected | None = None
        self.closed = asyncio.get_running_loop().create_future()
        self.task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                data = await self.reader.read(1 << 16)
                if not data:
                    break
                for body in self.decoder.feed(data):
                    reply = W.decode_reply(body)
                    if reply.event is not None:
                        self.on_event(self, reply)
                        continue
                    if reply.id is None and reply.error and reply.error.code == "tls_required":
                        self._fail(_from_reply(reply.error))  # a plaintext client on a TLS port
                        return
                    fut = self.waiting.pop(reply.id, None) if reply.id is not None else None
                    if fut is not None and not fut.done():
                        fut.set_result(reply)
        except (OSError, FrameError, msgspec.DecodeError, msgspec.ValidationError, RecursionError):
            pass
        finally:
            self._fail(ConnectionError(f"lost the connection to {self.address}"))

    def _fail(self, exc: Exception) -> None:
        if isinstance(exc, NotConnected) and self.refused is None:
            self.refused = exc
        for fut in self.waiting.values():
            if not fut.done():
                fut.set_exception(exc)
        self.waiting.clear()
        if not self.closed.done():
            self.closed.set_result(None)
            if self.on_lost is not None:
                self.on_lost(self)
        with contextlib.suppress(Exception):
            self.writer.close()

    async def call(self, rid: int, frame: bytes, timeout: float) -> W.Reply:
        if self.refused is not None:
            raise self.refused
        if self.closed.done():
            raise ConnectionError(f"not connected to {self.address}")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[W.Reply] = loop.create_future()
        self.waiting[rid] = fut
        self.writer.write(frame)
        timer = loop.call_later(timeout, _time_out, fut)  # (cheaper than wait_for, on every request)
        try:
            return await fut
        finally:
            timer.cancel()
            self.waiting.pop(rid, None)

    def close(self) -> None:
        self.on_lost = None  # closed on purpose
        self.task.cancel()
        self._fail(ConnectionError("closed"))


class Client:
    def __init__(
        self,
        servers: Iterable[str] | str,
        *,
        client_id: str | None = None,
        request_timeout: float = 15.0,
        retry_for: float = 60.0,
        write_concern: W.WriteConcern | None = None,
        consistency: W.Consistency = "linearizable",
        max_frame: int = 1 << 20,
        shuffle: bool = True,
        tls: T.TLSOption = None,
    ) -> None:
        """``servers``: any of the cluster's client addresses (host:port). The first
        one tried is picked at random, to spread clients over the servers, unless
        ``shuffle`` is False (then in the order given). ``tls``: how to reach them
        (TLS against the cluster's CA unless told otherwise; see client/tls.py)."""
        self.servers = [s.strip() for s in (servers.split(",") if isinstance(servers, str) else servers) if s.strip()]
        if not self.servers:
            raise ValueError("give at least one server (host:port)")
        self.client_id = client_id or secrets.token_hex(8)
        self.request_timeout = request_timeout
        self.retry_for = retry_for
        self.write_concern = write_concern
        self.consistency = consistency
        self.max_frame = max_frame
        self._tls = tls
        self._ssl: ssl.SSLContext | bool | None = False  # not resolved yet (False: not looked up)
        self.token: str | None = None
        self._auth_refused: str | None = None  # why the token was refused on reconnecting
        self.user: str | None = None
        self._conn: _Connection | None = None
        self._connecting: asyncio.Lock | None = None
        self._ids = itertools.count(1)
        self._seq = 0
        self._answered: set[int] = set()
        self._acked = 0
        self._next = random.randrange(len(self.servers)) if shuffle else 0
        self._closing = False
        self._reconnecting: asyncio.Task | None = None
        self._events: asyncio.Queue[Message] | None = None
        self._last_event = 0
        self._subscribed = False
        self._retrying = 0
        self.on_change: Callable[[], object] | None = None
        """Called whenever ``server`` or ``retrying`` may have changed (a UI shows them)."""

    def __repr__(self) -> str:
        return (f"Client({self.client_id} as {self.user or 'nobody'}, on {self.server or 'no server'}, "
                f"seq {self._seq}, acked {self._acked})")

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def close(self) -> None:
        self._closing = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @property
    def server(self) -> str | None:
        """The server this client is talking to now (None between servers)."""
        conn = self._conn
        return conn.address if conn is not None and not conn.closed.done() else None

    @property
    def retrying(self) -> bool:
        """Whether a request failed and is being retried: a failover or an overloaded cluster."""
        return self._retrying > 0

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    # ------------------------------------------------------------------ connections
    async def _connect(self, prefer: str | None = None) -> _Connection:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._conn is not None and not self._conn.closed.done():
                return self._conn
            order = [prefer] if prefer else []
            for k in range(len(self.servers)):
                order.append(self.servers[(self._next + k) % len(self.servers)])
            last_exc: Exception | None = None
            refused: NotConnected | None = None
            for address in order:
                try:
                    reader, writer = await open_connection(address, self.ssl_context(), 2.0)
                except NotConnected as exc:  # TLS: worth trying the others, not again
                    refused = exc
                    continue
                except (OSError, TimeoutError, ValueError) as exc:
                    last_exc = exc
                    continue
                self._next = (self.servers.index(address) + 1) % len(self.servers) if address in self.servers else self._next
                conn = _Connection(address, reader, writer, self._on_event, max(self.max_frame, 64 << 20),
                                   self._lost)
                self._conn = conn
                try:
                    await self._resume(conn)
                except (ConnectionError, TimeoutError) as exc:
                    last_exc = exc
                    conn.close()
                    continue
                self._changed()
                return conn
            if refused is not None:
                raise refused
            raise ConnectionError(f"no server answered ({', '.join(self.servers)}): {last_exc}")

    async def _resume(self, conn: _Connection) -> None:
        """On a new connection: the session and the subscription carry over."""
        if self.token is not None:
            rid = next(self._ids)
            reply = await conn.call(rid, encode_frame(W.encode(W.Auth(id=rid, token=self.token))),
                                    self.request_timeout)
            if not reply.ok:
                err = reply.error or W.ErrorBody("internal")
                if err.code in _RETRYABLE:
                    raise ConnectionError(err.message or "unavailable")
                self.token = None
                self._auth_refused = err.message or None  # said, should a request need the session
                if self._subscribed:
                    raise _from_reply(err)
                # Not an error yet: the request being retried may be the one that
                # ended the session (delete_account); the server answers a retried
                # write from its saved result, anything else with "unauthenticated".
        if self._subscribed:
            rid = next(self._ids)
            reply = await conn.call(rid, encode_frame(W.encode(W.Subscribe(id=rid, after=self._last_event))),
                                    self.request_timeout)
            if not reply.ok:
                raise ConnectionError("could not subscribe again")

    def ssl_context(self) -> ssl.SSLContext | None:
        if self._ssl is False:
            self._ssl = T.context(self._tls, self.servers)
        return self._ssl  # type: ignore[return-value]

    def _lost(self, conn: _Connection) -> None:
        """A connection broke. A subscribed client gets back on its own, at once:
        the events must keep coming even if it never sends another request."""
        if self._conn is conn:
            self._conn = None
        self._changed()
        if self._subscribed and not self._closing and (self._reconnecting is None or self._reconnecting.done()):
            self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        attempt = 0
        while not self._closing and self._subscribed:
            try:
                await self._connect()
                return
            except NotConnected:
                return  # (TLS: trying again does not help; the next request says why)
            except (ConnectionError, TimeoutError, OSError, ChorusError):
                attempt += 1
                await asyncio.sleep(min(1.0, 0.05 * 2 ** min(attempt, 5)) * random.uniform(0.5, 1.5))

    def _on_event(self, conn: _Connection, reply: W.Reply) -> None:
        msg = reply.message
        # (never the same message twice, even across servers)
        if reply.event == "message" and msg is not None and self._events is not None and msg.id > self._last_event:
            self._last_event = msg.id
            self._events.put_nowait(msg)

    async def _write(self, cls: type[W.Write], answer: type[A], **fields: Any) -> A | R.Accepted:
        self._seq += 1
        req = cls(id=0, client=self.client_id, seq=self._seq, concern=self.write_concern, **fields)
        return _decode(await self._call(req), answer)

    async def _read(self, cls: type[W.Read], answer: type[A], **fields: Any) -> A:
        return await self._ask(cls(id=0, consistency=self.consistency, **fields), answer)

    async def _ask(self, req: W.Request, answer: type[A]) -> A:
        return msgspec.json.decode(await self._call(req), type=answer)

    async def _call(self, req: W.Request) -> msgspec.Raw:
        """One request, retried across servers until it gets an answer (a write
        with the same client and seq each time: it is applied once); the result."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.retry_for
        prefer: str | None = None
        attempt = 0
        conn: _Connection | None = None
        try:
            while True:
                try:
                    conn = None
                    conn = await self._connect(prefer)
                    req.id = next(self._ids)
                    if isinstance(req, W.Write):
                        req.acked = self._acked
                    reply = await conn.call(req.id, encode_frame(W.encode(req), self.max_frame), self.request_timeout)
                except (ConnectionError, TimeoutError, OSError) as exc:
                    self._drop(conn)
                    prefer = None
                    error: Exception = Unavailable("unavailable", str(exc), None)
                else:
                    if reply.ok:
                        if isinstance(req, W.Write):
                            self._answered_seq(req.seq)
                        return reply.result
                    err = reply.error or W.ErrorBody("internal")
                    if err.code == "unauthenticated" and self._auth_refused:
                        err = msgspec.structs.replace(err, message=self._auth_refused)
                    exc2 = _from_reply(err)
                    if err.code not in _RETRYABLE:
                        if isinstance(req, W.Write):
                            self._answered_seq(req.seq)
                        raise exc2
                    error = exc2
                    prefer = err.primary
                    if prefer and self._conn is not None and prefer != self._conn.address:
                        self._drop(self._conn)  # go to the server it named
                attempt += 1
                if attempt == 1:
                    self._retrying += 1
                    self._changed()
                if loop.time() >= deadline:
                    raise error
                if attempt == 1 and isinstance(error, Unavailable) and prefer is None and self._conn is None:
                    continue  # the server went away: try the next one at once, back off after that
                await asyncio.sleep(min(1.0, 0.05 * 2 ** min(attempt, 5)) * random.uniform(0.5, 1.5))
        finally:
            if attempt:
                self._retrying -= 1
                self._changed()

    def _drop(self, conn: _Connection | None) -> None:
        if conn is not None:
            conn.close()
        if self._conn is conn:
            self._conn = None
            self._changed()

    def _answered_seq(self, seq: int) -> None:
        self._answered.add(seq)
        while self._acked + 1 in self._answered:
            self._acked += 1
            self._answered.discard(self._acked)

    # ------------------------------------------------------------------ the chat
    # A write answers with its result once applied (on a majority, by default); with
    # write concern "async", with an Accepted once it is on the primary's disk.

    async def register(self, name: str, password: str) -> R.Registered | R.Accepted:
        return await self._write(W.Register, R.Registered, name=name, password=password)

    async def login(self, name: str, password: str) -> R.LoggedIn:
        result = await self._ask(W.Login(id=0, name=name, password=password), R.LoggedIn)
        self.token, self.user, self._auth_refused = result.token, result.name, None
        return result

    async def auth(self, token: str) -> R.Authenticated:
        """Resume a session from a token (any server issued it): the user's id,
        name, last log-off and view count."""
        self.token = None  # (the connection authenticates with it below, not before)
        result = await self._ask(W.Auth(id=0, token=token), R.Authenticated)
        self.token, self.user, self._auth_refused = token, result.name, None
        return result

    async def send(self, to: str, body: str) -> Message:
        r = await self._write(W.Send, R.Sent, to=to, body=body)
        return Message(r.id, self.user or "", r.to or to, body, r.sent_at or 0)

    async def history(self, peer: str, *, limit: int = 50, before: int | None = None) -> list[Message]:
        return (await self._read(W.History, R.HistoryPage, peer=peer, limit=limit, before=before)).messages

    async def delete_messages(self, ids: Iterable[int]) -> R.Deleted | R.Accepted:
        return await self._write(W.DeleteMessages, R.Deleted, ids=list(ids))

    async def mark_read(self, peer: str, upto: int) -> R.MarkedRead | R.Accepted:
        return await self._write(W.MarkRead, R.MarkedRead, peer=peer, upto=upto)

    async def set_view_count(self, count: int) -> R.ViewCountSet | R.Accepted:
        return await self._write(W.SetViewCount, R.ViewCountSet, count=count)

    async def log_off(self) -> R.LoggedOff | R.Accepted:
        """Record the log-off time (what "last seen" shows) and end the session:
        its token stops working on every server. Log in again to go on."""
        result = await self._write(W.LogOff, R.LoggedOff)
        self.token = None
        return result

    async def logout(self) -> R.LoggedOff | R.Accepted:
        """Log off and forget the session."""
        result = await self.log_off()
        self.token = self.user = None
        self._drop(self._conn)
        return result

    async def logout_all(self) -> R.LoggedOutAll | R.Accepted:
        """End every session of this user, on every device (every token issued so far)."""
        result = await self._write(W.LogoutAll, R.LoggedOutAll)
        self.token = self.user = None
        self._drop(self._conn)
        return result

    async def change_password(self, old: str, new: str) -> R.NewToken:
        """Every other session of the user ends; this one goes on with a new token."""
        result = _done(await self._write(W.ChangePassword, R.NewToken, old_password=old, new_password=new))
        self.token = result.token
        return result

    async def delete_account(self) -> R.AccountDeleted | R.Accepted:
        result = await self._write(W.DeleteAccount, R.AccountDeleted)
        self.token = self.user = None
        return result

    async def users(self, pattern: str = "*", *, after: str = "", limit: int = 50) -> list[str]:
        return (await self._read(W.Users, R.UserPage, pattern=pattern, after=after, limit=limit)).users

    async def conversations(self) -> list[Conversation]:
        return (await self._read(W.Conversations, R.ConversationList)).conversations

    async def stats(self) -> Stats:
        return await self._read(W.Stats, Stats)

    async def status(self) -> R.Status:
        """The status of the server this client is talking to."""
        return await self._ask(W.Status(id=0), R.Status)

    async def events(self, after: int | None = None) -> AsyncIterator[Message]:
        """Messages to or from this user as they are committed, starting after
        message id ``after`` (default: the last one this client saw). Carries on
        across failovers without gaps or repeats."""
        if self._events is None:
            self._events = asyncio.Queue()
        if after is not None:
            self._last_event = after
        self._subscribed = True
        await self._ask(W.Subscribe(id=0, after=self._last_event), R.Subscribed)
        while True:
            yield await self._events.get()


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, req: W.Request,
                   timeout: float) -> W.Reply:
    """One request and its reply on a connection of one's own (nothing else in flight)."""
    writer.write(encode_frame(W.encode(req)))
    head = await asyncio.wait_for(reader.readexactly(4), timeout)
    return W.decode_reply(await asyncio.wait_for(reader.readexactly(int.from_bytes(head, "big")), timeout))


async def server_status(address: str, timeout: float = 2.0, tls: T.TLSOption = None) -> R.ServerStatus:
    """The status of one server, or why there is none (it does not answer)."""
    try:
        reader, writer = await open_connection(address, T.context(tls, [address]), timeout)
    except NotConnected as exc:
        return R.ServerStatus(address, error=exc.message)
    except (OSError, TimeoutError, ValueError) as exc:
        return R.ServerStatus(address, error=f"unreachable: {exc}")
    try:
        reply = await exchange(reader, writer, W.Status(id=1), timeout)
        if not reply.ok:
            return R.ServerStatus(address, error=reply.error.message if reply.error else "refused")
        return R.ServerStatus(address, msgspec.json.decode(reply.result, type=R.Status))
    except (OSError, TimeoutError, asyncio.IncompleteReadError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        return R.ServerStatus(address, error=f"no answer: {exc}")
    finally:
        writer.close()
