"""A disk that fills up, and a replica loop that fails: real processes.

A full disk used to leave a zombie: the replica loop died on "database or disk
is full" (then "cannot rollback - no transaction is active"), the process
stayed up with its ports open, answered `status` with stale figures, and did
not come back when space was freed."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
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


# ---------------------------------------------------------------- a lost or damaged disk

async def _fill(cluster: Cluster, n: int, prefix: str) -> list[int]:
    """``n`` acknowledged messages from alice to herself (registered on first use)."""
    a = cluster.client()
    with contextlib.suppress(Exception):
        await a.register("alice", PASSWORD)
    await a.login("alice", PASSWORD)
    ids = [(await a.send("alice", f"{prefix} {k}")).id for k in range(n)]
    await a.close()
    return ids


async def _history_on(cluster: Cluster, server: int) -> list[str]:
    """Every message of alice's conversation, read on ``server`` alone."""
    c = cluster.client([cluster.address(server)], shuffle=False)
    await c.login("alice", PASSWORD)
    bodies: list[str] = []
    before = None
    while page := await c.history("alice", limit=100, before=before):  # (newest first)
        bodies = [m.body for m in reversed(page)] + bodies
        before = page[-1].id
    await c.close()
    return bodies


def _backups(rows: list[dict]) -> list[int]:
    return [r["id"] for r in rows if r.get("role") != "PRIMARY"]


@pytest.mark.parametrize("snapshot_every", [None, 20], ids=["by-log", "by-snapshot"])
def test_a_backup_restarted_with_an_empty_data_directory_catches_up_and_then_counts(
        tmp_path: Path, snapshot_every: int | None) -> None:
    cluster = Cluster(tmp_path, 3, snapshot_every=snapshot_every)
    try:
        cluster.start()

        async def main():
            await cluster.primary()
            await _fill(cluster, 40, "before")
            rows = await cluster.converged()
            b = _backups(rows)[0]
            cluster.kill(b)
            shutil.rmtree(cluster.root / "data" / f"replica{b}")
            await _fill(cluster, 10, "while away")
            seen = len(cluster.log(b))
            cluster.start(b)
            rows = await cluster.converged(60)
            assert rows[b - 1]["health"] == "ok" and rows[b - 1]["disk"] == "member"
            assert rows[b - 1]["commit_index"] > 50
            log = cluster.log(b)[seen:]
            assert "its disk is empty" in log and "recovers from the others" in log
            assert "a new cluster" not in log  # (it did not take itself for one)
            bodies = await _history_on(cluster, b)
            assert bodies == [f"before {k}" for k in range(40)] + [f"while away {k}" for k in range(10)]
            # It counts again: with another backup down, it and the primary commit.
            other = next(i for i in _backups(rows) if i != b)
            cluster.kill(other)
            await _fill(cluster, 3, "with the rebuilt one")
            assert (await _history_on(cluster, b))[-1] == "with the rebuilt one 2"

        run(main())
    finally:
        cluster.stop_all()


def test_a_lost_disk_does_not_lose_what_it_acknowledged(tmp_path: Path) -> None:
    """The issue's case: C down, A (primary) and B acknowledge 100 messages; A and B
    stop; B's disk is lost; B (empty) and C (which never had the 100) start without
    A. They must not elect a primary (one without the 100); once A is back every
    acknowledged message is there, once."""
    cluster = Cluster(tmp_path, 3)
    try:
        cluster.start()

        async def main():
            a = await cluster.primary()
            await _fill(cluster, 1, "first")
            rows = await cluster.converged()
            b, c = _backups(rows)
            cluster.kill(c)
            await _fill(cluster, 100, "acknowledged")
            cluster.kill(a)
            cluster.kill(b)
            shutil.rmtree(cluster.root / "data" / f"replica{b}")
            cluster.start(b)
            cluster.start(c)

            async def b_recovering():
                row = (await cluster.statuses())[b - 1]
                return row.get("health") == "recovering" and row.get("disk") == "recovering"
            await wait_for(b_recovering, 30, f"server {b} to say it is recovering")
            # Safety can only be watched for a while: 4 s here are more than 13 election
            # timeouts of this cluster's timing (150-300 ms). Every look must find no primary.
            looks = 0
            loop = asyncio.get_running_loop()
            end = loop.time() + 4
            while loop.time() < end:
                rows = await cluster.statuses()
                for i in (b, c):
                    assert rows[i - 1].get("role") != "PRIMARY", f"server {i} became primary without A: {rows}"
                looks += 1
                await asyncio.sleep(0.1)
            assert looks >= 10
            cluster.start(a)
            await cluster.primary(30)
            rows = await cluster.converged(60)
            assert all(r["health"] == "ok" for r in rows)
            for i in (a, b, c):
                bodies = await _history_on(cluster, i)
                assert bodies == ["first 0"] + [f"acknowledged {k}" for k in range(100)], f"server {i}"

        run(main())
    finally:
        cluster.stop_all()


