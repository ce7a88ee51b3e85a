"""Real chorus servers as child processes on loopback, for tests.

Each cluster gets its own directory and free ports, fast election timeouts
(150-300 ms) unless told otherwise, TLS on both ports with a CA of its own
(unless ``tls=False``), and helpers to kill -9, stop, pause and restart servers,
and to wait (by polling, never sleeping blindly) until something is true.

Tests register many accounts from one address in a few seconds, which the
default limits would refuse: clusters here allow that (``TEST_LIMITS``), except
where a test passes ``limits`` of its own (the security tests use the defaults).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from chorus.client import Client, server_status
from chorus.server import certs

ROOT = Path(__file__).resolve().parents[2]
SECRET = "test-secret-0123456789abcdef"
TEST_LIMITS = {"register_burst": 100_000, "register_per_hour": 1_000_000}


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


class Cluster:
    def __init__(self, root: Path, size: int = 3, *, fast: bool = True, snapshot_every: int | None = None,
                 extra_env: dict[str, str] | None = None, hosts: list[str] | None = None,
                 launcher: Callable[[int], list[str]] | None = None, tls: bool = True,
                 limits: dict | None = None, serve_args: list[str] | None = None) -> None:
        """``hosts``: each server's address (default: all on loopback); ``launcher``:
        the command prefix that starts server i (e.g. ``ip netns exec ...``);
        ``limits``: the [limits] table (default ``TEST_LIMITS``; {} for the defaults);
        ``serve_args``: more arguments for ``chorus serve`` (``--insecure``)."""
        self.root = root
        self.size = size
        self.hosts = hosts or ["127.0.0.1"] * size
        self.launcher = launcher
        self.serve_args = serve_args or []
        self.tls_dir = root / "tls"
        self.ca: Path | None = None
        if tls:
            certs.create_ca(self.tls_dir, "chorus test CA")
            for i, host in enumerate(self.hosts, 1):
                certs.issue_server(self.tls_dir, i, sorted({host, "127.0.0.1", "localhost"}))
            self.ca = self.tls_dir / "ca.crt"
        self.client_tls: Path | bool = self.ca if self.ca is not None else False
        ports = free_ports(3 * size)
        self.peer_ports = ports[:size]
        self.client_ports = ports[size:2 * size]
        self.metrics_ports = ports[2 * size:]
        timing = "tick_ms = 10\nelection_timeout_ms = [150, 300]\nheartbeat_ms = 30\n" if fast else ""
        servers = "".join(
            f"\n[[server]]\nid = {i + 1}\nhost = \"{self.hosts[i]}\"\npeer_port = {self.peer_ports[i]}\n"
            f"client_port = {self.client_ports[i]}\nmetrics_port = {self.metrics_ports[i]}\n"
            for i in range(size)
        )
        limits = TEST_LIMITS if limits is None else limits
        tables = "[tls]\ndir = \"tls\"\n\n" if tls else ""
        if limits:
            tables += "[limits]\n" + "".join(f"{k} = {v!r}\n" for k, v in limits.items()) + "\n"
        self.config = root / "cluster.toml"
        self.config.write_text(
            f"[cluster]\nsecret = \"{SECRET}\"\ndata_dir = \"data\"\n\n{tables}[timing]\n{timing}{servers}"
        )
        self.env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                    "PYTHONUNBUFFERED": "1", **(extra_env or {})}
        if snapshot_every is not None:
            self.env["CHORUS_SNAPSHOT_EVERY"] = str(snapshot_every)
            self.env["CHORUS_SNAPSHOT_KEEP"] = str(max(1, snapshot_every // 10))
        self.procs: dict[int, subprocess.Popen] = {}

    def peer_address(self, i: int) -> str:
        return f"{self.hosts[i - 1]}:{self.peer_ports[i - 1]}"

    def pid(self, i: int) -> int:
        return self.procs[i].pid

    @property
    def addresses(self) -> list[str]:
        return [f"{h}:{p}" for h, p in zip(self.hosts, self.client_ports, strict=True)]

    def address(self, i: int) -> str:
        return self.addresses[i - 1]

    def start(self, i: int | None = None) -> None:
        for k in [i] if i else range(1, self.size + 1):
            log = open(self.root / f"server{k}.log", "ab")  # noqa: SIM115 - kept by the child
            prefix = self.launcher(k) if self.launcher else []
            self.procs[k] = subprocess.Popen(
                [*prefix, sys.executable, "-m", "chorus", "serve", "--id", str(k), "--config", str(self.config),
                 *self.serve_args],
                stdout=log, stderr=log, env=self.env, cwd=self.root,
            )

    def prepare_joiner(self, sid: int, host: str = "127.0.0.1", ports: tuple[int, int] | None = None
                       ) -> tuple[str, str]:
        """Server ``sid``'s certificate, and a configuration of its own that lists
        no server (the secret, TLS, timing): it learns the cluster from a member.
        Its (peer, client) addresses, on new ports unless ``ports`` are given."""
        peer_port, client_port = ports or free_ports(2)
        certs.issue_server(self.tls_dir, sid, sorted({host, "127.0.0.1", "localhost"}))
        (self.root / f"joiner{sid}.toml").write_text(self.config.read_text().split("\n[[server]]")[0])
        return f"{host}:{peer_port}", f"{host}:{client_port}"

    def start_joiner(self, sid: int) -> subprocess.Popen:
        """``chorus serve --id sid --join`` (this cluster's client addresses), as
        ``prepare_joiner`` set it up (in the launcher's namespace, if any)."""
        log = open(self.root / f"server{sid}.log", "ab")  # noqa: SIM115 - kept by the child
        prefix = self.launcher(sid) if self.launcher else []
        self.procs[sid] = subprocess.Popen(
            [*prefix, sys.executable, "-m", "chorus", "serve", "--id", str(sid), "--config",
             str(self.root / f"joiner{sid}.toml"), "--join", ",".join(self.addresses)],
            stdout=log, stderr=log, env=self.env, cwd=self.root)
        return self.procs[sid]

    def kill(self, i: int) -> None:
        p = self.procs[i]
        if p.poll() is None:
            p.kill()
            p.wait()

    def terminate(self, i: int, timeout: float = 15) -> int:
        p = self.procs[i]
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        return p.returncode

    def pause(self, i: int) -> None:
        self.procs[i].send_signal(signal.SIGSTOP)

    def resume(self, i: int) -> None:
        self.procs[i].send_signal(signal.SIGCONT)

    def stop_all(self) -> None:
        for i in list(self.procs):
            with contextlib.suppress(Exception):
                self.resume(i)
            self.terminate(i, timeout=10)

    def log(self, i: int) -> str:
        return (self.root / f"server{i}.log").read_text(errors="replace")

    def client(self, servers: list[str] | None = None, **kw) -> Client:
        """A client of this cluster (TLS with its CA, unless it has none)."""
        kw.setdefault("tls", self.client_tls)
        return Client(servers or self.addresses, **kw)

    async def statuses(self) -> list[dict]:
        """Each server's status, flat (as ``chorus status --json`` prints them)."""
        return [r.row() for r in await asyncio.gather(*(server_status(a, timeout=1.0, tls=self.client_tls)
                                                        for a in self.addresses))]

    async def primary(self, timeout: float = 20) -> int:
        """Wait until exactly one live server is primary and every other live one agrees."""
        async def check():
            rows = [r for r in await self.statuses() if "error" not in r]
            primaries = [r["id"] for r in rows if r["role"] == "PRIMARY"]
            if len(primaries) == 1 and all(r["primary"] == primaries[0] for r in rows):
                return primaries[0]
            return None
        return await wait_for(check, timeout, "a primary")

    async def converged(self, timeout: float = 30, ids: list[int] | None = None) -> list[dict]:
        """Wait until the given (default: all) servers applied the same index with the same digest."""
        ids = ids or list(range(1, self.size + 1))

        async def check():
            rows = await self.statuses()
            live = [rows[i - 1] for i in ids]
            if any("error" in r for r in live):
                return None
            if len({(r["applied_index"], r["digest"]) for r in live}) == 1 and live[0]["applied_index"] >= live[0]["commit_index"]:
                return live
            return None
        return await wait_for(check, timeout, f"servers {ids} to converge")


def tls_socket(address: str, ca: Path | None, *, cert: tuple[Path, Path] | None = None,
               timeout: float = 10, source: str | None = None) -> socket.socket:
    """A connection to ``address``: TLS against ``ca`` (presenting ``cert``, a
    (certificate, key) pair, if given), or plaintext when ``ca`` is None;
    ``source``: the address to connect from (any of 127.0.0.0/8 on loopback)."""
    host, _, port = address.rpartition(":")
    sock = socket.create_connection((host, int(port)), timeout=timeout,
                                    source_address=(source, 0) if source else None)
    if ca is None:
        return sock
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.check_hostname = False  # (a peer's certificate names its id; clients' tests check host names elsewhere)
    if cert is not None:
        ctx.load_cert_chain(*cert)
    return ctx.wrap_socket(sock, server_hostname=host)


class Raw:
    """A hand-made connection, for sending what no library would: frames, or
    any bytes at all."""

    def __init__(self, address: str, ca: Path | None = None, *, cert: tuple[Path, Path] | None = None,
                 timeout: float = 10, source: str | None = None) -> None:
        self.sock = tls_socket(address, ca, cert=cert, timeout=timeout, source=source)

    def send(self, body: bytes) -> None:
        self.sock.sendall(len(body).to_bytes(4, "big") + body)

    def auth(self, token: str, rid: int = 1) -> dict:
        self.send(b'{"op":"auth","id":%d,"token":"%s"}' % (rid, token.encode()))
        return self.reply()

    def raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def frame(self) -> bytes:
        head = self._read(4)
        return self._read(int.from_bytes(head, "big"))

    def reply(self) -> dict:
        import msgspec

        return msgspec.json.decode(self.frame())

    def _read(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise ConnectionError("closed")
            out += chunk
        return out

    def closed(self) -> bool:
        """Whether the server closes the connection (waits for it, up to the
        timeout, reading past whatever it still sends)."""
        try:
            while self.sock.recv(4096):
                pass
            return True
        except TimeoutError:
            return False
        except (OSError, ssl.SSLError):
            return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


async def wait_for(check: Callable, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)
