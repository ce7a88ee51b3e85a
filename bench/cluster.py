"""How fast is a real chorus cluster? Three `chorus serve` processes on this
machine (durable: fsync, majority write concern), the load from separate client
processes.

    python bench/cluster.py                 # everything (about 20 minutes)
    python bench/cluster.py --quick         # a smaller version, growth left out (under 2 minutes)
    python bench/cluster.py --only tls      # one part: send, tls, delivery, failover, connections, growth

Parts:
- send: throughput and latency with 1, 8, 64 and 256 concurrent clients, each
  sending 150-byte messages and waiting for each answer (commit on a majority)
  before the next; and one client pipelining (32 sends in flight on its one
  connection, the client library's concurrent calls);
- delivery: from a send to the push arriving at a recipient connected to a
  different replica, while 64 other clients load the cluster;
- failover: kill -9 of the primary under load, 20 times, with the default
  election timeouts (1.5-3.0 s) and with the fast profile (150-300 ms); the
  outage is the longest gap between two acknowledged sends around each kill;
- connections: 10,000 idle logged-in connections to one replica, all
  subscribed: the server's memory per connection, and how long one message
  takes to be pushed to all of them;
- growth: send throughput (64 clients) on an empty cluster and again once
  1,000,000 messages are stored (filled through the cluster: minutes);
- tls: what TLS costs: sends/s and latency at 1 and 64 clients on a cluster
  with TLS on both ports (as ``make run`` starts it) and on one without,
  measured in alternating rounds (this machine's speed drifts from minute to
  minute), the median of the rounds compared.

Every cluster runs with TLS on both ports (mutual between servers), as
deployed, except the plaintext half of the tls part. The load comes from one
address (and the connections part logs in one user 10,000 times), so the
limits on connections and registrations per address and per user (which
assume clients from many addresses) are lifted (``BENCH_LIMITS``).

Writes bench/results/cluster.md (the tables) and PNG plots beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import multiprocessing as mp
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.server.cluster import Cluster  # noqa: E402

from chorus.client import Client  # noqa: E402
from chorus.client import tls as client_tls  # noqa: E402
from chorus.wire import FrameDecoder, encode_frame  # noqa: E402
from chorus.wire import client as W  # noqa: E402

RESULTS = Path(__file__).parent / "results"
PASSWORD = "Bench1234"
BODY = "m" * 150
BENCH_LIMITS = {"register_burst": 1_000_000, "register_per_hour": 1e9, "pending_per_source": 1_000_000,
                "password_queue": 100_000, "connections_per_source": 1_000_000, "connections_per_user": 1_000_000}


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] if xs else float("nan")


# ---------------------------------------------------------------------------- load processes
def load_worker(servers: list[str], tokens: list[tuple[str, str]], start_at: float, stop_at: float,
                out, window: int = 1, tls: object = None) -> None:
    """A load process: one Client per (token, recipient), each sending in a loop
    (``window`` loops at once on the same Client: pipelining) from ``start_at``
    to ``stop_at`` (monotonic clock, shared by all processes). Sends back
    [(start, end)] of every acknowledged send, and the errors."""
    async def one(token: str, to: str, spans: list, errors: list) -> None:
        c = Client(servers, request_timeout=10, retry_for=30, tls=tls)

        async def sending() -> None:
            while (t0 := time.monotonic()) < stop_at:
                try:
                    await c.send(to, BODY)
                except Exception as exc:  # counted, not hidden
                    errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                spans.append((t0, time.monotonic()))

        try:
            await c.auth(token)
            while time.monotonic() < start_at:
                await asyncio.sleep(min(0.05, start_at - time.monotonic()))
            await asyncio.gather(*(sending() for _ in range(window)))
        finally:
            await c.close()

    async def main() -> None:
        spans: list = []
        errors: list = []
        await asyncio.gather(*(one(tok, to, spans, errors) for tok, to in tokens))
        out.send((spans, errors))

    try:
        import uvloop
        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


class Load:
    """N clients spread over up to ``procs`` processes."""

    def __init__(self, servers: list[str], users: list[tuple[str, str]], n: int, seconds: float,
                 warmup: float = 1.0, procs: int = 2, window: int = 1, tls: object = None) -> None:
        ctx = mp.get_context("spawn")
        self.start_at = time.monotonic() + 2.0 + warmup  # processes take a moment to start
        self.measure_from = self.start_at
        self.stop_at = self.start_at + seconds
        pairs = [(users[i % len(users)][1], users[(i + 1) % len(users)][0]) for i in range(n)]
        self.pipes, self.procs = [], []
        for k in range(min(procs, n)):
            recv, send = ctx.Pipe(duplex=False)
            p = ctx.Process(target=load_worker, args=(servers, pairs[k::procs], self.start_at - warmup,
                                                      self.stop_at, send, window, tls), daemon=True)
            p.start()
            self.pipes.append(recv)
            self.procs.append(p)

    def measured(self, spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
        """The sends that started and ended inside the measured window."""
        return [(a, b) for a, b in spans if self.measure_from <= a and b <= self.stop_at]

    async def results(self) -> tuple[list[tuple[float, float]], list[str]]:
        spans, errors = [], []
        for pipe in self.pipes:
            s, e = await asyncio.get_running_loop().run_in_executor(None, pipe.recv)
            spans += s
            errors += e
        for p in self.procs:
            p.join()
        return sorted(spans), errors


async def make_users(addresses: list[str], n: int, prefix: str, tls: object = None) -> list[tuple[str, str]]:
    """Register and log in n users (in parallel: the servers hash passwords on
    their own threads); returns [(name, token)]."""
    sem = asyncio.Semaphore(16)

    async def one(i: int) -> tuple[str, str]:
        async with sem:
            c = Client(addresses, tls=tls)
            name = f"{prefix}user{i}"
            await c.register(name, PASSWORD)
            await c.login(name, PASSWORD)
            await c.close()
            return name, c.token or ""

    return list(await asyncio.gather(*(one(i) for i in range(n))))


def new_cluster(fast: bool = False, tls: bool = True) -> Cluster:
    c = Cluster(Path(tempfile.mkdtemp(prefix="chorus-bench-")), 3, fast=fast, tls=tls, limits=BENCH_LIMITS)
    c.start()
    return c


# ---------------------------------------------------------------------------- the parts
async def bench_send(counts: list[int], seconds: float, pipelined: int = 32) -> list[dict]:
    """One row per client count, then one client with ``pipelined`` sends in flight."""
    cluster = new_cluster()
    try:
        await cluster.primary(30)
        users = await make_users(cluster.addresses, max(counts), "s", tls=cluster.client_tls)
        rows = []
        for n, window in [(n, 1) for n in counts] + ([(1, pipelined)] if pipelined > 1 else []):
            load = Load(cluster.addresses, users, n, seconds, procs=1 if n == 1 else 2, window=window,
                        tls=cluster.client_tls)
            pids = [p.pid for p in cluster.procs.values()] + [p.pid for p in load.procs]
            while time.monotonic() < load.measure_from:
                await asyncio.sleep(0.01)
            cpu0 = [cpu_seconds(pid) for pid in pids]
            while time.monotonic() < load.stop_at:
                await asyncio.sleep(0.01)
            cpu = [cpu_seconds(pid) - c for pid, c in zip(pids, cpu0, strict=True)]
            spans, errors = await load.results()
            inside = load.measured(spans)
            lat = [b - a for a, b in inside]
            servers = len(cluster.procs)
            rows.append({"clients": n, "window": window, "rate": len(inside) / seconds, "p50": pct(lat, 50) * 1e3,
                         "p99": pct(lat, 99) * 1e3, "errors": len(errors),
                         "server_cores": [c / seconds for c in cpu[:servers]], "load_cores": sum(cpu[servers:]) / seconds,
                         "cpu_us": sum(cpu) / max(1, len(inside)) * 1e6})
            r = rows[-1]
            print(f"send, {n} clients{f' ({window} in flight each)' if window > 1 else ''}: "
                  f"{r['rate']:,.0f} sends/s, p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms, {len(errors)} errors; "
                  f"CPU: servers {' '.join(f'{c:.2f}' for c in r['server_cores'])} cores, load {r['load_cores']:.2f}, "
                  f"{r['cpu_us']:.0f} us per send", flush=True)
        return rows
    finally:
        cluster.stop_all()


async def bench_delivery(seconds: float, load_clients: int = 64) -> dict:
    cluster = new_cluster()
    try:
        await cluster.primary(30)
        users = await make_users(cluster.addresses, load_clients, "d", tls=cluster.client_tls)
        (_, a_token), (b_name, b_token) = await make_users(cluster.addresses, 2, "probe", tls=cluster.client_tls)
        sender = cluster.client([cluster.address(1)], shuffle=False)
        receiver = cluster.client([cluster.address(2)], shuffle=False)
        await sender.auth(a_token)
        await receiver.auth(b_token)
        arrived: dict[str, float] = {}

        async def listen() -> None:
            async for m in receiver.events():
                arrived[m.body] = time.monotonic()

        listener = asyncio.create_task(listen())
        load = Load(cluster.addresses, users, load_clients, seconds + 2, tls=cluster.client_tls)
        while time.monotonic() < load.start_at + 1:
            await asyncio.sleep(0.05)
        sent: dict[str, float] = {}
        k = 0
        while time.monotonic() < load.stop_at - 1:
            k += 1
            body = f"probe {k} " + "p" * 140
            sent[body] = time.monotonic()
            await sender.send(b_name, body)
            await asyncio.sleep(0.02)
        deadline = time.monotonic() + 10
        while len(arrived) < len(sent) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        listener.cancel()
        spans, _ = await load.results()
        lat = [arrived[b] - t for b, t in sent.items() if b in arrived]
        await sender.close()
        await receiver.close()
        row = {"probes": len(sent), "arrived": len(lat), "p50": pct(lat, 50) * 1e3, "p99": pct(lat, 99) * 1e3,
               "load": len([s for s in spans if load.measure_from <= s[0]]) / (load.stop_at - load.measure_from),
               "latencies": lat}
        print(f"delivery under {load_clients}-client load ({row['load']:,.0f} sends/s): p50 {row['p50']:.1f} ms, "
              f"p99 {row['p99']:.1f} ms, {row['arrived']}/{row['probes']} arrived", flush=True)
        return row
    finally:
        cluster.stop_all()


async def bench_failover(kills: int, fast: bool, clients: int = 16) -> dict:
    cluster = new_cluster(fast=fast)
    try:
        await cluster.primary(30)
        users = await make_users(cluster.addresses, clients, "f", tls=cluster.client_tls)
        acks: list[float] = []
        stop = asyncio.Event()

        async def sender(token: str, to: str) -> None:
            c = cluster.client(request_timeout=5, retry_for=60)
            await c.auth(token)
            while not stop.is_set():
                await c.send(to, BODY)
                acks.append(time.monotonic())
            await c.close()

        tasks = [asyncio.create_task(sender(users[i][1], users[(i + 1) % clients][0])) for i in range(clients)]
        outages = []
        for _ in range(kills):
            await cluster.converged(60)
            primary = await cluster.primary(30)
            n0 = len(acks)
            while len(acks) < n0 + 5 * clients:  # under load
                await asyncio.sleep(0.01)
            killed_at = time.monotonic()
            cluster.kill(primary)
            while sum(1 for t in acks[n0:] if t > killed_at) < 5 * clients:  # service is back
                await asyncio.sleep(0.02)
            window = sorted(t for t in acks if t >= killed_at - 1.0)
            gap, at = max((b - a, a - killed_at) for a, b in itertools.pairwise(window))
            outages.append(gap)
            print(f"  kill n{primary}: outage {gap * 1e3:.0f} ms, starting {at * 1e3:+.0f} ms from the kill")
            cluster.start(primary)
        stop.set()
        await asyncio.gather(*tasks)
        row = {"profile": "fast (150-300 ms)" if fast else "default (1.5-3.0 s)", "kills": kills,
               "median": statistics.median(outages), "p90": pct(outages, 90), "max": max(outages),
               "outages": outages}
        print(f"failover, {row['profile']}: {kills} kills, outage median {row['median'] * 1e3:.0f} ms, "
              f"p90 {row['p90'] * 1e3:.0f} ms, max {row['max'] * 1e3:.0f} ms", flush=True)
        return row
    finally:
        cluster.stop_all()


async def fill(cluster: Cluster, users: list, stored: int) -> float:
    """Send through the cluster (256 clients) until ``stored`` entries are
    applied; the seconds it took."""
    t0 = time.monotonic()
    while (applied := (await cluster.statuses())[0].get("applied_index", 0)) < stored:
        left = stored - applied
        await Load(cluster.addresses, users, 256, min(60.0, max(5.0, left / 2500)), warmup=0,
                   tls=cluster.client_tls).results()
        print(f"filling: {applied:,} entries applied, to {stored:,}", flush=True)
    return time.monotonic() - t0


async def bench_growth(stored: int, seconds: float, clients: int = 64) -> dict:
    """Send throughput on an empty cluster, then again once ``stored`` messages
    are stored (filled through the cluster itself, with 256 clients)."""
    cluster = new_cluster()
    try:
        await cluster.primary(30)
        users = await make_users(cluster.addresses, 256, "g", tls=cluster.client_tls)

        async def rate() -> float:
            load = Load(cluster.addresses, users, clients, seconds, tls=cluster.client_tls)
            spans, _ = await load.results()
            return len(load.measured(spans)) / seconds

        empty = await rate()
        fill_s = await fill(cluster, users, stored)
        await cluster.converged(120)
        full = await rate()
        row = {"stored": stored, "empty": empty, "full": full, "ratio": full / empty, "fill_s": fill_s}
        print(f"growth: {empty:,.0f} sends/s empty, {full:,.0f} with {stored:,} stored: ratio {row['ratio']:.2f}",
              flush=True)
        return row
    finally:
        cluster.stop_all()


async def bench_tls(rounds: int, seconds: float, counts: tuple[int, ...] = (1, 64)) -> list[dict]:
    """The same sends on a cluster with TLS and on one without, in alternating
    rounds; one row per (mode, clients) with the medians of the rounds."""
    clusters = {"TLS": new_cluster(tls=True), "plaintext": new_cluster(tls=False)}
    try:
        users = {}
        for mode, c in clusters.items():
            await c.primary(30)
            users[mode] = await make_users(c.addresses, max(counts), "t", tls=c.client_tls)
        got: dict[tuple[str, int], list[dict]] = {}
        for k in range(rounds):
            for mode in (["TLS", "plaintext"] if k % 2 == 0 else ["plaintext", "TLS"]):
                c = clusters[mode]
                for n in counts:
                    load = Load(c.addresses, users[mode], n, seconds, procs=1 if n == 1 else 2, tls=c.client_tls)
                    pids = [p.pid for p in c.procs.values()] + [p.pid for p in load.procs]
                    while time.monotonic() < load.measure_from:
                        await asyncio.sleep(0.01)
                    cpu0 = sum(cpu_seconds(pid) for pid in pids)
                    while time.monotonic() < load.stop_at:
                        await asyncio.sleep(0.01)
                    cpu = sum(cpu_seconds(pid) for pid in pids) - cpu0
                    spans, errors = await load.results()
                    lat = [b - a for a, b in load.measured(spans)]
                    row = {"rate": len(lat) / seconds, "p50": pct(lat, 50) * 1e3, "p99": pct(lat, 99) * 1e3,
                           "errors": len(errors), "cpu_us": cpu / max(1, len(lat)) * 1e6}
                    got.setdefault((mode, n), []).append(row)
                    print(f"tls round {k + 1}, {mode}, {n} clients: {row['rate']:,.0f} sends/s, "
                          f"p50 {row['p50']:.2f} ms, p99 {row['p99']:.1f} ms, {row['cpu_us']:.0f} us CPU per send",
                          flush=True)
        out = []
        for (mode, n), rows in got.items():
            out.append({"mode": mode, "clients": n, "rounds": rows,
                        **{k: statistics.median(r[k] for r in rows) for k in ("rate", "p50", "p99", "cpu_us")},
                        "errors": sum(r["errors"] for r in rows)})
        return out
    finally:
        for c in clusters.values():
            c.stop_all()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def bench_connections(n: int) -> dict:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, n + 1000)), hard))
    cluster = new_cluster()
    try:
        await cluster.primary(30)
        (name, token), (_, other_token) = await make_users(cluster.addresses, 2, "crowd", tls=cluster.client_tls)
        host, port = cluster.address(1).rsplit(":", 1)
        pid = cluster.procs[1].pid
        before = rss_kib(pid)
        got = 0
        all_in = asyncio.Event()
        sent_at = 0.0
        last = [0.0]

        class Conn(asyncio.Protocol):
            def connection_made(self, transport):
                self.t, self.dec, self.replies = transport, FrameDecoder(1 << 20), 0
                self.ready = asyncio.get_running_loop().create_future()
                # (Requests on one connection run concurrently: subscribe once authenticated.)
                transport.write(encode_frame(W.encode({"op": "auth", "id": 1, "token": token})))

            def data_received(self, data):
                nonlocal got
                for body in self.dec.feed(data):
                    reply = W.decode_reply(body)
                    if reply.event is not None:
                        got += 1
                        last[0] = time.monotonic()
                        if got == n:
                            all_in.set()
                    elif reply.id == 1:
                        self.t.write(encode_frame(W.encode({"op": "subscribe", "id": 2, "after": 0})))
                    elif reply.id == 2 and not self.ready.done():
                        self.ready.set_result(reply.ok)

        loop = asyncio.get_running_loop()
        conns = []
        ctx = client_tls.context(cluster.client_tls)
        t0 = time.monotonic()
        for k in range(0, n, 500):
            batch = await asyncio.gather(*(loop.create_connection(Conn, host, int(port), ssl=ctx,
                                                                  server_hostname=host if ctx else None)
                                           for _ in range(min(500, n - k))))
            conns += [p for _, p in batch]
            if not all(await asyncio.gather(*(p.ready for _, p in batch))):
                raise RuntimeError("a connection could not authenticate and subscribe")
        setup = time.monotonic() - t0
        after = rss_kib(pid)
        c = cluster.client([cluster.address(2)])
        await c.auth(other_token)
        sent_at = time.monotonic()
        await c.send(name, "to everyone at once " + "c" * 120)
        await asyncio.wait_for(all_in.wait(), 120)
        row = {"connections": n, "per_conn_kib": (after - before) / n, "rss_before_mib": before / 1024,
               "rss_after_mib": after / 1024, "setup_s": setup, "push_all_ms": (last[0] - sent_at) * 1e3}
        print(f"{n:,} connections: {row['per_conn_kib']:.1f} KiB each (RSS {before / 1024:.0f} -> "
              f"{after / 1024:.0f} MiB), pushed to all in {row['push_all_ms']:.0f} ms", flush=True)
        await c.close()
        for p in conns:
            p.t.close()
        return row
    finally:
        cluster.stop_all()


# ---------------------------------------------------------------------------- report
def plots(send_rows: list[dict], delivery: dict | None, failovers: list[dict], suffix: str = "") -> list[str]:
    """PNGs beside the tables (``suffix``: "-quick" for the quick run's own)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    if send_rows:
        fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
        pipelined = [r for r in send_rows if r["window"] > 1]
        send_rows = [r for r in send_rows if r["window"] == 1]
        xs = [r["clients"] for r in send_rows]
        a.plot(xs, [r["rate"] for r in send_rows], "o-", label="each client waits for each answer")
        for r in pipelined:
            a.plot([r["clients"]], [r["rate"]], "D", label=f"1 client, {r['window']} sends in flight")
        a.legend(fontsize=8)
        a.set_xscale("log", base=2)
        a.set_xlabel("concurrent clients")
        a.set_ylabel("sends/s (committed on a majority)")
        a.set_title("send throughput, 3 replicas, fsync")
        b.plot(xs, [r["p50"] for r in send_rows], "o-", label="p50")
        b.plot(xs, [r["p99"] for r in send_rows], "s-", label="p99")
        b.set_xscale("log", base=2)
        b.set_yscale("log")
        b.set_xlabel("concurrent clients")
        b.set_ylabel("latency (ms)")
        b.legend()
        b.set_title("send latency")
        fig.tight_layout()
        fig.savefig(RESULTS / f"cluster-send{suffix}.png", dpi=90)
        plt.close(fig)
        made.append(f"cluster-send{suffix}.png")
    if failovers:
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.boxplot([[o * 1e3 for o in f["outages"]] for f in failovers])
        ax.set_xticks(range(1, len(failovers) + 1), [f["profile"] for f in failovers])
        for k, f in enumerate(failovers, 1):
            ax.scatter([k] * len(f["outages"]), [o * 1e3 for o in f["outages"]], s=10, alpha=0.6)
        ax.set_ylabel("client-visible outage (ms)")
        ax.set_title("kill -9 of the primary under load")
        fig.tight_layout()
        fig.savefig(RESULTS / f"cluster-failover{suffix}.png", dpi=90)
        plt.close(fig)
        made.append(f"cluster-failover{suffix}.png")
    if delivery and delivery["latencies"]:
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.hist([x * 1e3 for x in delivery["latencies"]], bins=50)
        ax.set_xlabel("send to push at another replica (ms)")
        ax.set_ylabel("messages")
        ax.set_title("delivery latency under load")
        fig.tight_layout()
        fig.savefig(RESULTS / f"cluster-delivery{suffix}.png", dpi=90)
        plt.close(fig)
        made.append(f"cluster-delivery{suffix}.png")
    return made


async def main(args: argparse.Namespace) -> int:
    parts = args.only or ["send", "tls", "delivery", "failover", "connections"] + ([] if args.quick else ["growth"])
    q = args.quick
    send_rows: list[dict] = []
    delivery = None
    failovers: list[dict] = []
    conns = None
    growth = None
    tls_rows: list[dict] = []
    if "tls" in parts:
        tls_rows = await bench_tls(2 if q else 6, 3 if q else 8)
    if "send" in parts:
        send_rows = await bench_send([1, 8, 64] if q else [1, 8, 64, 256], 3 if q else 10)
    if "delivery" in parts:
        delivery = await bench_delivery(4 if q else 10)
    if "failover" in parts:
        failovers = [await bench_failover(3 if q else 20, fast=False), await bench_failover(3 if q else 20, fast=True)]
    if "connections" in parts:
        conns = await bench_connections(1000 if q else 10_000)
    if "growth" in parts:
        growth = await bench_growth(50_000 if q else 1_000_000, 3 if q else 10)

    lines = ["# A 3-replica cluster", "",
             f"`python bench/cluster.py{''.join(' ' + a for a in sys.argv[1:])}` on Python {sys.version.split()[0]}, "
             f"{os.cpu_count()} cores; three `chorus serve` processes on this machine (fsync on, majority write "
             "concern), load from separate client processes, 150-byte messages; each client waits for each "
             "answer before its next send, except the client marked \"in flight\", which keeps that many sends "
             "going on its one connection. CPU: what the servers and the load processes used while measuring "
             "(user + system time, all threads), and all of it divided by the sends.", ""]
    if send_rows:
        lines += ["| clients | sends/s | p50 | p99 | errors | CPU: servers (cores) / load / per send | target |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        targets = {1: ">= 2,000/s, p50 <= 0.8 ms", 64: ">= 12,000/s, p99 <= 20 ms", 256: ">= 15,000/s"}
        for r in send_rows:
            who = f"{r['clients']} ({r['window']} in flight)" if r["window"] > 1 else str(r["clients"])
            target = targets.get(r["clients"], "") if r["window"] == 1 else ">= 2,000/s with 1 client"
            cpu = (f"{' + '.join(f'{c:.2f}' for c in r['server_cores'])} / {r['load_cores']:.2f} / "
                   f"{r['cpu_us']:.0f} us")
            lines.append(f"| {who} | {r['rate']:,.0f} | {r['p50']:.2f} ms | {r['p99']:.1f} ms | {r['errors']} | "
                         f"{cpu} | {target} |")
        lines.append("")
    if tls_rows:
        by = {(r["mode"], r["clients"]): r for r in tls_rows}
        lines += ["| TLS on both ports against plaintext | rounds | sends/s: TLS / plaintext | TLS costs | "
                  "p50 | p99 | CPU per send (all processes) | target |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        for n in sorted({r["clients"] for r in tls_rows}):
            t, p = by[("TLS", n)], by[("plaintext", n)]
            lines.append(f"| {n} client{'s' if n > 1 else ''} | {len(t['rounds'])} | {t['rate']:,.0f} / {p['rate']:,.0f} | "
                         f"{(1 - t['rate'] / p['rate']) * 100:.1f}% | {t['p50']:.2f} / {p['p50']:.2f} ms | "
                         f"{t['p99']:.1f} / {p['p99']:.1f} ms | {t['cpu_us']:.0f} / {p['cpu_us']:.0f} us | "
                         f"{'<= 15% at 64 clients' if n == 64 else ''} |")
        lines += ["", "(Medians of alternating rounds; errors: "
                  f"{sum(r['errors'] for r in tls_rows)}.)", ""]
    if delivery:
        lines += ["| delivery: send to push at another replica | result |", "| --- | ---: |",
                  f"| under 64-client load ({delivery['load']:,.0f} sends/s) | p50 {delivery['p50']:.1f} ms, "
                  f"p99 {delivery['p99']:.1f} ms ({delivery['arrived']}/{delivery['probes']} arrived) |", ""]
    if failovers:
        lines += ["| failover: kill -9 of the primary, 16 clients sending | kills | outage median | p90 | max | target |",
                  "| --- | ---: | ---: | ---: | ---: | --- |"]
        for f in failovers:
            target = "<= 0.4 s" if f["profile"].startswith("fast") else "<= 2.5 s"
            lines.append(f"| {f['profile']} | {f['kills']} | {f['median']:.2f} s | {f['p90']:.2f} s | "
                         f"{f['max']:.2f} s | median {target} |")
        lines.append("")
    if conns:
        lines += ["| idle subscribed connections on one replica | result | target |", "| --- | ---: | --- |",
                  f"| {conns['connections']:,} connections: server memory per connection | "
                  f"{conns['per_conn_kib']:.1f} KiB (RSS {conns['rss_before_mib']:.0f} -> "
                  f"{conns['rss_after_mib']:.0f} MiB) | <= 20 KiB |",
                  f"| one message pushed to all of them | {conns['push_all_ms']:.0f} ms | |",
                  f"| connecting, authenticating and subscribing them all | {conns['setup_s']:.1f} s | |", ""]
    if growth:
        lines += ["| growth: 64 clients sending | result | target |", "| --- | ---: | --- |",
                  f"| empty cluster / once {growth['stored']:,} entries are applied (all but ~260 of them messages) | "
                  f"{growth['empty']:,.0f} / "
                  f"{growth['full']:,.0f} sends/s | |",
                  f"| ratio | {growth['ratio']:.2f} | >= 0.90 |",
                  f"| filling it through the cluster (256 clients) | {growth['fill_s']:.0f} s | |", ""]
    made = plots(send_rows, delivery, failovers, "-quick" if q else "")
    lines += [f"![{m}]({m})" for m in made]
    RESULTS.mkdir(exist_ok=True)
    out = args.out or RESULTS / ("cluster-quick.md" if q else "cluster.md")
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", nargs="*", choices=["send", "tls", "delivery", "failover", "connections", "growth"])
    ap.add_argument("--out", type=Path, default=None)
    sys.exit(asyncio.run(main(ap.parse_args())))
