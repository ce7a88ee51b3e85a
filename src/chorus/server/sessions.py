"""Client connections: requests in, answers and pushed messages out.

Every server accepts clients. Requests on one connection are handled
concurrently and answered by id. A connection is authenticated by ``login`` or
by ``auth`` with a token from any server; it then acts as that user and no
other. Writes become chat commands proposed to the cluster (a backup forwards
them to the primary); reads are linearizable unless the request asks for local
consistency. A subscribed connection gets every new message to or from its user
as this replica applies it, and on (re)subscribing everything after the last
message it saw: nothing is missed, nothing arrives twice.

Bad input never costs more than that one request (or, for a broken frame, that
one connection): malformed JSON, JSON nested too deeply, unknown ops, wrong
types, missing or extra fields, oversized frames each get an error with a
stable code.

Before it has a session a connection costs little and not for long: it counts
against its source address's cap (listen.py), its frames are at most
``pre_auth_max_frame`` bytes, and it is closed after ``idle_timeout_s`` without
a request. Logins are throttled and registrations rate-limited (guard.py).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import TYPE_CHECKING, Any

import msgspec

from chorus.chat import commands as C
from chorus.chat import queries, rules
from chorus.chat.passwords import dummy_hash, hash_password, verify_password
from chorus.store import SnapshotFile
from chorus.wire import FrameDecoder, FrameError, encode_frame
from chorus.wire import client as W
from chorus.wire import results as R
from chorus.wire.errors import Busy, ChorusError, Unavailable

from . import admin, auth
from .config import Config
from .guard import Guard, Throttled, TooBusy
from .listen import Admission, Gate, Listener
from .tls import TLS

if TYPE_CHECKING:
    from .replica import Replica

log = logging.getLogger("chorus.clients")
MAX_OUT_BUFFER = 16 << 20  # a client this far behind in reading is disconnected


ENDS_SESSION = (W.LogOff, W.LogoutAll, W.ChangePassword, W.DeleteAccount)
# What each of them answers: a saved result of another type is not its answer.
_ANSWERS: dict[type[W.Write], type[R.Done]] = {
    W.LogOff: R.LoggedOff, W.LogoutAll: R.LoggedOutAll, W.ChangePassword: R.PasswordChanged,
    W.DeleteAccount: R.AccountDeleted,
}


class ClientServer:
    def __init__(self, replica: Replica, cfg: Config, tls: TLS | None = None) -> None:
        self.replica = replica
        self.cfg = cfg
        self.tls = tls
        self.guard = Guard(cfg.limits)
        self.by_user: dict[int, set[ClientSession]] = {}
        self.sessions: set[ClientSession] = set()
        self.unauthenticated: set[ClientSession] = set()
        self.listener: Listener | None = None
        self._sweeper: asyncio.Task | None = None

    async def start(self) -> None:
        spec = self.replica.spec
        tls = self.tls
        self.listener = Listener(
            spec.host, spec.client_port, name="client",
            admission=Admission(self.cfg.limits.pending_per_source, self.cfg.limits.connections_per_source),
            handshake_timeout=self.cfg.limits.handshake_timeout_s,
            tls=(lambda: tls.current().client_side) if tls is not None else (lambda: None),
            protocol=lambda gate: ClientSession(self, gate),
            refuse_plaintext=lambda: encode_frame(W.error(
                None, "tls_required", "this server speaks TLS only: connect with TLS (chorus clients do by default)")
                if tls is not None else W.error(None, "malformed", "this server does not speak TLS")),
        )
        await self.listener.start()
        loop = asyncio.get_running_loop()
        self._sweeper = loop.create_task(self._sweep_idle())
        # The hash an unknown name is checked against, made now rather than by the
        # first login for one (which would then take longer than the others).
        self._warm = loop.create_task(self.guard.password_job(dummy_hash))

    async def _sweep_idle(self) -> None:
        """Close connections without a session that have been silent too long, or
        have been without one too long at all."""
        limits = self.cfg.limits
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(max(0.05, min(1.0, limits.idle_timeout_s / 4)))
            now = loop.time()
            idle, old = now - limits.idle_timeout_s, now - limits.pre_auth_lifetime_s
            for s in [s for s in self.unauthenticated
                      if (s.last_active < idle or s.unauthenticated_since < old) and not s.in_flight]:
                s.abort()  # (no TLS goodbye: it would wait for one back from a silent peer)

    def stop_accepting(self) -> None:
        if self.listener is not None:
            self.listener.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        self.guard.close()

    def close(self) -> None:
        for s in list(self.sessions):
            s.close()

    def push(self, sender: int, recipient: int, msg: R.Message) -> None:
        for uid in {sender, recipient}:
            for s in self.by_user.get(uid, ()):
                s.push(msg)

    def account_deleted(self, uid: int) -> None:
        for s in list(self.by_user.get(uid, ())):
            s.logout()

    def state_replaced(self) -> None:
        """A snapshot was installed: its sessions ended and accounts deleted were
        not applied here one by one, so every connection is checked against it."""
        reader = self.replica.reader
        for s in [s for s in self.sessions if s.uid is not None]:
            user = queries.user_by_id(reader, s.uid)  # type: ignore[arg-type]
            if user is None or user.name != s.name or queries.session_ended(reader, user.id, s.session, s.epoch):
                s.logout()

    def sessions_ended(self, uid: int, session: str | None, epoch: int | None) -> None:
        """A session (or, with ``epoch``, every one issued before it) was ended:
        the connections using it here are logged out."""
        for s in list(self.by_user.get(uid, ())):
            if (session is not None and s.session == session) or (epoch is not None and s.epoch < epoch):
                s.logout()

    def _bind(self, session: ClientSession, uid: int | None, claims: auth.Claims | None = None) -> None:
        if uid is not None and uid != session.uid and len(self.by_user.get(uid, ())) >= \
                self.cfg.limits.connections_per_user:
            raise ChorusError("busy", f"this user has {self.cfg.limits.connections_per_user} connections to "
                                      "this server already")
        if session.uid != uid:  # another user (or none): the old one's pushes stop here
            session.pushed_upto = None
            session.held = None
        if session.uid is not None:
            peers = self.by_user.get(session.uid)
            if peers is not None:
                peers.discard(session)
                if not peers:
                    del self.by_user[session.uid]
        session.uid = uid
        session.session = claims.sid if claims is not None else ""
        session.epoch = claims.ep if claims is not None else 0
        session.session_expires = claims.exp if claims is not None else 0
        if uid is not None:
            self.by_user.setdefault(uid, set()).add(session)
            self.unauthenticated.discard(session)
            session.gate.authenticated()
            session.decoder.max_frame = self.cfg.max_frame
        elif session.transport is not None and session not in self.unauthenticated:
            # Without a session again: the limits of a connection that never had one.
            self.unauthenticated.add(session)
            session.last_active = session.unauthenticated_since = asyncio.get_running_loop().time()
            session.decoder.max_frame = self.cfg.limits.pre_auth_max_frame
            if not session.gate.unauthenticated():
                session.close()  # its address holds as many such connections as it may


class ClientSession(asyncio.Protocol):
    def __init__(self, server: ClientServer, gate: Gate) -> None:
        self.server = server
        self.replica = server.replica
        self.cfg = server.cfg
        self.gate = gate
        self.decoder = FrameDecoder(self.cfg.limits.pre_auth_max_frame)  # until it has a session
        self.transport: asyncio.Transport | None = None
        self.uid: int | None = None
        self.name = ""
        self.session = ""  # the token's session id, epoch and expiry
        self.epoch = 0
        self.session_expires = 0
        self.last_active = self.unauthenticated_since = 0.0
        self.in_flight = 0
        self.admin = False  # proved it knows the cluster secret (admin_auth)
        self.admin_nonce: str | None = None
        self.backup: SnapshotFile | None = None  # a backup being read on this connection
        self.tasks: set[asyncio.Task] = set()
        # Pushing: None while not subscribed; while catching up, live messages wait in `held`.
        self.pushed_upto: int | None = None
        self.held: list[R.Message] | None = None

    # ------------------------------------------------------------------ the connection
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.last_active = self.unauthenticated_since = asyncio.get_running_loop().time()
        self.server.sessions.add(self)
        self.server.unauthenticated.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        admin.drop_backup(self.backup)
        self.backup = None
        self.server.sessions.discard(self)
        self.transport = None
        self.server._bind(self, None)
        self.server.unauthenticated.discard(self)
        self.gate.closed()
        for t in self.tasks:
            t.cancel()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.uid is None:
            self.last_active = asyncio.get_running_loop().time()
        try:
            frames = self.decoder.feed(data)
        except FrameError as exc:
            before = "" if self.uid is not None else " (before logging in)"
            self._send(W.error(None, "frame_too_large", f"{exc}{before}"))
            self.close()
            return
        for body in frames:
            try:
                req = W.decode_request(body)
            except W.ProtocolError as exc:
                self._send(W.error(exc.request_id, exc.code, str(exc)))
                continue
            limit = self.cfg.max_in_flight if self.uid is not None else self.cfg.limits.pre_auth_in_flight
            if self.in_flight >= limit:
                self._send(W.error(req.id, "busy", f"more than {limit} requests in flight"
                                   + ("" if self.uid is not None else " (before logging in)")))
                continue
            self.in_flight += 1
            task = asyncio.get_running_loop().create_task(self._handle(req))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    def _send(self, frame_body: bytes) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        if t.get_write_buffer_size() > MAX_OUT_BUFFER:
            log.warning("client %s does not read its answers; disconnecting it", t.get_extra_info("peername"))
            t.close()
            return
        t.write(encode_frame(frame_body, 1 << 30))

    async def _handle(self, req: W.AnyRequest) -> None:
        code = "ok"
        start = time.perf_counter()
        try:
            result = await self._dispatch(req)
            self._send(W.ok(req.id, result))
        except Busy as exc:
            code = "busy"
            self._send(W.error(req.id, "busy", exc.message))
        except TooBusy as exc:
            code = "busy"
            self._send(W.error(req.id, "busy", str(exc)))
        except Unavailable as exc:
            code = "unavailable"
            self._send(W.error(req.id, "unavailable", exc.message, exc.primary or self.replica.primary_address()))
        except ChorusError as exc:
            code = exc.code
            self._send(W.error(req.id, exc.code, exc.message, exc.primary))
        except Throttled as exc:
            code = "throttled"
            self._send(W.error(req.id, "throttled", str(exc), retry_after=exc.retry_after))
        except asyncio.CancelledError:
            code = "cancelled"
            raise
        except Exception:
            code = "internal"
            log.exception("request %r failed", type(req).__name__)
            self._send(W.error(req.id, "internal", "the server failed to handle this request; it is logged"))
        finally:
            self.in_flight -= 1
            self.replica.metrics.request(req.__struct_config__.tag, code, time.perf_counter() - start)

    # ------------------------------------------------------------------ requests
    def _admin_auth(self, req: W.AdminAuth) -> R.AdminAuthenticated:
        nonce, self.admin_nonce = self.admin_nonce, None  # (one attempt per challenge)
        if not admin.check_proof(self.cfg.secret_bytes, nonce, self.replica.id, req.proof):
            asyncio.get_running_loop().call_soon(self.close)  # (after the error frame)
            log.warning("a failed admin_auth from %s", self.transport.get_extra_info("peername")
                        if self.transport is not None else "?")
            raise ChorusError("bad_proof", "not a proof of this connection's challenge (admin_challenge) and "
                                           "the cluster secret; the connection is closed")
        self.admin = True
        self.server.unauthenticated.discard(self)
        self.gate.authenticated()
        self.decoder.max_frame = self.cfg.max_frame
        return R.AdminAuthenticated(server=self.replica.id)

    def _need_admin(self) -> None:
        if not self.admin:
            raise ChorusError("forbidden", "operating the cluster needs admin_auth (the cluster secret) first")

    def _need_user(self) -> int:
        if self.uid is None:
            raise ChorusError("unauthenticated", "log in first (or send a token with auth)")
        return self.uid

    async def _dispatch(self, req: W.AnyRequest) -> msgspec.Struct | None:
        r = self.replica
        match req:
            case W.Status():
                return r.status()
            case W.Register():
                return await self._register(req)
            case W.Login():
                return await self._login(req)
            case W.Auth():
                return await self._auth(req.token)
            case W.AdminChallenge():
                self.admin_nonce = secrets.token_hex(32)
                return R.AdminChallenge(nonce=self.admin_nonce, server=r.id)
            case W.AdminAuth():
                return self._admin_auth(req)
            case W.MemberList():
                self._need_admin()
                return admin.member_list(r)
            case W.MemberAdd() | W.MemberRemove() | W.MemberMove():
                self._need_admin()
                return await admin.change(r, req)
            case W.Backup():
                self._need_admin()
                snap = await admin.backup(r)
                admin.drop_backup(self.backup)
                self.backup = snap
                return admin.taken(snap)
            case W.BackupChunk():
                self._need_admin()
                return admin.backup_piece(self.backup, req.offset)
        if self.uid is None and isinstance(req, ENDS_SESSION):
            # The retry of a write that ended its own session (logging off, deleting
            # the account): the token no longer works, yet it gets the saved answer,
            # like any retry. Linearizable, so a write answered before this request
            # began is seen. Only for these: other answers are not for anyone who
            # happens to know a client id.
            await r.read_barrier("linearizable")
            saved = r.store.chat.saved_result(req.client, req.seq)
            if isinstance(saved, R.Refused):
                raise ChorusError(saved.code, saved.message)
            if isinstance(saved, _ANSWERS[type(req)]):
                return saved
        uid = self._need_user()
        now = int(time.time() * 1000)
        match req:
            case W.Send():
                cmd: C.AnyCommand = C.Send(client=req.client, seq=req.seq, acked=req.acked, ts=now, user=uid,
                                           to=req.to, body=req.body)
                return await self._write(req, cmd, sent_at=now, to=req.to)
            case W.DeleteMessages():
                cmd = C.DeleteMessages(client=req.client, seq=req.seq, acked=req.acked, ts=now, user=uid,
                                       ids=tuple(req.ids))
                return await self._write(req, cmd)
            case W.MarkRead():
                cmd = C.MarkRead(client=req.client, seq=req.seq, acked=req.acked, ts=now, user=uid,
                                 peer=req.peer, upto=req.upto)
                return await self._write(req, cmd)
            case W.SetViewCount():
                cmd = C.SetViewCount(client=req.client, seq=req.seq, acked=req.acked, ts=now, user=uid,
                                     count=req.count)
                return await self._write(req, cmd)
            case W.LogOff():
                cmd = C.LogOff(client=req.client, seq=req.seq, acked=req.acked, ts=now, user=uid,
                               session=self.session, session_expires=self.session_expires)
                # On a majority whatever the request says: "ended" must not be undone by a failover.
                result = await self._write(req, cmd, concern="majority")
                self.logout()
                return result
            case W.LogoutAll():
                cmd = C.LogoutAll(client=req.client, seq=req.seq, acked=req.acked, ts=now, user=uid)
                result = await self._write(req, cmd, concern="majority")
                self.logout()
                return result
            case W.ChangePassword():
                return await self._change_password(req, uid)
            case W.DeleteAccount():
                cmd = C.DeleteAccount(client=req.client, seq=req.seq, acked=req.acked, ts=now, user=uid)
                result = await self._write(req, cmd)
                self.logout()
                return result
            case W.Users():
                await self._barrier(req.consistency, uid)
                names = queries.list_users(r.reader, req.pattern, after=req.after, limit=req.limit)
                return R.UserPage(names, names[-1] if names and len(names) == req.limit else None)
            case W.Conversations():
                await self._barrier(req.consistency, uid)
                return R.ConversationList(r.query(queries.conversations, uid))
            case W.History():
                await self._barrier(req.consistency, uid)
                return R.HistoryPage(r.query(queries.history, uid, req.peer, before=req.before, limit=req.limit))
            case W.Stats():
                await self._barrier(req.consistency, uid)
                return r.query(queries.user_stats, uid)
            case W.Subscribe():
                return await self._subscribe(req.after)
        raise ChorusError("invalid_request", f"{type(req).__name__} is not handled")

    async def _barrier(self, consistency: str, uid: int) -> None:
        """Wait as the read asks; if meanwhile the session was ended (anywhere:
        this replica has applied that far now), the read is not served."""
        await self.replica.read_barrier(consistency)
        if self.uid != uid:
            raise ChorusError("unauthenticated", "this session was ended (logged off, or the password changed)")

    def _check_write(self, req: W.Write) -> str:
        if not 0 < len(req.client) <= 64:
            raise ChorusError("invalid_request", "client is an id of 1 to 64 characters")
        if req.seq < 1 or req.acked < 0 or req.acked >= req.seq + 1_000_000:
            raise ChorusError("invalid_request", "seq counts from 1; acked is the highest seq fully answered")
        return req.concern or self.cfg.write_concern

    async def _write(self, req: W.Write, cmd: C.AnyCommand, concern: str | None = None,
                     **predicted: Any) -> R.Done | R.Accepted:
        """``predicted``: what an ``async`` answer says applying will give (a send's time and recipient)."""
        checked = self._check_write(req)
        concern = concern or checked
        result = await self.replica.submit(C.encode(cmd), req.client, req.seq, concern)
        match result:
            case R.Accepted():  # durable on this primary only
                return msgspec.structs.replace(result, **predicted)
            case R.Refused(code="unknown_user"):  # the account was deleted meanwhile
                self.logout()
                raise ChorusError("unauthenticated", result.message)
            case R.Refused():
                raise ChorusError(result.code, result.message)
        return result

    @property
    def source(self) -> str:
        return self.gate.source

    async def _password_job(self, fn: Any, *args: Any) -> Any:
        return await self.server.guard.password_job(fn, *args)

    async def _register(self, req: W.Register) -> R.Done | R.Accepted:
        problem = rules.name_problem(req.name)
        if problem:
            raise ChorusError("invalid_name", problem)
        weak = rules.password_problems(req.password)
        if weak:
            raise ChorusError("weak_password", "the password needs " + ", ".join(weak))
        self.server.guard.check_register(self.source)
        pw_hash = await self._password_job(hash_password, req.password)
        cmd = C.Register(client=req.client, seq=req.seq, acked=req.acked, ts=int(time.time() * 1000),
                         name=req.name, pw_hash=pw_hash)
        return await self._write(req, cmd)

    async def _check_password(self, name: str, password: str) -> tuple[queries.UserInfo, int]:
        """The user and their session epoch, if ``password`` is theirs; throttled,
        and as slow for a name that does not exist as for a wrong password."""
        r, guard, key = self.replica, self.server.guard, rules.name_key(name)
        guard.begin_login(key, self.source)
        ok = False
        try:
            await r.read_barrier("linearizable")
            found = queries.login_record(r.reader, name)
            ok = await self._password_job(verify_password, found[0].pw_hash if found else dummy_hash(), password)
            if ok and found is not None:
                # The password may have changed while it was being checked (and every
                # session with it): then the one checked is no longer the password.
                now = queries.login_record(r.reader, name)
                ok = now is not None and now[0].id == found[0].id and now[0].pw_hash == found[0].pw_hash
                found = now
            ok = ok and found is not None
        except (Unavailable, Busy, TooBusy):
            guard.end_login(key, self.source, ok=None)  # nothing was checked
            raise
        except BaseException:
            guard.end_login(key, self.source, ok=False)
            raise
        guard.end_login(key, self.source, ok=ok)
        if not ok or found is None:
            raise ChorusError("bad_credentials", "wrong user name or password")
        return found

    def _issue(self, user: queries.UserInfo, epoch: int) -> tuple[str, int]:
        """A new session for this connection: its token, and when it expires."""
        now = int(time.time())
        claims = auth.Claims(user.id, user.name, now + self.cfg.token_ttl_s, auth.new_session_id(), epoch)
        self.server._bind(self, user.id, claims)
        self.name = user.name
        return auth.sign(self.cfg.secret_bytes, claims), claims.exp

    async def _login(self, req: W.Login) -> R.LoggedIn:
        user, epoch = await self._check_password(req.name, req.password)
        token, expires = self._issue(user, epoch)
        return R.LoggedIn(token, user.id, user.name, expires, user.last_logoff, user.view_count)

    async def _auth(self, token: str) -> R.Authenticated:
        try:
            claims = auth.verify(self.cfg.secret_bytes, token, int(time.time()))
        except auth.BadToken as exc:
            raise ChorusError("unauthenticated", str(exc)) from None
        r = self.replica
        # Linearizable: a replica just behind must know of the registration, of a
        # deletion, and of a session ended anywhere.
        await r.read_barrier("linearizable")
        user = queries.user_by_id(r.reader, claims.uid)
        if user is None or user.name != claims.name:
            raise ChorusError("unauthenticated", "this account no longer exists")
        if queries.session_ended(r.reader, user.id, claims.sid, claims.ep):
            raise ChorusError("unauthenticated", "this session was ended (logged off, or the password "
                                                 "changed): log in again")
        self.server._bind(self, user.id, claims)
        self.name = user.name
        return R.Authenticated(user.id, user.name, user.last_logoff, user.view_count)

    async def _change_password(self, req: W.ChangePassword, uid: int) -> R.NewToken:
        weak = rules.password_problems(req.new_password)
        if weak:
            raise ChorusError("weak_password", "the new password needs " + ", ".join(weak))
        try:
            user, _ = await self._check_password(self.name, req.old_password)
        except ChorusError as exc:
            if exc.code == "bad_credentials":
                raise ChorusError("bad_credentials", "the current password is wrong") from None
            raise
        if user.id != uid:
            raise ChorusError("unauthenticated", "this account no longer exists")
        pw_hash = await self._password_job(hash_password, req.new_password)
        cmd = C.ChangePassword(client=req.client, seq=req.seq, acked=req.acked, ts=int(time.time() * 1000),
                               user=uid, pw_hash=pw_hash)
        # Applied here before the answer (so the new token carries the new epoch).
        result = await self._write(req, cmd, concern="majority")
        # Every session ended with it, this one too: it goes on with a new token.
        epoch = result.epoch if isinstance(result, R.PasswordChanged) else queries.session_epoch(self.replica.reader, uid)
        token, expires = self._issue(user, epoch)
        return R.NewToken(epoch, token, expires)

    def logout(self) -> None:
        self.server._bind(self, None)
        self.pushed_upto = None
        self.held = None

    # ------------------------------------------------------------------ pushing
    async def _subscribe(self, after: int) -> R.Subscribed:
        uid = self._need_user()
        self.pushed_upto, self.held = after, []  # live pushes wait while we catch up
        while True:  # everything missed, a page at a time
            missed = self.replica.query(queries.messages_after, uid, self.pushed_upto, limit=1000)
            for m in missed:
                self._push_now(m)
            if len(missed) < 1000 or self.transport is None:
                break
            await asyncio.sleep(0)  # let others be served between pages
        held, self.held = self.held or [], None
        for m in held:
            self._push_now(m)
        return R.Subscribed(True, self.pushed_upto)

    def push(self, msg: R.Message) -> None:
        if self.pushed_upto is None:
            return
        if self.held is not None:
            self.held.append(msg)
        else:
            self._push_now(msg)

    def _push_now(self, msg: R.Message) -> None:
        if self.pushed_upto is not None and msg.id > self.pushed_upto:
            self.pushed_upto = msg.id
            self._send(W.event("message", msg))
            self.replica.metrics.pushes += 1

