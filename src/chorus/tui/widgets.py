"""The chat app's own widgets: the status bar, the contact list and the message list."""

from __future__ import annotations

import asyncio

from rich.text import Text
from textual.binding import Binding
from textual.widgets import ListItem, ListView, Static

from chorus.client.text import visible

from .model import FAILED, SENDING, ClusterView, Contact, ConversationLog, Entry, clock

RECONNECTING_HINT = "Messages typed now are sent once the cluster is back, exactly once."


class StatusBar(Static):
    """Which server the app talks to and which is primary; "reconnecting..."
    with the reason, on a second line, during a failover."""

    DEFAULT_CSS = """
    StatusBar {
        dock: top;
        height: auto;
        padding: 0 1;
        background: $primary-background;
        color: $foreground;
    }
    StatusBar.-reconnecting {
        background: $warning;
        color: auto 90%;
        text-style: bold;
    }
    """

    def __init__(self, user: str | None = None) -> None:
        super().__init__()
        self.user = user

    def on_mount(self) -> None:
        self.watch(self.app, "cluster", self.show, init=True)

    def show(self, view: ClusterView) -> None:
        self.set_class(view.reconnecting, "-reconnecting")
        self.update(Text(status_text(view, self.user)))


def status_text(view: ClusterView, user: str | None) -> str:
    if view.reconnecting:
        return f"⟳ reconnecting... {view.reason}\n{RECONNECTING_HINT}"
    if view.connected is not None:
        role = f" ({view.role.lower()})" if view.role else ""
        where = f"● connected to {view.connected}{role}"
    else:
        where = "○ not connected"
    primary = view.primary or ("none" if view.polled else "?")
    return f"{where}  │  primary {primary}" + (f"  │  {user}" if user else "")


class ContactItem(ListItem):
    """A name, and a badge with the number of unread messages."""

    DEFAULT_CSS = """
    ContactItem {
        layout: horizontal;
        padding: 0 1;
    }
    ContactItem > Static {
        width: 1fr;
        height: 1;
    }
    ContactItem > .badge {
        width: auto;
        padding: 0 1;
        background: $accent;
        color: auto 90%;
        text-style: bold;
    }
    """

    def __init__(self, contact: Contact, me: str) -> None:
        self.label = Static()
        self.badge = Static(classes="badge")
        super().__init__(self.label, self.badge)
        self.contact_name = contact.name
        self.me = me
        self.show(contact)

    def show(self, contact: Contact) -> None:
        text = Text(visible(contact.name), style="bold" if contact.unread else "")
        if contact.name.lower() == self.me.lower():
            text.append(" (you)", style="dim")
        self.label.update(text)
        self.badge.update(str(contact.unread) if contact.unread else "")
        self.badge.display = contact.unread > 0


class ContactList(ListView):
    """Conversations, the most recent first, then everyone else; a badge counts unread messages."""

    def __init__(self, me: str, **kw) -> None:
        super().__init__(**kw)
        self.me = me
        self._lock = asyncio.Lock()

    async def show(self, contacts: list[Contact]) -> None:
        async with self._lock:
            items = list(self.query(ContactItem))
            if [c.name for c in contacts] == [i.contact_name for i in items]:
                for item, contact in zip(items, contacts, strict=True):
                    item.show(contact)
                return
            current = self.highlighted_child
            keep = current.contact_name if isinstance(current, ContactItem) else None
            await self.clear()
            await self.extend(ContactItem(c, self.me) for c in contacts)
            names = [c.name for c in contacts]
            self.index = names.index(keep) if keep in names else (0 if names else None)


class MessageItem(ListItem):
    def __init__(self, entry: Entry, log: ConversationLog) -> None:
        self.label = Static()
        super().__init__(self.label)
        self.entry = entry
        self.show(log)

    def show(self, log: ConversationLog) -> None:
        e = self.entry
        mine = log.mine(e)
        self.label.update(message_text(e, mine))
        self.set_class(mine, "-mine")
        self.set_class(e.fresh, "-fresh")
        self.set_class(e.selected, "-selected")


def message_text(e: Entry, mine: bool) -> Text:
    text = Text()
    if e.selected:
        text.append("[x] ", style="bold")
    elif e.fresh:
        text.append("● ", style="bold")
    text.append(clock(e.sent_at) if e.sent_at is not None else "--:--", style="dim")
    text.append(" ")
    text.append(visible(e.sender), style="bold cyan" if mine else "bold magenta")
    text.append(": ")
    text.append(visible(e.body, newlines=True))  # never a raw escape sequence to the terminal
    if mine:
        if e.state == SENDING:
            text.append("  … sending", style="italic yellow")
        elif e.state == FAILED:
            text.append(f"  ✗ not sent: {e.error}", style="bold red")
        else:
            text.append("  ✓ sent", style="green")
    return text


class MoreItem(ListItem):
    """The first row while older messages may exist: enter (or ctrl+o) shows a page more."""

    def __init__(self) -> None:
        super().__init__(Static(Text("▲ view more (ctrl+o)", style="dim italic")))


class MessageList(ListView):
    """One conversation, oldest at the top. Own committed messages can be selected and deleted."""

    BINDINGS = [
        Binding("space", "screen.toggle_message", "Select"),
        Binding("delete,d", "screen.delete_messages", "Delete"),
    ]

    DEFAULT_CSS = """
    MessageList > ListItem { padding: 0 1; }
    MessageList > ListItem.-fresh { background: $success 25%; }
    MessageList > ListItem.-selected { background: $error 30%; }
    """

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self._lock = asyncio.Lock()

    def entries(self) -> list[Entry]:
        return [item.entry for item in self.query(MessageItem)]

    async def show(self, log: ConversationLog | None, *, to_end: bool = False, to_top: bool = False) -> None:
        """Show ``log`` (None: nothing), adding rows at either end, or updating them, where it can."""
        async with self._lock:
            entries = log.entries if log is not None else []
            by_key = {e.key: e for e in entries}
            want = [e.key for e in entries]
            rows = list(self.query(MessageItem))
            have = [row.entry.key for row in rows]

            def item(key: int) -> MessageItem:
                assert log is not None  # (the keys wanted are those of its entries)
                return MessageItem(by_key[key], log)

            if want[: len(have)] == have:  # new messages at the end (or none yet)
                await self.extend(item(k) for k in want[len(have):])
            elif have and want[-len(have):] == have:  # older ones at the top
                older = [item(k) for k in want[: len(want) - len(have)]]
                await self.insert(len(self.query(MoreItem)), older)
                if self.index is not None:
                    self.index += len(older)
            else:
                await self.clear()
                await self.extend(item(k) for k in want)
            more = self.query(MoreItem)
            if log is not None and log.has_more and not more:
                await self.insert(0, [MoreItem()])
                if self.index is not None:
                    self.index += 1
            elif more and not (log is not None and log.has_more):
                await self.remove_items([0])
            for row in self.query(MessageItem):
                if log is not None:
                    row.show(log)
            if to_end:
                self.scroll_end(animate=False)
            elif to_top:
                self.scroll_home(animate=False)
