"""Membership changes on real processes, from the command line, while a client
sends: a server added (it joins with --join, catches up, is promoted), a backup
removed, the primary removed (it hands over first); every acknowledged message
is on every remaining member exactly once. And the admin channel as an attacker
sees it: bytes on a socket, without the secret."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import subprocess
import sys
import time

import pytest

from chorus.client import Client, server_status
from chorus.client.admin import Admin
from chorus.wire.errors import ChorusError, Rejected

from .cluster import SECRET, Cluster, Raw, free_ports, wait_for
from .test_cluster import messages_in, user


def chorus(c: Cluster, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "chorus", *args], capture_output=True, text=True, env=c.env,
                          cwd=c.root, timeout=timeout)


async def member(c: Cluster, *args: str) -> str:
    """``chorus member ...`` as an operator runs it (the event loop, and so the
    sending client, goes on meanwhile)."""
    return await operator(c, "member", *args)


async def operator(c: Cluster, *args: str) -> str:
    """``chorus ARGS --config ... --servers ...``, run while the event loop goes on."""
    p = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chorus", *args, "--config", str(c.config), "--servers",
        ",".join(c.addresses), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=c.env, cwd=c.root)
    out, err = await asyncio.wait_for(p.communicate(), 60)
    assert p.returncode == 0, (out + err).decode()
    return out.decode()


async def members(c: Cluster, servers: dict[int, str] | list[str]) -> dict[int, str]:
    servers = list(servers.values()) if isinstance(servers, dict) else servers
    async with Admin(servers, SECRET, tls=c.ca) as a:
        listed = await a.members()
    return {m.id: m.role for m in listed.members}


class Sender:
    """Sends alice -> bob without pause, waiting for each answer; keeps what was
    acknowledged, the errors, and the longest wait for one answer."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.acked: list[int] = []
        self.errors: list[str] = []
        self.longest = 0.0
        self.stop = False

    def start(self) -> None:
        self.task = asyncio.create_task(self.run())

    async def finish(self, after: str) -> None:
        """Five more acknowledged after ``after``, then stop: none may have failed."""
        mark = len(self.acked)
        await wait_for(lambda: _at_least(self, mark + 5), 20, f"sends after {after}")
        self.stop = True
        await self.task
        await self.client.close()
        assert self.errors == []

    async def run(self) -> None:
        k = 0
        while not self.stop:
            k += 1
            t0 = time.monotonic()
            try:
                m = await self.client.send("bob", f"m{k}")
                self.acked.append(m.id)
            except ChorusError as exc:
                self.errors.append(str(exc))
            self.longest = max(self.longest, time.monotonic() - t0)


def test_add_a_server_that_joins_then_remove_a_backup_and_the_primary_while_sending(cluster: Cluster) -> None:
    async def main():
        await cluster.primary()
        await user(cluster, "bob")
        alice = await user(cluster, "alice", retry_for=30)
        sender = Sender(alice)
        sender.start()
        await wait_for(lambda: _some(sender), 10, "the first sends")

        # Add server 4 from the command line, then start it with --join and nothing else.
        peer, client = cluster.prepare_joiner(4)
        out = await member(cluster, "add", "4", "--peer", peer, "--client", client)
        assert "server 4 added" in out
        cluster.start_joiner(4)
        everyone = {**dict(enumerate(cluster.addresses, 1)), 4: client}

        t0 = time.monotonic()
        await wait_for(lambda: _role(cluster, everyone, 4, "voter"), 60, "server 4 to catch up and be promoted")
        joined_s = time.monotonic() - t0
        listing = await member(cluster, "list")
        assert "voter" in listing and client in listing and "learner" not in listing

        # Remove a backup, then the primary (which hands over first).
        primary = await cluster.primary()
        backup = next(i for i in (1, 2, 3) if i != primary)
        await member(cluster, "remove", str(backup))
        assert backup not in await members(cluster, everyone)
        before = sender.longest
        sender.longest = 0.0
        out = await member(cluster, "remove", str(primary))
        assert f"server {primary} removed" in out
        outage = sender.longest
        left = sorted(set(await members(cluster, everyone)))
        assert primary not in left and backup not in left and 4 in left and len(left) == 2
        await sender.finish("the removals")
        print(f"server 4 joined and was promoted in {joined_s:.1f} s; the longest wait for an answer: "
              f"{before:.2f} s before the removals, {outage:.2f} s while the primary was removed")

        # The two that remain: every acknowledged message once, the same state.
        await converged_once(cluster, everyone, left, sender.acked)

    asyncio.run(main())


