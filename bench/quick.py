"""A quick look at a local 3-server cluster: sends per second, and a failover.

Starts three `chorus serve` processes (durable: fsync, majority write concern),
then N clients (in this process) send 150-byte messages for a while, each
waiting for its answer before the next send. Then, still under load, the primary
is killed with SIGKILL, and we measure the longest time between two acknowledged
sends: the outage the clients saw.

    python bench/quick.py [--clients 16] [--seconds 10] [--fast]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.server.cluster import Cluster  # noqa: E402

from chorus.client import Client  # noqa: E402

BODY = "x" * 150


async def sender(client: Client, to: str, stop: asyncio.Event, acks: list[float], lat: list[float]) -> None:
    while not stop.is_set():
        t0 = time.perf_counter()
        await client.send(to, BODY)
        t1 = time.perf_counter()
        acks.append(t1)
        lat.append(t1 - t0)


async def main(n_clients: int, seconds: float, fast: bool) -> None:
    root = Path(tempfile.mkdtemp(prefix="chorus-quick-"))
    cluster = Cluster(root, 3, fast=fast)
    cluster.start()
    try:
        await cluster.primary(30)
        clients = []
        for i in range(n_clients):
            c = cluster.client(cluster.addresses[i % 3:] + cluster.addresses[: i % 3])
            await c.register(f"user{i}", "Secret123")
            await c.login(f"user{i}", "Secret123")
            clients.append(c)
        acks: list[float] = []
        lat: list[float] = []
        stop = asyncio.Event()
        tasks = [asyncio.create_task(sender(c, f"user{(i + 1) % n_clients}", stop, acks, lat))
                 for i, c in enumerate(clients)]
        await asyncio.sleep(1)  # warm up
        start_n, t0 = len(acks), time.perf_counter()
        lat.clear()
        await asyncio.sleep(seconds)
        rate = (len(acks) - start_n) / (time.perf_counter() - t0)
        p50, p99 = statistics.median(lat), sorted(lat)[int(0.99 * len(lat))]
        print(f"{n_clients} clients: {rate:,.0f} sends/s, latency p50 {p50 * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms",
              flush=True)
        primary = await cluster.primary()
        killed_at = time.perf_counter()
        cluster.kill(primary)
        await cluster.primary(30)
        before = len(acks)
        while len(acks) < before + 10 * n_clients:
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.gather(*tasks)
        window = sorted(t for t in acks if t >= killed_at - 1)
        gap = max(b - a for a, b in itertools.pairwise(window))
        print(f"kill -9 of the primary under load: longest gap between acknowledged sends {gap * 1e3:.0f} ms "
              f"({'fast' if fast else 'default'} election timeouts)")
        for c in clients:
            await c.close()
    finally:
        cluster.stop_all()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--fast", action="store_true", help="election timeouts of 150-300 ms")
    args = ap.parse_args()
    asyncio.run(main(args.clients, args.seconds, args.fast))
