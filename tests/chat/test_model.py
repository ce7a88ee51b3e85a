"""The chat state machine against a plain in-memory model (hypothesis, stateful).

The model states the rules as directly as possible: dicts of users and
messages, unread counts computed by counting. After every step, every query of
the real machine must agree with the model. The digest kept incrementally must
equal the digest recomputed from every row, and the derived conversation state
must equal the one rebuilt from the tables.
"""

from __future__ import annotations

import sqlite3

import msgspec
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from chorus.chat import ChatMachine, ConversationView, queries, rules, schema
from chorus.chat import commands as C
from chorus.chat.machine import (
    CLIENT_TTL_MS,
    ENDED_GRACE_S,
    HOUR_MS,
    MAX_DELETE,
    MAX_ENDED_SESSIONS,
    MAX_RESULTS_KEPT,
)
from chorus.wire import results as R

HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA"
NAMES = ["ann", "Ann", "bob", "carol", "dave", "x", "toolongname_is_bad", "Bob", "eve99"]
CLIENTS = ["k1", "k2", "k3"]

Want = tuple[str, dict | None]  # the model's answer: the code, and the fields of a result that is not refused


def ok(**fields) -> Want:
    return ("ok", fields)


def error(code: str, message: str) -> Want:
    return (code, None)


class Model:
    def __init__(self) -> None:
        self.users: dict[int, dict] = {}  # id -> {name, view_count, last_logoff}
        self.messages: dict[int, tuple[int, int, int, str]] = {}  # id -> (sender, recipient, sent_at, body)
        self.read_upto: dict[tuple[int, int], int] = {}
        self.clients: dict[str, dict] = {}  # client -> {acked, last_seen, results}
        self.log_time = 0
        self.epochs: dict[int, int] = {}  # user -> session epoch (absent: 0)
        self.ended: dict[int, dict[str, int]] = {}  # user -> {session: expires, s}

    def by_name(self, name: str) -> int | None:
        return next((u for u, d in self.users.items() if d["name"].lower() == name.lower()), None)

    def conv(self, a: int, b: int) -> list[int]:
        return sorted(m for m, (s, r, _, _) in self.messages.items() if {s, r} == {a, b} and (a != b or s == r == a))

    def unread(self, user: int, peer: int) -> int:
        if user == peer:
            return 0
        upto = self.read_upto.get((user, peer), 0)
        return sum(1 for m in self.conv(user, peer) if m > upto and self.messages[m][0] == peer)

    def apply(self, index: int, cmd: C.AnyCommand) -> Want:
        try:
            C.decode(C.encode(cmd))  # out of bounds: not a command at all, nothing changes
        except C.BadCommand:
            return error("bad_command", "")
        cl = self.clients.get(cmd.client)
        if cl is not None:
            if cmd.seq in cl["results"]:
                return cl["results"][cmd.seq]
            if cmd.seq <= cl["acked"]:
                return error("stale_request", "")
        prev, now = self.log_time, max(self.log_time, cmd.ts)
        self.log_time = now
        if now // HOUR_MS != prev // HOUR_MS:
            for cid in [c for c, d in self.clients.items() if d["last_seen"] < now - CLIENT_TTL_MS]:
                del self.clients[cid]
            for uid in list(self.ended):
                self.ended[uid] = {sid: exp for sid, exp in self.ended[uid].items()
                                   if exp + ENDED_GRACE_S >= now // 1000}
                if not self.ended[uid]:
                    del self.ended[uid]
        result = self._apply(index, cmd, now)
        cl = self.clients.setdefault(cmd.client, {"acked": 0, "last_seen": 0, "results": {}})
        if cmd.acked > cl["acked"]:
            cl["acked"] = cmd.acked
            cl["results"] = {s: r for s, r in cl["results"].items() if s > cmd.acked}
        cl["results"][cmd.seq] = result
        if len(cl["results"]) > MAX_RESULTS_KEPT:
            oldest = min(cl["results"])
            del cl["results"][oldest]
            cl["acked"] = max(cl["acked"], oldest)
        cl["last_seen"] = now
        return result

    def _apply(self, index: int, cmd: C.AnyCommand, now: int) -> Want:
        if isinstance(cmd, C.Register):
            if rules.name_problem(cmd.name):
                return error("invalid_name", "")
            if self.by_name(cmd.name) is not None:
                return error("name_taken", "")
            if not cmd.pw_hash.startswith("$argon2id$"):
                return error("invalid_password_hash", "")
            self.users[index] = {"name": cmd.name, "view_count": 5, "last_logoff": None, "pw_hash": cmd.pw_hash}
            return ok(id=index, name=cmd.name)
        if cmd.user not in self.users:
            return error("unknown_user", "")
        me = cmd.user
        if isinstance(cmd, C.Send):
            to = self.by_name(cmd.to)
            if to is None:
                return error("no_such_user", "")
            if not cmd.body.strip() or len(cmd.body) > rules.BODY_MAX:
                return error("invalid_message", "")
            self.messages[index] = (me, to, now, cmd.body)
            return ok(id=index, sent_at=now, to=self.users[to]["name"])
        if isinstance(cmd, C.DeleteMessages):
            ids = sorted(set(cmd.ids))
            deleted = [i for i in ids if i in self.messages and self.messages[i][0] == me]
            pairs = {(self.messages[i][0], self.messages[i][1]) for i in deleted}
            for i in deleted:
                del self.messages[i]
            for s, r in pairs:
                if not self.conv(s, r):
                    self.read_upto.pop((s, r), None)
                    self.read_upto.pop((r, s), None)
            return ok(deleted=deleted, not_deleted=[i for i in ids if i not in deleted])
        if isinstance(cmd, C.MarkRead):
            peer = self.by_name(cmd.peer)
            if peer is None or not self.conv(me, peer):
                return error("no_conversation", "")
            old = self.read_upto.get((me, peer), 0)
            upto = max(old, min(cmd.upto, self.conv(me, peer)[-1]))
            if upto != old:
                self.read_upto[(me, peer)] = upto
            return ok(read_upto=upto, unread=self.unread(me, peer))
        if isinstance(cmd, C.SetViewCount):
            if not 1 <= cmd.count <= rules.VIEW_COUNT_MAX:
                return error("invalid_view_count", "")
            self.users[me]["view_count"] = cmd.count
            return ok(view_count=cmd.count)
        if isinstance(cmd, C.LogOff):
            self.users[me]["last_logoff"] = now
            if not cmd.session:
                return ok(last_logoff=now)
            mine = self.ended.get(me, {})
            if cmd.session in mine or cmd.session_expires + ENDED_GRACE_S < now // 1000:
                return ok(last_logoff=now, ended=cmd.session)
            if len(mine) >= MAX_ENDED_SESSIONS:
                return ok(last_logoff=now, ended=cmd.session, epoch=self.next_epoch(me))
            self.ended.setdefault(me, {})[cmd.session] = cmd.session_expires
            return ok(last_logoff=now, ended=cmd.session)
        if isinstance(cmd, C.LogoutAll):
            self.users[me]["last_logoff"] = now
            return ok(last_logoff=now, epoch=self.next_epoch(me))
        if isinstance(cmd, C.ChangePassword):
            if not cmd.pw_hash.startswith("$argon2id$"):
                return error("invalid_password_hash", "")
            self.users[me]["pw_hash"] = cmd.pw_hash
            return ok(epoch=self.next_epoch(me))
        if isinstance(cmd, C.DeleteAccount):
            gone = [m for m, (s, r, _, _) in self.messages.items() if me in (s, r)]
            for m in gone:
                del self.messages[m]
            self.read_upto = {k: v for k, v in self.read_upto.items() if me not in k}
            del self.users[me]
            self.epochs.pop(me, None)
            self.ended.pop(me, None)
            return ok(deleted_messages=len(gone))
        raise AssertionError(cmd)

    def next_epoch(self, uid: int) -> int:
        self.epochs[uid] = self.epochs.get(uid, 0) + 1
        self.ended.pop(uid, None)
        return self.epochs[uid]


def same(a: R.Outcome, b: Want) -> bool:
    """Codes and fields must agree (as the client gets them); messages are for
    people and may differ."""
    got = (a.code, None) if isinstance(a, R.Refused) else ("ok", msgspec.to_builtins(a))
    return got == b


bodies = st.sampled_from(["hi", "hello there", "", "   ", "x" * 4001, "é ✓ 🙂", "y" * 4000])


class ChatMachineVsModel(RuleBasedStateMachine):
    @initialize()
    def start(self) -> None:
        self.conn = sqlite3.connect(":memory:", isolation_level=None)
        schema.create(self.conn)
        self.machine = ChatMachine(self.conn)
        self.model = Model()
        self.index = 0
        self.ts = 1_000_000
        self.seqs = dict.fromkeys(CLIENTS, 0)
        self.acked = dict.fromkeys(CLIENTS, 0)
        self.sent: list[tuple[C.AnyCommand, R.Outcome]] = []
        self.pending: list[C.AnyCommand] = []
        self._run([self._cmd(C.Register, "k1", name=n, pw_hash=HASH) for n in ("ann", "bob", "carol")])

    # ---- building commands
    def _cmd(self, cls, client: str, **fields) -> C.AnyCommand:
        self.seqs[client] += 1
        return cls(client=client, seq=self.seqs[client], acked=self.acked[client], ts=self.ts, **fields)

    def _user(self, data) -> int:
        """Mostly an existing user; now and then one that does not exist."""
        ids = sorted(self.model.users)
        if not ids or data.draw(st.integers(0, 9)) == 0:
            return 999_999
        return data.draw(st.sampled_from(ids))

    def _name(self, data) -> str:
        """Mostly an existing user's name (in any case); now and then another."""
        names = [d["name"] for d in self.model.users.values()]
        if not names or data.draw(st.integers(0, 5)) == 0:
            return data.draw(st.sampled_from([*NAMES, "nobody"]))
        name = data.draw(st.sampled_from(names))
        return name.upper() if data.draw(st.integers(0, 4)) == 0 else name

    def _run(self, cmds: list[C.AnyCommand]) -> None:
        """Apply a batch to both; the machine in one transaction."""
        datas = []
        for c in cmds:
            self.index += 1
            datas.append((self.index, C.encode(c)))
        self.conn.execute("BEGIN")
        got = self.machine.apply_batch(datas).results
        self.conn.execute("COMMIT")
        self.machine.publish()
        for (index, _), c, g in zip(datas, cmds, got, strict=True):
            want = self.model.apply(index, c)
            assert same(g, want), f"{c!r}: machine {g!r}, model {want!r}"
            self.sent.append((c, g))

    # ---- rules
    @rule(data=st.data(), name=st.sampled_from(NAMES), client=st.sampled_from(CLIENTS),
          bad_hash=st.booleans())
    def register(self, data, name, client, bad_hash) -> None:
        pw = "plain-text" if bad_hash and data.draw(st.integers(0, 9)) == 0 else HASH
        self._queue(self._cmd(C.Register, client, name=name, pw_hash=pw), data)

    @rule(data=st.data(), body=bodies, client=st.sampled_from(CLIENTS), n=st.integers(1, 4))
    def send(self, data, body, client, n) -> None:
        for _ in range(n):
            self._queue(self._cmd(C.Send, client, user=self._user(data), to=self._name(data), body=body), data)

    @rule(data=st.data(), client=st.sampled_from(CLIENTS))
    def delete_messages(self, data, client) -> None:
        user = self._user(data)
        own = sorted(m for m, (s, _, _, _) in self.model.messages.items() if s == user)
        others = sorted(set(self.model.messages) - set(own))
        pool = own * 3 + others[:5] + [424242]  # mostly one's own (older, newer, the newest)
        ids = data.draw(st.lists(st.sampled_from(pool), max_size=4))
        if data.draw(st.integers(0, 30)) == 0:
            ids = list(range(1, MAX_DELETE + 2))
        self._queue(self._cmd(C.DeleteMessages, client, user=user, ids=tuple(ids)), data)

    @rule(data=st.data(), client=st.sampled_from(CLIENTS))
    def mark_read(self, data, client) -> None:
        upto = data.draw(st.integers(0, self.index + 3))
        self._queue(self._cmd(C.MarkRead, client, user=self._user(data), peer=self._name(data), upto=upto), data)

    @rule(data=st.data(), count=st.sampled_from([0, 1, 5, 20, 1000, 1001]), client=st.sampled_from(CLIENTS))
    def set_view_count(self, data, count, client) -> None:
        self._queue(self._cmd(C.SetViewCount, client, user=self._user(data), count=count), data)

    @rule(data=st.data(), client=st.sampled_from(CLIENTS), session=st.sampled_from(["", "s1", "s2", "s3"]),
          expires=st.sampled_from([0, 5_000, 10**9, C.MAX_NUMBER]), many=st.integers(0, 20))
    def log_off(self, data, client, session, expires, many) -> None:
        """Ends the session (its token), kept until the token would have expired;
        now and then a user ends so many that all of them end."""
        user = self._user(data)
        n = MAX_ENDED_SESSIONS + 1 if many == 0 and session else 1
        for k in range(n):
            sid = session if k == 0 else f"{session}-{k}"
            self._queue(self._cmd(C.LogOff, client, user=user, session=sid, session_expires=expires), data)

    @rule(data=st.data(), client=st.sampled_from(CLIENTS), bad_hash=st.booleans())
    def end_every_session(self, data, client, bad_hash) -> None:
        user = self._user(data)
        if data.draw(st.booleans()):
            self._queue(self._cmd(C.LogoutAll, client, user=user), data)
        else:
            pw = "plain-text" if bad_hash else HASH.replace("aGFzaA", "bmV3")
            self._queue(self._cmd(C.ChangePassword, client, user=user, pw_hash=pw), data)

    @rule(data=st.data(), client=st.sampled_from(CLIENTS),
          field=st.sampled_from(["ts", "user", "seq", "acked", "upto", "count", "expires", "body", "client"]))
    def out_of_bounds(self, data, client, field) -> None:
        """What a hostile peer could forward: refused as not a command, nothing changes."""
        big = data.draw(st.sampled_from([C.MAX_NUMBER + 1, 2**63, 2**64 + 7]))
        user = self._user(data)
        if field in ("ts", "seq", "acked"):
            cmd = msgspec.structs.replace(self._cmd(C.LogOff, client, user=user), **{field: big})
        elif field == "user":
            cmd = self._cmd(C.Send, client, user=big, to="bob", body="hi")
        elif field == "upto":
            cmd = self._cmd(C.MarkRead, client, user=user, peer="bob", upto=big)
        elif field == "count":
            cmd = self._cmd(C.SetViewCount, client, user=user, count=big)
        elif field == "expires":
            cmd = self._cmd(C.LogOff, client, user=user, session="s9", session_expires=big)
        elif field == "body":
            cmd = self._cmd(C.Send, client, user=user, to="bob", body="x" * (rules.BODY_MAX + 1))
        else:
            cmd = msgspec.structs.replace(self._cmd(C.LogOff, client, user=user), client="c" * 65)
        self._queue(cmd, data)

    @rule(data=st.data(), client=st.sampled_from(CLIENTS))
    def delete_account(self, data, client) -> None:
        if data.draw(st.integers(0, 3)) == 0:  # rarely, or nobody would be left to talk
            self._queue(self._cmd(C.DeleteAccount, client, user=self._user(data)), data)

    @precondition(lambda self: self.sent)
    @rule(data=st.data())
    def retry(self, data) -> None:
        """A client sends an old request again: the saved answer, no change (or
        refused as stale once acknowledged)."""
        cmd, _ = data.draw(st.sampled_from(self.sent))
        self._queue(cmd, data)

    @rule(client=st.sampled_from(CLIENTS))
    def client_acknowledges(self, client) -> None:
        self.acked[client] = self.seqs[client]

    @rule(step=st.sampled_from([0, 1, 1000, HOUR_MS, CLIENT_TTL_MS + HOUR_MS, -5000]))
    def time_passes(self, step) -> None:
        self.ts += step  # a primary with a slow clock may even go back: the log clock does not

    @rule()
    def flush_batch(self) -> None:
        if self.pending:
            batch, self.pending = self.pending, []
            self._run(batch)

    def _queue(self, cmd: C.AnyCommand, data) -> None:
        """Apply now, or hold it for a batch with the next commands."""
        self.pending.append(cmd)
        if len(self.pending) >= 6 or data.draw(st.booleans()):
            self.flush_batch()

    @rule()
    def restart(self) -> None:
        """Rebuilt from the tables, the machine is the same machine."""
        self.flush_batch()
        before = self.machine.work
        self.machine.load()
        assert self.machine.work.heads == before.heads
        assert self.machine.work.unread == before.unread
        assert self.machine.work.read_upto == before.read_upto
        assert {u: set(p) for u, p in self.machine.work.peers.items()} == {u: set(p) for u, p in before.peers.items()}

    # ---- what must always hold
    @invariant()
    def digest_is_the_digest_of_every_row(self) -> None:
        if not self.pending:
            assert self.machine.digest() == schema.full_digest(self.conn)

    @invariant()
    def sessions_agree_with_the_model(self) -> None:
        if self.pending:
            return
        m, c = self.model, self.conn
        for uid in m.users:
            epoch = m.epochs.get(uid, 0)
            assert queries.session_epoch(c, uid) == epoch
            assert not queries.session_ended(c, uid, "never-ended", epoch)
            assert queries.session_ended(c, uid, "never-ended", epoch + 1)
            for sid in m.ended.get(uid, {}):
                assert queries.session_ended(c, uid, sid, epoch)
            assert queries.user_by_id(c, uid).pw_hash == m.users[uid]["pw_hash"]
        assert dict(c.execute("SELECT user_id, epoch FROM session_epochs")) == m.epochs
        ended: dict[int, dict[str, int]] = {}
        for uid, sid, exp in c.execute("SELECT user_id, session, expires FROM ended_sessions"):
            ended.setdefault(uid, {})[sid] = exp
        assert ended == m.ended

    @invariant()
    def queries_agree_with_the_model(self) -> None:
        if self.pending:
            return
        m, c, view = self.model, self.conn, self.machine.view
        assert queries.list_users(c, "*", limit=1000) == sorted((d["name"] for d in m.users.values()), key=str.lower)
        for uid, d in m.users.items():
            stats = queries.user_stats(c, view, uid)
            convs = queries.conversations(c, view, uid)
            peers = sorted({p for mid, (s, r, _, _) in m.messages.items() for p in (s, r)
                            if uid in (s, r) and (p != uid or s == r)})
            expected = sorted(
                ((m.users[p]["name"], m.unread(uid, p), m.read_upto.get((uid, p), 0), m.conv(uid, p)[-1])
                 for p in peers),
                key=lambda x: -x[3],
            )
            assert [(cv.peer, cv.unread, cv.read_upto, cv.last.id) for cv in convs] == expected
            assert stats is not None and stats.view_count == d["view_count"] and stats.last_logoff == d["last_logoff"]
            assert stats.unread == sum(e[1] for e in expected)
            for p in peers:
                ids = m.conv(uid, p)[::-1]
                got = queries.history(c, view, uid, m.users[p]["name"], limit=len(ids) + 1)
                assert [x.id for x in got] == ids
                assert all(x.body == m.messages[x.id][3] for x in got)
                name = m.users[p]["name"]
                # Paging back from a cursor in the conversation, and from ids that are not in it.
                for cursor in {*ids[:3], *(i + 1 for i in ids[:3]), 1}:
                    got = queries.history(c, view, uid, name, before=cursor, limit=2)
                    assert [x.id for x in got] == [i for i in ids if i < cursor][:2], cursor
            mine = sorted(mid for mid, (s, r, _, _) in m.messages.items() if uid in (s, r))
            cut = mine[len(mine) // 2] if mine else 0
            assert [x.id for x in queries.messages_after(c, view, uid, cut)] == [i for i in mine if i > cut]


ChatMachineVsModel.TestCase.settings = settings(
    max_examples=80, stateful_step_count=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_chat_machine_against_model = ChatMachineVsModel.TestCase


def test_view_from_an_empty_database_is_empty() -> None:
    conn = sqlite3.connect(":memory:")
    schema.create(conn)
    v = ConversationView.from_db(conn)
    assert not v.heads and not v.unread and not v.peers
