"""The ``chorus`` command.

    chorus serve --id N [--config chorus.toml] [--insecure] [--join HOST:PORT,...]   run one replica
    chorus member list|add|remove|move             the cluster's members (needs the secret: --config)
    chorus backup FILE  /  chorus restore FILE --config NEW.toml   a consistent copy; a new cluster from it
    chorus recover --id N [--yes]                   after losing a majority: a survivor seeds a new cluster
    chorus cluster up [--size 3|5] [--data DIR]    run a local cluster (with TLS), with a live table
    chorus certs init|issue|renew|show             the cluster's CA and the servers' certificates
    chorus status [--json] [--servers ...]         every server's role, term, indexes, digest
    chorus chat [--servers ...]                    the terminal chat app
    chorus register NAME                           (asks for the password)
    chorus login NAME  /  chorus logout [--all]  /  chorus passwd
    chorus send TO MESSAGE...
    chorus history PEER [--limit N] [--before ID]
    chorus users [PATTERN]  /  chorus conversations
    chorus delete-message ID...  /  chorus delete-account

The session (a token any server accepts) is kept in ~/.config/chorus/session.json
(or $CHORUS_SESSION) between commands. --servers (or $CHORUS_SERVERS) lists
servers as host:port,host:port; the default is the local cluster. Clients use
TLS, checked against the cluster's CA: --ca FILE (or $CHORUS_CA), else
data/tls/ca.crt under the current directory if it exists (``make run``), else
the system's trust store; --plaintext for a server started without TLS.
Names and messages are shown with control characters escaped (``\x1b``).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_SERVERS = "127.0.0.1:8091,127.0.0.1:8092,127.0.0.1:8093"


def session_file() -> Path:
    return Path(os.environ.get("CHORUS_SESSION", Path.home() / ".config" / "chorus" / "session.json"))


def load_session() -> dict[str, Any]:
    try:
        session: dict[str, Any] = json.loads(session_file().read_text())
        return session
    except (OSError, ValueError):
        return {}


def save_session(data: dict[str, Any]) -> None:
    path = session_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.chmod(0o600)
    tmp.replace(path)


def servers_of(args: argparse.Namespace) -> list[str]:
    text = args.servers or os.environ.get("CHORUS_SERVERS") or DEFAULT_SERVERS
    return [s.strip() for s in text.split(",") if s.strip()]


def when(ms: int | None) -> str:
    if ms is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))


def password(args: argparse.Namespace, prompt: str = "Password: ") -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    return getpass.getpass(prompt)


def tls_of(args: argparse.Namespace) -> Any:
    """The client's ``tls`` option from --ca / --plaintext."""
    if getattr(args, "plaintext", False):
        return False
    return getattr(args, "ca", None)


async def client_command(args: argparse.Namespace) -> int:
    from chorus.client import ChorusError, Client
    from chorus.client.text import visible
    from chorus.wire.results import AccountDeleted, Deleted, Registered

    session = load_session()
    async with Client(servers_of(args), retry_for=args.retry_for, tls=tls_of(args)) as client:
        try:
            if args.command not in ("register", "login") and session.get("token"):
                client.token = session["token"]
                client.user = session.get("name")
            if args.command == "register":
                pw = password(args)
                if not args.password_stdin and getpass.getpass("Again: ") != pw:
                    print("the two passwords differ", file=sys.stderr)
                    return 1
                r = await client.register(args.name, pw)
                name = r.name if isinstance(r, Registered) else args.name
                print(f"registered {name}; now: chorus login {name}")
            elif args.command == "login":
                li = await client.login(args.name, password(args))
                save_session({"token": li.token, "name": li.name})
                print(f"logged in as {li.name} (last logged off: {when(li.last_logoff)})")
            elif not session.get("token"):
                print("not logged in: chorus login NAME", file=sys.stderr)
                return 1
            elif args.command == "logout":
                if args.all:
                    await client.logout_all()
                    print("logged off everywhere: every session of this user has ended")
                else:
                    await client.logout()
                    print("logged off")
                save_session({})
            elif args.command == "passwd":
                old = password(args, "Current password: ")
                new = password(args, "New password: ")
                if not args.password_stdin and getpass.getpass("Again: ") != new:
                    print("the two passwords differ", file=sys.stderr)
                    return 1
                changed = await client.change_password(old, new)
                save_session({"token": changed.token, "name": session.get("name")})
                print("password changed; every other session of this user has ended")
            elif args.command == "send":
                m = await client.send(args.to, " ".join(args.message))
                print(f"sent #{m.id} to {visible(m.recipient)} at {when(m.sent_at)}")
            elif args.command == "history":
                for m in reversed(await client.history(args.peer, limit=args.limit, before=args.before)):
                    print(f"#{m.id} {when(m.sent_at)} {visible(m.sender)}: {visible(m.body)}")
            elif args.command == "users":
                for name in await client.users(args.pattern, limit=args.limit):
                    print(visible(name))
            elif args.command == "conversations":
                for c in await client.conversations():
                    unread = f" ({c.unread} unread)" if c.unread else ""
                    print(f"{visible(c.peer)}{unread}: {visible(c.last.sender)}: {visible(c.last.body[:60])}")
            elif args.command == "delete-message":
                d = await client.delete_messages(args.ids)
                if isinstance(d, Deleted):
                    print(f"deleted {d.deleted}" + (f"; not yours or gone: {d.not_deleted}" if d.not_deleted else ""))
                else:
                    print(f"accepted as #{d.id}")
            elif args.command == "delete-account":
                if not args.yes and input(f"Delete {session.get('name')} and every message? [y/N] ").lower() != "y":
                    return 1
                gone = await client.delete_account()
                save_session({})
                print("account deleted" + (f" with {gone.deleted_messages} messages"
                                           if isinstance(gone, AccountDeleted) else ""))
        except ChorusError as exc:
            print(f"chorus {args.command}: {visible(str(exc))}", file=sys.stderr)
            return 1
    return 0


