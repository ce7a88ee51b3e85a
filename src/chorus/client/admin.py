"""Operating a cluster: an operator's connection, which proves it knows the
cluster secret and follows the primary for membership changes.

    async with Admin(["10.0.0.11:8091"], secret, tls=ca) as admin:
        print(await admin.members())
        await admin.add(4, peer="10.0.0.14:8081", client="10.0.0.14:8091")
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from chorus.wire import client as W
from chorus.wire import results as R
from chorus.wire.errors import ChorusError, NotConnected, Rejected, Unavailable

from . import tls as T
from .client import exchange, open_connection

A = TypeVar("A")


class Admin:
    def __init__(self, servers: list[str], secret: str | bytes, *, tls: T.TLSOption = None,
                 timeout: float = 10.0, retry_for: float = 30.0) -> None:
        self.servers = list(servers)
        self.secret = secret.encode() if isinstance(secret, str) else secret
        self.tls = tls
        self.timeout = timeout
        self.retry_for = retry_for
        self._conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self.address: str | None = None  # the server this connection is to
        self._ids = 0

    async def __aenter__(self) -> Admin:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def close(self) -> None:
        if self._conn is not None:
            self._conn[1].close()
            self._conn = None

    # ------------------------------------------------------------------ the connection
    async def _call(self, req: W.Request) -> msgspec.Raw:
        assert self._conn is not None
        reply = await exchange(*self._conn, req, self.timeout)
        if not reply.ok:
            e = reply.error
            code, message, primary = (e.code, e.message, e.primary) if e else ("internal", "refused", None)
            raise (Unavailable if code in ("unavailable", "busy", "not_ready") else Rejected)(code, message, primary)
        return reply.result

    def _next(self) -> int:
        self._ids += 1
        return self._ids

    async def _open(self, address: str) -> None:
        await self.close()
        self._conn = await open_connection(address, T.context(self.tls, [address]), self.timeout)
        self.address = address
        challenge = msgspec.json.decode(await self._call(W.AdminChallenge(id=self._next())), type=R.AdminChallenge)
        await self._call(W.AdminAuth(id=self._next(), proof=W.admin_proof(self.secret, challenge.nonce, challenge.server)))

    async def _connect(self, prefer: str | None = None) -> None:
        errors = []
        for address in ([prefer] if prefer else []) + [a for a in self.servers if a != prefer]:
            try:
                await self._open(address)
                return
            except NotConnected:
                raise
            except Rejected as exc:
                if exc.code == "bad_proof":
                    raise Rejected(exc.code, f"{address} does not take this secret: {exc.message}") from None
                errors.append(f"{address}: {exc}")
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ChorusError) as exc:
                errors.append(f"{address}: {exc or type(exc).__name__}")
        raise Unavailable("unavailable", "no server answered: " + "; ".join(errors))

    async def _ask(self, make: Any, answer: type[A]) -> A:
        """Send the request ``make(id)`` makes, following the server named when
        one answers "unavailable" (a backup names the primary for a change), and
        retrying while none can take it."""
        deadline = time.monotonic() + self.retry_for
        prefer: str | None = None
        while True:
            try:
                if self._conn is None or (prefer is not None and prefer != self.address):
                    await self._connect(prefer)
                raw = await self._call(make(self._next()))
                return msgspec.json.decode(raw, type=answer)
            except Unavailable as exc:
                if time.monotonic() >= deadline:
                    raise
                if exc.primary and exc.primary != self.address:
                    prefer = exc.primary
                else:
                    await asyncio.sleep(0.2)
                    prefer = None
                    await self.close()
            except (OSError, TimeoutError, asyncio.IncompleteReadError):
                if time.monotonic() >= deadline:
                    raise
                await self.close()
                await asyncio.sleep(0.2)

    # ------------------------------------------------------------------ what an operator does
    async def members(self) -> R.MemberList:
        """The members, as the primary lists them (it knows how far behind each
        one is), or as the server that answered does if the primary does not."""
        listed = await self._ask(lambda i: W.MemberList(id=i), R.MemberList)
        if listed.primary != listed.server and listed.primary_address:
            try:
                await self._connect(listed.primary_address)
                listed = await self._ask(lambda i: W.MemberList(id=i), R.MemberList)
            except ChorusError:
                pass  # (the primary did not answer: what this server knows)
        return listed

    async def add(self, server: int, *, peer: str, client: str, learner: bool = False) -> R.MemberChanged:
        return await self._ask(lambda i: W.MemberAdd(id=i, server=server, peer=peer, client=client,
                                                     learner=learner), R.MemberChanged)

    async def remove(self, server: int) -> R.MemberChanged:
        return await self._ask(lambda i: W.MemberRemove(id=i, server=server), R.MemberChanged)

    async def backup(self, path: Path) -> R.BackupTaken:
        """A consistent snapshot of the cluster's state, taken by one server while
        writes go on, written to ``path`` (and its SHA-256 to ``path``.sha256, in
        sha256sum's format); checked against the size and SHA-256 announced."""
        taken = await self._ask(lambda i: W.Backup(id=i), R.BackupTaken)
        tmp = path.with_name(path.name + ".part")
        h = hashlib.sha256()
        with open(tmp, "wb") as f:
            offset = 0
            while offset < taken.size:
                piece = msgspec.json.decode(await self._call(W.BackupChunk(id=self._next(), offset=offset)),
                                            type=R.BackupPiece)
                if piece.offset != offset or not piece.data:
                    raise Unavailable("unavailable", f"the backup stopped at byte {offset} of {taken.size}")
                f.write(piece.data)
                h.update(piece.data)
                offset += len(piece.data)
            f.flush()
            os.fsync(f.fileno())
        if h.hexdigest() != taken.sha256:
            tmp.unlink(missing_ok=True)
            raise Unavailable("unavailable", "the backup arrived damaged (its SHA-256 differs): try again")
        os.replace(tmp, path)
        path.with_name(path.name + ".sha256").write_text(f"{taken.sha256}  {path.name}\n")
        return taken

    async def move(self, server: int, *, peer: str, client: str) -> R.MemberChanged:
        return await self._ask(lambda i: W.MemberMove(id=i, server=server, peer=peer, client=client),
                               R.MemberChanged)
