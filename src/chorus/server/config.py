"""Server configuration: one TOML file describes the whole cluster.

    [cluster]
    secret = "a long random string"     # servers prove to each other they know it; signs tokens
    data_dir = "data"                   # replica N keeps its files in data_dir/replicaN
    write_concern = "majority"          # or "all", "async" (see docs/operations.md)

    [timing]
    tick_ms = 50
    election_timeout_ms = [1500, 3000]
    heartbeat_ms = 150

    [tls]                               # TLS 1.3 on both ports (chorus certs makes the files)
    dir = "tls"                         # ca.crt, server-N.crt, server-N.key
    # or each file: ca = "...", cert = "server-{id}.crt", key = "server-{id}.key"

    [limits]                            # what a connection may cost (the defaults below)
    handshake_timeout_s = 5.0           # TLS and the first frames, on both ports
    idle_timeout_s = 30.0               # a client connection without a session, silent this long, is closed
    pre_auth_lifetime_s = 300.0         # and without a session this long, whatever it sends
    pre_auth_in_flight = 8              # requests in flight on a connection without a session
    pending_per_source = 64             # client connections without a session, per source address
    connections_per_source = 4096       # client connections of any kind, per source address
    connections_per_user = 256          # connections logged in as one user, on one server
    peer_pending_per_source = 8         # peer connections before their HELLO, per source address
    pre_auth_max_frame = 16384          # bytes in one frame from a client without a session
    login_free_failures = 5             # wrong passwords for one name before logins of it are slowed
    source_free_failures = 20           # wrong passwords from one address before its logins are slowed
    login_backoff_max_s = 300.0         # the longest wait between attempts (it doubles from 1 s)
    register_burst = 5                  # registrations from one address at once,
    register_per_hour = 30              # and then this many an hour
    password_jobs = 2                   # password hashes computed at once (argon2id: slow on purpose)
    password_queue = 64                 # waiting for one; beyond, "busy"

    [[server]]
    id = 1
    host = "127.0.0.1"
    peer_port = 8081
    client_port = 8091
    metrics_port = 8101                 # optional: Prometheus metrics (/metrics), HTTPS with [tls]
    # ... one [[server]] table per replica

Environment variables override the file: CHORUS_SECRET, CHORUS_DATA_DIR,
CHORUS_TLS_DIR, CHORUS_WRITE_CONCERN, CHORUS_TICK_MS, CHORUS_HEARTBEAT_MS,
CHORUS_ELECTION_TIMEOUT_MS ("150,300"), CHORUS_SNAPSHOT_EVERY and
CHORUS_SNAPSHOT_KEEP (entries). With no file at all: three replicas on
127.0.0.1, peer ports 8081-8083, client ports 8091-8093, data in ./data, no TLS
(loopback only).
"""

from __future__ import annotations

import hashlib
import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from chorus.raft import Member, Membership, RaftConfig

from .tls import TLSPaths

DEV_SECRET = "chorus-local-development-secret"  # for a cluster on one machine only


@dataclass(frozen=True)
class Limits:
    """What a connection, a source address or an account may cost (see the
    module's docstring and docs/security.md)."""

    handshake_timeout_s: float = 5.0
    idle_timeout_s: float = 30.0
    pre_auth_lifetime_s: float = 300.0
    pre_auth_in_flight: int = 8
    pending_per_source: int = 64
    connections_per_source: int = 4096
    connections_per_user: int = 256
    peer_pending_per_source: int = 8
    pre_auth_max_frame: int = 16384
    login_free_failures: int = 5
    source_free_failures: int = 20
    login_backoff_max_s: float = 300.0
    register_burst: int = 5
    register_per_hour: float = 30.0
    password_jobs: int = 2
    password_queue: int = 64


@dataclass(frozen=True)
class TLSFiles:
    """Where a server finds its TLS files: ``{id}`` in a path is the server's id."""

    ca: Path
    cert: str
    key: str

    def paths(self, server_id: int) -> TLSPaths:
        return TLSPaths(self.ca, Path(self.cert.replace("{id}", str(server_id))),
                        Path(self.key.replace("{id}", str(server_id))))

    @classmethod
    def in_dir(cls, directory: Path) -> TLSFiles:
        return cls(directory / "ca.crt", str(directory / "server-{id}.crt"), str(directory / "server-{id}.key"))


class ConfigError(Exception):
    pass


@dataclass(frozen=True)
class ServerSpec:
    id: int
    host: str
    peer_port: int
    client_port: int
    metrics_port: int | None = None  # Prometheus metrics over HTTP(S), on host; None: not served

    @property
    def client_address(self) -> str:
        return f"{self.host}:{self.client_port}"

    @property
    def peer_address(self) -> str:
        return f"{self.host}:{self.peer_port}"


