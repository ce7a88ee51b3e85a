"""One fault-injection run: a real cluster, a nemesis, a workload, a checker.

    python -m tests.chaos --duration 600 --seed 7     (make chaos DURATION=600 SEED=7)

The servers run as real processes, each in its own network namespace when the
machine allows it (root, nftables), otherwise on loopback without network
faults (said at the start of the run). The nemesis follows a schedule drawn
from the seed: kill -9 (the primary, any replica, a majority), SIGSTOP/SIGCONT
of the primary, partitions (primary isolated, majority/minority, a bridge,
one-way), lossy links, delays (tc netem, where the kernel has it), and
mixtures of two. When the time is up every fault is healed, the cluster must
converge, every replica's state is read from its database, and the checker
judges the history against it. The report folder gets the history (JSON
lines), the faults, the summary and a timeline plot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sqlite3
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.server.cluster import Cluster

from .checker import Check, check
from .netns import Network, NetworkError
from .workload import History, Workload

KILLS = ["kill-primary", "kill-random", "kill-majority"]
PAUSES = ["pause-primary"]
PARTITIONS = ["isolate-primary", "split", "bridge", "one-way", "lossy"]


@dataclass
class Fault:
    kind: str
    desc: str
    start: float
    end: float = 0.0
    killed: list[int] = field(default_factory=list)
    paused: list[int] = field(default_factory=list)
    net: bool = False
    netem: list[int] = field(default_factory=list)


class Nemesis:
    def __init__(self, cluster: Cluster, net: Network | None, history: History, rng: random.Random,
                 netem: bool, log) -> None:
        self.cluster, self.net, self.history, self.rng, self.log = cluster, net, history, rng, log
        self.kinds = KILLS + PAUSES + (PARTITIONS + (["slow"] if netem else []) if net else [])
        self.faults: list[Fault] = []
        self.primaries: list[tuple[float, int | None, int]] = []  # (time, primary, term) on change

    async def leader(self) -> tuple[int | None, int]:
        """(the primary of the highest term any server claims, that term), or
        (None, the highest term seen) when no server is primary."""
        rows = [r for r in await self.cluster.statuses() if "error" not in r]
        claims = [(r["term"], r["id"]) for r in rows if r["role"] == "PRIMARY"]
        if claims:
            term, primary = max(claims)
            return primary, term
        return None, max((r["term"] for r in rows), default=0)

    async def primary(self) -> int | None:
        return (await self.leader())[0]

    async def monitor(self, stop: asyncio.Event) -> None:
        """Record who is primary, as the servers say, a few times a second."""
        last: tuple[int | None, int] | None = None
        while not stop.is_set():
            now = await self.leader()
            if last is None or now[0] != last[0] or (now[0] is not None and now[1] != last[1]):
                self.primaries.append((self.history.now(), *now))
                last = now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.25)

    async def _target(self) -> int:
        """The primary if there is one (waiting a little for an election), else any server."""
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            p = await self.primary()
            if p is not None:
                return p
            await asyncio.sleep(0.1)
        return self.rng.randint(1, self.cluster.size)

    async def begin(self, kind: str) -> Fault:
        n = self.cluster.size
        ids = list(range(1, n + 1))
        f = Fault(kind, kind, self.history.now())
        if kind == "kill-primary":
            f.killed = [await self._target()]
        elif kind == "kill-random":
            f.killed = [self.rng.choice(ids)]
        elif kind == "kill-majority":
            f.killed = sorted(self.rng.sample(ids, n // 2 + 1))
        elif kind == "pause-primary":
            f.paused = [await self._target()]
        elif kind == "isolate-primary":
            p = await self._target()
            self.net.partition([p], [i for i in ids if i != p])
            f.net, f.desc = True, f"isolate n{p}"
        elif kind == "split":
            self.rng.shuffle(ids)
            minority, majority = sorted(ids[: n // 2]), sorted(ids[n // 2:])
            self.net.partition(minority, majority)
            f.net, f.desc = True, f"split {minority}|{majority}"
        elif kind == "bridge":
            self.rng.shuffle(ids)
            mid = ids[0]
            left, right = ids[1: 1 + (n - 1) // 2], ids[1 + (n - 1) // 2:]
            self.net.partition(sorted([mid, *left]), sorted([mid, *right]))
            f.net, f.desc = True, f"bridge n{mid} between {sorted(left)} and {sorted(right)}"
        elif kind == "one-way":
            p = await self._target()
            self.net.cut([(p, i) for i in ids if i != p])
            f.net, f.desc = True, f"one-way: nothing from n{p} arrives"
        elif kind == "lossy":
            loss = self.rng.choice([10, 20, 30])
            self.net.cut([(a, b) for a in ids for b in ids if a != b], loss=loss)
            f.net, f.desc = True, f"lossy links {loss}%"
        elif kind == "slow":
            for i in ids:
                self.net.netem(i, "delay 40ms 20ms")
            f.netem, f.desc = ids, "slow links 40ms +- 20ms"
        for i in f.killed:
            self.cluster.kill(i)
        for i in f.paused:
            self.cluster.pause(i)
        if f.killed:
            f.desc = f"{kind} {' '.join(f'n{i}' for i in f.killed)}"
        if f.paused:
            f.desc = f"{kind} n{f.paused[0]}"
        self.log(f"[{f.start:7.2f}s] nemesis: {f.desc}")
        return f

    def end(self, f: Fault) -> None:
        for i in f.killed:
            self.cluster.start(i)
        for i in f.paused:
            self.cluster.resume(i)
        if f.net:
            self.net.heal()
        for i in f.netem:
            self.net.netem(i, None)
        f.end = self.history.now()
        self.faults.append(f)
        self.log(f"[{f.end:7.2f}s] nemesis: healed {f.desc}")

    async def run(self, until: float) -> None:
        bag: list[str] = []  # every kind once, in a random order, then again
        while self.history.now() < until:
            await asyncio.sleep(self.rng.uniform(1.0, 3.0))
            if self.history.now() >= until:
                break
            if not bag:
                bag = self.rng.sample(self.kinds, len(self.kinds))
            kinds = [bag.pop()]
            if self.rng.random() < 0.2:  # a mixture: a second fault of another family at once
                other = [k for k in self.kinds if _family(k) != _family(kinds[0])]
                if other:
                    kinds.append(self.rng.choice(other))
            active = [await self.begin(k) for k in kinds]
            await asyncio.sleep(max(0.0, min(self.rng.uniform(2.0, 6.0), until - self.history.now())))
            for f in reversed(active):
                self.end(f)


def _family(kind: str) -> str:
    return "process" if kind in KILLS or kind in PAUSES else "network"


def read_replica(db: Path) -> dict:
    """The chat state of one replica, read from its database file."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        names = dict(conn.execute("SELECT id, name FROM users"))
        messages = {mid: [names.get(s, f"#{s}"), names.get(r, f"#{r}"), body]
                    for mid, s, r, body in conn.execute("SELECT id, sender, recipient, body FROM messages")}
        return {"users": sorted(names.values()), "messages": messages}
    finally:
        conn.close()


