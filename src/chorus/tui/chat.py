"""The chat screen: contacts on the left, one conversation on the right.

Every request runs in a worker, so a failover (which can hold a request for a
while) never freezes the screen. Sends go out one at a time, in the order typed,
from an outbox: the client retries each with the same sequence number until a
server answers, so a message typed during a failover is sent exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message as UIMessage
from textual.screen import Screen
from textual.widgets import Footer, Input, ListView, Static

from chorus.chat.rules import body_problem, name_key
from chorus.client import ChorusError, Client, Conversation, Message, Unauthenticated
from chorus.wire.results import AccountDeleted, Deleted, ViewCountSet

from .dialogs import ConfirmScreen, SettingsScreen
from .model import Contacts, ConversationLog, Entry, search_pattern, since_last_time
from .widgets import ContactItem, ContactList, MessageItem, MessageList, MoreItem, StatusBar

REFRESH_EVERY = 10.0  # seconds between re-reads of the contact list (new users, unread counts)


def unsent_text(n: int) -> str:
    return f"{n} message{'s are' if n > 1 else ' is'} still being sent."


@dataclass
class Session:
    name: str
    last_logoff: int | None  # ms
    view_count: int


class ChatScreen(Screen):
    DEFAULT_CSS = """
    #side {
        width: 26;
        border-right: vkey $panel;
    }
    #contacts, #messages {
        height: 1fr;
    }
    #pane {
        width: 1fr;
    }
    #title {
        height: 1;
        padding: 0 1;
        background: $boost;
        text-style: bold;
    }
    #welcome {
        height: 1fr;
        padding: 1 2;
    }
    """

    BINDINGS = [
        Binding("ctrl+f", "find", "Find"),
        Binding("ctrl+o", "more", "More"),
        Binding("ctrl+s", "settings", "Settings"),
        Binding("escape", "contacts", "Contacts", show=False),
    ]

    class SessionEnded(UIMessage):
        """Back to the login screen: the user logged out (``log_off``), or the account is gone."""

        def __init__(self, notice: str, *, log_off: bool) -> None:
            super().__init__()
            self.notice, self.log_off = notice, log_off

    def __init__(self, client: Client, session: Session, conversations: list[Conversation]) -> None:
        super().__init__()
        self.client = client
        self.session = session
        self.contacts = Contacts(session.name)
        self.contacts.set_conversations(conversations)
        self.greeting = since_last_time(session.last_logoff, conversations)
        self.pattern = "*"
        self.conversation: ConversationLog | None = None  # the open conversation
        self.logs: dict[str, ConversationLog] = {}
        self.outbox: asyncio.Queue[tuple[ConversationLog, Entry]] = asyncio.Queue()
        self.seen = max((c.last.id for c in conversations), default=0)  # live pushes start after it

    def compose(self) -> ComposeResult:
        yield StatusBar(self.session.name)
        with Horizontal():
            with Vertical(id="side"):
                yield Input(placeholder="find: name, * or ?", id="search")
                yield ContactList(self.session.name, id="contacts")
            with Vertical(id="pane"):
                yield Static(id="title")
                yield Static(Text(self.greeting), id="welcome")
                yield MessageList(id="messages")
                yield Input(placeholder="pick someone on the left", id="composer", disabled=True)
        yield Footer()

    async def on_mount(self) -> None:
        self.query_one("#title", Static).update(Text(f"Welcome, {self.session.name}"))
        self.query_one("#messages").display = False
        await self.show_contacts()
        self.query_one("#contacts").focus()
        self.listen()
        self.send_queued()
        self.refresh_contacts()
        self.refresher = self.set_interval(REFRESH_EVERY, self.refresh_contacts)

    def stop(self) -> None:
        """The session is over: no more requests, pushes or refreshes from this screen
        (none must touch its widgets while they are being taken down)."""
        self.refresher.stop()
        self.workers.cancel_node(self)

    @property
    def unsent(self) -> int:
        return sum(len(log.unsent) for log in self.logs.values())

    # ------------------------------------------------------------------ contacts
    async def show_contacts(self) -> None:
        await self.query_one(ContactList).show(self.contacts.visible(self.pattern))

    @on(Input.Changed, "#search")
    async def search(self, event: Input.Changed) -> None:
        self.pattern = search_pattern(event.value)
        await self.show_contacts()
        self.refresh_contacts(pause=0.2)

    @on(Input.Submitted, "#search")
    def search_done(self) -> None:
        self.query_one("#contacts").focus()

    @work(exclusive=True, group="contacts")
    async def refresh_contacts(self, pause: float = 0.0) -> None:
        """Read the conversations and the users matching the search again (after
        ``pause``, so that typing a search asks once, at the end)."""
        await asyncio.sleep(pause)
        try:
            conversations = await self.client.conversations()
            users = await self.client.users(self.pattern, limit=200)
        except Unauthenticated as exc:
            self.post_message(self.SessionEnded(f"signed out: {exc.message}", log_off=False))
            return
        except ChorusError:
            return  # the next refresh tries again
        self.contacts.set_conversations(conversations)
        self.contacts.set_users(users)
        if self.conversation is not None:
            self.contacts.read(self.conversation.peer)
        await self.show_contacts()

    @on(ListView.Selected, "#contacts")
    def pick(self, event: ListView.Selected) -> None:
        if isinstance(event.item, ContactItem):
            self.open_conversation(event.item.contact_name)

    def action_find(self) -> None:
        self.query_one("#search").focus()

    def action_contacts(self) -> None:
        self.query_one("#contacts").focus()

    # -------------------------------------------------------------- conversation
    @property
    def messages(self) -> MessageList:
        return self.query_one(MessageList)

    @work(exclusive=True, group="open")
    async def open_conversation(self, peer: str) -> None:
        """Show the newest page of the conversation with ``peer`` (what is still being sent stays)."""
        log = self.logs.setdefault(name_key(peer), ConversationLog(self.session.name, peer))
        log.reset()
        self.conversation = log
        self.query_one("#welcome").display = False
        self.messages.display = True
        self.query_one("#title", Static).update(Text.assemble(("conversation with ", "dim"), peer))
        composer = self.query_one("#composer", Input)
        composer.disabled = False
        composer.placeholder = f"message {peer} (enter sends)"
        composer.focus()
        await self.messages.show(log)
        try:
            page = await self.client.history(peer, limit=self.session.view_count)
        except ChorusError as exc:
            self.notify(f"could not read the conversation: {exc.message}", severity="error", markup=False)
            return
        log.add_page(page, self.session.view_count)
        await self.messages.show(log, to_end=True)
        if (contact := self.contacts.get(peer)) is not None and contact.unread and log.newest_id:
            self.contacts.read(peer)
            await self.show_contacts()
            self.mark_read(peer, log.newest_id)

    @work(exclusive=True, group="more")
    async def action_more(self) -> None:
        """View more: the page of older messages before the oldest shown."""
        log = self.conversation
        if log is None or not log.has_more:
            return
        try:
            page = await self.client.history(log.peer, limit=self.session.view_count, before=log.oldest_id)
        except ChorusError as exc:
            self.notify(f"could not read older messages: {exc.message}", severity="error", markup=False)
            return
        log.add_page(page, self.session.view_count)
        if log is self.conversation:
            await self.messages.show(log, to_top=True)

    @on(ListView.Selected, "#messages")
    async def select_row(self, event: ListView.Selected) -> None:
        if isinstance(event.item, MoreItem):
            self.action_more()  # (a worker of its own)
        else:
            await self.action_toggle_message()

    async def action_toggle_message(self) -> None:
        row = self.messages.highlighted_child
        if self.conversation is None or not isinstance(row, MessageItem):
            return
        if not self.conversation.toggle(row.entry):
            self.notify("only your own sent messages can be selected", severity="warning")
        await self.messages.show(self.conversation)

    @work(exclusive=True, group="delete")
    async def action_delete_messages(self) -> None:
        """Delete the selected messages, or else the highlighted one; only the user's own."""
        log = self.conversation
        if log is None:
            return
        ids = log.selected_ids()
        row = self.messages.highlighted_child
        if not ids and isinstance(row, MessageItem) and log.mine(row.entry) and row.entry.id is not None:
            ids = [row.entry.id]
        if not ids:
            self.notify("select your own messages first (space)", severity="warning")
            return
        try:
            result = await self.client.delete_messages(ids)
        except ChorusError as exc:
            self.notify(f"could not delete: {exc.message}", severity="error", markup=False)
            return
        deleted = result.deleted if isinstance(result, Deleted) else ids
        log.remove(deleted)
        if log is self.conversation:
            await self.messages.show(log)
        n = len(deleted)
        self.notify(f"deleted {n} message{'s' if n != 1 else ''}")

    # -------------------------------------------------------------------- sending
    @on(Input.Submitted, "#composer")
    async def compose_message(self, event: Input.Submitted) -> None:
        if self.conversation is None:
            return
        if problem := body_problem(event.value):
            self.notify(problem, severity="warning", markup=False)
            return
        entry = self.conversation.add_pending(event.value)
        event.input.clear()
        await self.messages.show(self.conversation, to_end=True)
        self.outbox.put_nowait((self.conversation, entry))

    @work(group="outbox")
    async def send_queued(self) -> None:
        """Send what was typed, one message at a time, in order."""
        while True:
            log, entry = await self.outbox.get()
            try:
                sent = await self.client.send(log.peer, entry.body)
            except Unauthenticated as exc:
                self.post_message(self.SessionEnded(f"signed out: {exc.message}", log_off=False))
                return
            except ChorusError as exc:
                log.fail(entry, exc.message or exc.code)
            else:
                log.confirm(entry, sent)
                self.contacts.message(sent, open_peer=self.conversation.peer if self.conversation else None)
                await self.show_contacts()
            if log is self.conversation:
                await self.messages.show(log)

    # ----------------------------------------------------------------------- live
    @work(group="listen")
    async def listen(self) -> None:
        """Messages as they are committed, to or from the user, across failovers."""
        try:
            async for m in self.client.events(after=self.seen):
                await self.pushed(m)
        except Unauthenticated as exc:
            self.post_message(self.SessionEnded(f"signed out: {exc.message}", log_off=False))

    async def pushed(self, m: Message) -> None:
        log = self.conversation
        contact = self.contacts.message(m, open_peer=log.peer if log else None)
        if log is not None and name_key(contact.name) == name_key(log.peer):
            entry = log.receive(m)
            if entry is not None:
                await self.messages.show(log, to_end=True)
                if entry.fresh:
                    self.mark_read(log.peer, m.id)
        await self.show_contacts()

    @work(group="mark_read")
    async def mark_read(self, peer: str, upto: int) -> None:
        # On failure the badge comes back at the next refresh, and goes at the next open.
        with contextlib.suppress(ChorusError):
            await self.client.mark_read(peer, upto)

    # -------------------------------------------------------------------- account
    def action_settings(self) -> None:
        self.app.push_screen(SettingsScreen(self.session.name, self.session.view_count), self.settings_chosen)

    def settings_chosen(self, choice: int | str | None) -> None:
        if isinstance(choice, int):
            self.set_view_count(choice)
        elif choice == "log_out" and self.unsent:
            question = f"{unsent_text(self.unsent)} Log out anyway?"
            self.app.push_screen(ConfirmScreen(question, "Log out"), self.log_out)
        elif choice == "log_out":
            self.log_out(True)
        elif choice == "delete_account":
            question = (f"Delete the account {self.session.name}, and every message of every "
                        "conversation it is in, for everyone? This cannot be undone.")
            self.app.push_screen(ConfirmScreen(question, "Delete account"), self._delete_account_if)

    def _delete_account_if(self, yes: bool | None) -> None:
        self.delete_account(yes)

    def log_out(self, yes: bool | None) -> None:
        if yes:
            self.post_message(self.SessionEnded("logged out", log_off=True))

    @work(group="settings")
    async def set_view_count(self, count: int) -> None:
        try:
            result = await self.client.set_view_count(count)
        except ChorusError as exc:
            self.notify(f"could not save the view count: {exc.message}", severity="error", markup=False)
            return
        self.session.view_count = result.view_count if isinstance(result, ViewCountSet) else count
        self.notify(f"conversations now show {self.session.view_count} messages at a time")
        if self.conversation is not None:
            self.open_conversation(self.conversation.peer)

    @work(group="settings")
    async def delete_account(self, yes: bool | None) -> None:
        if not yes:
            return
        try:
            result = await self.client.delete_account()
        except ChorusError as exc:
            self.notify(f"could not delete the account: {exc.message}", severity="error", markup=False)
            return
        n = result.deleted_messages if isinstance(result, AccountDeleted) else 0
        self.post_message(self.SessionEnded(
            f"account {self.session.name} deleted, with {n} message{'s' if n != 1 else ''}", log_off=False))
