"""The chat state machine, command by command."""

from __future__ import annotations

import sqlite3
from typing import Any

import msgspec
import pytest

from chorus.chat import ChatMachine, machine, queries, schema
from chorus.chat import commands as C
from chorus.chat.machine import CLIENT_TTL_MS, MAX_RESULTS_KEPT
from chorus.chat.records import Effects
from chorus.wire import results as R

HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA"


class Chat:
    """One machine on an in-memory database, with a log index and a clock."""

    def __init__(self) -> None:
        self.conn = sqlite3.connect(":memory:", isolation_level=None)
        schema.create(self.conn)
        self.m = ChatMachine(self.conn)
        self.index = 0
        self.ts = 1_700_000_000_000
        self.seq = 0

    def run(self, *cmds: C.AnyCommand) -> list[R.Outcome]:
        return self.batch(*cmds).results

    def batch(self, *cmds: C.AnyCommand) -> Effects:
        batch = []
        for c in cmds:
            self.index += 1
            batch.append((self.index, C.encode(c)))
        self.conn.execute("BEGIN")
        effects = self.m.apply_batch(batch)
        self.conn.execute("COMMIT")
        self.m.publish()
        assert self.m.digest() == schema.full_digest(self.conn)
        return effects

    def cmd(self, cls, client: str = "c", **f) -> C.AnyCommand:
        self.seq += 1
        f.setdefault("seq", self.seq)
        f.setdefault("ts", self.ts)
        return cls(client=client, **f)

    def one(self, cls, **f) -> Any:
        return self.run(self.cmd(cls, **f))[0]

    def register(self, name: str) -> int:
        r = self.one(C.Register, name=name, pw_hash=HASH)
        assert isinstance(r, R.Registered), r
        return r.id

    def send(self, uid: int, to: str, body: str = "hello") -> int:
        r = self.one(C.Send, user=uid, to=to, body=body)
        assert isinstance(r, R.Sent), r
        return r.id

    def history(self, uid: int, peer: str, **kw) -> list[int]:
        return [m.id for m in queries.history(self.conn, self.m.view, uid, peer, **kw)]

    def convs(self, uid: int) -> list[tuple]:
        return [(c.peer, c.unread, c.read_upto, c.last.id) for c in queries.conversations(self.conn, self.m.view, uid)]


@pytest.fixture
def chat() -> Chat:
    return Chat()


# ---------------------------------------------------------------- register
@pytest.mark.parametrize("name", ["ab", "a" * 21, "has space", "dash-ed", "émile", ""])
def test_register_refuses_bad_names(chat: Chat, name: str) -> None:
    r = chat.one(C.Register, name=name, pw_hash=HASH)
    assert R.code_of(r) == "invalid_name" and "3-20 letters" in r.message


def test_names_are_unique_regardless_of_case(chat: Chat) -> None:
    chat.register("Alice")
    r = chat.one(C.Register, name="aLiCe", pw_hash=HASH)
    assert R.code_of(r) == "name_taken"
    assert queries.find_user(chat.conn, "ALICE").name == "Alice"


def test_only_argon2id_hashes_enter_the_state(chat: Chat) -> None:
    r = chat.one(C.Register, name="alice", pw_hash="Secret123")
    assert R.code_of(r) == "invalid_password_hash"
    assert queries.find_user(chat.conn, "alice") is None


# ---------------------------------------------------------------- send
def test_send_to_someone_who_does_not_exist_is_an_error(chat: Chat) -> None:
    a = chat.register("alice")
    r = chat.one(C.Send, user=a, to="nobody", body="hi")
    assert R.code_of(r) == "no_such_user"
    assert chat.convs(a) == []


@pytest.mark.parametrize("body, code", [("", "invalid_message"), ("   \n", "invalid_message"), ("x" * 4000, "ok"),
                                        ("x" * 4001, "bad_command"), ("🙂", "ok")])
def test_message_bodies_are_1_to_4000_characters(chat: Chat, body: str, code: str) -> None:
    """Over 4,000 characters, a send is not even a command (decoding bounds every
    field, and nothing out of bounds is proposed); empty, the chat refuses it."""
    a, _ = chat.register("alice"), chat.register("bob")
    r = chat.one(C.Send, user=a, to="bob", body=body)
    assert R.code_of(r) == code, r


