"""Membership changes on a cluster that holds data: how long a new server takes
to join (chorus member add, then chorus serve --join: a snapshot, the log after
it, promotion), and what clients sending meanwhile see while the primary is
removed (it hands over first).

    python bench/membership.py                      # 1,000,000 messages stored
    python bench/membership.py --stored 50000       # quicker

Prints a table (and writes it to bench/results/membership.md, or --out).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import re
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).resolve().parents[1])]

from tests.server.cluster import SECRET  # noqa: E402

import cluster as B  # noqa: E402  (bench/cluster.py: the cluster, the load, the fill)
from chorus.client import server_status  # noqa: E402
from chorus.client.admin import Admin  # noqa: E402


async def members(c, servers: list[str]) -> dict[int, object]:
    async with Admin(servers, SECRET, tls=c.ca) as a:
        return {m.id: m for m in (await a.members()).members}


async def main(stored: int, out: Path) -> int:
    c = B.new_cluster()
    try:
        await c.primary(30)
        users = await B.make_users(c.addresses, 256, "m", tls=c.client_tls)
        fill_s = await B.fill(c, users, stored)
        rows = await c.converged(300)
        target = rows[0]["applied_index"]
        print(f"{target:,} entries applied on every server (filled in {fill_s:.0f} s)", flush=True)

        # A new server joins.
        peer, client = c.prepare_joiner(4)
        t0 = time.monotonic()
        async with Admin(c.addresses, SECRET, tls=c.ca) as a:
            await a.add(4, peer=peer, client=client)
        c.start_joiner(4)
        everyone = [*c.addresses, client]
        caught_up = promoted = None
        while caught_up is None or promoted is None:
            if promoted is None and getattr((await members(c, everyone)).get(4), "role", "") == "voter":
                promoted = time.monotonic() - t0
            if caught_up is None:
                s = (await server_status(client, timeout=1.0, tls=c.client_tls)).status
                if s is not None and s.applied_index >= target:
                    caught_up = time.monotonic() - t0
            if time.monotonic() - t0 > 1800:
                raise SystemExit("server 4 did not catch up in 30 minutes")
            await asyncio.sleep(0.1)
        snap = re.search(r"installed the snapshot at (\d+)", c.log(4))
        db = c.root / "data" / "replica4" / "chorus.db"
        print(f"server 4: caught up in {caught_up:.1f} s, a voter after {promoted:.1f} s", flush=True)

        # The primary is removed while 16 clients send.
        acks: list[float] = []
        errors: list[str] = []
        stop = asyncio.Event()

        async def sender(token: str, to: str) -> None:
            cl = c.client(everyone, request_timeout=5, retry_for=60)
            await cl.auth(token)
            while not stop.is_set():
                try:
                    await cl.send(to, B.BODY)
                    acks.append(time.monotonic())
                except Exception as exc:  # (counted: the table says how many)
                    errors.append(repr(exc))
            await cl.close()

        tasks = [asyncio.create_task(sender(users[i][1], users[(i + 1) % 16][0])) for i in range(16)]
        started = time.monotonic()
        while len(acks) < 200 or time.monotonic() - started < 3:
            await asyncio.sleep(0.01)
        primary = await c.primary(30)
        t1 = time.monotonic()
        async with Admin(everyone, SECRET, tls=c.ca) as a:
            await a.remove(primary)
        removed_s = time.monotonic() - t1
        n0 = len(acks)
        while len(acks) < n0 + 200:
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.gather(*tasks)
        ordered = sorted(acks)
        gap = max(b - a for a, b in itertools.pairwise(ordered) if b >= t1)  # (from the removal on)
        usual = max(b - a for a, b in itertools.pairwise(ordered) if t1 - 2.0 <= a and b < t1)  # (the 2 s before)
        print(f"removing primary {primary}: {removed_s:.2f} s; longest gap between answers {gap * 1e3:.0f} ms "
              f"(in the 2 s before: {usual * 1e3:.0f} ms), errors {len(errors)}", flush=True)
    finally:
        c.stop_all()

    lines = ["# Membership changes on a cluster holding data", "",
             f"`python bench/membership.py --stored {stored}` on Python {sys.version.split()[0]}, {os.cpu_count()} "
             "cores; three `chorus serve` processes on this machine (fsync on, TLS), filled through the cluster "
             "with 150-byte messages, then a fourth added (`chorus member add`, `chorus serve --join`) while idle, "
             "then the primary removed while 16 clients send (each waiting for each answer).", "",
             "| | result |", "| --- | ---: |",
             f"| entries applied when server 4 was added | {target:,} |",
             f"| server 4 caught up (applied all of them) | {caught_up:.1f} s |",
             f"| server 4 promoted to voter | {promoted:.1f} s |",
             f"| how it caught up | {'a snapshot at ' + format(int(snap.group(1)), ',') if snap else 'the log'}"
             f" (its database: {db.stat().st_size / 2**20:,.0f} MiB) |" if db.exists() else "| how it caught up | ? |",
             f"| removing the primary (hand-over, then the removal committed) | {removed_s:.2f} s |",
             f"| longest gap between two answers while it was removed (16 clients) | {gap * 1e3:.0f} ms "
             f"(in the 2 s before: {usual * 1e3:.0f} ms) |",
             f"| errors clients saw | {len(errors)} |",
             f"| filling the cluster first (256 clients) | {fill_s:.0f} s |", ""]
    out.parent.mkdir(exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stored", type=int, default=1_000_000)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "membership.md")
    args = ap.parse_args()
    sys.exit(asyncio.run(main(args.stored, args.out)))