async def status_command(args: argparse.Namespace) -> int:
    from chorus.client import server_status

    rows = await asyncio.gather(*(server_status(s, tls=tls_of(args)) for s in servers_of(args)))
    if args.json:  # a row per server: its address and status, or its address and an error
        print(json.dumps([r.row() for r in rows], indent=2))
        return 0
    for row in rows:
        r = row.status
        if r is None:
            print(f"{row.address:>21}  {row.error}")
        else:
            health = "" if r.health == "ok" else f"  {r.health.upper()}: {r.health_reason}"
            print(f"{row.address:>21}  server {r.id} {r.role:<9} term {r.term:<4} commit {r.commit_index:<8} "
                  f"applied {r.applied_index:<8} digest {r.digest}  primary {r.primary}{health}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="chorus", description="A fault-tolerant chat service.")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run one replica")
    p.add_argument("--id", type=int, required=True)
    p.add_argument("--config", type=Path)
    p.add_argument("--log-level", default=os.environ.get("CHORUS_LOG_LEVEL", "INFO"))
    p.add_argument("--insecure", action="store_true",
                   help="start off loopback without TLS or without a secret of its own (and say so in the log)")
    p.add_argument("--join", metavar="HOST:PORT,...",
                   help="join a running cluster through these members' client addresses (after chorus member "
                        "add): used when the data directory is empty; no [[server]] table needed")
    p.add_argument("--ca", help="with --join: the cluster's CA (default: the configuration's [tls] ca)")

    p = sub.add_parser("certs", help="the cluster's CA and the servers' certificates")
    p.add_argument("--dir", type=Path, default=Path(os.environ.get("CHORUS_TLS_DIR", "tls")),
                   help="where the files are (default: tls, or $CHORUS_TLS_DIR)")
    ksub = p.add_subparsers(dest="certs_command", required=True)
    q = ksub.add_parser("init", help="create the cluster's CA (ca.crt, and ca.key: keep it safe)")
    q.add_argument("--name", default="chorus cluster CA")
    for name, help_ in (("issue", "a certificate for server ID, for the hosts given"),
                        ("renew", "server ID's certificate again: a new key, a new validity, the same hosts")):
        q = ksub.add_parser(name, help=help_)
        q.add_argument("id", type=int)
        q.add_argument("--host", action="append", required=name == "issue",
                       help="a name or address clients and servers reach it at (repeat for more)")
        q.add_argument("--days", type=int, default=365)
        q.add_argument("--ca-key", type=Path, help="the CA's key, if it is not in --dir")
    ksub.add_parser("show", help="every certificate in --dir: whom it names, until when")

    p = sub.add_parser("cluster", help="run a local cluster")
    csub = p.add_subparsers(dest="cluster_command", required=True)
    up = csub.add_parser("up", help="start a local cluster and show it live")
    up.add_argument("--size", type=int, choices=(3, 5), default=3)
    up.add_argument("--data", type=Path, default=Path("data"))
    up.add_argument("--fast", action="store_true", help="election timeouts of 150-300 ms")

    def tls_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("--ca", help="the cluster's CA certificate (default: $CHORUS_CA, data/tls/ca.crt, "
                                    "or the system's trust store)")
        q.add_argument("--plaintext", action="store_true", help="no TLS (a server started without it)")

    def client_parser(name: str, help_: str) -> argparse.ArgumentParser:
        q = sub.add_parser(name, help=help_)
        q.add_argument("--servers", help=f"host:port,... (default {DEFAULT_SERVERS})")
        q.add_argument("--retry-for", type=float, default=30.0, help="seconds to keep retrying")
        tls_args(q)
        return q

    for name in ("register", "login"):
        q = client_parser(name, f"{name} a user")
        q.add_argument("name")
        q.add_argument("--password-stdin", action="store_true")
    q = client_parser("logout", "log off: end this session (--all: every session of the user)")
    q.add_argument("--all", action="store_true", help="end every session of the user, on every device")
    q = client_parser("passwd", "change the password (every other session ends)")
    q.add_argument("--password-stdin", action="store_true", help="read the current, then the new one")
    q = client_parser("send", "send a message")
    q.add_argument("to")
    q.add_argument("message", nargs="+")
    q = client_parser("history", "a conversation, oldest of the page first")
    q.add_argument("peer")
    q.add_argument("--limit", type=int, default=20)
    q.add_argument("--before", type=int)
    q = client_parser("users", "list users (wildcards * and ?)")
    q.add_argument("pattern", nargs="?", default="*")
    q.add_argument("--limit", type=int, default=100)
    client_parser("conversations", "your conversations, unread counts first")
    q = client_parser("delete-message", "delete messages you sent")
    q.add_argument("ids", type=int, nargs="+")
    q = client_parser("delete-account", "delete your account and every message")
    q.add_argument("--yes", action="store_true")
    q = client_parser("status", "every server's role, term, indexes and digest")
    q.add_argument("--json", action="store_true")
    from .member import add_parsers

    add_parsers(sub, DEFAULT_SERVERS)
    q = sub.add_parser("chat", help="the terminal chat app")
    q.add_argument("--servers", help=f"host:port,... (default {DEFAULT_SERVERS})")
    tls_args(q)
    return ap