def test_send_result_unread_counts_and_history(chat: Chat) -> None:
    a, b = chat.register("alice"), chat.register("Bob")
    r = chat.one(C.Send, user=a, to="BOB", body="hi")
    assert r == R.Sent(r.id, chat.ts, "Bob")
    m2 = chat.send(b, "alice", "hello")
    m3 = chat.send(b, "alice", "you there?")
    assert chat.convs(a) == [("Bob", 2, 0, m3)]
    assert chat.convs(b) == [("alice", 1, 0, m3)]
    assert chat.history(a, "bob") == [m3, m2, r.id]


def test_notes_to_self(chat: Chat) -> None:
    a = chat.register("alice")
    m = chat.send(a, "alice", "remember the milk")
    assert chat.convs(a) == [("alice", 0, 0, m)]
    assert chat.history(a, "alice") == [m]


# ---------------------------------------------------------------- history paging
def test_history_pages_back_with_a_cursor(chat: Chat) -> None:
    a, b = chat.register("alice"), chat.register("bob")
    ids = [chat.send(a if k % 2 else b, "bob" if k % 2 else "alice", f"m{k}") for k in range(12)]
    chat.send(a, "alice", "elsewhere")  # another conversation interleaves ids
    newest_first = ids[::-1]
    assert chat.history(a, "bob", limit=5) == newest_first[:5]
    assert chat.history(a, "bob", before=newest_first[4], limit=5) == newest_first[5:10]
    assert chat.history(a, "bob", before=newest_first[9], limit=5) == newest_first[10:]
    assert chat.history(a, "bob", before=ids[0], limit=5) == []
    # A cursor that is not in the conversation (another's id, a deleted one) still works.
    assert chat.history(a, "bob", before=ids[6] + 1, limit=3) == [i for i in newest_first if i <= ids[6]][:3]


# ---------------------------------------------------------------- delete
def test_only_ones_own_messages_can_be_deleted(chat: Chat) -> None:
    a, b = chat.register("alice"), chat.register("bob")
    mine, theirs = chat.send(a, "bob"), chat.send(b, "alice")
    r = chat.one(C.DeleteMessages, user=a, ids=(mine, theirs, 999))
    assert r == R.Deleted([mine], [theirs, 999])
    assert chat.history(b, "alice") == [theirs]


def test_deleting_from_the_middle_keeps_the_chain_whole(chat: Chat) -> None:
    a, b = chat.register("alice"), chat.register("bob")
    m = [chat.send(a if k < 4 else b, "bob" if k < 4 else "alice", f"m{k}") for k in range(6)]
    chat.one(C.DeleteMessages, user=a, ids=(m[1], m[2]))  # two consecutive, in the middle
    assert chat.history(a, "bob") == [m[5], m[4], m[3], m[0]]
    chat.one(C.DeleteMessages, user=a, ids=(m[0],))  # the oldest
    chat.one(C.DeleteMessages, user=b, ids=(m[5],))  # the newest
    assert chat.history(b, "alice") == [m[4], m[3]]
    assert chat.convs(a) == [("bob", 1, 0, m[4])]
    chat.m.load()  # rebuilt from the tables: the same
    assert chat.history(b, "alice") == [m[4], m[3]] and chat.convs(a) == [("bob", 1, 0, m[4])]


def test_deleting_unread_messages_lowers_the_unread_count(chat: Chat) -> None:
    a, b = chat.register("alice"), chat.register("bob")
    ids = [chat.send(b, "alice", f"m{k}") for k in range(3)]
    chat.one(C.MarkRead, user=a, peer="bob", upto=ids[0])
    assert chat.convs(a) == [("bob", 2, ids[0], ids[2])]
    chat.one(C.DeleteMessages, user=b, ids=(ids[0], ids[2]))  # one read, one unread
    assert chat.convs(a) == [("bob", 1, ids[0], ids[1])]


def test_an_emptied_conversation_forgets_its_read_markers(chat: Chat) -> None:
    a, b = chat.register("alice"), chat.register("bob")
    m1 = chat.send(a, "bob")
    chat.one(C.MarkRead, user=b, peer="alice", upto=m1)
    chat.one(C.DeleteMessages, user=a, ids=(m1,))
    assert chat.convs(a) == [] and chat.convs(b) == []
    assert chat.conn.execute("SELECT COUNT(*) FROM read_markers").fetchone() == (0,)
    m2 = chat.send(a, "bob")
    assert chat.convs(b) == [("alice", 1, 0, m2)]


