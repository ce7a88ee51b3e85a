"""One fault-injection run: a real cluster, a nemesis, a workload, a checker.

    python -m tests.chaos --duration 600 --seed 7     (make chaos DURATION=600 SEED=7)

The servers run as real processes, each in its own network namespace when the
machine allows it (root, nftables), otherwise on loopback without network
faults (said at the start of the run). The nemesis follows a schedule drawn
from the seed: kill -9 (the primary, any replica, a majority), SIGSTOP/SIGCONT
of the primary, a server added (member add, serve --join) and removed again,
partitions (primary isolated, majority/minority, a bridge,
one-way), lossy links, delays (tc netem, where the kernel has it), storage
faults (a replica's data directory deleted, or its WAL damaged in the middle,
while it is down), and mixtures of two (never with a storage fault: one disk
lost at a time, and nothing else at once). When the time is up every fault is
healed, the cluster must converge, every replica's state is read from its
database (its data directory as it is now: a damaged one set aside is not
read), and the checker judges the history against it. The report folder gets
the history (JSON lines), the faults, the summary and a timeline plot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import shutil
import sqlite3
import struct
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from chorus.client import server_status
from chorus.client.admin import Admin
from chorus.wire.errors import ChorusError
from tests.server.cluster import SECRET, Cluster

from .checker import Check, check
from .netns import Network, NetworkError
from .workload import History, Workload

KILLS = ["kill-primary", "kill-random", "kill-majority"]
PAUSES = ["pause-primary"]
PARTITIONS = ["isolate-primary", "split", "bridge", "one-way", "lossy"]
# A replica killed -9 whose disk is then lost (its data directory deleted) or
# damaged (a few hundred bytes flipped in the middle of its WAL, else of its
# database), restarted at the end of the fault. At most one disk is lost at a
# time: a disk fault starts only once every replica is up with a disk that is
# a member's (none still recovering), and never with another fault at once.
STORAGE = ["lose-disk", "damage-disk"]
# A server added while the faults go on (chorus member add, then chorus serve
# --join: it catches up and is promoted) and removed at the end of the fault
# (it stops by itself). Each one under a new id, as a removed id never returns.
MEMBERSHIP = ["member-add"]
EXTRA_MEMBERS = 4  # ids size+1 .. size+4: one per member-add fault


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
    disk: int | None = None  # the replica whose disk is lost or damaged
    outcome: list[str] = field(default_factory=list)  # what happened to it, for the summary
    refused: bool = False  # the restarted server exited non-zero (the nemesis then set its data aside)
    member: int | None = None  # the server a member-add fault added
    recovered: float | None = None  # seconds from the restart until it was a member again

    def report(self) -> str:
        after = (f"recovered {self.recovered:.1f}s after the restart" if self.recovered is not None
                 else "NOT RECOVERED by the end of the run")
        return f"[{self.start:7.2f}s] {self.desc}: " + "; ".join([*self.outcome, after])


class Nemesis:
    def __init__(self, cluster: Cluster, net: Network | None, history: History, rng: random.Random,
                 netem: bool, log, only: list[str] | None = None) -> None:
        """``only``: these kinds of fault only (of those the machine allows)."""
        self.cluster, self.net, self.history, self.rng, self.log = cluster, net, history, rng, log
        self.kinds = KILLS + PAUSES + STORAGE + MEMBERSHIP + (PARTITIONS + (["slow"] if netem else []) if net else [])
        self.next_member = cluster.size + 1
        if only:
            unknown = set(only) - {*KILLS, *PAUSES, *STORAGE, *MEMBERSHIP, *PARTITIONS, "slow"}
            if unknown:
                raise ValueError(f"no such fault: {', '.join(sorted(unknown))}")
            self.kinds = [k for k in self.kinds if k in only]
            if not self.kinds:
                raise ValueError(f"none of the faults {only} can be injected here")
        self.faults: list[Fault] = []
        self.watchers: list[asyncio.Task] = []  # one per disk fault: until its replica has recovered
        self.down: set[int] = set()  # killed by a fault that has not ended yet (started again at its end)
        self.disk_fault: dict[int, Fault] = {}  # each replica's latest disk fault (its watcher's)
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
        elif kind in MEMBERSHIP:
            await self._add_member(f)
        elif kind in STORAGE:
            i = await self._target() if self.rng.random() < 0.5 else self.rng.choice(ids)
            row = await self._status(i)
            self.cluster.kill(i)
            self.down.add(i)
            f.disk = i
            self.disk_fault[i] = f  # (an earlier disk fault's watcher of this replica stops)
            before = f"last index {row.get('last_index', '?')}, commit {row.get('commit_index', '?')} before the kill"
            d = self.data_dir(i)
            if kind == "lose-disk":
                shutil.rmtree(d, ignore_errors=True)
                f.desc = f"lose-disk n{i}"
                f.outcome.append(f"{before}; data directory deleted")
            else:
                f.desc = f"damage-disk n{i}"
                f.outcome.append(f"{before}; {self._damage(d)}")
        for i in f.killed:
            self.cluster.kill(i)
            self.down.add(i)
        for i in f.paused:
            self.cluster.pause(i)
        if f.killed:
            f.desc = f"{kind} {' '.join(f'n{i}' for i in f.killed)}"
        if f.paused:
            f.desc = f"{kind} n{f.paused[0]}"
        self.log(f"[{f.start:7.2f}s] nemesis: {f.desc}" + (f" ({'; '.join(f.outcome)})" if f.outcome else ""))
        return f

    async def _add_member(self, f: Fault) -> None:
        """chorus member add, then the new server started with --join (its own
        namespace and address when there is a network of namespaces)."""
        c = self.cluster
        k = self.next_member
        if k > c.size + EXTRA_MEMBERS:
            f.desc = "member-add skipped (no ids left)"
            return
        self.next_member += 1
        peer, client = (c.prepare_joiner(k, self.net.ip(k), (8081, 8091)) if self.net
                        else c.prepare_joiner(k))
        f.desc, f.member = f"member-add n{k}", k
        try:
            async with Admin(c.addresses, SECRET, tls=c.ca, retry_for=10) as a:
                await a.add(k, peer=peer, client=client)
        except (ChorusError, OSError) as exc:
            f.outcome.append(f"not added: {exc}")
            f.member = None
            return
        c.start_joiner(k)

    async def _remove_member(self, f: Fault) -> None:
        """At the fault's end: chorus member remove; the server stops by itself."""
        k = f.member
        assert k is not None
        c = self.cluster
        try:
            async with Admin(c.addresses, SECRET, tls=c.ca, retry_for=20) as a:
                listed = await a.members()
                role = next((m.role for m in listed.members if m.id == k), "not a member")
                await a.remove(k)
            f.outcome.append(f"a {role} when removed")
        except (ChorusError, OSError) as exc:
            f.outcome.append(f"NOT REMOVED: {exc}")
            return
        proc = c.procs[k]
        deadline = time.monotonic() + 20
        while proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if proc.poll() is None:
            f.outcome.append("did not stop by itself after its removal")
            proc.kill()

    def data_dir(self, i: int) -> Path:
        """Replica i's data directory, where the server opens it ([cluster] data_dir
        of cluster.toml is "data", relative to the cluster's root)."""
        return self.cluster.root / "data" / f"replica{i}"

    async def _status(self, i: int) -> dict:
        return (await server_status(self.cluster.address(i), timeout=1.0, tls=self.cluster.client_tls)).row()

    def _damage(self, d: Path) -> str:
        """Flip a few hundred bytes in the middle of the WAL's current frames (those
        with its header's salts: after a checkpoint the WAL is written again from
        its start, and what follows is an older one's), or, if it holds too few,
        in the database past its first pages. Says where."""
        span = self.rng.randint(200, 400)
        wal, db = d / "chorus.db-wal", d / "chorus.db"
        data = wal.read_bytes() if wal.exists() else b""
        if len(data) >= 32:
            page_size, salts = struct.unpack_from(">I", data, 8)[0], data[16:24]
            frame = 24 + page_size
            frames = 0
            while 32 + (frames + 1) * frame <= len(data) and data[32 + frames * frame + 8: 32 + frames * frame + 16] == salts:
                frames += 1
            if frames >= 4:  # (the damage in the middle, with frames of the same WAL after it)
                lo, hi = 32 + frames * frame // 4, 32 + frames * frame * 3 // 4
                off = self.rng.randrange(lo, hi - span)
                self._flip(wal, off, span)
                k, at = divmod(off - 32, frame)
                where = "header" if at < 24 else f"page byte {at - 24}"
                return (f"flipped {span} bytes of chorus.db-wal at offset {off} (frame {k + 1} of its {frames} "
                        f"current frames, from its {where}; file {len(data)} bytes)")
        size = db.stat().st_size if db.exists() else 0
        head = db.read_bytes()[:100] if size else b""
        page = struct.unpack_from(">H", head, 16)[0] if len(head) >= 18 else 4096
        page = 65536 if page == 1 else page
        first = min(2 * page, max(0, size - span))
        if size < first + span:
            return f"nothing to damage (chorus.db {size} bytes, chorus.db-wal {len(data)} bytes)"
        off = self.rng.randrange(first, size - span + 1)
        self._flip(db, off, span)
        return (f"flipped {span} bytes of chorus.db at offset {off} (page {off // page + 1} of {size // page}; "
                f"chorus.db-wal: {len(data)} bytes, too few current frames)")

    def _flip(self, path: Path, off: int, n: int) -> None:
        with path.open("r+b") as fh:
            fh.seek(off)
            old = fh.read(n)
            fh.seek(off)
            fh.write(bytes(b ^ self.rng.randint(1, 255) for b in old))
            fh.flush()

    def _set_aside(self, i: int) -> Path:
        d = self.data_dir(i)
        aside = d.with_name(f"{d.name}.refused-{time.strftime('%Y%m%d-%H%M%S')}-{time.monotonic_ns() % 10**6}")
        d.rename(aside)
        return aside

    async def _restart_disk(self, f: Fault) -> None:
        """Start the replica of a disk fault again (see ``_start``), and watch it for
        the rest of the run."""
        i = f.disk
        assert i is not None
        await self._start(f, "at its restart")
        if f.kind == "damage-disk" and not any("set it aside" in o or "set its data aside" in o for o in f.outcome):
            row = await self._status(i)
            f.outcome.append("the server started on its data, no damage found "
                             f"(last index {row.get('last_index', '?')}, commit {row.get('commit_index', '?')} "
                             f"after the restart; disk {row.get('disk', '?')})")
        self.watchers.append(asyncio.create_task(self._watch(f, self.history.now())))

    async def _start(self, f: Fault, when: str) -> None:
        """Start the replica of a disk fault and wait until it either serves or exits.
        One that exits by itself with a status (it refused its damaged disk) is said
        so, its data set aside by the nemesis as if lost, and started again."""
        i = f.disk
        assert i is not None
        data = self.data_dir(i).parent
        aside = set(data.glob(f"replica{i}.damaged-*"))
        offset = self._log_size(i)
        self.cluster.start(i)
        code = await self._up_or_exited(i, 30)
        if code is not None and code >= 0:  # (< 0: a signal, from another fault of the nemesis)
            why = self._log_tail(i, offset)
            moved = self._set_aside(i)
            f.refused = True
            f.desc += f" (exited {code} {when})"
            f.outcome.append(f"EXITED WITH STATUS {code} {when}: {why}; the nemesis set its data aside as "
                             f"{moved.name} and started it again with an empty disk")
            self.log(f"[{self.history.now():7.2f}s] nemesis: n{i} exited with status {code} {when}: {why}")
            offset = self._log_size(i)
            self.cluster.start(i)
            code = await self._up_or_exited(i, 30)
            if code is not None and code >= 0:
                f.outcome.append(f"EXITED AGAIN WITH STATUS {code} on an empty disk: {self._log_tail(i, offset)}")
                self.log(f"[{self.history.now():7.2f}s] nemesis: n{i} exited again with status {code}")
        for new in sorted(set(data.glob(f"replica{i}.damaged-*")) - aside):
            f.outcome.append(f"the server found its disk damaged and set it aside as {new.name}")

    def _log_size(self, i: int) -> int:
        path = self.cluster.root / f"server{i}.log"
        return path.stat().st_size if path.exists() else 0

    def _log_tail(self, i: int, offset: int) -> str:
        """What server i said since ``offset`` in its log, on one line: its last errors,
        else its last lines that are not inside a traceback."""
        with (self.cluster.root / f"server{i}.log").open("rb") as fh:
            fh.seek(offset)
            lines = [ln for ln in fh.read().decode(errors="replace").strip().splitlines() if ln and not ln[0].isspace()]
        errors = [ln for ln in lines if " ERROR " in ln or " CRITICAL " in ln or ln.startswith("chorus")]
        return " | ".join((errors or lines)[-3:])[-600:] or "(no output)"

    async def _up_or_exited(self, i: int, timeout: float) -> int | None:
        """None once server i answers its status; its exit status if it exits first."""
        deadline = time.monotonic() + timeout
        proc = self.cluster.procs[i]
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return proc.returncode
            if "error" not in await self._status(i):
                return None
            await asyncio.sleep(0.1)
        return None

    async def _watch(self, f: Fault, restarted: float) -> None:
        """For the rest of the run (or until another disk fault of the same replica):
        note when the replica of a disk fault is a member again (recovered). If it
        exits by itself with a status (damage found while running: the server marks
        its directory, and sets it aside when started again), say so and start it
        again, as at its restart."""
        i = f.disk
        assert i is not None
        offset = self._log_size(i)
        while self.disk_fault.get(i) is f:
            proc = self.cluster.procs[i]
            if proc.poll() is not None and proc.returncode >= 0 and i not in self.down:
                code, why = proc.returncode, self._log_tail(i, offset)
                f.refused = True
                f.desc += f" (exited {code} at {self.history.now():.0f}s)"
                f.outcome.append(f"EXITED WITH STATUS {code} at {self.history.now():.2f}s, "
                                 f"{'after it had recovered' if f.recovered is not None else 'while recovering'}: "
                                 f"{why}; started again")
                self.log(f"[{self.history.now():7.2f}s] nemesis: n{i} exited with status {code}: {why}")
                f.recovered = None
                await self._start(f, "when started again")
                restarted, offset = self.history.now(), self._log_size(i)
            if f.recovered is None:
                row = await self._status(i)
                if row.get("disk") == "member" and row.get("health") != "recovering":
                    f.recovered = self.history.now() - restarted
                    self.log(f"[{self.history.now():7.2f}s] nemesis: n{i} recovered ({f.desc}, "
                             f"{f.recovered:.1f}s after its restart)")
            await asyncio.sleep(0.2 if f.recovered is None else 0.5)

    async def settle(self, timeout: float) -> None:
        """Give the disk faults' replicas a last chance to recover, then stop watching."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(f.recovered is None for f in self.disk_fault.values()):
            await asyncio.sleep(0.2)
        for w in self.watchers:
            w.cancel()
        await asyncio.gather(*self.watchers, return_exceptions=True)

    async def _disks_whole(self, timeout: float) -> bool:
        """Wait until every replica answers and none is recovering: only then may
        another disk be lost."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = await self.cluster.statuses()
            if all("error" not in r and r.get("disk") == "member" and r.get("health") != "recovering"
                   for r in rows):
                return True
            await asyncio.sleep(0.2)
        return False

    async def end(self, f: Fault) -> None:
        if f.member is not None:
            await self._remove_member(f)
        if f.disk is not None:
            await self._restart_disk(f)
            self.down.discard(f.disk)
        for i in f.killed:
            self.cluster.start(i)
            self.down.discard(i)
        for i in f.paused:
            self.cluster.resume(i)
        if f.net:
            self.net.heal()
        for i in f.netem:
            self.net.netem(i, None)
        f.end = self.history.now()
        self.faults.append(f)
        told = f.outcome[1:] if f.disk is not None else f.outcome  # (a disk fault said its first at its start)
        self.log(f"[{f.end:7.2f}s] nemesis: healed {f.desc}" + (f" ({'; '.join(told)})" if told else ""))

    async def run(self, until: float) -> None:
        bag: list[str] = []  # every kind once, in a random order, then again
        while self.history.now() < until:
            await asyncio.sleep(self.rng.uniform(1.0, 3.0))
            if self.history.now() >= until:
                break
            if not bag:
                bag = self.rng.sample(self.kinds, len(self.kinds))
            kinds = [bag.pop()]
            if kinds[0] in STORAGE and not await self._disks_whole(20):
                # (a replica still recovering, or down: losing another disk now could exceed
                # what the cluster survives; keep this one for later)
                self.log(f"[{self.history.now():7.2f}s] nemesis: {kinds[0]} put off: "
                         "a replica is still recovering or down")
                bag.insert(0, kinds[0])
                continue
            if kinds[0] not in STORAGE and self.rng.random() < 0.2:
                # a mixture: a second fault of another family at once (never a storage fault)
                other = [k for k in self.kinds if _family(k) not in (_family(kinds[0]), "storage")]
                if other:
                    kinds.append(self.rng.choice(other))
            active = [await self.begin(k) for k in kinds]
            await asyncio.sleep(max(0.0, min(self.rng.uniform(2.0, 6.0), until - self.history.now())))
            for f in reversed(active):
                await self.end(f)


