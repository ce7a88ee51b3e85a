"""The chat app, driven headless through its keys at 80x24, against a real
3-server cluster: what its users see, and what the cluster then holds."""

from __future__ import annotations

import asyncio

from chorus.client import Client
from chorus.tui.login import LoginScreen
from chorus.tui.model import SENDING, SENT, moment
from chorus.tui.widgets import MessageItem, MessageList

from ..server.cluster import Cluster
from .harness import (
    PASSWORD,
    Headless,
    bodies,
    chat_screen,
    contacts,
    highlight,
    log_in,
    open_conversation,
    press,
    say,
    screen_text,
    status,
    text_of,
    type_into,
    until,
)


def run(coro):
    return asyncio.run(coro)


def states(app) -> dict[str, str]:
    """Each shown message's text and its delivery state."""
    return {e.body: e.state for e in app.screen.query_one(MessageList).entries()}


def shown(app, body: str) -> str:
    """The row of a message as the user reads it."""
    row = next(r for r in app.screen.query(MessageItem) if r.entry.body == body)
    return str(row.label.content)


async def library_user(cluster: Cluster, name: str) -> Client:
    client = cluster.client()
    await client.register(name, PASSWORD)
    await client.login(name, PASSWORD)
    return client


async def count_in_history(client: Client, peer: str, body: str) -> int:
    return sum(m.body == body for m in await client.history(peer, limit=100))


def test_the_login_screen_checks_the_rules_as_the_user_types(cluster: Cluster) -> None:
    async def main():
        await cluster.primary()
        taken = await library_user(cluster, "alice")
        async with Headless(cluster.addresses, tls=cluster.client_tls) as ui:
            app = ui.app
            await ui.do(until, lambda: isinstance(app.screen, LoginScreen), "the login screen")
            assert "3-20 letters" in text_of(app, "#name-rule .text") and "uppercase" in text_of(app, "#password-rule .text")

            await ui.do(type_into, "#name", "al", enter=False, keys=True)
            await ui.do(type_into, "#password", "secret", enter=False, keys=True)
            assert text_of(app, "#name-rule .mark") == "✗"
            assert text_of(app, "#password-error") == "still needs at least 8 characters, a digit, an uppercase letter"
            await ui.do(press, "ctrl+n")  # register: refused before asking the cluster
            assert text_of(app, "#name-error").startswith("a user name is 3-20")

            await ui.do(type_into, "#name", "alice", enter=False, keys=True)  # (the field selects all on focus)
            await ui.do(type_into, "#password", "Secret123", enter=False, keys=True)
            assert text_of(app, "#name-rule .mark") == text_of(app, "#password-rule .mark") == "✓"
            assert text_of(app, "#password-error") == ""
            await ui.do(press, "ctrl+n")  # the name is taken: the server says so, under the name
            await ui.do(until, lambda: text_of(app, "#name-error"), "the server's answer")
            assert text_of(app, "#name-error") == "the name alice is taken"

            await ui.do(type_into, "#password", "Wrong1234", keys=True)  # enter logs in
            await ui.do(until, lambda: text_of(app, "#password-error"), "the server's answer")
            assert text_of(app, "#password-error") == "wrong user name or password"
            assert isinstance(app.screen, LoginScreen)
        await taken.close()

    run(main())


