"""A real network for the servers: one network namespace per server, joined by
veth links to a bridge, with nftables rules on the bridge that drop packets.

    host (root namespace, the clients)        10.N.M.254  bridge chNNNNNNbr
      +-- veth --> namespace chorusNNNNNNn1   10.N.M.1    server 1
      +-- veth --> namespace chorusNNNNNNn2   10.N.M.2    server 2
      ...

A partition is a set of rules in a table of the ``bridge`` family: a packet from
server a to server b is dropped in the middle of the network, silently, as a
switch would drop it. Neither end learns anything until its own timeouts
fire. Rules only ever name two servers, so clients (on the host) always reach
every server: the faults are between replicas.

Needs root, iproute2 and nft (.ci/run installs nftables). ``Network.available()``
says why not, so callers can skip partitions with a clear message.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess


def _run(*cmd: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, input=input)


class NetworkError(RuntimeError):
    pass


class Network:
    def __init__(self, size: int) -> None:
        self.size = size
        self.tag = f"{os.getpid() % 1_000_000:06d}"
        n = os.getpid() % 50_000
        self.prefix = f"10.{100 + n // 250}.{n % 250}"
        self.bridge = f"ch{self.tag}br"
        self.table = f"chorus{self.tag}"
        self.rules: set[tuple[int, int, int]] = set()  # (from, to, loss percent: 100 = cut)
        self.up = False

    # ------------------------------------------------------------------ names
    def ns(self, i: int) -> str:
        return f"chorus{self.tag}n{i}"

    def ip(self, i: int) -> str:
        return f"{self.prefix}.{i}"

    def launcher(self, i: int) -> list[str]:
        return ["ip", "netns", "exec", self.ns(i)]

    # ------------------------------------------------------------------ set up
    @staticmethod
    def available() -> str | None:
        """None if namespaces and nftables can be used here, else the reason not."""
        if os.geteuid() != 0:
            return "not root: network namespaces need root"
        for tool in ("ip", "nft"):
            if shutil.which(tool) is None:
                return f"{tool} is not installed (apt-get install iproute2 nftables)"
        probe = f"chorusprobe{os.getpid()}"
        r = _run("ip", "netns", "add", probe, check=False)
        if r.returncode != 0:
            return f"cannot create a network namespace: {r.stderr.strip()}"
        _run("ip", "netns", "del", probe, check=False)
        r = _run("nft", "list", "tables", check=False)
        if r.returncode != 0:
            return f"nftables does not work here: {r.stderr.strip()}"
        return None

    @staticmethod
    def netem_available() -> bool:
        """tc netem (delay) needs the sch_netem kernel module, which not every kernel has."""
        if shutil.which("tc") is None:
            return False
        probe = f"chorusnetem{os.getpid()}"
        try:
            _run("ip", "netns", "add", probe)
            return _run("ip", "netns", "exec", probe, "tc", "qdisc", "add", "dev", "lo", "root",
                        "netem", "delay", "1ms", check=False).returncode == 0
        except subprocess.CalledProcessError:
            return False
        finally:
            _run("ip", "netns", "del", probe, check=False)

    def create(self) -> None:
        self.cleanup_stale()
        try:
            _run("ip", "link", "add", self.bridge, "type", "bridge")
            _run("ip", "link", "set", self.bridge, "up")
            _run("ip", "addr", "add", f"{self.prefix}.254/24", "dev", self.bridge)
            for i in range(1, self.size + 1):
                ns, veth = self.ns(i), f"ch{self.tag}v{i}"
                _run("ip", "netns", "add", ns)
                _run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
                _run("ip", "link", "set", veth, "master", self.bridge, "up")
                _run("ip", "-n", ns, "addr", "add", f"{self.ip(i)}/24", "dev", "eth0")
                _run("ip", "-n", ns, "link", "set", "eth0", "up")
                _run("ip", "-n", ns, "link", "set", "lo", "up")
            _run("nft", "-f", "-", input=(
                f"table bridge {self.table} {{\n"
                f"  chain faults {{ type filter hook forward priority 0; policy accept; }}\n}}\n"))
        except subprocess.CalledProcessError as exc:
            self.destroy()
            raise NetworkError(f"could not build the test network: {' '.join(exc.cmd)}: {exc.stderr.strip()}") from exc
        self.up = True

    def destroy(self) -> None:
        _run("nft", "delete", "table", "bridge", self.table, check=False)
        for i in range(1, self.size + 1):
            _run("ip", "netns", "del", self.ns(i), check=False)  # takes its veth end along
        _run("ip", "link", "del", self.bridge, check=False)
        self.up = False

    @staticmethod
    def cleanup_stale() -> None:
        """Remove what an earlier run killed before it could clean up left behind."""
        listing = _run("ip", "netns", "list", check=False).stdout
        dead: set[str] = set()
        for m in re.finditer(r"^chorus(\d{6})n\d+", listing, re.M):
            tag = m.group(1)
            alive = any(f"{pid % 1_000_000:06d}" == tag for pid in _pids())
            if not alive:
                dead.add(tag)
                _run("ip", "netns", "del", m.group(0), check=False)
        for tag in dead:
            _run("ip", "link", "del", f"ch{tag}br", check=False)
            _run("nft", "delete", "table", "bridge", f"chorus{tag}", check=False)

    # ------------------------------------------------------------------ faults
    def _apply(self) -> None:
        lines = [f"flush chain bridge {self.table} faults"]
        for a, b, loss in sorted(self.rules):
            match = f"ip saddr {self.ip(a)} ip daddr {self.ip(b)}"
            if loss >= 100:
                lines.append(f"add rule bridge {self.table} faults {match} drop")
            else:
                lines.append(f"add rule bridge {self.table} faults {match} numgen random mod 100 < {loss} drop")
        _run("nft", "-f", "-", input="\n".join(lines) + "\n")

    def cut(self, pairs: list[tuple[int, int]], loss: int = 100) -> None:
        """Drop packets from a to b (one way) for each (a, b); loss < 100 drops that
        percentage at random instead (a lossy link)."""
        self.rules.update((a, b, loss) for a, b in pairs)
        self._apply()

    def partition(self, *groups: list[int]) -> None:
        """Servers talk only within their group; one server may be in two groups
        (a bridge: it sees both sides, which do not see each other)."""
        pairs = []
        for a in range(1, self.size + 1):
            for b in range(1, self.size + 1):
                if a != b and not any(a in g and b in g for g in groups):
                    pairs.append((a, b))
        self.cut(pairs)

    def heal(self) -> None:
        self.rules.clear()
        if self.up:
            self._apply()

    def netem(self, i: int, spec: str | None) -> None:
        """Delay (and more) on server i's link, e.g. "delay 50ms 20ms loss 5%"; None removes it."""
        ns = self.ns(i)
        _run("ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", "eth0", "root", check=False)
        if spec:
            _run("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "eth0", "root", "netem", *spec.split())

    def __enter__(self) -> Network:
        self.create()
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.destroy()


def _pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]
