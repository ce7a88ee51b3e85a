"""The checker: what the history and the replicas' final states must satisfy.

Inputs are plain data, so the checks can be tested against histories made up to
break each of them (tests/chaos/test_checker.py):

- ``ops``: the history (see workload.py): dicts with p, f, value, start, end,
  type (ok / fail / unknown) and, when ok, result (a read's result lists
  [id, sender, recipient, body_key(body)] per message).
- ``replicas``: server id -> {"messages": {id: [sender, recipient, body]},
  "users": [names], "applied": index, "digest": hex} read from every replica
  once the faults were healed and the cluster had converged.

Each check returns one summary line; any anomaly makes it fail, with examples.
"""

from __future__ import annotations

import bisect
import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field


@dataclass
class Check:
    name: str
    anomalies: list[str] = field(default_factory=list)
    checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.anomalies

    def bad(self, text: str) -> None:
        self.anomalies.append(text)

    def line(self) -> str:
        head = f"{'PASS' if self.ok else 'FAIL'} {self.name}: {self.checked} checked, {len(self.anomalies)} anomalies"
        if self.anomalies:
            head += "; e.g. " + " | ".join(self.anomalies[:3])
        return head


def body_key(body: str) -> str:
    """How a read records a message body: a short hash (full bodies would make a
    long run's history hundreds of megabytes)."""
    return hashlib.blake2b(body.encode(), digest_size=8).hexdigest()


def _conv(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)


class _Facts:
    """What the history says, indexed for the checks."""

    def __init__(self, ops: list[dict]) -> None:
        self.sends = [o for o in ops if o["f"] == "send"]
        self.by_body = {o["value"]["body"]: o for o in self.sends}
        self.by_key = {body_key(body): o for body, o in self.by_body.items()}
        self.reads = [o for o in ops if o["f"] == "history" and o["type"] == "ok"]
        # Message ids whose deletion was asked for: the earliest start, and the
        # earliest end of an acknowledged one.
        self.delete_started: dict[int, float] = {}
        self.delete_acked: dict[int, float] = {}
        for o in ops:
            if o["f"] == "delete" and o["type"] != "fail":
                for mid in o["value"]["ids"]:
                    self.delete_started[mid] = min(self.delete_started.get(mid, o["start"]), o["start"])
                    if o["type"] == "ok":
                        self.delete_acked[mid] = min(self.delete_acked.get(mid, o["end"]), o["end"])
        self.account_started: dict[str, float] = {}
        self.account_acked: dict[str, float] = {}
        for o in ops:
            if o["f"] == "delete_account" and o["type"] != "fail":
                u = o["value"]["user"].lower()
                self.account_started[u] = min(self.account_started.get(u, o["start"]), o["start"])
                if o["type"] == "ok":
                    self.account_acked[u] = min(self.account_acked.get(u, o["end"]), o["end"])

    def send_id(self, o: dict) -> int | None:
        return o["result"]["id"] if o["type"] == "ok" else None

    def removal_started(self, o: dict) -> float | None:
        """When something that may remove this send began (a delete of it, or of
        either account), or None if nothing could remove it."""
        times = [self.account_started.get(o["value"]["from"].lower()), self.account_started.get(o["value"]["to"].lower())]
        mid = self.send_id(o)
        if mid is not None:
            times.append(self.delete_started.get(mid))
        times = [t for t in times if t is not None]
        return min(times) if times else None

    def removal_acked(self, o: dict) -> float | None:
        times = [self.account_acked.get(o["value"]["from"].lower()), self.account_acked.get(o["value"]["to"].lower())]
        mid = self.send_id(o)
        if mid is not None:
            times.append(self.delete_acked.get(mid))
        times = [t for t in times if t is not None]
        return min(times) if times else None


