"""The ``chorus`` command.

    chorus serve --id N [--config chorus.toml]     run one replica
    chorus cluster up [--size 3|5] [--data DIR]    run a local cluster, with a live table
    chorus status [--json] [--servers ...]         every server's role, term, indexes, digest
    chorus chat [--servers ...]                    the terminal chat app
    chorus register NAME                           (asks for the password)
    chorus login NAME  /  chorus logout
    chorus send TO MESSAGE...
    chorus history PEER [--limit N] [--before ID]
    chorus users [PATTERN]  /  chorus conversations
    chorus delete-message ID...  /  chorus delete-account

The session (a token any server accepts) is kept in ~/.config/chorus/session.json
(or $CHORUS_SESSION) between commands. --servers (or $CHORUS_SERVERS) lists
servers as host:port,host:port; the default is the local cluster.
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
        return json.loads(session_file().read_text())
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


async def client_command(args: argparse.Namespace) -> int:
    from chorus.client import ChorusError, Client

    session = load_session()
    async with Client(servers_of(args), retry_for=args.retry_for) as client:
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
                print(f"registered {r['name']}; now: chorus login {r['name']}")
            elif args.command == "login":
                r = await client.login(args.name, password(args))
                save_session({"token": r["token"], "name": r["name"]})
                print(f"logged in as {r['name']} (last logged off: {when(r.get('last_logoff'))})")
            elif not session.get("token"):
                print("not logged in: chorus login NAME", file=sys.stderr)
                return 1
            elif args.command == "logout":
                await client.logout()
                save_session({})
                print("logged off")
            elif args.command == "send":
                m = await client.send(args.to, " ".join(args.message))
                print(f"sent #{m.id} to {m.recipient} at {when(m.sent_at)}")
            elif args.command == "history":
                for m in reversed(await client.history(args.peer, limit=args.limit, before=args.before)):
                    print(f"#{m.id} {when(m.sent_at)} {m.sender}: {m.body}")
            elif args.command == "users":
                for name in await client.users(args.pattern, limit=args.limit):
                    print(name)
            elif args.command == "conversations":
                for c in await client.conversations():
                    unread = f" ({c.unread} unread)" if c.unread else ""
                    print(f"{c.peer}{unread}: {c.last.sender}: {c.last.body[:60]}")
            elif args.command == "delete-message":
                r = await client.delete_messages(args.ids)
                print(f"deleted {r['deleted']}" + (f"; not yours or gone: {r['not_deleted']}" if r["not_deleted"] else ""))
            elif args.command == "delete-account":
                if not args.yes and input(f"Delete {session.get('name')} and every message? [y/N] ").lower() != "y":
                    return 1
                r = await client.delete_account()
                save_session({})
                print(f"account deleted with {r['deleted_messages']} messages")
        except ChorusError as exc:
            print(f"chorus {args.command}: {exc}", file=sys.stderr)
            return 1
    return 0


async def status_command(args: argparse.Namespace) -> int:
    from chorus.client import server_status

    rows = await asyncio.gather(*(server_status(s) for s in servers_of(args)))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        if "error" in r:
            print(f"{r['address']:>21}  {r['error']}")
        else:
            print(f"{r['address']:>21}  server {r['id']} {r['role']:<9} term {r['term']:<4} commit {r['commit_index']:<8} "
                  f"applied {r['applied_index']:<8} digest {r['digest']}  primary {r['primary']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="chorus", description="A fault-tolerant chat service.")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run one replica")
    p.add_argument("--id", type=int, required=True)
    p.add_argument("--config", type=Path)
    p.add_argument("--log-level", default=os.environ.get("CHORUS_LOG_LEVEL", "INFO"))

    p = sub.add_parser("cluster", help="run a local cluster")
    csub = p.add_subparsers(dest="cluster_command", required=True)
    up = csub.add_parser("up", help="start a local cluster and show it live")
    up.add_argument("--size", type=int, choices=(3, 5), default=3)
    up.add_argument("--data", type=Path, default=Path("data"))
    up.add_argument("--fast", action="store_true", help="election timeouts of 150-300 ms")

    def client_parser(name: str, help_: str) -> argparse.ArgumentParser:
        q = sub.add_parser(name, help=help_)
        q.add_argument("--servers", help=f"host:port,... (default {DEFAULT_SERVERS})")
        q.add_argument("--retry-for", type=float, default=30.0, help="seconds to keep retrying")
        return q

    for name in ("register", "login"):
        q = client_parser(name, f"{name} a user")
        q.add_argument("name")
        q.add_argument("--password-stdin", action="store_true")
    client_parser("logout", "log off and forget the session")
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
    q = sub.add_parser("chat", help="the terminal chat app")
    q.add_argument("--servers", help=f"host:port,... (default {DEFAULT_SERVERS})")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        from chorus.server import run

        return run(args.id, args.config, args.log_level)
    if args.command == "cluster":
        from .cluster import up

        return up(args.size, args.data, fast=args.fast)
    if args.command == "status":
        return asyncio.run(status_command(args))
    if args.command == "chat":
        from chorus.tui import ChatApp

        ChatApp(servers_of(args)).run()
        return 0
    try:
        return asyncio.run(client_command(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
