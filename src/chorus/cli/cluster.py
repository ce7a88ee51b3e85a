"""``chorus cluster up``: a local cluster as child processes, shown live.

The servers run as separate processes (``chorus serve``), on ports 8081-808N
(peers), 8091-809N (clients) and 8101-810N (metrics), with their data and logs under the data
directory, and TLS on both ports: the first start makes a CA and a certificate
per server in ``DATA/tls`` (clients started from the directory above it find
``data/tls/ca.crt`` by themselves). A table shows every replica's role, term, commit and applied index
and state digest. Keys: ``k`` kills the primary with SIGKILL and restarts it a
few seconds later (watch the failover), ``q`` or Ctrl-C stops every server
cleanly (SIGTERM: the primary hands over first).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from chorus.client import server_status
from chorus.server.certs import local_cluster
from chorus.wire.results import ServerStatus


def write_config(data: Path, size: int, fast: bool) -> Path:
    data.mkdir(parents=True, exist_ok=True)
    local_cluster(data / "tls", list(range(1, size + 1)), ["127.0.0.1", "localhost", "::1"])
    secret_file = data / "cluster.secret"
    if not secret_file.exists():
        fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    timing = 'tick_ms = 10\nelection_timeout_ms = [150, 300]\nheartbeat_ms = 30\n' if fast else ""
    servers = "".join(
        f"\n[[server]]\nid = {i}\nhost = \"127.0.0.1\"\npeer_port = {8080 + i}\nclient_port = {8090 + i}\n"
        f"metrics_port = {8100 + i}\n"
        for i in range(1, size + 1)
    )
    path = data / "cluster.toml"
    path.write_text(
        f"# Written by `chorus cluster up`.\n[cluster]\nsecret = \"{secret_file.read_text().strip()}\"\n"
        f"data_dir = \".\"\n\n[tls]\ndir = \"tls\"\n\n[timing]\n{timing}{servers}"
    )
    return path


class LocalCluster:
    def __init__(self, size: int, data: Path, fast: bool) -> None:
        self.size = size
        self.data = data.resolve()
        self.config = write_config(self.data, size, fast)
        self.ca = self.data / "tls" / "ca.crt"
        self.procs: dict[int, subprocess.Popen] = {}
        self.restart_at: dict[int, float] = {}
        self.events: list[str] = []

    def start(self, i: int) -> None:
        log = open(self.data / f"replica{i}.log", "ab")  # noqa: SIM115 - the child keeps it
        self.procs[i] = subprocess.Popen(
            [sys.executable, "-m", "chorus.cli.main", "serve", "--id", str(i), "--config", str(self.config)],
            stdout=log, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.note(f"server {i} started (pid {self.procs[i].pid})")

    def note(self, text: str) -> None:
        self.events.append(f"{time.strftime('%H:%M:%S')} {text}")
        del self.events[:-6]

    def kill(self, i: int, restart_in: float = 3.0) -> None:
        p = self.procs.get(i)
        if p is not None and p.poll() is None:
            p.kill()
            p.wait()
            self.note(f"server {i} killed with SIGKILL; restarting in {restart_in:.0f}s")
            self.restart_at[i] = time.monotonic() + restart_in

    def tick(self) -> None:
        now = time.monotonic()
        for i, at in list(self.restart_at.items()):
            if now >= at:
                del self.restart_at[i]
                self.start(i)

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for p in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(max(0.1, deadline - time.monotonic()))
            if p.poll() is None:
                p.kill()

    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{8090 + i}" for i in range(1, self.size + 1)]


def render(cluster: LocalCluster, rows: list[ServerStatus]) -> Group:
    t = Table(title=f"chorus: {cluster.size} replicas, data in {cluster.data}", expand=False)
    for col in ("server", "address", "role", "term", "commit", "applied", "digest", "primary"):
        t.add_column(col, justify="right" if col in ("term", "commit", "applied") else "left")
    digests = {row.status.digest for row in rows if row.status is not None}
    for i, row in enumerate(rows, 1):
        r = row.status
        if r is None:
            state = "restarting" if i in cluster.restart_at else "down"
            t.add_row(str(i), row.address, Text(state, style="red"), "", "", "", "", "")
            continue
        role = r.role if r.health == "ok" else f"{r.role} ({r.health})"
        style = {"PRIMARY": "bold green", "CANDIDATE": "yellow", "PRE_CANDIDATE": "yellow"}.get(r.role, "")
        if r.health != "ok":
            style = "bold red"
        t.add_row(str(r.id), row.address, Text(role, style=style), str(r.term), str(r.commit_index),
                  str(r.applied_index), Text(r.digest, style="green" if len(digests) == 1 else ""),
                  str(r.primary or "-"))
    help_ = Text("k: kill -9 the primary (it restarts)   q / Ctrl-C: stop all   "
                 "chat from another terminal: chorus register NAME (TLS, with the CA in "
                 f"{cluster.ca})", style="dim")
    return Group(t, Text("\n".join(cluster.events)), help_)


async def _run(cluster: LocalCluster) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    keys: asyncio.Queue[str] = asyncio.Queue()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tty = sys.stdin.isatty()
    old = None
    if tty:
        import termios
        import tty as tty_mod

        old = termios.tcgetattr(sys.stdin)
        tty_mod.setcbreak(sys.stdin.fileno())
        loop.add_reader(sys.stdin.fileno(), lambda: keys.put_nowait(sys.stdin.read(1)))
    rows: list[ServerStatus] = []
    try:
        with Live(render(cluster, rows), refresh_per_second=4, console=Console()) as live:
            while not stop.is_set():
                rows = await asyncio.gather(*(server_status(a, timeout=0.5, tls=cluster.ca)
                                              for a in cluster.addresses()))
                cluster.tick()
                while not keys.empty():
                    key = keys.get_nowait().lower()
                    if key == "q":
                        stop.set()
                    elif key == "k":
                        primary = next((r.status.id for r in rows
                                        if r.status is not None and r.status.role == "PRIMARY"), None)
                        if primary:
                            cluster.kill(primary)
                        else:
                            cluster.note("no primary to kill right now")
                live.update(render(cluster, rows))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)
    finally:
        if tty and old is not None:
            import termios

            loop.remove_reader(sys.stdin.fileno())
            termios.tcsetattr(sys.stdin, termios.TCSADRAIN, old)


def up(size: int, data: Path, *, fast: bool = False) -> int:
    cluster = LocalCluster(size, data, fast)
    for i in range(1, size + 1):
        cluster.start(i)
    try:
        asyncio.run(_run(cluster))
    finally:
        print("stopping every server ...", flush=True)
        cluster.stop()
        print("stopped.")
    return 0
