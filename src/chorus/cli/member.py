"""``chorus member list|add|remove|move`` and the join of ``chorus serve --join``.

An operator's commands prove they know the cluster secret (from ``--config``,
or $CHORUS_SECRET), over TLS checked against the cluster's CA (``--ca``, or the
configuration's [tls] ca).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import msgspec

from chorus.client.admin import Admin
from chorus.raft import Membership
from chorus.server.admin import Joining
from chorus.server.config import Config, ConfigError, load
from chorus.wire.errors import ChorusError


def add_parsers(sub: Any, default_servers: str) -> None:
    p = sub.add_parser("member", help="the cluster's members: list, add, remove, move (needs the secret)")
    msub = p.add_subparsers(dest="member_command", required=True)

    def common(q: argparse.ArgumentParser) -> argparse.ArgumentParser:
        q.add_argument("--config", type=Path, help="the cluster's configuration (its secret, CA and servers)")
        q.add_argument("--servers", help=f"host:port,... of any members (default: the configuration's, "
                                         f"or {default_servers})")
        q.add_argument("--ca", help="the cluster's CA certificate (default: the configuration's)")
        q.add_argument("--plaintext", action="store_true", help="no TLS (a cluster started without it)")
        return q

    q = common(msub.add_parser("list", help="every member: id, addresses, voter or learner, how far behind"))
    q.add_argument("--json", action="store_true")
    for name, help_ in (("add", "add server ID: a learner that becomes a voter once it has caught up"),
                        ("move", "record server ID's new addresses (before starting it there)")):
        q = common(msub.add_parser(name, help=help_))
        q.add_argument("id", type=int)
        q.add_argument("--peer", required=True, help="HOST:PORT the other servers reach it at")
        q.add_argument("--client", required=True, help="HOST:PORT clients reach it at")
        if name == "add":
            q.add_argument("--learner", action="store_true", help="stay a learner: serve reads and pushes, "
                                                                  "never vote")
    q = common(msub.add_parser("remove", help="remove server ID (a primary hands over first)"))
    q.add_argument("id", type=int)

    q = common(sub.add_parser("backup", help="a consistent snapshot of the cluster's state, taken online, "
                                             "to FILE (and FILE.sha256)"))
    q.add_argument("file", type=Path)
    q = sub.add_parser("recover", help="after losing a majority: make surviving server ID (stopped) the seed "
                                       "of a new cluster, knowingly")
    q.add_argument("--id", type=int, required=True)
    q.add_argument("--config", type=Path, help="its configuration (its data directory, secret and CA)")
    q.add_argument("--ca", help="the cluster's CA certificate (default: the configuration's)")
    q.add_argument("--yes", action="store_true", help="do it (without: only say what it would do and lose)")
    q = sub.add_parser("restore", help="seed a new cluster from a backup: every server of --config gets it")
    q.add_argument("file", type=Path)
    q.add_argument("--config", type=Path, required=True, help="the new cluster's configuration")
    q.add_argument("--data", type=Path, help="its data directory (default: the configuration's data_dir)")


def _setup(args: argparse.Namespace, default_servers: str) -> tuple[list[str], str, Any]:
    cfg = load(args.config) if args.config else None
    secret = os.environ.get("CHORUS_SECRET") or (cfg.secret if cfg else None)
    if not secret:
        raise ConfigError("the cluster secret is needed: --config FILE, or CHORUS_SECRET")
    if args.servers:
        servers = args.servers.split(",")
    elif cfg is not None and args.config and cfg.servers:
        servers = [s.client_address for s in cfg.servers]
    else:
        servers = default_servers.split(",")
    tls: Any = False if args.plaintext else (args.ca or (cfg.tls.ca if cfg and cfg.tls else None)
                                             or os.environ.get("CHORUS_CA") or _local_ca())
    return servers, secret, tls


def _local_ca() -> Any:
    local = Path("data/tls/ca.crt")
    return local if local.exists() else None


async def _member(args: argparse.Namespace, default_servers: str) -> int:
    servers, secret, tls = _setup(args, default_servers)
    async with Admin(servers, secret, tls=tls) as admin:
        if args.command == "backup":
            taken = await admin.backup(args.file)
            print(f"{args.file}: the state at log index {taken.index} (term {taken.term}), {taken.size:,} bytes, "
                  f"digest {taken.digest}, SHA-256 {taken.sha256} (in {args.file}.sha256)")
            return 0
        cmd = args.member_command
        if cmd == "list":
            listed = await admin.members()
            if args.json:
                print(json.dumps(msgspec.to_builtins(listed), indent=2))
                return 0
            print(f"cluster {listed.cluster}, asked of server {listed.server}"
                  + (", a membership change in progress" if listed.change_pending else ""))
            for m in listed.members:
                lag = f"{m.lag} behind" if m.lag is not None else ""
                print(f"  {m.id:>4}  {m.role:<7} {'primary' if m.primary else '':<7} peer {m.peer or '?':<21} "
                      f"client {m.client or '?':<21} {lag}"
                      + (" (to be a voter once caught up)" if m.promoting else "")
                      + (" RECOVERING" if m.recovering else "") + (" UNREACHABLE" if m.reachable is False else ""))
            if listed.removed:
                print(f"  removed before (ids not to be used again): {', '.join(map(str, listed.removed))}")
            return 0
        if cmd == "add":
            done = await admin.add(args.id, peer=args.peer, client=args.client, learner=args.learner)
            what = "a learner" if args.learner else "a learner, to become a voter once it has caught up"
            print(f"server {args.id} added as {what} (log index {done.index}); start it with: "
                  f"chorus serve --id {args.id} --join {','.join(servers)}")
        elif cmd == "move":
            done = await admin.move(args.id, peer=args.peer, client=args.client)
            print(f"server {args.id} is now at {args.peer} (peers) and {args.client} (clients) "
                  f"(log index {done.index}); start it there")
        else:
            done = await admin.remove(args.id)
            print(f"server {args.id} removed (log index {done.index}); voters now {done.voters}")
    return 0


def member_command(args: argparse.Namespace, default_servers: str) -> int:
    """``chorus member ...``, ``chorus backup`` and ``chorus restore``."""
    try:
        if args.command == "recover":
            return asyncio.run(_recover(args))
        if args.command == "restore":
            from chorus.server.restore import restore

            done = restore(args.file, load(args.config), args.data)
            print(f"restored the state at log index {done.index} (digest {done.digest}) for servers "
                  f"{', '.join(map(str, done.servers))}: start them (chorus serve --id N --config {args.config})")
            return 0
        return asyncio.run(_member(args, default_servers))
    except (ChorusError, ConfigError, OSError) as exc:
        print(f"chorus {args.command}: {exc}", file=sys.stderr)
        return 1


async def _recover(args: argparse.Namespace) -> int:
    from chorus.client import server_status
    from chorus.raft.quorum import size as quorum
    from chorus.server.recover import inspect, recover

    cfg = load(args.config)
    me = inspect(cfg, args.id)
    tls: Any = args.ca or (cfg.tls.ca if cfg.tls else False)

    def address(sid: int) -> str | None:
        spec = cfg.address_of(me.membership, sid)
        return spec.client_address if spec is not None else None

    own = address(args.id)
    if own is not None and (await server_status(own, tls=tls)).status is not None:
        raise ConfigError(f"server {args.id} answers at {own}: stop it first (recover works on its data directory)")
    others = sorted(me.membership.voters - {args.id})
    rows = await asyncio.gather(*(server_status(a, tls=tls) for a in map(address, others) if a is not None))
    up = [r.status.id for r in rows if r.status is not None]
    if 1 + len(up) >= quorum(len(me.membership.voters)):
        raise ConfigError(f"a majority of the voters can be reached (server {args.id} and {up} of {others}): the "
                          "cluster goes on by itself once this server is started again; nothing to recover")
    down = [i for i in others if i not in up]
    print(f"server {args.id} holds the log up to index {me.last_index} (term {me.term}), known committed up to "
          f"{me.commit}, applied up to {me.applied}; its last command is of "
          f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(me.log_time / 1000)) if me.log_time else 'never'}.\n"
          f"Servers {down} cannot be reached. What only they had is lost: writes acknowledged after index "
          f"{me.last_index}. Entries {me.commit + 1}..{me.last_index}, which may or may not have been "
          "acknowledged, are kept as committed.")
    if not args.yes:
        print("Nothing was changed: run again with --yes to make it so.")
        return 2
    done = recover(cfg, args.id)
    print(f"server {args.id} is now the only voter of the cluster (term {done.term}). Start it "
          f"(chorus serve --id {args.id} ...), then add servers with new ids (chorus member add, chorus serve "
          f"--join): ids {sorted(done.membership.removed)} are not to be used again.")
    return 0


def joiner(server_id: int, servers: list[str], ca: str | None) -> Any:
    """For ``chorus serve --join``: asks a member what this server joins."""

    def join(cfg: Config) -> Joining:
        tls: Any = ca or (cfg.tls.ca if cfg.tls else False)

        async def ask() -> Joining:
            async with Admin(servers, cfg.secret, tls=tls) as admin:
                listed = await admin.members()
            membership = Membership.decode(listed.membership.encode())
            if server_id in membership.removed:
                raise ConfigError(f"server {server_id} was removed from the cluster: a server that comes back "
                                  "needs a new id (chorus member add NEW_ID ...)")
            if server_id not in membership.members or membership.address(server_id) is None:
                raise ConfigError(f"server {server_id} is not a member of the cluster: add it first "
                                  f"(chorus member add {server_id} --peer HOST:PORT --client HOST:PORT)")
            return Joining(listed.cluster, membership)

        try:
            return asyncio.run(ask())
        except ChorusError as exc:
            raise ConfigError(f"could not join through {', '.join(servers)}: {exc}") from None

    return join