def test_delete_account_removes_everything_of_the_user(chat: Chat) -> None:
    a, b, c = chat.register("alice"), chat.register("bob"), chat.register("carol")
    chat.send(a, "bob")
    chat.send(b, "alice")
    chat.send(a, "alice")
    keep = chat.send(b, "carol")
    chat.one(C.MarkRead, user=b, peer="alice", upto=10**6)
    r = chat.one(C.DeleteAccount, user=a)
    assert r == R.AccountDeleted(3)
    assert chat.convs(b) == [("carol", 0, 0, keep)] and chat.convs(c) == [("bob", 1, 0, keep)]
    assert queries.find_user(chat.conn, "alice") is None
    assert R.code_of(chat.one(C.Send, user=a, to="bob", body="ghost")) == "unknown_user"
    assert chat.register("Alice") != a  # the name is free again, under a new id


# ---------------------------------------------------------------- read markers, settings
def test_mark_read_is_capped_at_the_newest_message_and_never_goes_back(chat: Chat) -> None:
    a, b = chat.register("alice"), chat.register("bob")
    m1, m2 = chat.send(b, "alice"), chat.send(b, "alice")
    assert chat.one(C.MarkRead, user=a, peer="bob", upto=10**9)== R.MarkedRead(m2, 0)
    assert chat.one(C.MarkRead, user=a, peer="bob", upto=m1)== R.MarkedRead(m2, 0)
    assert R.code_of(chat.one(C.MarkRead, user=a, peer="carol", upto=1)) == "no_conversation"


def test_view_count_and_log_off(chat: Chat) -> None:
    a = chat.register("alice")
    assert queries.user_stats(chat.conn, chat.m.view, a).view_count == 5
    assert R.code_of(chat.one(C.SetViewCount, user=a, count=0)) == "invalid_view_count"
    assert chat.one(C.SetViewCount, user=a, count=20).ok
    chat.ts += 5000
    assert chat.one(C.LogOff, user=a) == R.LoggedOff(chat.ts)
    s = queries.user_stats(chat.conn, chat.m.view, a)
    assert (s.view_count, s.last_logoff) == (20, chat.ts)


# ---------------------------------------------------------------- exactly once
def test_a_retried_command_gets_the_saved_answer_and_changes_nothing(chat: Chat) -> None:
    a, _ = chat.register("alice"), chat.register("bob")
    send = chat.cmd(C.Send, user=a, to="bob", body="once")
    first = chat.run(send)[0]
    digest = chat.m.digest()
    again = chat.run(send, send)
    assert again == [first, first]
    assert chat.m.digest() == digest and len(chat.history(a, "bob")) == 1


def test_pipelined_requests_may_arrive_out_of_order(chat: Chat) -> None:
    a, _ = chat.register("alice"), chat.register("bob")
    s1 = C.Send(client="p", seq=1, ts=chat.ts, user=a, to="bob", body="one")
    s2 = C.Send(client="p", seq=2, ts=chat.ts, user=a, to="bob", body="two")
    r2, r1 = chat.run(s2, s1)
    assert r1.ok and r2.ok and len(chat.history(a, "bob")) == 2
    assert chat.run(s1)[0] == r1  # still remembered: the client has not acknowledged it


def test_acknowledged_requests_are_refused_not_repeated(chat: Chat) -> None:
    a, _ = chat.register("alice"), chat.register("bob")
    s1 = C.Send(client="p", seq=1, ts=chat.ts, user=a, to="bob", body="one")
    s2 = C.Send(client="p", seq=2, acked=1, ts=chat.ts, user=a, to="bob", body="two")
    chat.run(s1, s2)
    r = chat.run(s1)[0]
    assert R.code_of(r) == "stale_request" and len(chat.history(a, "bob")) == 2


def test_a_client_that_never_acknowledges_keeps_a_bounded_window(chat: Chat) -> None:
    a, _ = chat.register("alice"), chat.register("bob")
    sends = [C.Send(client="p", seq=k, ts=chat.ts, user=a, to="bob", body=f"m{k}") for k in range(1, MAX_RESULTS_KEPT + 6)]
    chat.run(*sends)
    assert len(chat.m.clients["p"].results) == MAX_RESULTS_KEPT
    assert R.code_of(chat.run(sends[0])[0]) == "stale_request"  # forgotten, so refused, never applied twice
    assert len(chat.history(a, "bob", limit=1000)) == len(sends)


