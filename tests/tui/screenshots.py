"""Make the screenshots of the chat app in docs/ (``make screenshots``):
the login screen, a conversation, and the failover banner, from a real
3-server cluster in a temporary directory.

    python -m tests.tui.screenshots [--out docs]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from ..server.cluster import Cluster
from .harness import (
    PASSWORD,
    Headless,
    chat_screen,
    open_conversation,
    press,
    say,
    status,
    type_into,
    until,
)

ROOT = Path(__file__).resolve().parents[2]


async def save(pilot, path: Path) -> None:
    await pilot.pause()
    pilot.app.save_screenshot(path.name, str(path.parent))
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


async def scenes(cluster: Cluster, out: Path) -> None:
    first = await cluster.primary()
    bob = cluster.client()
    await bob.register("bob", PASSWORD)
    await bob.login("bob", PASSWORD)
    carol = cluster.client()
    await carol.register("carol", PASSWORD)
    await carol.login("carol", PASSWORD)

    async with Headless(cluster.addresses, tls=cluster.client_tls) as alice:
        app = alice.app
        await alice.do(until, lambda: app.cluster.primary, "the status bar")
        await alice.do(type_into, "#name", "alice", enter=False, keys=True)
        await alice.do(type_into, "#password", "secret1", enter=False, keys=True)
        await alice.do(save, out / "tui-login.svg")

        await alice.do(type_into, "#password", "Secret123", enter=False, keys=True)
        await alice.do(press, "ctrl+n")  # register
        await alice.do(until, lambda: chat_screen(app), "the chat screen")
        await bob.send("alice", "hi alice! are you coming on Friday?")
        await carol.send("alice", "the slides are ready")
        await alice.do(open_conversation, "bob")
        await alice.do(press, "ctrl+f", "backspace", "escape")  # every contact again
        for text in ("hi bob, yes I am", "I can bring the cake", "what time does it start?"):
            await alice.do(say, text)
        await alice.do(until, lambda: not app.screen.conversation.unsent, "the messages sent")
        await bob.send("alice", "at seven, see you there")
        await alice.do(until, lambda: any(e.fresh for e in app.screen.conversation.entries), "bob's answer, live")
        await alice.do(save, out / "tui-conversation.svg")

        cluster.kill(first)
        second = await cluster.primary()
        cluster.kill(second)  # no majority left: the outage lasts until a server returns
        await alice.do(until, lambda: app.cluster.reconnecting, "reconnecting")
        await alice.do(say, "the network here is flaky")
        await alice.do(until, lambda: "no primary" in status(app), "the reason")
        await alice.do(save, out / "tui-failover.svg")
        cluster.start(first)
        await alice.do(until, lambda: not app.screen.conversation.unsent, "the message sent", timeout=60)
        await alice.do(press, "ctrl+q")
    for client in (bob, carol):
        await client.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(Path(tmp), 3)
        cluster.start()
        try:
            asyncio.run(scenes(cluster, args.out.resolve()))
        finally:
            cluster.stop_all()


if __name__ == "__main__":
    main()
