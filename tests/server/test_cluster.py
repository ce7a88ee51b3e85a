"""The running cluster: real server processes on loopback, real faults."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from pathlib import Path

import pytest

from chorus.client import Client, Rejected, Unauthenticated

from .cluster import Cluster, Raw, wait_for

PASSWORD = "Secret123"


def run(coro):
    return asyncio.run(coro)


async def user(c: Cluster, name: str, servers: list[str] | None = None, **kw) -> Client:
    client = c.client(servers, **kw)
    await client.register(name, PASSWORD)
    await client.login(name, PASSWORD)
    return client


def messages_in(c: Cluster, i: int) -> list[tuple[int, str, str]]:
    """What replica i stores (read straight from its database file)."""
    db = c.root / "data" / f"replica{i}" / "chorus.db"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute(
            "SELECT m.id, s.name, m.body FROM messages m JOIN users s ON s.id = m.sender ORDER BY m.id"
        ).fetchall()


# ---------------------------------------------------------------------------- basics
def test_register_login_send_and_the_push_reaches_another_replica(cluster: Cluster) -> None:
    async def main():
        await cluster.primary()
        alice = await user(cluster, "alice", [cluster.address(1)])
        bob = await user(cluster, "bob", [cluster.address(2)])
        received: list = []

        async def listen():
            async for m in bob.events():
                received.append(m)
                if len(received) == 2:
                    return

        listener = asyncio.create_task(listen())
        await wait_for(lambda: _subscribed(bob), 5, "bob's subscription")
        m1 = await alice.send("bob", "hello bob")
        m2 = await alice.send("Bob", "are you there?")
        await asyncio.wait_for(listener, 10)
        assert [(m.id, m.sender, m.body) for m in received] == [(m1.id, "alice", "hello bob"), (m2.id, "alice", "are you there?")]
        # A read on a third replica, linearizable by default, sees both.
        carol = cluster.client([cluster.address(3)])
        await carol.register("carol", PASSWORD)
        page = await bob.history("alice")
        assert [m.body for m in page] == ["are you there?", "hello bob"]
        convs = await bob.conversations()
        assert [(c.peer, c.unread) for c in convs] == [("alice", 2)]
        for c in (alice, bob, carol):
            await c.close()
        rows = await cluster.converged()
        assert len({r["digest"] for r in rows}) == 1

    run(main())


async def _subscribed(client: Client) -> bool:
    return client._subscribed and client._conn is not None


def test_rules_and_errors_come_back_clearly(cluster: Cluster) -> None:
    async def main():
        await cluster.primary()
        a = await user(cluster, "alice")
        with pytest.raises(Rejected) as e:
            await a.register("alice", PASSWORD)
        assert e.value.code == "name_taken"
        with pytest.raises(Rejected) as e:
            await a.register("carol", "short")
        assert e.value.code == "weak_password" and "digit" in e.value.message and "uppercase" in e.value.message
        with pytest.raises(Rejected) as e:
            await a.send("nobody", "hi")
        assert e.value.code == "no_such_user"
        with pytest.raises(Rejected) as e:
            await cluster.client().login("alice", "Wrong1234")
        assert e.value.code == "bad_credentials"
        await a.close()

    run(main())


def test_a_token_works_on_every_server_until_the_account_is_deleted(cluster: Cluster) -> None:
    async def main():
        await cluster.primary()
        a = await user(cluster, "alice", [cluster.address(1)])
        await user(cluster, "bob")
        token = a.token
        elsewhere = cluster.client([cluster.address(3)])
        elsewhere.token, elsewhere.user = token, "alice"
        sent = await elsewhere.send("bob", "from server 3")
        assert sent.id > 0
        await a.delete_account()
        stale = cluster.client([cluster.address(2)])
        stale.token = token
        with pytest.raises(Unauthenticated):
            await stale.send("bob", "ghost")
        for c in (a, elsewhere, stale):
            await c.close()

    run(main())


# ---------------------------------------------------------------------------- faults
def test_kill_9_the_primary_while_clients_send(cluster: Cluster) -> None:
    """No acknowledged message is lost or duplicated; every replica ends identical."""
    async def main():
        first = await cluster.primary()
        senders = [await user(cluster, f"user{i}") for i in range(5)]
        await user(cluster, "sink")
        acked: list[tuple[str, str]] = []
        stop = asyncio.Event()

        async def keep_sending(client: Client, k: int) -> None:
            n = 0
            while not stop.is_set():
                body = f"{client.user} message {n}"
                await client.send("sink", body)  # retried by the client across the failover
                acked.append((client.user, body))
                n += 1

        tasks = [asyncio.create_task(keep_sending(c, k)) for k, c in enumerate(senders)]
        await wait_for(lambda: _at_least(acked, 50), 20, "50 acknowledged sends")
        cluster.kill(first)
        before = len(acked)
        new = await cluster.primary()
        assert new != first
        await wait_for(lambda: _at_least(acked, before + 50), 30, "sends to go on after the failover")
        stop.set()
        await asyncio.gather(*tasks)
        cluster.start(first)
        await cluster.converged(timeout=30)
        for i in (1, 2, 3):
            stored = [(s, b) for _, s, b in messages_in(cluster, i)]
            assert sorted(stored) == sorted(acked), f"replica {i} differs from what was acknowledged"
            assert len(set(stored)) == len(stored)
        for c in senders:
            await c.close()

    run(main())


async def _at_least(items: list, n: int) -> bool:
    return len(items) >= n


def test_a_replica_that_was_down_catches_up_from_the_log_and_from_a_snapshot(tmp_path: Path) -> None:
    c = Cluster(tmp_path, 3, snapshot_every=100)
    c.start()
    try:
        async def main():
            p = await c.primary()
            down = next(i for i in (1, 2, 3) if i != p)
            a = await user(c, "alice", [c.address(p)])
            await user(c, "bob", [c.address(p)])
            c.kill(down)
            for k in range(20):
                await a.send("bob", f"while away {k}")
            c.start(down)  # 20 entries behind: the log is enough
            await c.converged(timeout=30)
            assert "snapshot" not in c.log(down).split("starts:")[-1]
            c.kill(down)
            for k in range(400):
                await a.send("bob", f"long away {k}")
            rows = await c.statuses()
            assert rows[p - 1]["snapshot_index"] > 0  # the log before it was compacted
            c.start(down)
            await c.converged(timeout=60)
            assert "sent snapshot" in c.log(p)
            assert len(messages_in(c, down)) == 420
            await a.close()

        run(main())
    finally:
        c.stop_all()


def test_pushed_messages_resume_across_a_failover_without_gaps_or_repeats(cluster: Cluster) -> None:
    async def main():
        p = await cluster.primary()
        order = [cluster.address(p)] + [a for a in cluster.addresses if a != cluster.address(p)]
        bob = await user(cluster, "bob", order, shuffle=False)  # listening on the primary, which will die
        assert bob.server == cluster.address(p)
        alice = await user(cluster, "alice", list(reversed(order)))
        again = cluster.client()
        assert (await again.auth(alice.token)).name == "alice"
        received: list = []

        async def listen():
            async for m in bob.events():
                received.append(m)

        listener = asyncio.create_task(listen())
        await wait_for(lambda: _subscribed(bob), 5, "bob's subscription")
        sent = [await alice.send("bob", f"before {k}") for k in range(10)]
        cluster.kill(p)
        for k in range(10):
            sent.append(await alice.send("bob", f"after {k}"))
        target = len(sent)
        await wait_for(lambda: _at_least(received, target), 30, "every message to be pushed")
        assert [m.id for m in received] == [m.id for m in sent]
        assert bob.server != cluster.address(p)  # it moved to another server by itself
        listener.cancel()
        for c in (alice, bob, again):
            await c.close()

    run(main())


def test_kill_all_replicas_at_once_and_restart(cluster: Cluster) -> None:
    async def main():
        await cluster.primary()
        a = await user(cluster, "alice")
        await user(cluster, "bob")
        acked = [await a.send("bob", f"m{k}") for k in range(30)]
        await a.close()
        for i in (1, 2, 3):
            cluster.kill(i)
        cluster.start()
        await cluster.primary()
        b = cluster.client()
        await b.login("bob", PASSWORD)
        page = await b.history("alice", limit=100)
        assert sorted(m.id for m in page) == sorted(m.id for m in acked)
        await cluster.converged()
        await b.close()

    run(main())


def test_sigterm_on_the_primary_hands_over_without_errors(cluster: Cluster) -> None:
    async def main():
        p = await cluster.primary()
        a = await user(cluster, "alice", [cluster.address(p)] + [x for x in cluster.addresses if x != cluster.address(p)])
        await user(cluster, "bob")
        errors: list = []
        sent: list = []
        stop = asyncio.Event()

        async def keep_sending():
            while not stop.is_set():
                try:
                    sent.append(await a.send("bob", f"m{len(sent)}"))
                except Exception as exc:
                    errors.append(exc)

        task = asyncio.create_task(keep_sending())
        await wait_for(lambda: _at_least(sent, 20), 10, "some sends")
        assert cluster.terminate(p) == 0
        new = await cluster.primary()
        assert new != p
        after = len(sent) + 20
        await wait_for(lambda: _at_least(sent, after), 20, "sends after the handover")
        stop.set()
        await task
        assert errors == []
        assert "hands leadership to" in cluster.log(p)
        await a.close()

    run(main())


# ---------------------------------------------------------------------------- bad input
def test_bad_input_gets_clear_errors_and_nobody_else_notices(cluster: Cluster) -> None:
    async def main():
        await cluster.primary()
        good = await user(cluster, "alice")
        await user(cluster, "bob")
        addr = cluster.address(1)
        r = Raw(addr, cluster.ca)
        cases = [
            (b"{not json", None, "malformed"),
            (b'{"op":"fly","id":1}', 1, "invalid_request"),
            (b'{"op":"history","id":2,"peer":5}', 2, "invalid_request"),
            (b'{"op":"history","id":3}', 3, "invalid_request"),
            (b'{"op":"send","id":4,"client":"x","seq":1,"to":"bob","body":"hi"}', 4, "unauthenticated"),
            (b"[1,2,3]", None, "invalid_request"),
        ]
        for body, rid, code in cases:
            r.send(body)
            reply = r.reply()
            assert (reply["id"], reply["ok"], reply["error"]["code"]) == (rid, False, code), (body, reply)
        # Sending as someone else: there is no field for it, and extra fields are refused.
        r.send(b'{"op":"send","id":5,"client":"x","seq":1,"to":"bob","body":"hi","sender":"bob"}')
        reply = r.reply()
        assert reply["error"]["code"] == "invalid_request" and "sender" in reply["error"]["message"]
        assert (await good.send("bob", "still served")).id > 0
        # Out of range: a number past 2**62, too many ids at once (they would make a log
        # entry too big to replicate), an over-long message.
        auth = b'{"op":"auth","id":6,"token":"' + good.token.encode() + b'"}'
        r.send(auth)
        assert r.reply()["ok"]
        r.send(b'{"op":"history","id":7,"peer":"bob","before":99999999999999999999}')
        assert r.reply()["error"]["code"] == "invalid_request"
        many = ",".join(str(i) for i in range(100_000)).encode()
        r.send(b'{"op":"delete_messages","id":8,"client":"x","seq":1,"ids":[' + many + b"]}")
        reply = r.reply()
        assert reply["error"]["code"] == "invalid_request" and "1000" in reply["error"]["message"]
        r.send(b'{"op":"send","id":9,"client":"x","seq":2,"to":"bob","body":"' + b"y" * 4001 + b'"}')
        assert r.reply()["error"]["code"] == "invalid_request"
        assert (await good.send("bob", "and replication goes on")).id > 0
        # A 50 MB length prefix: refused before any of it is read, and that connection closes.
        huge = Raw(addr, cluster.ca)
        huge.raw((50 * 1024 * 1024).to_bytes(4, "big"))
        reply = huge.reply()
        assert reply["error"]["code"] == "frame_too_large"
        assert huge.closed()
        assert (await good.send("bob", "and still served")).id > 0
        rows = await cluster.statuses()
        assert all("error" not in row for row in rows)
        await good.close()

    run(main())


def test_retrying_a_write_with_the_same_seq_applies_it_once(cluster: Cluster) -> None:
    async def main():
        await cluster.primary()
        await user(cluster, "bob")
        a = await user(cluster, "alice")
        r = Raw(cluster.address(2), cluster.ca)
        assert r.auth(a.token)["ok"]
        send = b'{"op":"send","id":%d,"client":"retrier","seq":1,"to":"bob","body":"exactly once"}'
        r.send(send % 2)
        first = r.reply()
        other = Raw(cluster.address(3), cluster.ca)
        assert other.auth(a.token)["ok"]
        other.send(send % 3)  # the same write again, on another server
        second = other.reply()
        assert first["ok"] and second["ok"] and first["result"] == second["result"]
        page = await a.history("bob")
        assert [m.body for m in page] == ["exactly once"]
        await a.close()

    run(main())


def test_retrying_delete_account_after_it_was_applied_gets_its_saved_answer(cluster: Cluster) -> None:
    """The reply to a delete_account is lost; the retry cannot authenticate any
    more (the account is gone) yet must learn that its delete succeeded, not be
    told "unauthenticated" as if nothing happened."""
    async def main():
        await cluster.primary()
        a = await user(cluster, "alice")
        r = Raw(cluster.address(1), cluster.ca)
        assert r.auth(a.token)["ok"]
        delete = b'{"op":"delete_account","id":%d,"client":"leaver","seq":1}'
        r.send(delete % 2)
        first = r.reply()
        assert first["ok"], first
        retry = Raw(cluster.address(3), cluster.ca)
        assert retry.auth(a.token)["error"]["code"] == "unauthenticated"
        retry.send(delete % 2)
        second = retry.reply()
        assert second["ok"] and second["result"] == first["result"], second
        # Any other write on that unauthenticated connection is still refused.
        retry.send(b'{"op":"send","id":3,"client":"leaver","seq":2,"to":"alice","body":"hi"}')
        assert retry.reply()["error"]["code"] == "unauthenticated"
        await a.close()

    run(main())


def test_a_write_sent_to_two_servers_at_once_is_pushed_once(cluster: Cluster) -> None:
    async def main():
        await cluster.primary()
        bob = await user(cluster, "bob")
        alice = await user(cluster, "alice")
        received: list = []

        async def listen():
            async for m in bob.events():
                received.append(m)

        listener = asyncio.create_task(listen())
        await wait_for(lambda: _subscribed(bob), 5, "bob's subscription")
        conns = [Raw(cluster.address(i), cluster.ca) for i in (1, 2)]
        for k, r in enumerate(conns):
            assert r.auth(alice.token, rid=k)["ok"]
        send = b'{"op":"send","id":10,"client":"twice","seq":1,"to":"bob","body":"once only"}'
        for r in conns:
            r.send(send)
        answers = [r.reply() for r in conns]
        assert answers[0]["result"] == answers[1]["result"]
        last = await alice.send("bob", "a later one")  # pushed after any duplicate would be
        await wait_for(lambda: _at_least(received, 2) if received and received[-1].id == last.id else _no(), 10,
                       "the later message")
        assert [m.body for m in received] == ["once only", "a later one"]
        listener.cancel()
        await alice.close()
        await bob.close()

    run(main())


async def _no() -> bool:
    return False


def test_write_concerns(cluster: Cluster) -> None:
    async def main():
        p = await cluster.primary()
        await user(cluster, "bob")
        everyone = await user(cluster, "alice", [cluster.address(p)], write_concern="all")
        m = await everyone.send("bob", "on every server")
        fast = cluster.client(write_concern="async")
        fast.token, fast.user = everyone.token, "alice"
        m2 = await fast.send("bob", "answered after the primary's fsync")
        assert m2.id > m.id  # answered before it was committed: it is applied everywhere a moment later

        async def everywhere():
            want = ["on every server", "answered after the primary's fsync"]
            return all([b for _, _, b in messages_in(cluster, i)] == want for i in (1, 2, 3))

        await wait_for(everywhere, 10, "the async write to be applied everywhere")
        await everyone.close()
        await fast.close()

    run(main())


def test_the_command_line(cluster: Cluster, tmp_path: Path) -> None:
    import json
    import os
    import subprocess
    import sys

    run(cluster.primary())
    env = {**cluster.env, "CHORUS_SESSION": str(tmp_path / "session.json"), "CHORUS_SERVERS": ",".join(cluster.addresses),
           "CHORUS_CA": str(cluster.ca)}

    def chorus(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "chorus", *args], input=stdin, capture_output=True,
                              text=True, env=env, timeout=60)

    assert chorus("register", "alice", "--password-stdin", stdin=PASSWORD + "\n").returncode == 0
    assert chorus("register", "bob", "--password-stdin", stdin=PASSWORD + "\n").returncode == 0
    out = chorus("login", "alice", "--password-stdin", stdin=PASSWORD + "\n")
    assert out.returncode == 0 and "logged in as alice" in out.stdout
    out = chorus("send", "bob", "hello", "from", "the", "shell")
    assert out.returncode == 0 and "sent #" in out.stdout
    out = chorus("history", "bob")
    assert "alice: hello from the shell" in out.stdout
    out = chorus("users", "b*")
    assert out.stdout.split() == ["bob"]
    out = chorus("status", "--json")
    rows = json.loads(out.stdout)
    assert len(rows) == 3 and {r["role"] for r in rows} == {"PRIMARY", "BACKUP"}
    assert all({"id", "role", "term", "commit_index", "applied_index", "digest", "primary"} <= set(r) for r in rows)
    cluster.kill(3)
    rows = json.loads(chorus("status", "--json").stdout)
    assert "unreachable" in rows[2]["error"]
    out = chorus("send", "nobody", "hi")
    assert out.returncode == 1 and "no_such_user" in out.stderr
    assert os.path.exists(env["CHORUS_SESSION"])
    cluster.start(3)
    # Escapes in a body are shown escaped, never sent raw to the terminal (a title
    # change, a clear screen, a line overwritten, text reversed).
    hostile = "\x1b]0;owned\x07\x1b[2J\rfake line\u202eevil"
    assert chorus("send", "bob", hostile).returncode == 0
    out = chorus("history", "bob")
    assert "\x1b" not in out.stdout and "\r" not in out.stdout and "\u202e" not in out.stdout
    assert "alice: \\x1b]0;owned\\x07\\x1b[2J\\rfake line\\u202eevil" in out.stdout, out.stdout
    out = chorus("conversations")
    assert "\x1b" not in out.stdout and "\\x1b" in out.stdout
    # chorus logout ends the session on every server: the saved token is refused after.
    token = json.loads(Path(env["CHORUS_SESSION"]).read_text())
    assert chorus("logout").returncode == 0
    Path(env["CHORUS_SESSION"]).write_text(json.dumps(token))
    for address in cluster.addresses:
        out = chorus("history", "bob", "--servers", address)
        assert out.returncode == 1 and "unauthenticated" in out.stderr and "ended" in out.stderr, (address, out)
    # chorus passwd: the new password works, the old one no longer; logout --all.
    assert chorus("login", "alice", "--password-stdin", stdin=PASSWORD + "\n").returncode == 0
    out = chorus("passwd", "--password-stdin", stdin=f"{PASSWORD}\nNewSecret456\n")
    assert out.returncode == 0 and "password changed" in out.stdout, out
    assert chorus("history", "bob").returncode == 0  # this session goes on, with its new token
    assert chorus("login", "alice", "--password-stdin", stdin=PASSWORD + "\n").returncode == 1
    assert chorus("login", "alice", "--password-stdin", stdin="NewSecret456\n").returncode == 0
    other = json.loads(Path(env["CHORUS_SESSION"]).read_text())
    assert chorus("login", "alice", "--password-stdin", stdin="NewSecret456\n").returncode == 0
    out = chorus("logout", "--all")
    assert out.returncode == 0 and "everywhere" in out.stdout
    Path(env["CHORUS_SESSION"]).write_text(json.dumps(other))
    assert "unauthenticated" in chorus("history", "bob").stderr


def test_a_backup_serves_linearizable_reads_of_writes_made_elsewhere(cluster: Cluster) -> None:
    async def main():
        p = await cluster.primary()
        backups = [i for i in (1, 2, 3) if i != p]
        a = await user(cluster, "alice", [cluster.address(p)])
        b = await user(cluster, "bob", [cluster.address(backups[0])])
        for k in range(20):
            sent = await a.send("bob", f"m{k}")
            page = await b.history("alice", limit=1)  # on a backup, right after the acknowledgement
            assert page and page[0].id == sent.id
        await a.close()
        await b.close()

    run(main())


def test_random_sanity_many_clients_many_servers(cluster: Cluster) -> None:
    async def main():
        await cluster.primary()
        names = [f"user{i}" for i in range(8)]
        clients = [await user(cluster, n, random.sample(cluster.addresses, 3)) for n in names]
        sent = await asyncio.gather(*(c.send(random.choice(names), f"hello {k}") for k, c in enumerate(clients) for _ in range(5)))
        assert len({m.id for m in sent}) == len(sent)
        rows = await cluster.converged()
        assert len({r["digest"] for r in rows}) == 1
        for c in clients:
            await c.close()
        t0 = time.monotonic()
        assert time.monotonic() - t0 < 5

    run(main())
