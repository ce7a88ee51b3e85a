"""A disk that fills up, and a replica loop that fails: real processes.

A full disk used to leave a zombie: the replica loop died on "database or disk
is full" (then "cannot rollback - no transaction is active"), the process
stayed up with its ports open, answered `status` with stale figures, and did
not come back when space was freed."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
from pathlib import Path

import pytest

from .cluster import Cluster, wait_for

PASSWORD = "Secret123"


def run(coro):
    return asyncio.run(coro)


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_a_full_disk_stops_writes_on_that_replica_only_and_it_resumes_when_space_is_back(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, 3)
    small = tmp_path / "data" / "replica3"
    if not _mount_tmpfs(small, "1200k"):
        pytest.skip("cannot mount a small tmpfs here (not root?)")
    try:
        cluster.start()

        async def main():
            await cluster.primary()
            a = cluster.client([cluster.address(1), cluster.address(2)])
            await a.register("alice", PASSWORD)
            await a.login("alice", PASSWORD)

            async def full():
                for _ in range(20):
                    await a.send("alice", "x" * 3000)
                row = (await cluster.statuses())[2]
                return row.get("health") == "out of disk"

            await wait_for(full, 120, "server 3 to run out of disk", interval=0)
            row = (await cluster.statuses())[2]
            assert "is full" in row["health_reason"] and str(small) in row["health_reason"]
            assert cluster.procs[3].poll() is None  # up, and saying why it takes nothing
            log = cluster.log(3)
            assert "file system of" in log and "cannot rollback" not in log
            # The others go on; a client of server 3 is sent elsewhere at once.
            sent = [await a.send("alice", f"while 3 is full {k}") for k in range(30)]
            c = cluster.client([cluster.address(3), cluster.address(1)], shuffle=False)
            await c.login("alice", PASSWORD)
            assert (await c.send("alice", "through 3, then 1")).id > sent[-1].id
            # Room again: it catches up by itself, and holds what the others hold.
            subprocess.run(["mount", "-o", "remount,size=64m", str(small)], check=True)
            rows = await cluster.converged(60)
            assert rows[2]["health"] == "ok"
            assert "the disk takes writes again" in cluster.log(3)
            await a.close()
            await c.close()

        run(main())
    finally:
        cluster.stop_all()
        subprocess.run(["umount", "-l", str(small)], capture_output=True)


def test_a_replica_loop_that_fails_ends_the_process_with_a_non_zero_status(cluster: Cluster) -> None:
    """Any failure other than a full disk: here a table of the chat state dropped
    behind the server's back (damage it cannot repair by itself)."""
    async def main():
        await cluster.primary()
        a = cluster.client()
        await a.register("alice", PASSWORD)
        await a.login("alice", PASSWORD)
        await a.send("alice", "before")
        await cluster.converged()
        db = cluster.root / "data" / "replica2" / "chorus.db"
        with sqlite3.connect(db, timeout=10) as conn:
            conn.execute("DROP TABLE messages")
        for k in range(5):
            await a.send("alice", f"after {k}")  # server 2 fails to apply these

        async def exited():
            return cluster.procs[2].poll() is not None
        await wait_for(exited, 30, "server 2 to exit")
        assert cluster.procs[2].returncode == 1
        log = cluster.log(2)
        assert "the replica loop failed" in log and "a supervisor should start the server again" in log
        assert (await a.send("alice", "the others go on")).id > 0
        await a.close()

    run(main())
