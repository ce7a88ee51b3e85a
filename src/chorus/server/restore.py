"""``chorus restore``: seed a new cluster from a backup (``chorus backup``).

Every server of the new configuration gets a store that starts from the
backup's state: the chat tables installed at the backup's index and term, the
log empty after it, the new configuration's servers as the membership. None of
them is "recovering" (they all hold the same data, which is what the cluster
promised), so they elect a primary as soon as a majority is up. The backup is
checked first: its SHA-256 (against FILE.sha256 when there is one) and the
digest of its rows.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from chorus.raft import HardState, SnapshotMeta
from chorus.store import ReplicaStore, SnapshotFile
from chorus.store.snapshots import SnapshotInvalid, check_contents, file_sha256, read_snapshot_info

from .config import Config, ConfigError


@dataclass(frozen=True)
class Restored:
    index: int
    term: int
    digest: str
    servers: list[int]


def check_backup(path: Path) -> SnapshotFile:
    """The backup, checked: readable, its SHA-256 the one written beside it (if
    any), its rows hashing to its digest."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    sha = file_sha256(path)
    side = path.with_name(path.name + ".sha256")
    if side.exists():
        want = side.read_text().split()[0] if side.read_text().split() else ""
        if want != sha:
            raise ConfigError(f"{path}: damaged: its SHA-256 is {sha[:16]}..., {side.name} says {want[:16]}...")
    try:
        meta, digest = read_snapshot_info(path)
        check_contents(path, digest)
    except SnapshotInvalid as exc:
        raise ConfigError(f"{path}: not a usable backup: {exc}") from None
    return SnapshotFile(meta, path, path.stat().st_size, sha, digest)


def restore(path: Path, cfg: Config, data_dir: Path | None = None) -> Restored:
    backup = check_backup(path)
    data = data_dir or cfg.data_dir
    dirs = {s.id: data / f"replica{s.id}" for s in cfg.servers}
    for sid, d in dirs.items():
        if d.exists() and any(d.iterdir()):
            raise ConfigError(f"{d} is not empty: restore seeds a new cluster (server {sid} has data there)")
    membership = cfg.membership
    meta = SnapshotMeta(backup.meta.index, backup.meta.term, membership)
    seed = SnapshotFile(meta, backup.path, backup.size, backup.sha256, backup.digest)
    made = []
    try:
        for d in dirs.values():
            made.append(d)
            store = ReplicaStore(d / "chorus.db", membership)
            try:
                hs = store.restore().hard_state
                store.save_restored(seed, HardState(term=meta.term, vote=0, commit=meta.index, recovering=False,
                                                    incarnation=hs.incarnation))
                store.mark_joined()
                store.set_cluster_id(cfg.fingerprint)
            finally:
                store.close()
    except BaseException:
        for d in made:
            shutil.rmtree(d, ignore_errors=True)
        raise
    return Restored(meta.index, meta.term, f"{backup.digest:016x}", sorted(dirs))