async def converged_once(c: Cluster, addresses: dict[int, str], ids: list[int], acked: list[int]) -> None:
    """The servers ``ids`` (at ``addresses[id]``) reach the same applied index
    and digest, and each stores every acknowledged message exactly once."""
    async def same():
        rows = [r.row() for r in await asyncio.gather(*(
            server_status(addresses[i], timeout=1.0, tls=c.client_tls) for i in ids))]
        if any("error" in r for r in rows):
            return None
        return rows if len({(r["applied_index"], r["digest"]) for r in rows}) == 1 else None

    await wait_for(same, 30, f"servers {ids} to converge")
    for i in ids:
        stored = [mid for mid, _sender, _body in messages_in(c, i)]
        assert len(stored) == len(set(stored)), f"server {i} stores a message twice"
        assert set(acked) <= set(stored), f"server {i} lacks acknowledged messages"


async def _some(s: Sender) -> bool:
    return len(s.acked) >= 3


def test_changes_that_cannot_be_done_are_refused_clearly(cluster: Cluster) -> None:
    async def main():
        primary = await cluster.primary()
        async with Admin(cluster.addresses, SECRET, tls=cluster.ca) as a:
            with pytest.raises(Rejected) as e:
                await a.remove(9)
            assert e.value.code == "invalid_change" and "not a member" in e.value.message
            with pytest.raises(Rejected) as e:
                await a.add(2, peer="127.0.0.1:1", client="127.0.0.1:2")
            assert e.value.code == "invalid_change" and "already a member" in e.value.message
            with pytest.raises(Rejected) as e:  # another member's address
                await a.add(5, peer=cluster.peer_address(1), client="127.0.0.1:3")
            assert e.value.code == "invalid_change" and "has that address" in e.value.message
            # A learner that never comes: added, then removed; its id may not come back.
            await a.add(6, peer="127.0.0.1:4", client="127.0.0.1:5", learner=True)
            await a.remove(6)
            with pytest.raises(Rejected) as e:
                await a.add(6, peer="127.0.0.1:4", client="127.0.0.1:5")
            assert e.value.code == "invalid_change" and "removed before" in e.value.message
            # With one backup down, removing the other would leave 1 of 2 voters.
            down, other = [i for i in (1, 2, 3) if i != primary]
            cluster.kill(down)
            await wait_for(lambda: _quiet(cluster, primary, down), 10, f"server {down} to be seen gone")
            with pytest.raises(Rejected) as e:
                await a.remove(other)
            assert e.value.code == "unsafe_change" and "fewer than a majority" in e.value.message
            listed = await a.members()
            assert sorted(m.id for m in listed.members) == [1, 2, 3]

    asyncio.run(main())


async def _quiet(c: Cluster, primary: int, down: int) -> bool:
    """The primary no longer hears from ``down`` (member list says so)."""
    async with Admin([c.address(primary)], SECRET, tls=c.ca) as a:
        listed = await a.members()
    return any(m.id == down and m.reachable is False for m in listed.members)


def _proof(nonce: str, server: int, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), b"chorus admin\0" + nonce.encode() + b"\0" + str(server).encode(),
                    hashlib.sha256).hexdigest()