def test_idle_clients_are_forgotten_by_the_log_clock(chat: Chat) -> None:
    a = chat.register("alice")
    chat.one(C.LogOff, client="old", user=a)
    assert "old" in chat.m.clients
    chat.ts += CLIENT_TTL_MS + 3_600_000
    chat.one(C.LogOff, user=a)
    assert "old" not in chat.m.clients
    assert "old" not in schema.read_client_log(chat.conn)[0]  # written as forgotten
    assert "old" not in ChatMachine(chat.conn).clients  # and so it stays, after a restart


def test_the_client_log_is_rewritten_and_reads_back_the_same(chat: Chat, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine, "CLIENT_LOG_SLACK", 2000)
    a, _ = chat.register("alice"), chat.register("bob")
    rows = []
    for k in range(300):
        last = chat.cmd(C.Send, client=f"c{k % 7}", acked=chat.seq, user=a, to="bob", body=f"m{k}")
        answer = chat.run(last)[0]
        rows.append(chat.conn.execute("SELECT COUNT(*) FROM client_log").fetchone()[0])
    assert max(rows) < 60 and rows[-1] < max(rows)  # it was rewritten, more than once
    again = ChatMachine(chat.conn)
    assert {cid: (c.acked, c.last_seen, c.results) for cid, c in again.clients.items()} == {
        cid: (c.acked, c.last_seen, c.results) for cid, c in chat.m.clients.items()}
    assert again.digest() == chat.m.digest() == schema.full_digest(chat.conn)
    chat.m = again  # a retry of the last send, after the restart: the saved answer, no second message
    assert answer.ok and chat.run(last) == [answer]
    assert len(chat.history(a, "bob", limit=1000)) == 300


def test_the_log_clock_never_goes_back(chat: Chat) -> None:
    a, _ = chat.register("alice"), chat.register("bob")
    first = chat.one(C.Send, user=a, to="bob", body="x").sent_at
    chat.ts -= 60_000  # a new primary whose clock is behind
    second = chat.one(C.Send, user=a, to="bob", body="y").sent_at
    assert second == first


def test_garbage_in_the_log_is_an_error_result_and_changes_nothing(chat: Chat) -> None:
    digest = chat.m.digest()
    chat.index += 1
    chat.conn.execute("BEGIN")
    [r] = chat.m.apply_batch([(chat.index, b'{"op":"send","client":"x"}')]).results
    chat.conn.execute("COMMIT")
    assert R.code_of(r) == "bad_command" and chat.m.digest() == digest


# ---------------------------------------------------------------- determinism
def test_the_same_log_gives_the_same_digest_on_two_machines() -> None:
    one, two = Chat(), Chat()
    for chat in (one, two):
        a, b = chat.register("alice"), chat.register("bob")
        for k in range(20):
            chat.send(a if k % 3 else b, "bob" if k % 3 else "alice", f"m{k}")
        chat.one(C.DeleteMessages, user=a, ids=(5, 9))
        chat.one(C.MarkRead, user=b, peer="alice", upto=15)
    assert one.m.digest() == two.m.digest()
    dump = [list(one.conn.iterdump()), list(two.conn.iterdump())]
    assert dump[0] == dump[1]  # byte for byte, table by table (the same batches: the same client log rows)


def test_a_corrupt_message_row_is_never_served(chat: Chat) -> None:
    a, _ = chat.register("alice"), chat.register("bob")
    m = chat.send(a, "bob", "original")
    chat.conn.execute("UPDATE messages SET body = 'tampered' WHERE id = ?", (m,))
    with pytest.raises(queries.CorruptRow, match=f"message {m}"):
        chat.history(a, "bob")


def test_list_users_with_wildcards_and_paging(chat: Chat) -> None:
    for n in ("alice", "Albert", "bob", "al_x", "carol", "alfred"):
        if n != "al_x":
            chat.register(n)
    c = chat.conn
    assert queries.list_users(c, "al*") == ["Albert", "alfred", "alice"]
    assert queries.list_users(c, "AL*", limit=2) == ["Albert", "alfred"]
    assert queries.list_users(c, "al*", after="alfred") == ["alice"]
    assert queries.list_users(c, "?ob") == ["bob"]
    assert queries.list_users(c, "*o*") == ["bob", "carol"]
    assert queries.list_users(c, "al_*") == []  # _ and % are literal, not wildcards
    assert queries.list_users(c, "%") == []


