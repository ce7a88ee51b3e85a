"""apply() never raises for a command that decodes (and every command is decoded,
within its bounds, before it is proposed): whatever the fields hold, extreme
values included, the answer is a Result, the state stays consistent (its digest
is the digest of its rows), and a replica that loads the tables again agrees.

A command that does not decode (out of bounds, malformed, nested too deeply)
is refused before it is proposed; should one reach the log anyway, applying it
gives ``bad_command`` and changes nothing."""

from __future__ import annotations

import sqlite3

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chorus.chat import ChatMachine, schema
from chorus.chat import commands as C
from chorus.wire import results as R

MAX = C.MAX_NUMBER
HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA"

numbers = st.one_of(st.sampled_from([0, 1, 2, 3, 1000, 2**31, 2**32, MAX - 1, MAX]), st.integers(0, MAX))
positive = st.one_of(st.sampled_from([1, 2, 3, 4, MAX]), st.integers(1, MAX))
users = st.one_of(st.sampled_from([1, 2, 3]), st.sampled_from([1, 2, 3]), st.sampled_from([1, 2, 3]), positive)
# Any text, controls, NUL, emoji and combining marks included (no lone surrogates:
# JSON cannot carry them, msgspec refuses them when decoding).
texts = st.text(st.characters(blacklist_categories=["Cs"]), max_size=70)
names = st.one_of(st.sampled_from(["alice", "Bob", "carol", "ALICE", "x", "", "a" * 64]), texts.map(lambda t: t[:64]))
bodies = st.one_of(st.sampled_from(["hi", "", " ", "\x1b[2J", "x" * C.rules.BODY_MAX]),
                   st.text(st.characters(blacklist_categories=["Cs"]), max_size=300))
clients = st.sampled_from(["k1", "k2", "x" * 64])
sessions = st.one_of(st.just(""), st.text("0123456789abcdef", min_size=1, max_size=64))


def common():
    return {"client": clients, "seq": positive, "acked": numbers, "ts": numbers}


commands = st.one_of(
    st.builds(C.Register, **common(), name=names,
              pw_hash=st.one_of(st.just(HASH), texts, st.just("$argon2id$" + "x" * 500))),
    st.builds(C.Send, **common(), user=users, to=names, body=bodies),
    st.builds(C.DeleteMessages, **common(), user=users,
              ids=st.lists(numbers, max_size=C.rules.DELETE_MAX).map(tuple)),
    st.builds(C.MarkRead, **common(), user=users, peer=names, upto=numbers),
    st.builds(C.SetViewCount, **common(), user=users, count=numbers),
    st.builds(C.LogOff, **common(), user=users, session=sessions, session_expires=numbers),
    st.builds(C.LogoutAll, **common(), user=users),
    st.builds(C.ChangePassword, **common(), user=users, pw_hash=st.one_of(st.just(HASH), texts)),
    st.builds(C.DeleteAccount, **common(), user=users),
)


def machine() -> tuple[sqlite3.Connection, ChatMachine]:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    schema.create(conn)
    m = ChatMachine(conn)
    # Some state for the commands to act on: three users who wrote to each other.
    setup = [C.Register(client="s", seq=1, ts=1, name="alice", pw_hash=HASH),
             C.Register(client="s", seq=2, ts=2, name="bob", pw_hash=HASH),
             C.Register(client="s", seq=3, ts=3, name="carol", pw_hash=HASH),
             C.Send(client="s", seq=4, ts=4, user=1, to="bob", body="hello"),
             C.Send(client="s", seq=5, ts=5, user=2, to="alice", body="hi"),
             C.Send(client="s", seq=6, ts=6, user=3, to="carol", body="note")]
    apply(conn, m, [(i, C.encode(c)) for i, c in enumerate(setup, 1)])
    return conn, m


def apply(conn: sqlite3.Connection, m: ChatMachine, batch: list[tuple[int, bytes]]) -> list[R.Outcome]:
    conn.execute("BEGIN")
    results = m.apply_batch(batch).results
    conn.execute("COMMIT")
    m.publish()
    return results


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(commands, min_size=1, max_size=12))
def test_any_command_that_decodes_is_applied_without_raising(cmds: list[C.AnyCommand]) -> None:
    conn, m = machine()
    batch = []
    for i, cmd in enumerate(cmds, 100):
        data = C.encode(cmd)
        try:
            C.decode(data)
        except C.BadCommand:
            continue  # not proposed (the primary checks every command first): see below
        batch.append((i, data))
    results = apply(conn, m, batch)
    assert len(results) == len(batch) and all(isinstance(r, R.Answer) for r in results)
    assert m.digest() == schema.full_digest(conn)
    again = ChatMachine(conn)  # another replica loading the same tables
    assert again.digest() == m.digest()


out_of_bounds = st.one_of(
    st.integers(MAX + 1, 2**64 + 5), st.integers(-(2**64), -1), st.sampled_from([2**63, 2**63 - 1, 2**64]),
)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["seq", "acked", "ts", "user", "upto", "count", "session_expires", "ids"]), out_of_bounds)
def test_a_number_out_of_bounds_is_not_a_command(field: str, value: int) -> None:
    """What crashed every replica (a timestamp of 2**63 overflowed SQLite when
    applied): refused at decode, so never proposed, and bad_command if applied."""
    base = {"client": "k", "seq": 1, "ts": 5}
    cls, extra = {
        "upto": (C.MarkRead, {"user": 1, "peer": "bob"}), "count": (C.SetViewCount, {"user": 1}),
        "session_expires": (C.LogOff, {"user": 1, "session": "s"}), "ids": (C.DeleteMessages, {"user": 1}),
    }.get(field, (C.Send, {"user": 1, "to": "bob", "body": "hi"}))
    obj = {"op": cls.__struct_config__.tag, **base, **extra}
    obj[field] = [value] if field == "ids" else value
    obj.setdefault("ids", [1]) if cls is C.DeleteMessages else None
    data = msgspec.json.encode(obj)
    try:
        C.decode(data)
    except C.BadCommand:
        pass
    else:
        raise AssertionError(f"{obj} decoded")
    conn, m = machine()
    before = m.digest()
    (result,) = apply(conn, m, [(100, data)])
    assert R.code_of(result) == "bad_command" and m.digest() == before == schema.full_digest(conn)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_in_the_log_give_a_result_and_change_nothing_unless_a_command(data: bytes) -> None:
    conn, m = machine()
    before = m.digest()
    (result,) = apply(conn, m, [(100, data)])
    try:
        C.decode(data)
    except C.BadCommand:
        assert R.code_of(result) == "bad_command" and m.digest() == before
    assert m.digest() == schema.full_digest(conn)


def test_json_nested_too_deeply_is_a_bad_command_not_a_crash() -> None:
    conn, m = machine()
    deep = b'{"op":"send","client":"k","seq":1,"ts":1,"user":1,"to":"bob","body":' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    (result,) = apply(conn, m, [(100, deep), ])
    assert R.code_of(result) == "bad_command"