def _flip_middle(path: Path, n: int = 200) -> None:
    """Flip every bit of ``n`` bytes in the middle of a file."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + n] = bytes(x ^ 0xFF for x in data[mid : mid + n])
    path.write_bytes(bytes(data))


def test_a_damaged_wal_is_detected_set_aside_and_the_replica_rebuilds(tmp_path: Path) -> None:
    """200 bytes flipped in the middle of a stopped backup's WAL: SQLite alone would
    start without the transactions after them, silently."""
    cluster = Cluster(tmp_path, 3)
    try:
        cluster.start()

        async def main():
            await cluster.primary()
            await _fill(cluster, 60, "kept")
            rows = await cluster.converged()
            b = _backups(rows)[0]
            cluster.kill(b)  # (kill -9 leaves the WAL as it is; a clean stop folds it in)
            w = cluster.root / "data" / f"replica{b}" / "chorus.db-wal"
            assert w.stat().st_size > 100_000, "the WAL holds several transactions"
            _flip_middle(w)
            seen = len(cluster.log(b))
            cluster.start(b)
            rows = await cluster.converged(60)
            assert rows[b - 1]["health"] == "ok"
            log = cluster.log(b)[seen:]
            assert "fails its checksum" in log or "is damaged" in log
            aside = list((cluster.root / "data").glob(f"replica{b}.damaged-*"))
            assert len(aside) == 1 and (aside[0] / "chorus.db-wal").exists()  # kept, as it was
            assert str(aside[0]) in log
            assert await _history_on(cluster, b) == [f"kept {k}" for k in range(60)]

        run(main())
    finally:
        cluster.stop_all()


def test_a_damaged_database_file_is_found_at_the_next_snapshot_and_the_replica_rebuilds(tmp_path: Path) -> None:
    """One letter of a stored message changed in a stopped backup's chorus.db: the
    file is still a valid database (PRAGMA quick_check passes), only the chat
    state's digest can tell. The backup finds it when it next takes a snapshot,
    stops with status 1 saying what to do; started again it rebuilds."""
    cluster = Cluster(tmp_path, 3, snapshot_every=20)
    try:
        cluster.start()

        async def main():
            await cluster.primary()
            await _fill(cluster, 30, "the body of message")
            rows = await cluster.converged()
            b = _backups(rows)[0]
            assert cluster.terminate(b) == 0  # (a clean stop folds the WAL into the file)
            db = cluster.root / "data" / f"replica{b}" / "chorus.db"
            data = bytearray(db.read_bytes())
            at = data.find(b"the body of message 7")
            assert at > 0 and data.count(b"the body of message 7") == 1
            data[at + 4] ^= 0x01  # "the body" -> "the cody"
            db.write_bytes(bytes(data))
            with contextlib.closing(sqlite3.connect(db)) as c:
                assert c.execute("PRAGMA quick_check").fetchall() == [("ok",)]
            seen = len(cluster.log(b))
            cluster.start(b)

            async def stopped():
                if cluster.procs[b].poll() is not None:
                    return True
                await _fill(cluster, 5, "more")  # until it takes a snapshot
                return False
            await wait_for(stopped, 120, f"server {b} to find the damage")
            assert cluster.procs[b].returncode == 1
            log = cluster.log(b)[seen:]
            assert "the chat state is damaged" in log and "start it again" in log
            cluster.start(b)
            rows = await cluster.converged(60)
            assert rows[b - 1]["health"] == "ok"
            aside = list((cluster.root / "data").glob(f"replica{b}.damaged-*"))
            assert len(aside) == 1 and (aside[0] / "DAMAGED").exists()
            bodies = await _history_on(cluster, b)
            assert bodies[:30] == [f"the body of message {k}" for k in range(30)]
            assert bodies == await _history_on(cluster, next(i for i in _backups(rows) if i != b))

        run(main())
    finally:
        cluster.stop_all()


def test_a_lone_server_with_a_damaged_store_refuses_to_start_and_says_what_to_do(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, 1)
    try:
        cluster.start()

        async def main():
            await cluster.primary()
            await _fill(cluster, 60, "alone")
            cluster.kill(1)
            w = cluster.root / "data" / "replica1" / "chorus.db-wal"
            _flip_middle(w)
            cluster.start(1)

            async def exited():
                return cluster.procs[1].poll() is not None
            await wait_for(exited, 30, "server 1 to refuse")
            assert cluster.procs[1].returncode == 1
            log = cluster.log(1)
            assert "only server of its configuration" in log and "Traceback" not in log
            assert (cluster.root / "data" / "replica1" / "chorus.db-wal").exists()  # left as it was

        run(main())
    finally:
        cluster.stop_all()


def test_a_store_of_a_newer_format_is_refused_not_set_aside(cluster: Cluster) -> None:
    """Not damage: a downgrade. The data directory stays as it is."""
    async def main():
        await cluster.primary()
        await _fill(cluster, 3, "kept")
        rows = await cluster.converged()
        b = _backups(rows)[0]
        assert cluster.terminate(b) == 0
        db = cluster.root / "data" / f"replica{b}" / "chorus.db"
        with contextlib.closing(sqlite3.connect(db)) as c:
            c.execute("PRAGMA user_version = 99")
            c.commit()
        cluster.start(b)

        async def exited():
            return cluster.procs[b].poll() is not None
        await wait_for(exited, 30, f"server {b} to refuse")
        assert cluster.procs[b].returncode == 1
        assert "storage format 99" in cluster.log(b) and "run the chorus that wrote it" in cluster.log(b)
        assert not list((cluster.root / "data").glob(f"replica{b}.damaged-*")) and db.exists()

    run(main())
