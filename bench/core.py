"""How fast is the consensus core alone? Three in-memory nodes, no I/O at all.

The primary takes proposals of 200-byte entries in batches; every round, each node
hands out its Ready (entries to persist are dropped on the floor, committed entries
are counted as applied) and all messages are delivered. Proposals keep coming
while earlier batches are still in flight, as they would under load. We count an
entry once every node has applied it, and report entries per second on one core.

    python bench/core.py            # the table
    python bench/core.py --profile  # and where the time goes, for the largest batch
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import random
import sys
import time
from pathlib import Path

from chorus.raft import Membership, RaftNode, Role

ENTRY = b"x" * 200
TOTAL = 200_000


def cluster() -> dict[int, RaftNode]:
    members = Membership(voters=frozenset({1, 2, 3}))
    nodes = {i: RaftNode(i, members, rng=random.Random(i)) for i in (1, 2, 3)}
    nodes[1].campaign()
    for _ in range(10):  # pre-vote, vote, the primary's first entry
        pump(nodes)
    assert nodes[1].role is Role.PRIMARY
    return nodes


def pump(nodes: dict[int, RaftNode]) -> int:
    """One round: every node's Ready handled, then every message delivered.
    Returns how many entries were applied across the nodes."""
    applied = 0
    outbox = []
    for node in nodes.values():
        if node.has_ready():
            rd = node.ready()
            outbox.extend(rd.messages)
            applied += len(rd.committed)
            node.advance(rd)
    for m in outbox:
        nodes[m.to].step(m)
    return applied


def run(batch: int, total: int = TOTAL) -> tuple[float, int]:
    nodes = cluster()
    primary = nodes[1]
    start_applied = sum(n.applied for n in nodes.values())
    target = start_applied + 3 * total
    proposed = 0
    applied = start_applied
    rounds = 0
    t0 = time.perf_counter()
    while applied < target:
        if proposed < total:
            n = min(batch, total - proposed)
            if n == 1:
                primary.propose(ENTRY)
            else:
                primary.propose_batch([ENTRY] * n)
            proposed += n
        applied += pump(nodes)
        rounds += 1
    elapsed = time.perf_counter() - t0
    # Every node applied every entry.
    assert all(n.applied == nodes[1].applied for n in nodes.values())
    return total / elapsed, rounds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--total", type=int, default=TOTAL)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "core.md")
    args = ap.parse_args(argv)

    rows = []
    for batch in (1, 10, 100, 1000, 5000):
        total = min(args.total, 20_000) if batch == 1 else args.total
        rate, rounds = max(run(batch, total) for _ in range(3))
        rows.append((batch, total, rounds, rate))
    lines = [
        "| batch (entries proposed per round) | entries | rounds | committed entries/s (3 nodes, 1 core) |",
        "| ---: | ---: | ---: | ---: |",
        *[f"| {b} | {t:,} | {r:,} | {rate:,.0f} |" for b, t, r, rate in rows],
    ]
    table = "\n".join(lines)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        "# Consensus core, no I/O\n\n"
        f"`python bench/core.py` on Python {sys.version.split()[0]}; 200-byte entries; "
        "best of 3 runs; an entry counts once all three nodes applied it.\n\n" + table + "\n"
    )
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        run(5000, args.total)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)
    return 0


if __name__ == "__main__":
    sys.exit(main())
