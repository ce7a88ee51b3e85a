"""The child of the crash test: writes batches to a replica store for ever,
printing "durable K" once batch K is persisted, until it is killed.

The batches are a pure function of K (see ``batch``), so the parent knows
what the log must hold after any batch. Every fifth batch rewrites the last
three entries of the one before under a new term, as a new primary would. The
child also applies what can no longer be rewritten, as a replica does.

    python -m tests.store.crash_child PATH
"""

from __future__ import annotations

import sys
from functools import cache

from chorus.chat import commands as C
from chorus.raft import Entry, EntryKind, HardState, Membership, Ready

MEMBERS = Membership(frozenset({1, 2, 3}))
PER_BATCH = 20
HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA"


def term_of(k: int) -> int:
    return 1 + k // 7


def entry(index: int, term: int) -> Entry:
    if index <= 2:
        cmd: C.AnyCommand = C.Register(client="crash", seq=index, ts=index, name=("alice", "bob")[index - 1], pw_hash=HASH)
    else:
        cmd = C.Send(client="crash", seq=index, acked=index - 1, ts=index, user=1, to="bob",
                     body=f"entry {index} of term {term}")
    return Entry(index, term, EntryKind.COMMAND, C.encode(cmd))


@cache
def end(k: int) -> int:
    """The last index after batch k."""
    return 0 if k == 0 else batch(k)[0][-1].index


@cache
def batch(k: int) -> tuple[tuple[Entry, ...], HardState]:
    first = end(k - 1) + 1
    if k % 5 == 0 and k > 1:
        first -= 3  # rewrite the tail of the previous batch under the new term
    term = term_of(k)
    entries = tuple(entry(i, term) for i in range(first, end(k - 1) + PER_BATCH + 1))
    # commit carries the batch number, so a restarted child knows where it is.
    return entries, HardState(term, 1, k)


@cache
def log_after(k: int) -> tuple[Entry, ...]:
    if k == 0:
        return ()
    entries, _ = batch(k)
    return log_after(k - 1)[: entries[0].index - 1] + entries


def stable(k: int) -> int:
    """Entries up to here are never rewritten by a later batch."""
    return max(0, end(k) - 3)


def main(path: str) -> None:
    from chorus.store import ReplicaStore

    store = ReplicaStore(path, MEMBERS)
    k = store.restore().hard_state.commit
    while True:
        k += 1
        entries, hs = batch(k)
        store.persist(Ready(hard_state=hs, soft_state=None, snapshot=None, entries=entries,
                            messages=(), committed=(), reads=(), membership=None, must_sync=True))
        print(f"durable {k}", flush=True)
        applied = store.applied()
        if stable(k) > applied:
            store.apply(log_after(k)[applied: stable(k)])


if __name__ == "__main__":
    sys.setrecursionlimit(100_000)
    main(sys.argv[1])
