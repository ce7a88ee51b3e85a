"""kill -9 at random moments, many times: every batch reported durable is there
and intact after each restart, the log is consistent, and what was applied
matches the applied index. (SIGKILL loses what the process had not handed to
the kernel; a power cut, which fsync guards against, is not simulated here.)"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

from chorus.chat import schema
from chorus.store import ReplicaStore

from . import crash_child as child

ROUNDS = int(os.environ.get("CHORUS_CRASH_ROUNDS", "40"))
ROOT = Path(__file__).resolve().parents[2]


def test_kill_9_never_loses_a_durable_batch(tmp_path: Path) -> None:
    sys.setrecursionlimit(100_000)
    path = tmp_path / "replica.db"
    rng = random.Random(7)
    reported = 0
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    for _ in range(ROUNDS):
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.store.crash_child", str(path)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
        )
        target = rng.randint(1, 12)
        assert proc.stdout is not None
        for seen, line in enumerate(proc.stdout, 1):  # blocks until the child reports; no sleeping
            assert line.startswith("durable "), line
            reported = int(line.split()[1])
            if seen >= target:
                break
        proc.kill()  # SIGKILL, wherever the child is now
        _, err = proc.communicate()
        assert proc.returncode == -9, err
        store = ReplicaStore(path)
        p = store.restore()
        k = p.hard_state.commit
        # Nothing reported durable is lost. Later batches may have made it too: the
        # child goes on writing until the kill lands (on a busy machine, several).
        assert k >= reported, (k, reported)
        assert tuple(p.entries) == child.log_after(k)
        assert store.digest() == schema.full_digest(store.conn)
        applied = store.applied()
        assert applied <= child.stable(k)
        (messages,) = store.conn.execute("SELECT COUNT(*) FROM messages").fetchone()
        assert messages == max(0, applied - 2)  # every applied send, no more, no less
        store.close()
    assert reported > ROUNDS  # it did make progress across all those kills
