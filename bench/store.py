"""How fast is one replica's storage? Sends persisted and applied, and history reads.

Workload: 1,000 users, each writing to about 10 contacts, 100-200-byte messages.
Every batch goes one of the two ways the replica loop takes: persisted and
applied in one transaction with one fsync (``save``), or persisted (one
transaction, one fsync) then applied (a second transaction). We measure both on
an empty store and on one holding 1,000,000 messages, in rounds that alternate
between the two stores, and the latency of reading one history page of 50
messages at random depths of random conversations.

    python bench/store.py                  # the full run (about 2 minutes)
    python bench/store.py --messages 100000 --quick
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from chorus.chat import commands as C
from chorus.chat import queries
from chorus.raft import Entry, EntryKind, HardState, Membership, Ready
from chorus.store import ReplicaStore

HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"
USERS = 1000
CONTACTS = 10
BATCH = 100


class Workload:
    def __init__(self, seed: int = 1) -> None:
        self.rng = random.Random(seed)
        self.index = 0
        self.contacts = {u: self.rng.sample(range(1, USERS + 1), CONTACTS) for u in range(1, USERS + 1)}
        self.words = [f"w{self.rng.randrange(10**6):06d}" for _ in range(500)]

    def next_entries(self, n: int, make) -> list[Entry]:
        out = []
        for _ in range(n):
            self.index += 1
            out.append(Entry(self.index, 1, EntryKind.COMMAND, C.encode(make(self.index))))
        return out

    def registrations(self) -> list[Entry]:
        return self.next_entries(
            USERS, lambda i: C.Register(client="setup", seq=i, acked=i - 1, ts=i, name=f"user{i:04d}", pw_hash=HASH)
        )

    def sends(self, n: int) -> list[Entry]:
        rng = self.rng

        def send(i: int) -> C.Send:
            user = rng.randrange(1, USERS + 1)
            to = rng.choice(self.contacts[user])
            words = rng.randint(14, 28)  # 100-200 bytes
            body = " ".join(rng.choices(self.words, k=words))[: rng.randint(100, 200)]
            client = f"client{user % 256}"
            return C.Send(client=client, seq=i, acked=i - 1, ts=1_700_000_000_000 + i, user=user,
                          to=f"user{to:04d}", body=body)

        return self.next_entries(n, send)


def ready(entries: list[Entry], *, committed: bool = False) -> Ready:
    """The Ready that persists ``entries``; with ``committed``, also applies them (as
    on a replica whose log runs just ahead of its commit index)."""
    return Ready(hard_state=HardState(1, 1, entries[-1].index), soft_state=None, snapshot=None,
                 entries=tuple(entries), messages=(), committed=tuple(entries) if committed else (), reads=(),
                 membership=None, must_sync=True)


def cycle(store: ReplicaStore, entries: list[Entry]) -> tuple[float, float]:
    """persist, then apply: two transactions, one fsync."""
    t0 = time.perf_counter()
    store.persist(ready(entries))
    t1 = time.perf_counter()
    store.apply(entries)
    return t1 - t0, time.perf_counter() - t1


def measure(stores: list[tuple[ReplicaStore, Workload]], sends: int, rounds: int = 10) -> list[dict]:
    """For each store, both ways of writing, ``sends`` each, in rounds that
    alternate between the stores and the two ways (this machine's speed drifts by
    a third from one minute to the next: alternating keeps the comparisons fair);
    the median round of each."""
    per_round = max(1, sends // BATCH // rounds)
    acc: list[dict[str, list[float]]] = [
        {"one": [], "two": [], "persist": [], "apply": [], "cpu": []} for _ in stores]
    for _ in range(rounds):
        for (store, wl), a in zip(stores, acc, strict=True):
            batches = [wl.sends(BATCH) for _ in range(2 * per_round)]  # made before the clock starts
            t0, c0 = time.perf_counter(), time.process_time()
            for entries in batches[:per_round]:
                store.save(ready(entries, committed=True))  # one transaction, one fsync
            a["one"].append(per_round * BATCH / (time.perf_counter() - t0))
            a["cpu"].append((time.process_time() - c0) / (per_round * BATCH) * 1e6)
            p = ap = 0.0
            t0 = time.perf_counter()
            for entries in batches[per_round:]:
                dp, da = cycle(store, entries)
                p, ap = p + dp, ap + da
            a["two"].append(per_round * BATCH / (time.perf_counter() - t0))
            a["persist"].append(p / per_round * 1e3)
            a["apply"].append(ap / per_round * 1e3)
    med = statistics.median
    return [{"one_txn_rate": med(a["one"]), "rate": med(a["two"]), "persist_ms": med(a["persist"]),
             "apply_ms": med(a["apply"]), "apply_rate": BATCH / med(a["apply"]) * 1e3,
             "one_txn_spread": (min(a["one"]), max(a["one"])), "cpu_us": med(a["cpu"]),
             "ratios": [f / e for e, f in zip(acc[0]["one"], a["one"], strict=True)]} for a in acc]


def fill(store: ReplicaStore, wl: Workload, target: int) -> float:
    """Store messages up to ``target`` (in big batches, compacting the log as a
    replica would). Returns the time it took."""
    t0 = time.perf_counter()
    while (n := store.conn.execute("SELECT MAX(id) FROM messages").fetchone()[0] or 0) < target:
        entries = wl.sends(min(5000, target - n + USERS))
        cycle(store, entries)
        if entries[-1].index % 100_000 < 5000:
            store.compact(store.applied())
            store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.compact(store.applied())
    return time.perf_counter() - t0


def history_latency(store: ReplicaStore, samples: int, rng: random.Random) -> list[float]:
    conn = store.reader()
    view = store.chat.view
    convs = [k for k, head in view.heads.items() if k[0] != k[1]]
    times = []
    for _ in range(samples):
        lo, hi = rng.choice(convs)
        ids = [m.id for m in queries.history(conn, view, lo, f"user{hi:04d}", limit=1000)]
        before = rng.choice(ids[:-1]) if len(ids) > 1 and rng.random() < 0.7 else None  # most page back
        t0 = time.perf_counter()
        page = queries.history(conn, view, lo, f"user{hi:04d}", before=before, limit=50)
        times.append(time.perf_counter() - t0)
        assert page and all(m.id < (before or 1 << 62) for m in page)
    return times


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=1_000_000, help="messages stored for the growth test")
    ap.add_argument("--sends", type=int, default=50_000, help="sends measured at each size")
    ap.add_argument("--dir", type=Path, default=None, help="where the database goes (default: a temp dir)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "store.md")
    ap.add_argument("--quick", action="store_true", help="fewer sends and samples")
    args = ap.parse_args(argv)
    if args.quick:
        args.sends = 10_000
    work = Path(tempfile.mkdtemp(prefix="chorus-bench-", dir=args.dir))
    pair = []
    for name in ("empty", "full"):  # two stores, measured in alternation
        store = ReplicaStore(work / f"{name}.db", Membership(frozenset({1})))
        wl = Workload()
        cycle(store, wl.registrations())
        cycle(store, wl.sends(2 * BATCH))  # warm up
        pair.append((store, wl))
    fill_s = fill(*pair[1], args.messages)
    print(f"filled the second store to {args.messages:,} messages in {fill_s:.0f} s", flush=True)
    empty, full = measure(pair, args.sends)
    print(f"empty store: {empty['one_txn_rate']:,.0f} sends/s; with {args.messages:,} stored: "
          f"{full['one_txn_rate']:,.0f} sends/s", flush=True)
    store = pair[1][0]
    lat = history_latency(store, 500 if args.quick else 3000, random.Random(2))
    size = sum(f.stat().st_size for f in work.iterdir() if f.is_file() and f.name.startswith("full.db"))
    pair[0][0].close()
    store.close()
    t0 = time.perf_counter()
    reopened = ReplicaStore(work / "full.db")
    startup = time.perf_counter() - t0
    reopened.close()

    rows = [
        ("Sends persisted and applied in one transaction per batch of 100 (one fsync), empty store",
         f"{empty['one_txn_rate']:,.0f} sends/s (rounds {empty['one_txn_spread'][0]:,.0f}-"
         f"{empty['one_txn_spread'][1]:,.0f})", ">= 50,000"),
        (f"Same, with {args.messages:,} messages stored",
         f"{full['one_txn_rate']:,.0f} sends/s (rounds {full['one_txn_spread'][0]:,.0f}-"
         f"{full['one_txn_spread'][1]:,.0f})", ""),
        ("Growth: rate with messages stored / rate empty (median of the rounds' ratios)",
         f"{statistics.median(full['ratios']):.2f} (rounds {min(full['ratios']):.2f}-{max(full['ratios']):.2f})",
         ">= 0.90"),
        ("CPU per send, one transaction per batch (user + system), empty / full",
         f"{empty['cpu_us']:.1f} / {full['cpu_us']:.1f} µs", ""),
        ("Persist, then apply: two transactions per batch (one fsync), empty / full",
         f"{empty['rate']:,.0f} / {full['rate']:,.0f} sends/s", ""),
        ("Per batch of 100 (empty): persist with fsync / apply", f"{empty['persist_ms']:.2f} ms / {empty['apply_ms']:.2f} ms", ""),
        ("Apply alone (chat tables + applied index), empty", f"{empty['apply_rate']:,.0f} sends/s", ""),
        (f"History page of 50, {len(lat):,} reads: p50 / p99 / max",
         f"{pct(lat, 50) * 1e3:.3f} / {pct(lat, 99) * 1e3:.3f} / {max(lat) * 1e3:.3f} ms", "p99 < 1 ms"),
        (f"Opening the replica with {args.messages:,} messages (check + rebuild)", f"{startup:.2f} s", ""),
        ("Database size", f"{size / 2**20:,.0f} MiB", ""),
    ]
    table = "\n".join(["| measure | result | target |", "| --- | ---: | --- |",
                       *(f"| {a} | {b} | {c} |" for a, b, c in rows)])
    print()
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        "# Replica storage\n\n"
        f"`python bench/store.py{' --quick' if args.quick else ''}"
        f"{'' if args.messages == 1_000_000 else f' --messages {args.messages}'}` on Python "
        f"{sys.version.split()[0]}, SQLite in WAL mode with synchronous=FULL; "
        f"{USERS:,} users with {CONTACTS} contacts each, 100-200-byte messages, "
        f"{args.sends:,} sends measured at each size in 10 rounds alternating the two stores and the two ways of writing, medians.\n\n{table}\n"
    )
    for f in work.iterdir():
        f.unlink()
    work.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