def test_messages_after_an_id(chat: Chat) -> None:
    a, b, c = chat.register("alice"), chat.register("bob"), chat.register("carol")
    m1 = chat.send(a, "bob")
    m2 = chat.send(c, "alice")
    chat.send(b, "carol")  # not alice's
    m4 = chat.send(a, "alice")
    got = queries.messages_after(chat.conn, chat.m.view, a, m1)
    assert [m.id for m in got] == [m2, m4]
    assert [m.id for m in queries.messages_after(chat.conn, chat.m.view, a, 0)] == [m1, m2, m4]


@pytest.mark.parametrize("n", [0, 1, 15, 16, 65535, 65536])
def test_a_client_log_row_is_one_msgpack_array_of_its_records(n: int) -> None:
    packed = [schema.pack_client((f"c{i}", i, i + 1, [])) for i in range(n)]
    assert msgspec.msgpack.decode(schema.join_clients(packed)) == [[f"c{i}", i, i + 1, []] for i in range(n)]


def test_a_batch_says_what_it_did_for_the_server_to_act_on() -> None:
    """The effects the server pushes and ends sessions by: each new message once
    (not for a retry, nor for a refused send), each ended session, each deleted
    account; and every answer with the client and seq that wait for it."""
    chat = Chat()
    a, b, c = chat.register("alice"), chat.register("bob"), chat.register("carol")
    send = chat.cmd(C.Send, user=a, to="Bob", body="hi")
    nobody = chat.cmd(C.Send, user=a, to="nobody", body="hi")
    off = chat.cmd(C.LogOff, user=b, session="s1", session_expires=2_000_000_000)
    everywhere = chat.cmd(C.LogoutAll, user=a)
    gone = chat.cmd(C.DeleteAccount, user=c)
    e = chat.batch(send, send, nobody, off, everywhere, gone)
    first = chat.index - 5
    assert e.delivered == [(a, b, R.Message(first, "alice", "bob", "hi", chat.ts))]
    assert e.results[0] == e.results[1] == R.Sent(first, chat.ts, "bob")
    assert e.sessions_ended == [(b, "s1", None), (a, None, 1)]
    assert e.accounts_deleted == [c]
    assert [(i, client, seq) for i, client, seq, _ in e.answers] == [
        (first + k, "c", cmd.seq) for k, cmd in enumerate((send, send, nobody, off, everywhere, gone))]
    assert [r for *_, r in e.answers] == e.results
    retried = chat.batch(send, off, gone)  # retries: the same answers, nothing to do again
    assert retried.results == [e.results[0], e.results[3], e.results[5]]
    assert not (retried.delivered or retried.sessions_ended or retried.accounts_deleted)


def test_results_are_stored_as_they_were_before_they_were_typed() -> None:
    """Kept results are written as plain fields, as when they were dicts: the
    same bytes, so the same digest on a replica of either version; and read
    back as the type they were."""
    results = {1: R.Sent(5, 6, "bob"), 2: R.Refused("no_such_user", "no"), 3: R.LoggedOff(7),
               4: R.LoggedOff(7, "s", 2), 5: R.LoggedOutAll(7, 3), 6: R.PasswordChanged(4),
               7: R.Registered(1, "ann"), 8: R.Deleted([1], []), 9: R.MarkedRead(3, 0),
               10: R.ViewCountSet(20), 11: R.AccountDeleted(0)}
    as_dicts = [(1, {"data": {"id": 5, "sent_at": 6, "to": "bob"}}), (2, {"code": "no_such_user", "message": "no"}),
                (3, {"data": {"last_logoff": 7}}), (4, {"data": {"last_logoff": 7, "ended": "s", "epoch": 2}}),
                (5, {"data": {"last_logoff": 7, "epoch": 3}}), (6, {"data": {"epoch": 4}}),
                (7, {"data": {"id": 1, "name": "ann"}}), (8, {"data": {"deleted": [1], "not_deleted": []}}),
                (9, {"data": {"read_upto": 3, "unread": 0}}), (10, {"data": {"view_count": 20}}),
                (11, {"data": {"deleted_messages": 0}})]
    kept = [(seq, schema.stored(r)) for seq, r in sorted(results.items())]
    assert schema.pack_client(("k", 0, 0, kept)) == schema.pack_client(("k", 0, 0, as_dicts))
    back = msgspec.msgpack.decode(schema.pack_client(("k", 0, 0, as_dicts)), type=schema.ClientRecord)
    assert {seq: r.outcome() for seq, r in back.results or ()} == results