def _family(kind: str) -> str:
    if kind in STORAGE:
        return "storage"
    if kind in MEMBERSHIP:
        return "membership"
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
              fast: bool = True, log=print, faults: list[str] | None = None) -> Result:
    """``faults``: only these kinds of fault (default: every kind the machine allows)."""
    report.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    why_not = Network.available()
    net: Network | None = None
    if why_not is None:
        net = Network(size + EXTRA_MEMBERS)
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
    replicas: dict[int, dict] = {}
    try:
        nemesis = Nemesis(cluster, net, history, rng, netem, log, faults)
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
        await nemesis.settle(timeout=30)
        stop_monitor.set()
        await monitor
        cluster.stop_all()
        for i, row in enumerate(rows, start=1):
            # (the data directory the server uses now: one it set aside is named replicaN.damaged-...)
            state = read_replica(nemesis.data_dir(i) / "chorus.db")
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
        [{"kind": f.kind, "desc": f.desc, "start": f.start, "end": f.end}
         | ({"outcome": f.outcome, "refused": f.refused, "recovered": f.recovered} if f.disk is not None else {})
         | ({"outcome": f.outcome} if f.kind in MEMBERSHIP else {})
         for f in nemesis.faults], indent=1))
    (report / "primaries.json").write_text(json.dumps(nemesis.primaries))
    counts: dict[str, int] = {}
    for o in history.ops:
        counts[f"{o['f']} {o['type']}"] = counts.get(f"{o['f']} {o['type']}", 0) + 1
    text = (f"seed {seed}; network: {result.network}\n"
            f"{result.ops} operations: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + "\n"
            f"{result.faults} faults: " + ", ".join(sorted({f.kind for f in nemesis.faults})) + "\n"
            f"{len(nemesis.primaries)} primary changes seen\n" + result.summary() + "\n")
    members = [f for f in nemesis.faults if f.kind in MEMBERSHIP]
    if members:
        text += "membership changes:\n" + "".join(f"  [{f.start:7.2f}s] {f.desc}: {'; '.join(f.outcome)}\n"
                                                  for f in members)
    disks = [f for f in nemesis.faults if f.disk is not None]
    if disks:
        text += "storage faults:\n" + "".join(f"  {f.report()}\n" for f in disks)
        bad = [f for f in disks if f.refused or f.recovered is None]
        if bad:
            text += (f"NOTE: {len(bad)} storage fault(s) where the restarted server exited non-zero or never "
                     "recovered: " + ", ".join(f.desc for f in bad) + "\n")
    (report / "summary.txt").write_text(text)
    from .plot import timeline
    timeline(report / "timeline.png", history.ops, nemesis.faults, nemesis.primaries, seed)