def certs_command(args: argparse.Namespace) -> int:
    from chorus.server import certs

    d: Path = args.dir
    try:
        if args.certs_command == "init":
            crt = certs.create_ca(d, args.name)
            print(f"created the CA: {crt} (give it to every server and client) and {d / 'ca.key'} "
                  "(needed only to issue certificates: keep it safe)")
        elif args.certs_command == "issue":
            crt = certs.issue_server(d, args.id, args.host, args.days, args.ca_key)
            print(f"issued {crt} and its key for server {args.id} ({', '.join(args.host)})")
        elif args.certs_command == "renew":
            crt = certs.renew_server(d, args.id, args.days, args.ca_key, args.host)
            info = certs.inspect(crt)
            print(f"renewed {crt}: valid until {info.not_after:%Y-%m-%d}; a running server picks it up "
                  "for its next connection (or at once on SIGHUP)")
        else:
            for path in sorted(d.glob("*.crt")):
                info = certs.inspect(path)
                who = "CA" if info.is_ca else f"server {info.server_id}" if info.server_id else info.subject
                print(f"{path.name:<18} {who:<12} until {info.not_after:%Y-%m-%d} ({info.days_left:.0f} days)"
                      + (f"  hosts {', '.join(info.hosts)}" if info.hosts else ""))
    except certs.CertError as exc:
        print(f"chorus certs: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        from chorus.server import run

        from .member import joiner

        join = joiner(args.id, args.join.split(","), args.ca) if args.join else None
        return run(args.id, args.config, args.log_level, insecure=args.insecure, join=join)
    if args.command in ("member", "backup", "restore", "recover"):
        from .member import member_command

        return member_command(args, DEFAULT_SERVERS)
    if args.command == "certs":
        return certs_command(args)
    if args.command == "cluster":
        from .cluster import up

        return up(args.size, args.data, fast=args.fast)
    if args.command == "status":
        return asyncio.run(status_command(args))
    if args.command == "chat":
        from chorus.tui import ChatApp

        ChatApp(servers_of(args), tls=tls_of(args)).run()
        return 0
    try:
        return asyncio.run(client_command(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