def test_two_users_chat_live_page_back_delete_and_leave(cluster: Cluster) -> None:
    async def main():
        await cluster.primary()
        async with Headless(cluster.addresses, tls=cluster.client_tls) as alice, Headless(cluster.addresses, tls=cluster.client_tls) as bob:
            a, b = alice.app, bob.app
            await alice.do(log_in, "alice", register=True)
            await bob.do(log_in, "bob", register=True)
            assert "First time here" in text_of(a, "#welcome")

            # Alice writes seven messages; each goes from "sending" to "sent".
            await alice.do(open_conversation, "bob")
            for k in range(7):
                await alice.do(say, f"note {k}")
            assert states(a)["note 6"] in (SENDING, SENT)
            await alice.do(until, lambda: set(states(a).values()) == {SENT}, "every message sent")
            assert bodies(a) == [f"note {k}" for k in range(7)]
            assert shown(a, "note 6").endswith("note 6  ✓ sent")

            # Bob sees them arrive live: a badge on alice, first in his contacts.
            await bob.do(until, lambda: contacts(b)[:1] == ["alice 7"], "alice's unread badge")
            await bob.do(open_conversation, "alice")
            await bob.do(until, lambda: len(bodies(b)) == 5, "the newest five")  # the default view count
            assert bodies(b) == [f"note {k}" for k in range(2, 7)]
            await bob.do(until, lambda: contacts(b)[:1] == ["alice"], "the badge cleared")
            await bob.do(press, "ctrl+o")  # view more
            await bob.do(until, lambda: len(bodies(b)) == 7, "the older two")
            assert bodies(b) == [f"note {k}" for k in range(7)]

            # Bob answers; alice sees it appear, highlighted.
            await bob.do(say, "got all seven")
            await alice.do(until, lambda: "got all seven" in bodies(a), "bob's answer, live")
            fresh = next(e for e in a.screen.query_one(MessageList).entries() if e.body == "got all seven")
            assert fresh.fresh and shown(a, "got all seven").startswith("● ")

            # Alice selects one of her messages and deletes it.
            await alice.do(press, "escape", "tab")  # from the contacts to the messages
            assert a.screen.focused is a.screen.query_one(MessageList)
            footer = screen_text(a)  # every key fits in 80 columns
            for key in ("Select", "Delete", "Find", "More", "Settings", "Quit"):
                assert key in footer
            rows = a.screen.query_one(MessageList).children
            await alice.do(highlight, "#messages", next(i for i, r in enumerate(rows) if isinstance(r, MessageItem) and r.entry.body == "note 3"))
            await alice.do(press, "space")
            assert shown(a, "note 3").startswith("[x] ")
            await alice.do(press, "delete")
            await alice.do(until, lambda: "note 3" not in bodies(a), "note 3 gone")
            checker = cluster.client()
            await checker.login("bob", PASSWORD)
            assert await count_in_history(checker, "alice", "note 3") == 0
            assert await count_in_history(checker, "alice", "note 4") == 1

            # Bob shows two messages a page.
            await bob.do(press, "ctrl+s")
            await bob.do(type_into, "#count", "2", enter=True)
            await bob.do(until, lambda: len(bodies(b)) == 2, "two messages a page")
            assert (await checker.stats()).view_count == 2

            # Bob logs out, alice writes, bob logs in again: when he left, and what came since.
            await bob.do(press, "ctrl+s", "tab", "tab", "enter")  # the count, save, log out
            await bob.do(until, lambda: isinstance(b.screen, LoginScreen), "bob's login screen")
            left = (await checker.stats()).last_logoff
            assert left is not None
            await alice.do(say, "still there?")
            await alice.do(until, lambda: states(a).get("still there?") == SENT, "alice's message sent")
            await bob.do(log_in, "bob")
            assert f"You last logged off at {moment(left)}." in text_of(b, "#welcome")
            assert "Since then, new messages from alice (1 unread)." in text_of(b, "#welcome")
            assert contacts(b)[:1] == ["alice 1"]

            # Alice deletes her account, once she confirms.
            settings_delete_account = ("ctrl+s", "tab", "tab", "tab", "enter")  # count, save, log out, delete
            await alice.do(press, *settings_delete_account)
            await alice.do(press, "enter")  # the focus is on Cancel
            assert chat_screen(a) is not None
            await alice.do(press, *settings_delete_account, "tab", "enter")
            await alice.do(until, lambda: isinstance(a.screen, LoginScreen), "the login screen")
            assert "account alice deleted" in text_of(a, "#form-status")
            assert await checker.users("alice") == []
            assert await checker.history("alice") == []
            await checker.close()

            # Bob quits: the app logs him off first.
            await bob.do(press, "ctrl+q")
            await bob.do(until, lambda: not b.is_running, "the app to exit")
        bob_again = cluster.client()
        assert (await bob_again.login("bob", PASSWORD)).last_logoff > left
        await bob_again.close()

    run(main())


