"""Recovery from losing a majority, on real processes: refused while a majority
can be reached, said before it is done, and then a survivor goes on alone and
grows a cluster again."""

from __future__ import annotations

import asyncio
import subprocess
import sys

from .cluster import Cluster, wait_for
from .test_cluster import PASSWORD, messages_in, user
from .test_membership import _role, member


def recover(c: Cluster, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "chorus", "recover", *args, "--config", str(c.config)],
                          capture_output=True, text=True, env=c.env, cwd=c.root, timeout=60)


def test_a_survivor_of_a_lost_majority_seeds_a_new_cluster(cluster: Cluster) -> None:
    async def before() -> tuple[int, list[int]]:
        p = await cluster.primary()
        await user(cluster, "bob")
        alice = await user(cluster, "alice")
        acked = [(await alice.send("bob", f"m{k}")).id for k in range(20)]
        await alice.close()
        return p, acked

    survivor, acked = asyncio.run(before())
    out = recover(cluster, "--id", str(survivor), "--yes")
    assert out.returncode == 1 and "stop it first" in out.stderr
    assert cluster.terminate(survivor) == 0
    out = recover(cluster, "--id", str(survivor), "--yes")  # the two others are up: nothing to recover
    assert out.returncode == 1 and "a majority of the voters can be reached" in out.stderr
    cluster.start(survivor)
    asyncio.run(cluster.converged())  # (all three up, the survivor caught up)

    # The majority is lost for good: kill -9 both others; the survivor is stopped.
    dead = [i for i in (1, 2, 3) if i != survivor]
    for i in dead:
        cluster.kill(i)
    assert cluster.terminate(survivor) == 0
    had = {mid for mid, _s, _b in messages_in(cluster, survivor)}
    out = recover(cluster, "--id", str(survivor))
    assert out.returncode == 2, out.stderr
    assert f"Servers {dead} cannot be reached" in out.stdout and "Nothing was changed" in out.stdout
    out = recover(cluster, "--id", str(survivor), "--yes")
    assert out.returncode == 0, out.stderr
    assert "is now the only voter" in out.stdout and str(dead) in out.stdout
    cluster.start(survivor)

    async def after() -> None:
        async def alone():
            rows = [r for r in await cluster.statuses() if "error" not in r]
            return rows and rows[0]["role"] == "PRIMARY" and rows[0]["voters"] == [survivor]

        await wait_for(alone, 20, f"server {survivor} to lead alone")
        alice = cluster.client([cluster.address(survivor)])
        await alice.login("alice", PASSWORD)
        m = await alice.send("bob", "after the recovery")
        page = await alice.history("bob", limit=100)
        await alice.close()
        assert page[0].id == m.id
        # It grows again: a new server (a new id) joins and becomes a voter.
        peer, client = cluster.prepare_joiner(4)
        await member(cluster, "add", "4", "--peer", peer, "--client", client)
        cluster.start_joiner(4)
        await wait_for(lambda: _role(cluster, {survivor: cluster.address(survivor), 4: client}, 4, "voter"), 60,
                       "server 4 to be promoted")

    asyncio.run(after())
    kept = {mid for mid, _s, _b in messages_in(cluster, survivor)}
    assert had <= kept and set(acked) <= kept  # (the survivor was the primary: it had every acknowledged write)
