"""Driving the chat app headless, as a user would, against a real cluster:
shared by the tests and the screenshot script."""

from __future__ import annotations

import asyncio
import contextvars
import html
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from textual.pilot import Pilot
from textual.widgets import Input, ListView, Static

from chorus.tui import ChatApp
from chorus.tui.chat import ChatScreen
from chorus.tui.login import LoginScreen
from chorus.tui.widgets import ContactItem, MessageList, StatusBar

PASSWORD = "Secret123"
SIZE = (80, 24)

T = TypeVar("T")


class Headless:
    """One app, run headless in a task of its own. Textual finds the running app
    in a context variable, so two apps in one test each need their own context:
    ``await alice.do(say, "hi")`` runs ``say(pilot, "hi")`` in alice's."""

    def __init__(self, servers: list[str], **kw: Any) -> None:
        self.app = ChatApp(servers, poll_every=0.25, **kw)
        self._ready = asyncio.Event()
        self._done = asyncio.Event()

    async def __aenter__(self) -> Headless:
        self._task = asyncio.create_task(self._run())
        ready = asyncio.create_task(self._ready.wait())
        await asyncio.wait([self._task, ready], return_when=asyncio.FIRST_COMPLETED)
        if self._task.done():
            ready.cancel()
            await self._task  # it failed to start: raise why
        return self

    async def _run(self) -> None:
        async with self.app.run_test(size=SIZE) as pilot:
            self.pilot = pilot
            self.context = contextvars.copy_context()
            self._ready.set()
            await self._done.wait()

    async def __aexit__(self, *exc: object) -> None:
        self._done.set()
        await self._task

    async def do(self, step: Callable[..., Awaitable[T]], *args: Any, **kw: Any) -> T:
        return await asyncio.create_task(step(self.pilot, *args, **kw), context=self.context)


async def until(pilot: Pilot, check: Callable[[], T], what: str, timeout: float = 30.0) -> T:
    """Let the app run until ``check()`` is true (and return it), or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        await pilot.pause()
        if result := check():
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await pilot.pause(0.05)


async def press(pilot: Pilot, *keys: str) -> None:
    await pilot.press(*keys)


async def type_into(pilot: Pilot, selector: str, text: str, *, enter: bool = True, keys: bool = False) -> None:
    """Focus a field and put ``text`` in it instead of what it held: key by key
    with ``keys`` (focusing a field selects its text, so typing replaces it),
    else pasted in one go, which is quicker. Then press enter, unless told not to."""
    field = pilot.app.screen.query_one(selector, Input)
    field.focus()
    await pilot.pause()
    if keys:
        await pilot.press(*text)
    else:
        field.clear()
        field.insert_text_at_cursor(text)
    if enter:
        await pilot.press("enter")


async def log_in(pilot: Pilot, name: str, password: str = PASSWORD, *, register: bool = False) -> ChatScreen:
    """From the login screen to the chat screen: type the name and password,
    then log in, or register (which logs in too)."""
    await until(pilot, lambda: isinstance(pilot.app.screen, LoginScreen), "the login screen")
    await type_into(pilot, "#name", name, enter=False, keys=True)
    await type_into(pilot, "#password", password, enter=not register, keys=True)
    if register:
        await pilot.press("ctrl+n")
    return await until(pilot, lambda: chat_screen(pilot.app), f"{name}'s chat screen")


def chat_screen(app: ChatApp) -> ChatScreen | None:
    return app.screen if isinstance(app.screen, ChatScreen) else None


def screen_text(app: ChatApp) -> str:
    """Every piece of text on the screen as the terminal shows it (from a screenshot)."""
    pieces = re.findall(r">([^<]*)</text>", app.export_screenshot())
    return " ".join(html.unescape(p).replace("\xa0", " ") for p in pieces)


def text_of(app: ChatApp, selector: str) -> str:
    return str(app.screen.query_one(selector, Static).content)


def status(app: ChatApp) -> str:
    return str(app.screen.query_one(StatusBar).content)


def contacts(app: ChatApp) -> list[str]:
    """The contact list as shown: each name, with the unread badge if there is one."""
    return [f"{item.label.content} {item.badge.content}".strip() for item in app.screen.query(ContactItem)]


def bodies(app: ChatApp) -> list[str]:
    """The open conversation's messages, oldest first."""
    return [e.body for e in app.screen.query_one(MessageList).entries()]


async def highlight(pilot: Pilot, selector: str, index: int) -> None:
    """Move the cursor of a list to row ``index`` with the arrow keys."""
    rows = pilot.app.screen.query_one(selector, ListView)
    if rows.index is None:
        await pilot.press("down")
    while rows.index != index:
        await pilot.press("down" if rows.index < index else "up")


async def open_conversation(pilot: Pilot, peer: str) -> None:
    """Find ``peer`` with the search box and open the conversation."""
    await pilot.press("ctrl+f")
    field = pilot.app.screen.query_one("#search", Input)
    field.clear()
    await pilot.press(*peer, "enter")
    await until(pilot, lambda: any(c.split()[0] == peer for c in contacts(pilot.app)), f"{peer} in the contacts")
    await highlight(pilot, "#contacts", next(i for i, c in enumerate(contacts(pilot.app)) if c.split()[0] == peer))
    await pilot.press("enter")
    await until(pilot, lambda: (s := chat_screen(pilot.app)) and s.conversation is not None
                and s.conversation.peer.lower() == peer.lower(), f"the conversation with {peer}")


async def say(pilot: Pilot, text: str) -> None:
    await type_into(pilot, "#composer", text)