def test_a_failover_with_the_app_open(cluster: Cluster) -> None:
    """kill -9 the primary: "reconnecting..." shows, a message typed right then
    arrives once. Then the new primary dies too, leaving no majority: a message
    typed during that outage waits, and goes out, once, when a server returns."""
    async def main():
        first = await cluster.primary()
        bob = await library_user(cluster, "bob")
        # The app talks to the primary, so that killing it breaks the app's own connection
        # (on a backup, a failover quicker than the app's look at the servers could pass unseen).
        order = [cluster.address(first)] + [a for a in cluster.addresses if a != cluster.address(first)]
        async with Headless(order, shuffle=False, tls=cluster.client_tls) as alice:
            app = alice.app
            await alice.do(log_in, "alice", register=True)
            await alice.do(until, lambda: "connected to" in status(app) and "primary 127.0.0.1" in status(app),
                           "the status bar")
            assert app.cluster.primary == app.cluster.connected == cluster.address(first)
            await alice.do(open_conversation, "bob")
            await alice.do(say, "before")
            await alice.do(until, lambda: states(app).get("before") == SENT, "the first message sent")

            cluster.kill(first)
            await alice.do(until, lambda: app.cluster.reconnecting, "reconnecting", timeout=10)
            assert status(app).startswith("⟳ reconnecting...")
            assert "reconnecting..." in screen_text(app)
            await alice.do(say, "during the failover")
            await alice.do(until, lambda: states(app).get("during the failover") == SENT, "the message sent", timeout=60)
            second = await cluster.primary()
            await alice.do(until, lambda: not app.cluster.reconnecting and app.cluster.primary == cluster.address(second),
                           "the new primary in the status bar")
            assert await count_in_history(bob, "alice", "during the failover") == 1

            cluster.kill(second)  # two of three down: no primary can be elected
            await alice.do(until, lambda: app.cluster.reconnecting, "reconnecting", timeout=10)
            await alice.do(say, "in the outage")
            assert states(app)["in the outage"] == SENDING and shown(app, "in the outage").endswith("… sending")
            await alice.do(until, lambda: app.cluster.reconnecting and "sending" in shown(app, "in the outage"),
                           "the outage, seen")
            assert "sending" in screen_text(app) and "reconnecting..." in screen_text(app)
            await alice.do(press, "ctrl+q")  # quitting now would drop it: the app asks first
            assert "1 message is still being sent. Quit anyway?" in text_of(app, "#question")
            await alice.do(press, "enter")  # no
            cluster.start(first)
            await alice.do(until, lambda: states(app).get("in the outage") == SENT, "the message sent", timeout=60)
            await alice.do(until, lambda: not app.cluster.reconnecting, "the banner gone")
            cluster.start(second)

            # The app keeps working: bob's answer arrives live, alice's goes out.
            await bob.send("alice", "all three got through")
            await alice.do(until, lambda: "all three got through" in bodies(app), "bob's answer, live", timeout=30)
            await alice.do(say, "after")
            await alice.do(until, lambda: states(app).get("after") == SENT, "the last message sent")
            page = [m.body for m in reversed(await bob.history("alice", limit=100))]
            assert page == ["before", "during the failover", "in the outage", "all three got through", "after"]
            assert bodies(app) == page
            await alice.do(press, "ctrl+q")
            await alice.do(until, lambda: not app.is_running, "the app to exit")
        await bob.close()

    run(main())