@dataclass(frozen=True)
class Config:
    servers: tuple[ServerSpec, ...]
    secret: str = DEV_SECRET
    data_dir: Path = Path("data")
    write_concern: str = "majority"
    tick_ms: int = 50
    election_timeout_ms: tuple[int, int] = (1500, 3000)
    heartbeat_ms: int = 150
    max_frame: int = 1 << 20  # what a client may send in one frame
    peer_max_frame: int = 1 << 20  # what a server may send another (a REPLICATE or chunk is ~350 KiB)
    request_timeout_s: float = 10.0  # the longest a write or read waits before "unavailable"
    election_wait_s: float = 4.0  # how long a request waits for a primary to be elected
    snapshot_every: int = 20_000  # entries applied between snapshots
    snapshot_keep: int = 2_000  # entries kept in the log before the snapshot, for followers just behind
    token_ttl_s: int = 7 * 24 * 3600
    max_in_flight: int = 1024  # requests per connection
    max_pending_writes: int = 20_000  # writes waiting for commit, per server
    tls: TLSFiles | None = None
    limits: Limits = field(default_factory=Limits)
    extra: dict = field(default_factory=dict)

    def spec(self, server_id: int) -> ServerSpec:
        for s in self.servers:
            if s.id == server_id:
                return s
        raise ConfigError(f"server {server_id} is not in the configuration (ids: {[s.id for s in self.servers]})")

    @property
    def membership(self) -> Membership:
        """The membership a new cluster starts with (the log holds it from then on)."""
        return Membership(voters=frozenset(s.id for s in self.servers),
                          addresses=tuple(Member(s.id, s.peer_address, s.client_address)
                                          for s in sorted(self.servers, key=lambda s: s.id)))

    def address_of(self, membership: Membership, server_id: int) -> ServerSpec | None:
        """Where a server is: as ``membership`` (the log's) says, or else (a cluster
        made before the membership carried addresses) this configuration."""
        member = membership.address(server_id)
        if member is not None:
            return spec_of(member)
        return next((s for s in self.servers if s.id == server_id), None)

    def replica_dir(self, server_id: int) -> Path:
        return self.data_dir / f"replica{server_id}"

    def raft_config(self) -> RaftConfig:
        return RaftConfig(tick_ms=self.tick_ms, election_timeout_ms=self.election_timeout_ms,
                          heartbeat_ms=self.heartbeat_ms)

    @property
    def secret_bytes(self) -> bytes:
        return self.secret.encode()

    @property
    def fingerprint(self) -> str:
        """Identifies the server list: every server of a cluster must have the same."""
        text = ";".join(f"{s.id}={s.host}:{s.peer_port}:{s.client_port}" for s in sorted(self.servers, key=lambda s: s.id))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def spec_of(member: Member, metrics_port: int | None = None) -> ServerSpec:
    """A member's addresses as the membership holds them ("host:port", an IPv6
    host in brackets), as a ServerSpec."""
    phost, _, pport = member.peer.rpartition(":")
    chost, _, cport = member.client.rpartition(":")
    if phost.strip("[]") != chost.strip("[]"):
        raise ConfigError(f"server {member.id}: its peer and client addresses are on different hosts "
                          f"({member.peer}, {member.client})")
    return ServerSpec(member.id, phost.strip("[]"), int(pport), int(cport), metrics_port)


def default_servers(size: int = 3, host: str = "127.0.0.1", peer_base: int = 8081, client_base: int = 8091):
    return tuple(ServerSpec(i, host, peer_base + i - 1, client_base + i - 1) for i in range(1, size + 1))


def load(path: Path | None = None, env: dict[str, str] | None = None) -> Config:
    env = dict(os.environ) if env is None else env
    if path is None:
        cfg = Config(servers=default_servers())
    else:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: {exc}") from None
        cfg = _from_toml(raw, Path(path))
    changes: dict = {}
    if "CHORUS_SECRET" in env:
        changes["secret"] = env["CHORUS_SECRET"]
    if "CHORUS_DATA_DIR" in env:
        changes["data_dir"] = Path(env["CHORUS_DATA_DIR"])
    if env.get("CHORUS_TLS_DIR"):
        changes["tls"] = TLSFiles.in_dir(Path(env["CHORUS_TLS_DIR"]))
    if "CHORUS_WRITE_CONCERN" in env:
        changes["write_concern"] = env["CHORUS_WRITE_CONCERN"]
    for key, name in (("tick_ms", "CHORUS_TICK_MS"), ("heartbeat_ms", "CHORUS_HEARTBEAT_MS"),
                      ("snapshot_every", "CHORUS_SNAPSHOT_EVERY"), ("snapshot_keep", "CHORUS_SNAPSHOT_KEEP")):
        if name in env:
            changes[key] = _int(env[name], name)
    if "CHORUS_ELECTION_TIMEOUT_MS" in env:
        parts = env["CHORUS_ELECTION_TIMEOUT_MS"].split(",")
        if len(parts) != 2:
            raise ConfigError("CHORUS_ELECTION_TIMEOUT_MS is 'min,max' in milliseconds")
        changes["election_timeout_ms"] = (_int(parts[0], "election min"), _int(parts[1], "election max"))
    cfg = replace(cfg, **changes)
    validate(cfg)
    return cfg


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{what} must be an integer, not {text!r}") from None


