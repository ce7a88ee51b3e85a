"""The workload: many clients using the chat through the client library, every
operation recorded in a history.

Each operation is one record: worker, function, start and end (seconds since the
run began, monotonic), the outcome and what it said:

    ok       the cluster answered that it happened (or, for a read, what it read)
    fail     the cluster answered that it did not happen (a rejection)
    unknown  no answer in time: a write may or may not have been applied

Workers are stable users ``user0``..``userN-1`` who send to each other, read their
history, and delete some of their own messages; now and then a worker tries to
take a contested name ``raceK`` (several workers want the same one), or creates a
short-lived account that sends a message or two and deletes itself.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec

from chorus.client import Client
from chorus.client.errors import ChorusError, Unavailable

from .checker import body_key

PASSWORD = "Chaos1234"


@dataclass
class History:
    t0: float = field(default_factory=time.monotonic)
    ops: list[dict] = field(default_factory=list)

    def now(self) -> float:
        return time.monotonic() - self.t0


@dataclass
class Workload:
    servers: list[str]
    history: History
    workers: int = 12
    seed: int = 0
    request_timeout: float = 2.0
    retry_for: float = 6.0
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    tls: Any = None  # the cluster's CA (chorus.client.Client's ``tls``)

    def client(self) -> Client:
        return Client(self.servers, request_timeout=self.request_timeout, retry_for=self.retry_for, tls=self.tls)

    async def record(self, worker: int, f: str, value: dict, call) -> tuple[str, object]:
        """Run one operation and add it to the history; returns (outcome, result)."""
        op = {"p": worker, "f": f, "value": value, "start": self.history.now()}
        try:
            result = await call()
        except Unavailable as exc:  # no answer in time, even after retries
            op.update(type="unknown", error=str(exc))
            result = None
        except ChorusError as exc:
            op.update(type="fail", error=exc.code)
            result = None
        else:
            op.update(type="ok")
        op["end"] = self.history.now()
        if op["type"] == "ok":
            op["result"] = msgspec.to_builtins(result)  # (a caller may keep less of it)
        self.history.ops.append(op)
        return op["type"], result

    # ------------------------------------------------------------------ set up
    async def setup(self) -> list[Client]:
        """Register and log in the stable users (before any fault)."""
        clients = []
        for w in range(self.workers):
            c = self.client()
            outcome, _ = await self.record(w, "register", {"name": f"user{w}"},
                                           lambda c=c, w=w: c.register(f"user{w}", PASSWORD))
            if outcome != "ok":
                raise RuntimeError(f"could not register user{w} before the faults began: {self.history.ops[-1]}")
            await c.login(f"user{w}", PASSWORD)
            clients.append(c)
        return clients

    # ------------------------------------------------------------------ the run
    async def run(self, clients: list[Client]) -> None:
        await asyncio.gather(*(self._worker(w, c) for w, c in enumerate(clients)))

    async def _worker(self, w: int, c: Client) -> None:
        rng = random.Random(self.seed * 1000 + w)
        mine: list[int] = []  # ids of this worker's acknowledged messages
        n = 0
        while not self.stop.is_set():
            n += 1
            roll = rng.random()
            if roll < 0.62:
                to = f"user{rng.choice([k for k in range(self.workers) if k != w])}"
                body = f"{w}:{n}:" + "x" * rng.randint(100, 190)
                outcome, r = await self.record(w, "send", {"from": f"user{w}", "to": to, "body": body},
                                               lambda to=to, body=body: c.send(to, body))
                if outcome == "ok":
                    self.history.ops[-1]["result"] = {"id": r.id}
                    mine.append(r.id)
            elif roll < 0.87:
                peer = f"user{rng.choice([k for k in range(self.workers) if k != w])}"
                outcome, r = await self.record(w, "history", {"user": f"user{w}", "peer": peer, "limit": 100},
                                               lambda peer=peer: c.history(peer, limit=100))
                if outcome == "ok":
                    self.history.ops[-1]["result"] = [[m.id, m.sender, m.recipient, body_key(m.body)]
                                                         for m in r]
            elif roll < 0.95:
                if mine:
                    mid = mine.pop(rng.randrange(len(mine)))
                    await self.record(w, "delete", {"user": f"user{w}", "ids": [mid]},
                                      lambda mid=mid: c.delete_messages([mid]))
            elif roll < 0.98:
                name = f"race{rng.randrange(20)}"
                rc = self.client()
                try:
                    await self.record(w, "register", {"name": name}, lambda rc=rc, name=name: rc.register(name, PASSWORD))
                finally:
                    await rc.close()
            else:
                await self._ephemeral(w, n, rng)

    async def _ephemeral(self, w: int, n: int, rng: random.Random) -> None:
        """An account that lives briefly: register, send, delete itself."""
        name = f"t{w}x{n}"
        c = self.client()
        try:
            outcome, _ = await self.record(w, "register", {"name": name}, lambda: c.register(name, PASSWORD))
            if outcome != "ok":
                return
            try:
                await c.login(name, PASSWORD)
            except ChorusError:
                return
            for k in range(rng.randint(1, 2)):
                to = f"user{rng.randrange(self.workers)}"
                body = f"{name}:{k}:" + "y" * rng.randint(100, 190)
                outcome, r = await self.record(w, "send", {"from": name, "to": to, "body": body},
                                               lambda to=to, body=body: c.send(to, body))
                if outcome == "ok":
                    self.history.ops[-1]["result"] = {"id": r.id}
            await self.record(w, "delete_account", {"user": name}, c.delete_account)
        finally:
            await c.close()