def check_sends(facts: _Facts, replicas: dict[int, dict]) -> Check:
    """Every acknowledged send is present exactly once on every replica (unless a
    delete removed it); an unknown one at most once; a failed one never."""
    c = Check("acknowledged sends present exactly once, unknown at most once, failed never")
    for rid, rep in sorted(replicas.items()):
        counts = Counter(m[2] for m in rep["messages"].values())
        ids = {m[2]: mid for mid, m in rep["messages"].items()}
        for o in facts.sends:
            body, n = o["value"]["body"], counts.get(o["value"]["body"], 0)
            c.checked += 1
            if n > 1:
                c.bad(f"replica {rid}: send {body[:12]}... present {n} times")
            elif o["type"] == "fail" and n:
                c.bad(f"replica {rid}: send {body[:12]}... was refused ({o.get('error')}) but is present")
            elif o["type"] == "ok":
                removable = facts.removal_started(o) is not None
                if n == 0 and not removable:
                    c.bad(f"replica {rid}: acknowledged send {body[:12]}... (id {o['result']['id']}) is missing")
                elif n == 1 and ids[body] != o["result"]["id"]:
                    c.bad(f"replica {rid}: send {body[:12]}... acknowledged as id {o['result']['id']} "
                          f"but stored as id {ids[body]}")
    return c


def check_no_phantoms(facts: _Facts, replicas: dict[int, dict]) -> Check:
    """Nothing is present that was never sent, and each message is stored as sent."""
    c = Check("nothing present that was never sent")
    for rid, rep in sorted(replicas.items()):
        for mid, (sender, recipient, body) in sorted(rep["messages"].items()):
            c.checked += 1
            o = facts.by_body.get(body)
            if o is None:
                c.bad(f"replica {rid}: message {mid} ({sender}->{recipient}) was never sent")
            elif (sender.lower(), recipient.lower()) != (o["value"]["from"].lower(), o["value"]["to"].lower()):
                c.bad(f"replica {rid}: message {mid} stored as {sender}->{recipient}, "
                      f"sent as {o['value']['from']}->{o['value']['to']}")
    return c


def check_order(facts: _Facts, replicas: dict[int, dict]) -> Check:
    """Each conversation has one order, the same on every replica, consistent with
    real time: a send acknowledged before another began has the smaller id."""
    c = Check("one order per conversation, the same everywhere, consistent with real time")
    orders: dict[tuple[str, str], dict[int, list[int]]] = defaultdict(dict)
    for rid, rep in replicas.items():
        per: dict[tuple[str, str], list[int]] = defaultdict(list)
        for mid, (sender, recipient, _) in sorted(rep["messages"].items()):
            per[_conv(sender.lower(), recipient.lower())].append(mid)
        for conv, ids in per.items():
            orders[conv][rid] = ids
    for conv, by_rep in sorted(orders.items()):
        c.checked += 1
        distinct = {tuple(v) for v in by_rep.values()}
        if len(distinct) > 1 or len(by_rep) != len(replicas):
            c.bad(f"conversation {conv[0]}/{conv[1]} differs between replicas")
    # Real time: per conversation, sort the acknowledged sends by end; every send
    # that began after another ended must have a larger id.
    per_conv: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for o in facts.sends:
        if o["type"] == "ok":
            per_conv[_conv(o["value"]["from"].lower(), o["value"]["to"].lower())].append(o)
    for conv, sends in per_conv.items():
        by_end = sorted(sends, key=lambda o: o["end"])
        ends = [o["end"] for o in by_end]
        best: list[tuple[int, dict]] = []  # running max id over by_end
        for o in by_end:
            mid = o["result"]["id"]
            best.append((mid, o) if not best or mid > best[-1][0] else best[-1])
        for o in sends:
            k = bisect.bisect_left(ends, o["start"])  # sends that ended before o began
            c.checked += 1
            if k and best[k - 1][0] >= o["result"]["id"]:
                prior = best[k - 1][1]
                c.bad(f"{conv[0]}/{conv[1]}: id {o['result']['id']} began at {o['start']:.3f}s after id "
                      f"{prior['result']['id']} was acknowledged at {prior['end']:.3f}s")
    return c