def _whole(value: object) -> int:
    if type(value) is not int:
        raise TypeError(value)
    return value


def _from_toml(raw: dict, path: Path) -> Config:
    cluster = raw.get("cluster", {})
    timing = raw.get("timing", {})
    servers = []
    for s in raw.get("server", []):
        try:
            metrics = s.get("metrics_port")
            servers.append(ServerSpec(int(s["id"]), str(s.get("host", "127.0.0.1")),
                                      int(s["peer_port"]), int(s["client_port"]),
                                      None if metrics is None else _whole(metrics)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{path}: each [[server]] needs id, peer_port and client_port, and takes "
                              f"metrics_port ({exc})") from None
    if not servers:
        servers = list(default_servers())
    data_dir = Path(cluster.get("data_dir", "data"))
    if not data_dir.is_absolute():
        data_dir = path.parent / data_dir
    kw: dict = {"servers": tuple(servers), "data_dir": data_dir}
    if "tls" in raw:
        kw["tls"] = _tls(raw["tls"], path)
    if "limits" in raw:
        kw["limits"] = _limits(raw["limits"], path)
    if "secret" in cluster:
        kw["secret"] = str(cluster["secret"])
    if "write_concern" in cluster:
        kw["write_concern"] = str(cluster["write_concern"])
    try:
        for key in ("tick_ms", "heartbeat_ms"):
            if key in timing:
                kw[key] = _whole(timing[key])
        if "election_timeout_ms" in timing:
            lo, hi = timing["election_timeout_ms"]
            kw["election_timeout_ms"] = (_whole(lo), _whole(hi))
    except (TypeError, ValueError):
        raise ConfigError(
            f"{path}: [timing] takes whole numbers of milliseconds, and election_timeout_ms = [min, max]"
        ) from None
    return Config(**kw)


def _tls(t: object, path: Path) -> TLSFiles:
    if not isinstance(t, dict) or not all(isinstance(v, str) for v in t.values()):
        raise ConfigError(f"{path}: [tls] takes dir = \"...\", or ca, cert and key paths")
    unknown = set(t) - {"dir", "ca", "cert", "key"}
    if unknown:
        raise ConfigError(f"{path}: [tls] has no {', '.join(sorted(unknown))} (it takes dir, or ca, cert and key)")
    base = path.parent

    def rel(p: str) -> Path:
        return Path(p) if Path(p).is_absolute() else base / p

    files = TLSFiles.in_dir(rel(t["dir"])) if "dir" in t else None
    if files is None and not {"ca", "cert", "key"} <= set(t):
        raise ConfigError(f"{path}: [tls] needs dir, or all of ca, cert and key")
    ca = rel(t["ca"]) if "ca" in t else files.ca  # type: ignore[union-attr]
    cert = str(rel(t["cert"])) if "cert" in t else files.cert  # type: ignore[union-attr]
    key = str(rel(t["key"])) if "key" in t else files.key  # type: ignore[union-attr]
    return TLSFiles(ca, cert, key)


def _limits(raw: object, path: Path) -> Limits:
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: [limits] must be a table")
    known = {f.name: f.type for f in fields(Limits)}
    kw = {}
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(f"{path}: [limits] has no {key} (it has {', '.join(known)})")
        if type(value) not in (int, float) or value < 0 or (known[key] == "int" and type(value) is not int):
            raise ConfigError(f"{path}: [limits] {key} must be a non-negative {known[key]}, not {value!r}")
        kw[key] = value
    return Limits(**kw)


def validate(cfg: Config) -> None:
    ids = [s.id for s in cfg.servers]
    if len(set(ids)) != len(ids) or any(not 0 < i < 2**31 for i in ids):
        raise ConfigError(f"server ids must be distinct positive integers, got {ids}")
    addresses = [(s.host, p) for s in cfg.servers for p in (s.peer_port, s.client_port, s.metrics_port)
                 if p is not None]
    if len(set(addresses)) != len(addresses):
        raise ConfigError("two servers (or two ports of one server) share an address")
    if cfg.write_concern not in ("majority", "all", "async"):
        raise ConfigError(f"write_concern is majority, all or async, not {cfg.write_concern!r}")
    if len(cfg.secret) < 16:
        raise ConfigError("the cluster secret must be at least 16 characters")
    try:
        cfg.raft_config()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
