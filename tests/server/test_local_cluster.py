"""``chorus cluster up`` (what ``make run`` starts) is secure by default: TLS
on both ports with certificates it makes itself, a secret of its own, and the
command line finds the CA by itself."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

from .cluster import ROOT, Raw, wait_for


def test_the_local_cluster_runs_with_tls_and_clients_find_its_ca(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "CHORUS_SESSION": str(tmp_path / "session.json")}
    env.pop("CHORUS_CA", None)
    up = subprocess.Popen([sys.executable, "-m", "chorus", "cluster", "up", "--data", "data", "--fast"],
                          cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)

    def chorus(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "chorus", *args], cwd=tmp_path, env=env, input=stdin,
                              capture_output=True, text=True, timeout=60)

    async def primary_known():
        out = chorus("status", "--json")
        rows = json.loads(out.stdout) if out.returncode == 0 else []
        return any(r.get("role") == "PRIMARY" for r in rows) and all("error" not in r for r in rows)

    try:
        asyncio.run(wait_for(primary_known, 60, "the local cluster to elect a primary", interval=0.5))
        data = tmp_path / "data"
        assert stat.S_IMODE((data / "cluster.secret").stat().st_mode) == 0o600
        for key in ("ca.key", "server-1.key", "server-2.key", "server-3.key"):
            assert stat.S_IMODE((data / "tls" / key).stat().st_mode) == 0o600
        assert 'dir = "tls"' in (data / "cluster.toml").read_text()
        # The command line, from where `make run` was started, needs no option.
        out = chorus("register", "alice", "--password-stdin", stdin="Secret123\n")
        assert out.returncode == 0, out.stderr
        assert chorus("login", "alice", "--password-stdin", stdin="Secret123\n").returncode == 0
        # Plaintext is refused on both ports.
        r = Raw("127.0.0.1:8091")
        r.send(b'{"op":"status","id":1}')
        assert r.reply()["error"]["code"] == "tls_required"
        p = Raw("127.0.0.1:8081")
        p.send(b'{"type":"HELLO"}')
        assert b"speaks TLS only" in p.frame()
        # Elsewhere, without the CA, a client refuses the servers' certificates.
        out = subprocess.run([sys.executable, "-m", "chorus", "status"], cwd=ROOT / "src", env=env,
                             capture_output=True, text=True, timeout=60)
        assert "not trusted" in out.stdout
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(30)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()