def check_reads(facts: _Facts) -> Check:
    """Linearizable reads: a history read includes every send acknowledged before
    it began (within the page it returned), never shows a message deleted before
    it began, and shows only messages that were sent, as they were sent."""
    c = Check("reads see every send acknowledged before them (linearizable), nothing deleted, nothing invented")
    per_conv: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for o in facts.sends:
        if o["type"] == "ok":
            per_conv[_conv(o["value"]["from"].lower(), o["value"]["to"].lower())].append(o)
    for sends in per_conv.values():
        sends.sort(key=lambda o: o["end"])
    for r in facts.reads:
        conv = _conv(r["value"]["user"].lower(), r["value"]["peer"].lower())
        got = {m[0]: m for m in r["result"]}
        full = len(r["result"]) >= r["value"]["limit"]
        floor = min(got) if got else 0
        for mid, sender, recipient, key in r["result"]:
            c.checked += 1
            o = facts.by_key.get(key)
            if o is None or o["type"] == "fail":
                c.bad(f"read at {r['start']:.3f}s by {r['value']['user']} shows message {mid}, which was never sent")
            elif _conv(sender.lower(), recipient.lower()) != conv or (o["type"] == "ok" and o["result"]["id"] != mid):
                c.bad(f"read at {r['start']:.3f}s shows message {mid} not as it was sent")
            elif mid in facts.delete_acked and facts.delete_acked[mid] < r["start"]:
                c.bad(f"read at {r['start']:.3f}s shows message {mid}, deleted at {facts.delete_acked[mid]:.3f}s")
        for o in per_conv.get(conv, ()):
            if o["end"] >= r["start"]:
                break
            mid = o["result"]["id"]
            if full and mid < floor:
                continue  # older than the page the read returned
            c.checked += 1
            gone = facts.removal_started(o)
            if mid not in got and (gone is None or gone > r["end"]):
                c.bad(f"read by {r['value']['user']} at {r['start']:.3f}s misses message {mid}, "
                      f"acknowledged at {o['end']:.3f}s")
    return c


def check_names_and_deletes(facts: _Facts, ops: list[dict], replicas: dict[int, dict]) -> Check:
    """Usernames stay unique; deleted messages and accounts stay deleted; every
    acknowledged registration (not deleted since) exists everywhere."""
    c = Check("names unique, acknowledged registrations kept, deletions stay deleted")
    ok_regs = Counter(o["value"]["name"].lower() for o in ops if o["f"] == "register" and o["type"] == "ok")
    for name, n in sorted(ok_regs.items()):
        c.checked += 1
        if n > 1 and name not in facts.account_started:
            c.bad(f"name {name} was given to {n} registrations")
    for rid, rep in sorted(replicas.items()):
        users = {u.lower() for u in rep["users"]}
        for name in ok_regs:
            c.checked += 1
            if name not in users and name not in facts.account_started:
                c.bad(f"replica {rid}: registered user {name} is missing")
        for name in facts.account_acked:
            c.checked += 1
            if name in users:
                c.bad(f"replica {rid}: deleted account {name} still exists")
            left = [mid for mid, m in rep["messages"].items() if name in (m[0].lower(), m[1].lower())]
            if left:
                c.bad(f"replica {rid}: messages {left[:5]} of deleted account {name} remain")
        for mid in facts.delete_acked:
            c.checked += 1
            if mid in rep["messages"]:
                c.bad(f"replica {rid}: message {mid} was deleted but is present")
    return c


def check_replicas(replicas: dict[int, dict]) -> Check:
    """Every replica ends identical: the same applied index, digest and contents."""
    c = Check("replicas identical (applied index, digest, contents)")
    rows = sorted(replicas.items())
    if not rows:
        c.bad("no replica could be read")
        return c
    rid0, ref = rows[0]
    for rid, rep in rows:
        c.checked += 1
        if (rep["applied"], rep["digest"]) != (ref["applied"], ref["digest"]):
            c.bad(f"replica {rid} at {rep['applied']}/{rep['digest'][:12]}, replica {rid0} at "
                  f"{ref['applied']}/{ref['digest'][:12]}")
        elif rep["messages"] != ref["messages"] or sorted(rep["users"]) != sorted(ref["users"]):
            c.bad(f"replica {rid} has the same digest as replica {rid0} but different contents")
    return c


def check(ops: list[dict], replicas: dict[int, dict]) -> list[Check]:
    facts = _Facts(ops)
    return [
        check_sends(facts, replicas),
        check_no_phantoms(facts, replicas),
        check_order(facts, replicas),
        check_reads(facts),
        check_names_and_deletes(facts, ops, replicas),
        check_replicas(replicas),
    ]