@dataclass
class Result:
    checks: list[Check]
    report: Path
    ops: int
    acked_sends: int
    faults: int
    network: str

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def summary(self) -> str:
        return "\n".join(c.line() for c in self.checks)


async def run(duration: float, seed: int, report: Path, *, size: int = 3, workers: int = 12,
              fast: bool = True, log=print) -> Result:
    report.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    why_not = Network.available()
    net: Network | None = None
    if why_not is None:
        net = Network(size)
        try:
            net.create()
        except NetworkError as exc:
            why_not, net = str(exc), None
    network = "namespaces + nftables" if net else f"loopback only, no partitions ({why_not})"
    netem = bool(net) and Network.netem_available()
    log(f"chaos: seed {seed}, {duration:.0f}s, {size} servers, {workers} clients; network: {network}"
        + ("" if not net or netem else "; tc netem not in this kernel: no slow links"))
    root = Path(tempfile.mkdtemp(prefix="chorus-chaos-"))
    cluster = Cluster(root, size, fast=fast, hosts=[net.ip(i) for i in range(1, size + 1)] if net else None,
                      launcher=net.launcher if net else None)
    history = History()
    nemesis = Nemesis(cluster, net, history, rng, netem, log)
    replicas: dict[int, dict] = {}
    try:
        cluster.start()
        await cluster.primary(timeout=30)
        wl = Workload(cluster.addresses, history, workers=workers, seed=seed, tls=cluster.client_tls)
        clients = await wl.setup()
        stop_monitor = asyncio.Event()
        monitor = asyncio.create_task(nemesis.monitor(stop_monitor))
        load = asyncio.create_task(wl.run(clients))
        await nemesis.run(until=history.now() + duration)
        wl.stop.set()
        await load
        for c in clients:
            await c.close()
        log(f"[{history.now():7.2f}s] workload stopped; waiting for the replicas to converge")
        try:
            rows = await cluster.converged(timeout=60)
        except AssertionError as exc:
            log(f"did not converge: {exc}")
            rows = await cluster.statuses()
        stop_monitor.set()
        await monitor
        cluster.stop_all()
        for i, row in enumerate(rows, start=1):
            state = read_replica(root / "data" / f"replica{i}" / "chorus.db")
            replicas[i] = {**state, "applied": row.get("applied_index", -1), "digest": row.get("digest", "?")}
    finally:
        cluster.stop_all()
        if net:
            net.destroy()
    checks = check(history.ops, replicas)
    result = Result(checks, report, len(history.ops),
                    sum(1 for o in history.ops if o["f"] == "send" and o["type"] == "ok"),
                    len(nemesis.faults), network)
    write_report(report, history, nemesis, result, seed)
    for i in range(1, size + 1):
        with contextlib.suppress(OSError):
            (report / f"server{i}.log").write_text(cluster.log(i))
    return result


def write_report(report: Path, history: History, nemesis: Nemesis, result: Result, seed: int) -> None:
    with (report / "history.jsonl").open("w") as fh:
        for op in sorted(history.ops, key=lambda o: o["start"]):
            fh.write(json.dumps(op) + "\n")
    (report / "faults.json").write_text(json.dumps(
        [{"kind": f.kind, "desc": f.desc, "start": f.start, "end": f.end} for f in nemesis.faults], indent=1))
    (report / "primaries.json").write_text(json.dumps(nemesis.primaries))
    counts: dict[str, int] = {}
    for o in history.ops:
        counts[f"{o['f']} {o['type']}"] = counts.get(f"{o['f']} {o['type']}", 0) + 1
    text = (f"seed {seed}; network: {result.network}\n"
            f"{result.ops} operations: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + "\n"
            f"{result.faults} faults: " + ", ".join(sorted({f.kind for f in nemesis.faults})) + "\n"
            f"{len(nemesis.primaries)} primary changes seen\n" + result.summary() + "\n")
    (report / "summary.txt").write_text(text)
    from .plot import timeline
    timeline(report / "timeline.png", history.ops, nemesis.faults, nemesis.primaries, seed)
