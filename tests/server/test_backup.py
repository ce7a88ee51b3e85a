"""Backup and restore on real processes: a backup taken from the command line
while a client sends, restored into a new cluster that goes on from it."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

from .cluster import Cluster, wait_for
from .test_cluster import PASSWORD, messages_in, user
from .test_membership import Sender, operator


def test_backup_while_sending_then_restore_into_a_new_cluster(tmp_path: Path) -> None:
    old = Cluster(tmp_path / "old", 3)
    old.start()
    new = Cluster(tmp_path / "new", 3)
    backup = tmp_path / "chorus.backup"
    try:
        async def take() -> tuple[int, str, list[int]]:
            await old.primary()
            await user(old, "bob")
            sender = Sender(await user(old, "alice", retry_for=30))
            sender.start()
            await wait_for(lambda: _acked(sender, 20), 20, "the first sends")
            before = list(sender.acked)  # acknowledged before the backup was asked for
            out = await operator(old, "backup", str(backup))
            await sender.finish("the backup")
            m = re.search(r"log index (\d+) .* digest ([0-9a-f]{16})", out)
            assert m, out
            return int(m.group(1)), m.group(2), before

        index, digest, before = asyncio.run(take())
        assert backup.exists() and backup.with_name("chorus.backup.sha256").read_text().split()[1] == "chorus.backup"

        out = _chorus(new, "restore", str(backup), "--config", str(new.config))
        assert out.returncode == 0, out.stderr
        assert f"log index {index}" in out.stdout
        new.start()

        async def check() -> None:
            await new.primary()
            rows = await new.converged()
            # The new cluster starts from the backup's state: its digest, at its index
            # (the new primary's first entry changes no chat state).
            assert {r["digest"] for r in rows} == {digest}
            assert all(r["applied_index"] >= index for r in rows)
            # And goes on from it: the users and their history are there.
            alice = new.client(retry_for=30)
            await alice.login("alice", PASSWORD)
            await alice.send("bob", "after the restore")
            page = await alice.history("bob", limit=1000)
            await alice.close()
            assert page[0].body == "after the restore"
            await new.converged()

        asyncio.run(check())
        for i in (1, 2, 3):
            ids = {mid for mid, _sender, _body in messages_in(new, i)}
            assert set(before) <= ids  # every message acknowledged before the backup began
            *restored, latest = sorted(ids)  # the backup's messages, then the one sent after the restore
            assert latest > index and all(mid <= index for mid in restored)

        # A second restore into the same directories is refused; so is a damaged backup.
        out = _chorus(new, "restore", str(backup), "--config", str(new.config))
        assert out.returncode == 1 and "not empty" in out.stderr
        damaged = tmp_path / "damaged.backup"
        data = bytearray(backup.read_bytes())
        data[len(data) // 2] ^= 0xFF
        damaged.write_bytes(bytes(data))
        other = Cluster(tmp_path / "other", 3)
        out = _chorus(other, "restore", str(damaged), "--config", str(other.config))
        assert out.returncode == 1 and "damaged.backup" in out.stderr, out.stderr
        assert not (other.root / "data" / "replica1" / "chorus.db").exists()
    finally:
        old.stop_all()
        new.stop_all()


def _chorus(c: Cluster, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "chorus", *args], capture_output=True, text=True, env=c.env,
                          cwd=c.root, timeout=60)


async def _acked(s: Sender, n: int) -> bool:
    return len(s.acked) >= n
