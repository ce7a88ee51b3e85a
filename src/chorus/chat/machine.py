"""The chat state machine: applies committed commands to the chat tables.

``apply_batch`` runs inside the caller's transaction, on the caller's connection:
the store records "applied up to index i" in the same transaction, so an entry is
never applied twice nor skipped. It is deterministic. It never reads a clock, a
random source or the environment, and what it writes depends only on the
commands and the current state, so every replica that applies the same log holds
the same tables and the same digest. (The one table that can differ in layout is
the client log, which each replica cuts into rows at its own batch boundaries
and rewrites at its own times; replayed, it gives the same client records
everywhere.)

Bad commands are not errors of the machine: they produce a Refused with an error
code, and change nothing. What a command gives is one of the results of
wire/results.py, typed.

Speed: a send appends one message row (no secondary index: conversations are
chains, see schema.py), and updates the derived conversation state in memory
(view.py). Users and client records are cached. Sends are buffered and written
with one executemany per batch; the client records a batch changed are written
as one row of the client log (schema.py). Any other command flushes the buffer
first, so it sees every earlier write.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

import msgspec

from ..wire.results import (
    AccountDeleted,
    Deleted,
    LoggedOff,
    LoggedOutAll,
    MarkedRead,
    Message,
    Outcome,
    PasswordChanged,
    Refused,
    Registered,
    Sent,
    ViewCountSet,
)
from . import rules
from .commands import (
    AnyCommand,
    BadCommand,
    ChangePassword,
    DeleteAccount,
    DeleteMessages,
    LogOff,
    LogoutAll,
    MarkRead,
    Register,
    Send,
    SetViewCount,
    decode,
)
from .records import Client, Effects, User
from .schema import (
    MASK,
    client_hash,
    ended_hash,
    epoch_hash,
    join_clients,
    marker_hash,
    message_hash,
    pack_client,
    read_client_log,
    state_digest,
    stored,
    to_signed,
    to_unsigned,
    user_hash,
)
from .view import ConversationView, Key, conv_key

_TWO63, _TWO64 = 1 << 63, 1 << 64
HOUR_MS = 3_600_000
CLIENT_TTL_MS = 24 * HOUR_MS  # a client silent this long (in log time) is forgotten
CLIENT_LOG_SLACK = 256 * 1024  # bytes the client log may hold beyond twice the live records
MAX_RESULTS_KEPT = 256  # per client: answers a pipelining client has not acknowledged
MAX_DELETE = rules.DELETE_MAX  # message ids in one delete
MAX_ENDED_SESSIONS = 256  # per user: beyond, ending one more ends them all (the epoch moves on)
# An ended session is kept until its token has expired by the log's clock, and a
# day more: the log's clock is the fastest primary's, and the server that checks
# a token uses its own, which may be behind.
ENDED_GRACE_S = 24 * 3600


# The chain of a conversation, newest first, from a message down to (not below) a bound.
CHAIN = """WITH RECURSIVE chain(id, prev) AS (
    SELECT id, prev FROM messages WHERE id = ?
    UNION ALL
    SELECT m.id, m.prev FROM chain c JOIN messages m ON m.id = c.prev WHERE c.prev > ?
)"""


class ChatMachine:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.load()

    def __repr__(self) -> str:
        return (f"ChatMachine({len(self.users)} users, {len(self.work.heads)} conversations, "
                f"{len(self.clients)} clients, log time {self.log_time}, digest {self.published_digest:016x})")

    # ------------------------------------------------------------------ state
    def load(self) -> None:
        """(Re)build everything in memory from the tables: at start, after a
        snapshot is installed, and after a transaction was rolled back."""
        c = self.conn
        self.users: dict[int, User] = {}
        self.by_key: dict[str, int] = {}
        for uid, name, _key, pw, created, logoff, views in c.execute(
            "SELECT id, name, name_key, pw_hash, created_at, last_logoff, view_count FROM users"
        ):
            self.users[uid] = User(uid, name, pw, created, logoff, views)
            self.by_key[rules.name_key(name)] = uid
        self.clients: dict[str, Client] = {}
        records, self._client_log_bytes = read_client_log(c)
        live = 0
        for cid, r in records.items():
            cl = self.clients[cid] = Client(r.acked, r.last_seen, {seq: sr.outcome() for seq, sr in r.results or ()},
                                          dict(r.results or ()))
            record = cl.record(cid)
            cl.hash = client_hash(record)
            live += len(pack_client(record))
        self._client_log_live = live  # bytes of the live records, as of the last load or rewrite
        self.epochs: dict[int, int] = dict(c.execute("SELECT user_id, epoch FROM session_epochs"))
        self.ended: dict[int, dict[str, int]] = {}  # user -> {session: expires (s)}
        for uid, session, expires in c.execute("SELECT user_id, session, expires FROM ended_sessions"):
            self.ended.setdefault(uid, {})[session] = expires
        log_time, digest = c.execute("SELECT log_time, rows_digest FROM chat_state").fetchone()
        self.log_time: int = log_time
        self.rows_digest: int = to_unsigned(digest)
        self.work = ConversationView.from_db(c)  # what apply reads and changes
        self.view = self.work.copy()  # what readers see: published after each commit
        self._messages: list[tuple[int, int, int, int, int, str, int]] = []  # buffered inserts
        self._dirty_clients: set[str] = set()
        # What changed since the last publish: sends record their new values (copied
        # in one dict.update each); other commands the keys (looked up in ``work``).
        self._sent_heads: dict[Key, int] = {}
        self._sent_unread: dict[Key, int] = {}
        self._changed_convs: set[Key] = set()
        self._changed_marks: set[Key] = set()
        self._changed_users: set[int] = set()
        self._effects = Effects()
        self.published_digest = self.digest()

    def digest(self) -> int:
        """Of the state as applied so far (inside a batch: part of it). Other
        threads read ``published_digest``: the digest as of the last publish."""
        return state_digest(self.rows_digest, self.log_time)

    def publish(self) -> None:
        """Make the committed changes visible to readers (call after COMMIT)."""
        view = self.view
        view.heads.update(self._sent_heads)
        view.unread.update(self._sent_unread)
        self._sent_heads.clear()
        self._sent_unread.clear()
        # After the sends' values: a later delete in the same batch wins.
        view.publish(self.work, self._changed_convs, self._changed_marks, self._changed_users)
        self.published_digest = self.digest()
        self._changed_convs.clear()
        self._changed_marks.clear()
        self._changed_users.clear()

    # ------------------------------------------------------------------ apply
    def apply_batch(self, commands: Iterable[tuple[int, bytes]]) -> Effects:
        """Apply (log index, command bytes) pairs in order: one result each, and
        what the batch did."""
        effects = self._effects = Effects()
        effects.results = [self._apply_one(index, data) for index, data in commands]
        self.flush()
        return effects

    def saved_result(self, client: str, seq: int) -> Outcome | None:
        """The answer kept for a write already applied (exactly-once), if any."""
        c = self.clients.get(client)
        return c.results.get(seq) if c is not None else None

    def apply(self, index: int, data: bytes) -> Outcome:
        return self.apply_batch(((index, data),)).results[0]

    def _apply_one(self, index: int, data: bytes) -> Outcome:
        try:
            cmd = decode(data)
        except BadCommand as exc:
            return Refused("bad_command", f"not a chat command: {exc}")
        answers = self._effects.answers
        client = self.clients.get(cmd.client)
        if client is not None:
            saved = client.results.get(cmd.seq)
            if saved is not None:
                answers.append((index, cmd.client, cmd.seq, saved))
                return saved  # a retry: the same answer, nothing changes
            if cmd.seq <= client.acked:
                stale = Refused("stale_request", f"request {cmd.seq} was answered long ago")
                answers.append((index, cmd.client, cmd.seq, stale))
                return stale
        previous = self.log_time
        now = self.log_time = max(previous, cmd.ts)
        if now // HOUR_MS != previous // HOUR_MS:
            self._expire_clients(now)
            self._expire_sessions(now)
        result: Outcome
        if type(cmd) is Send:
            result = self._send(index, cmd, now)
        else:
            self.flush()
            result = self._other(index, cmd, now)
        self._remember(cmd, result, now)
        answers.append((index, cmd.client, cmd.seq, result))
        return result

    def _remember(self, cmd: AnyCommand, result: Outcome, now: int) -> None:
        cid = cmd.client
        client = self.clients.get(cid)
        if client is None:
            client = self.clients[cid] = Client()
        self._dirty_clients.add(cid)
        results, kept = client.results, client.kept
        if cmd.acked > client.acked:
            client.acked = acked = cmd.acked
            if results:
                for seq in [s for s in results if s <= acked]:
                    del results[seq], kept[seq]
        results[cmd.seq] = result
        kept[cmd.seq] = stored(result)
        if len(results) > MAX_RESULTS_KEPT:
            oldest = min(results)
            del results[oldest], kept[oldest]
            client.acked = max(client.acked, oldest)  # older retries are refused, never re-applied
        client.last_seen = now

    def _expire_clients(self, now: int) -> None:
        cutoff = now - CLIENT_TTL_MS
        for cid in [cid for cid, c in self.clients.items() if c.last_seen < cutoff]:
            self.rows_digest -= self.clients.pop(cid).hash
            self._dirty_clients.add(cid)  # written as forgotten

    def _expire_sessions(self, now: int) -> None:
        """Ended sessions whose tokens have expired anyway need not be kept."""
        now_s = now // 1000
        for uid in sorted(self.ended):
            gone = sorted(sid for sid, exp in self.ended[uid].items() if exp + ENDED_GRACE_S < now_s)
            for sid in gone:
                self._forget_ended(uid, sid)

    def _forget_ended(self, uid: int, sid: str) -> None:
        sessions = self.ended[uid]
        self.rows_digest -= ended_hash(uid, sid, sessions.pop(sid))
        if not sessions:
            del self.ended[uid]
        self.conn.execute("DELETE FROM ended_sessions WHERE user_id = ? AND session = ?", (uid, sid))

    def flush(self) -> None:
        """Write what the buffered sends changed."""
        c = self.conn
        if self._messages:
            c.executemany(
                "INSERT INTO messages (id, sender, recipient, prev, sent_at, body, hash) VALUES (?,?,?,?,?,?,?)",
                self._messages,
            )
            self._messages = []
        if self._dirty_clients:
            # One row for all the clients this batch changed (see schema.client_log).
            clients = self.clients
            packed = []
            for cid in sorted(self._dirty_clients):
                cl = clients.get(cid)
                if cl is None:
                    packed.append(pack_client((cid,)))  # forgotten
                    continue
                record = cl.record(cid)
                new = client_hash(record)
                self.rows_digest += new - cl.hash
                cl.hash = new
                packed.append(pack_client(record))
            self._dirty_clients.clear()
            blob = join_clients(packed)
            c.execute("INSERT INTO client_log (records) VALUES (?)", (blob,))
            self._client_log_bytes += len(blob)
            if self._client_log_bytes > 2 * self._client_log_live + CLIENT_LOG_SLACK:
                self._rewrite_client_log()
        self.rows_digest &= MASK
        c.execute(
            "UPDATE chat_state SET log_time = ?, rows_digest = ? WHERE id = 1",
            (self.log_time, to_signed(self.rows_digest)),
        )

    def _rewrite_client_log(self) -> None:
        """Replace the client log by one row of the live records."""
        blob = join_clients([pack_client(cl.record(cid)) for cid, cl in self.clients.items()])
        self.conn.execute("DELETE FROM client_log")
        self.conn.execute("INSERT INTO client_log (records) VALUES (?)", (blob,))
        self._client_log_bytes = self._client_log_live = len(blob)

    # ------------------------------------------------------------------ commands
    def _send(self, index: int, cmd: Send, now: int) -> Outcome:
        # The hot path: kept flat on purpose (no helper calls for the common case).
        sender = self.users.get(cmd.user)
        if sender is None:
            return Refused("unknown_user", "your account no longer exists")
        rid = self.by_key.get(cmd.to.lower())
        if rid is None:
            return Refused("no_such_user", f"there is no user named {cmd.to!r}")
        body = cmd.body
        if not 0 < len(body) <= rules.BODY_MAX or body.isspace():
            return Refused("invalid_message", rules.body_problem(body) or "invalid message")
        sid = sender.id
        key = (sid, rid) if sid <= rid else (rid, sid)
        work = self.work
        prev = work.heads.get(key, 0)
        h = message_hash(index, sid, rid, prev, now, body)
        self._messages.append((index, sid, rid, prev, now, body, h - _TWO64 if h >= _TWO63 else h))
        self.rows_digest += h
        work.heads[key] = self._sent_heads[key] = index
        if not prev:  # a new conversation
            work.peers.setdefault(sid, set()).add(rid)
            work.peers.setdefault(rid, set()).add(sid)
            self._changed_users.update((sid, rid))
        if rid != sid:
            mark = (rid, sid)
            unread = work.unread
            unread[mark] = self._sent_unread[mark] = unread.get(mark, 0) + 1
        to = self.users[rid].name
        self._effects.delivered.append((sid, rid, Message(index, sender.name, to, body, now)))
        return Sent(index, now, to)

    def _other(self, index: int, cmd: AnyCommand, now: int) -> Outcome:
        if isinstance(cmd, Register):
            return self._register(index, cmd, now)
        user = self.users.get(cmd.user)
        if user is None:
            return Refused("unknown_user", "your account no longer exists")
        match cmd:
            case DeleteMessages():
                return self._delete_messages(user, cmd)
            case MarkRead():
                return self._mark_read(user, cmd)
            case SetViewCount(count=count):
                if not 1 <= count <= rules.VIEW_COUNT_MAX:
                    return Refused("invalid_view_count", f"the view count is 1 to {rules.VIEW_COUNT_MAX}")
                self._update_user(user, view_count=count)
                return ViewCountSet(count)
            case LogOff():
                self._update_user(user, last_logoff=now)
                if cmd.session:
                    off = self._end_session(user, cmd.session, cmd.session_expires, now)
                    self._effects.sessions_ended.append((user.id, off.ended, off.epoch))
                    return off
                return LoggedOff(now)
            case LogoutAll():
                self._update_user(user, last_logoff=now)
                epoch = self._next_epoch(user.id)
                self._effects.sessions_ended.append((user.id, None, epoch))
                return LoggedOutAll(now, epoch)
            case ChangePassword():
                if not cmd.pw_hash.startswith("$argon2id$"):
                    return Refused("invalid_password_hash", "the password must be hashed with argon2id")
                self.rows_digest -= user_hash(user.row())
                user.pw_hash = cmd.pw_hash
                self.rows_digest += user_hash(user.row())
                self.conn.execute("UPDATE users SET pw_hash = ? WHERE id = ?", (user.pw_hash, user.id))
                epoch = self._next_epoch(user.id)
                self._effects.sessions_ended.append((user.id, None, epoch))
                return PasswordChanged(epoch)
            case DeleteAccount():
                return self._delete_account(user)
        raise AssertionError(f"unhandled command {cmd!r}")

    def _register(self, index: int, cmd: Register, now: int) -> Outcome:
        problem = rules.name_problem(cmd.name)
        if problem:
            return Refused("invalid_name", problem)
        key = rules.name_key(cmd.name)
        if key in self.by_key:
            return Refused("name_taken", f"the name {cmd.name} is taken")
        if not cmd.pw_hash.startswith("$argon2id$"):
            return Refused("invalid_password_hash", "the password must be hashed with argon2id")
        user = User(index, cmd.name, cmd.pw_hash, now, None, rules.DEFAULT_VIEW_COUNT)
        self.conn.execute(
            "INSERT INTO users (id, name, name_key, pw_hash, created_at, last_logoff, view_count) VALUES (?,?,?,?,?,?,?)",
            user.row(),
        )
        self.users[index] = user
        self.by_key[key] = index
        self.rows_digest += user_hash(user.row())
        return Registered(index, cmd.name)

    def _end_session(self, user: User, session: str, expires: int, now: int) -> LoggedOff:
        """One token refused from now on (until it would have expired anyway)."""
        uid = user.id
        sessions = self.ended.get(uid, {})
        if session in sessions or expires + ENDED_GRACE_S < now // 1000:
            return LoggedOff(now, session)  # ended already, or expired anyway
        if len(sessions) >= MAX_ENDED_SESSIONS:
            return LoggedOff(now, session, self._next_epoch(uid))  # all of them, then
        self.ended.setdefault(uid, {})[session] = expires
        self.rows_digest += ended_hash(uid, session, expires)
        self.conn.execute("INSERT INTO ended_sessions (user_id, session, expires) VALUES (?,?,?)",
                          (uid, session, expires))
        return LoggedOff(now, session)

    def _next_epoch(self, uid: int) -> int:
        """Every token of ``uid`` issued so far is refused from now on."""
        old = self.epochs.get(uid, 0)
        if old:
            self.rows_digest -= epoch_hash(uid, old)
        new = self.epochs[uid] = old + 1
        self.rows_digest += epoch_hash(uid, new)
        self.conn.execute("INSERT INTO session_epochs (user_id, epoch) VALUES (?, ?) "
                          "ON CONFLICT (user_id) DO UPDATE SET epoch = excluded.epoch", (uid, new))
        for sid in sorted(self.ended.get(uid, ())):  # older than the epoch: no need to keep them
            self._forget_ended(uid, sid)
        return new

    def _forget_sessions(self, uid: int) -> None:
        for sid in sorted(self.ended.get(uid, ())):
            self._forget_ended(uid, sid)
        epoch = self.epochs.pop(uid, 0)
        if epoch:
            self.rows_digest -= epoch_hash(uid, epoch)
            self.conn.execute("DELETE FROM session_epochs WHERE user_id = ?", (uid,))

    def _update_user(self, user: User, **changes: int) -> None:
        self.rows_digest -= user_hash(user.row())
        for k, v in changes.items():
            setattr(user, k, v)
        self.rows_digest += user_hash(user.row())
        self.conn.execute(
            "UPDATE users SET last_logoff = ?, view_count = ? WHERE id = ?",
            (user.last_logoff, user.view_count, user.id),
        )

    def _set_marker(self, user: int, peer: int, upto: int | None) -> None:
        """Store (or with None, remove) a read marker, keeping the digest right."""
        mark = (user, peer)
        old = self.work.read_upto.get(mark)
        if old is not None:
            self.rows_digest -= marker_hash(user, peer, old)
        if upto is None:
            self.work.read_upto.pop(mark, None)
            if old is not None:
                self.conn.execute("DELETE FROM read_markers WHERE user_id = ? AND peer_id = ?", mark)
        else:
            self.work.read_upto[mark] = upto
            self.rows_digest += marker_hash(user, peer, upto)
            self.conn.execute(
                "INSERT INTO read_markers (user_id, peer_id, read_upto) VALUES (?,?,?) "
                "ON CONFLICT (user_id, peer_id) DO UPDATE SET read_upto = excluded.read_upto",
                (user, peer, upto),
            )
        self._changed_marks.add(mark)

    def _delete_messages(self, user: User, cmd: DeleteMessages) -> Outcome:
        ids = sorted(set(cmd.ids))  # (at most MAX_DELETE: bounded when decoded)
        rows = self.conn.execute(
            "SELECT id, sender, recipient, prev, sent_at, body, hash FROM messages "
            "WHERE id IN (SELECT value FROM json_each(?))",
            (msgspec.json.encode(ids),),
        ).fetchall()
        mine = [r for r in rows if r[1] == user.id]
        by_conv: dict[Key, set[int]] = {}
        for r in mine:
            by_conv.setdefault(conv_key(r[1], r[2]), set()).add(r[0])
        for key in sorted(by_conv):
            self._unlink(key, by_conv[key])
        self.conn.executemany("DELETE FROM messages WHERE id = ?", [(r[0],) for r in mine])
        work = self.work
        for mid, s, r, _prev, _t, _body, h in mine:
            self.rows_digest -= to_unsigned(h)
            if s != r and mid > work.read_upto.get((r, s), 0):
                self._add_unread((r, s), -1)
        for key in sorted(by_conv):
            if key not in work.heads:
                self._forget_conversation(key)
        deleted = [r[0] for r in mine]
        gone = set(deleted)
        return Deleted(deleted, [i for i in ids if i not in gone])

    def _unlink(self, key: Key, doomed: set[int]) -> None:
        """Take ``doomed`` message ids out of a conversation's chain: whoever
        pointed at a doomed message points past it (one walk from the newest
        message down to the oldest doomed one)."""
        work = self.work
        chain = self.conn.execute(
            f"{CHAIN} SELECT id, prev FROM chain", (work.heads[key], min(doomed) - 1)
        ).fetchall()
        newer = 0  # the nearest kept message above the current one
        relink: dict[int, int] = {}
        for mid, prev in chain:
            if mid in doomed:
                if newer:
                    relink[newer] = prev
                else:
                    work.heads[key] = prev
            else:
                newer = mid
        for mid, prev in relink.items():
            s, r, t, body, h = self.conn.execute(
                "SELECT sender, recipient, sent_at, body, hash FROM messages WHERE id = ?", (mid,)
            ).fetchone()
            new = message_hash(mid, s, r, prev, t, body)
            self.rows_digest += new - to_unsigned(h)
            self.conn.execute("UPDATE messages SET prev = ?, hash = ? WHERE id = ?", (prev, to_signed(new), mid))
        if work.heads[key] == 0:
            del work.heads[key]
        self._changed_convs.add(key)

    def _add_unread(self, mark: Key, delta: int) -> None:
        unread = self.work.unread
        n = unread.get(mark, 0) + delta
        assert n >= 0, f"unread count of {mark} would be {n}"
        if n:
            unread[mark] = n
        else:
            unread.pop(mark, None)  # no zero entries: the view rebuilt from the tables has none
        self._changed_marks.add(mark)

    def _forget_conversation(self, key: Key) -> None:
        """The conversation has no message left: forget its markers and counts."""
        a, b = key
        work = self.work
        for mark in ((a, b), (b, a)):
            if mark in work.read_upto:
                self._set_marker(*mark, None)
            work.unread.pop(mark, None)
            self._changed_marks.add(mark)
        for u, p in ((a, b), (b, a)):
            peers = work.peers.get(u)
            if peers is not None:
                peers.discard(p)
                if not peers:
                    del work.peers[u]
            self._changed_users.add(u)
        work.heads.pop(key, None)
        self._changed_convs.add(key)

    def _mark_read(self, user: User, cmd: MarkRead) -> Outcome:
        peer = self.by_key.get(cmd.peer.lower())
        key = conv_key(user.id, peer) if peer is not None else None
        head = self.work.heads.get(key) if key is not None else None
        if peer is None or head is None:
            return Refused("no_conversation", f"no conversation with {cmd.peer!r}")
        mark = (user.id, peer)
        old = self.work.read_upto.get(mark, 0)
        upto = max(old, min(cmd.upto, head))
        if upto != old:
            self._set_marker(user.id, peer, upto)
        if user.id == peer:
            unread = 0
        else:
            (unread,) = self.conn.execute(
                f"{CHAIN} SELECT COUNT(*) FROM chain JOIN messages m ON m.id = chain.id "
                "WHERE chain.id > ? AND m.sender = ?",
                (head, upto, upto, peer),
            ).fetchone()
            self._add_unread(mark, unread - self.work.unread.get(mark, 0))
        return MarkedRead(upto, unread)

    def _delete_account(self, user: User) -> Outcome:
        uid = user.id
        work = self.work
        count = 0
        for peer in sorted(work.peers.get(uid, ())):
            key = conv_key(uid, peer)
            rows = self.conn.execute(
                f"{CHAIN} SELECT m.id, m.hash FROM chain JOIN messages m ON m.id = chain.id",
                (work.heads[key], 0),
            ).fetchall()
            count += len(rows)
            for _, h in rows:
                self.rows_digest -= to_unsigned(h)
            self.conn.executemany("DELETE FROM messages WHERE id = ?", [(mid,) for mid, _ in rows])
            self._forget_conversation(key)
        self._forget_sessions(uid)
        self.rows_digest -= user_hash(user.row())
        self.conn.execute("DELETE FROM users WHERE id = ?", (uid,))
        del self.users[uid]
        del self.by_key[rules.name_key(user.name)]
        self._effects.accounts_deleted.append(uid)
        return AccountDeleted(count)