def test_the_admin_channel_refuses_whoever_does_not_know_the_secret(cluster: Cluster) -> None:
    asyncio.run(cluster.primary())
    address = cluster.address(1)
    add = b'{"op":"member_add","id":2,"server":7,"peer":"127.0.0.1:9","client":"127.0.0.1:10"}'
    # Without admin_auth: refused, on a connection that also logged in as a user.
    r = Raw(address, cluster.ca)
    r.send(add)
    assert r.reply()["error"]["code"] == "forbidden"
    r.send(b'{"op":"member_list","id":3}')
    assert r.reply()["error"]["code"] == "forbidden"
    # A proof made with another secret: refused, and the connection closed.
    r = Raw(address, cluster.ca)
    r.send(b'{"op":"admin_challenge","id":1}')
    ch = r.reply()["result"]
    r.send(b'{"op":"admin_auth","id":2,"proof":"%s"}' % _proof(ch["nonce"], ch["server"], "x" * 32).encode())
    assert r.reply()["error"]["code"] == "bad_proof"
    assert r.closed()
    # A good proof, captured, replayed on another connection: refused (a new nonce).
    r = Raw(address, cluster.ca)
    r.send(b'{"op":"admin_challenge","id":1}')
    ch = r.reply()["result"]
    good = _proof(ch["nonce"], ch["server"])
    r.send(b'{"op":"admin_auth","id":2,"proof":"%s"}' % good.encode())
    assert r.reply()["ok"] is True
    r.send(b'{"op":"member_list","id":3}')
    assert [m["id"] for m in r.reply()["result"]["members"]] == [1, 2, 3]
    replay = Raw(address, cluster.ca)
    replay.send(b'{"op":"admin_challenge","id":1}')
    replay.reply()
    replay.send(b'{"op":"admin_auth","id":2,"proof":"%s"}' % good.encode())
    assert replay.reply()["error"]["code"] == "bad_proof"
    # Without asking for a challenge first: nothing to prove against.
    r = Raw(address, cluster.ca)
    r.send(b'{"op":"admin_auth","id":2,"proof":"%s"}' % good.encode())
    assert r.reply()["error"]["code"] == "bad_proof"
    # And the CLI with a wrong secret says so.
    bad = cluster.root / "bad.toml"
    bad.write_text(cluster.config.read_text().replace(SECRET, "another-secret-0123456789"))
    out = chorus(cluster, "member", "list", "--config", str(bad), "--servers", address)
    assert out.returncode == 1 and "bad_proof" in out.stderr
    # Nothing was changed.
    assert asyncio.run(members(cluster, cluster.addresses)) == {1: "voter", 2: "voter", 3: "voter"}


def test_replace_a_dead_server_then_move_one_to_new_ports_while_sending(cluster: Cluster) -> None:
    """The two procedures of docs/operations.md, as written there."""
    async def main():
        primary = await cluster.primary()
        await user(cluster, "bob")
        alice = await user(cluster, "alice", retry_for=30)
        sender = Sender(alice)
        sender.start()
        await wait_for(lambda: _some(sender), 10, "the first sends")
        dead, moving = [i for i in (1, 2, 3) if i != primary]

        # Replace: server `dead` is gone for good (kill -9); 5 is added, joins, then `dead` is removed.
        cluster.kill(dead)
        peer, client = cluster.prepare_joiner(5)
        await member(cluster, "add", "5", "--peer", peer, "--client", client)
        cluster.start_joiner(5)
        everyone = {**dict(enumerate(cluster.addresses, 1)), 5: client}
        await wait_for(lambda: _role(cluster, everyone, 5, "voter"), 60, "server 5 to be promoted")
        await member(cluster, "remove", str(dead))
        assert sorted(await members(cluster, everyone)) == sorted([primary, moving, 5])

        # Move: `moving` gets new ports; it is stopped and started again there, with its data.
        new_peer, new_client = free_ports(2)
        await member(cluster, "move", str(moving), "--peer", f"127.0.0.1:{new_peer}",
                     "--client", f"127.0.0.1:{new_client}")
        assert cluster.terminate(moving) == 0
        moved = cluster.root / "moved.toml"
        moved.write_text(cluster.config.read_text()
                         .replace(f"peer_port = {cluster.peer_ports[moving - 1]}\n", f"peer_port = {new_peer}\n")
                         .replace(f"client_port = {cluster.client_ports[moving - 1]}\n",
                                  f"client_port = {new_client}\n"))
        log = open(cluster.root / f"server{moving}.log", "ab")  # noqa: SIM115 - kept by the child
        cluster.procs[moving] = subprocess.Popen(
            [sys.executable, "-m", "chorus", "serve", "--id", str(moving), "--config", str(moved)],
            stdout=log, stderr=log, env=cluster.env, cwd=cluster.root)
        everyone[moving] = f"127.0.0.1:{new_client}"

        async def there():
            async with Admin([everyone[primary]], SECRET, tls=cluster.ca) as a:
                listed = await a.members()
            m = {x.id: x for x in listed.members}
            return (m[moving].client == f"127.0.0.1:{new_client}" and m[moving].reachable
                    and m[moving].lag is not None and m[moving].lag < 50)

        await wait_for(there, 30, f"server {moving} to be heard from at its new address")
        await sender.finish("the move")

        await converged_once(cluster, everyone, [primary, moving, 5], sender.acked)

    asyncio.run(main())


async def _role(c: Cluster, servers: dict[int, str], sid: int, role: str) -> bool:
    return (await members(c, servers)).get(sid) == role


async def _at_least(s: Sender, n: int) -> bool:
    return len(s.acked) >= n
