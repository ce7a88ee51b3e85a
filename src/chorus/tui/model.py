"""What the chat app shows, apart from the widgets that show it: the contact
list, one conversation with its sends in flight, the cluster's state as the
status bar tells it, and how times read. No Textual here, so it is tested alone.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from chorus.chat.rules import name_key
from chorus.client import Conversation, Message
from chorus.wire.results import ServerStatus


# ------------------------------------------------------------------------ search
def search_pattern(text: str) -> str:
    """The users pattern for what was typed in the search box: wildcards as
    typed, plain text as a substring (``bo`` finds ``bob`` and ``abot``)."""
    text = text.strip()
    if not text:
        return "*"
    return text if "*" in text or "?" in text else f"*{text}*"


def wildcard(pattern: str) -> re.Pattern[str]:
    """The server's matching of user names: ``*`` any run, ``?`` one character,
    anything else itself, regardless of case."""
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile("".join(parts), re.IGNORECASE | re.DOTALL)


# ---------------------------------------------------------------------- contacts
@dataclass
class Contact:
    name: str
    unread: int = 0
    last_id: int = 0  # the newest message of the conversation; 0 if there is none


class Contacts:
    """Everyone the user can write to: conversations first, the most recent
    activity first, then the other users the last search found, by name."""

    def __init__(self, me: str) -> None:
        self.me = me
        self._conversations: dict[str, Contact] = {}
        self._users: list[str] = []

    def set_conversations(self, conversations: Iterable[Conversation]) -> None:
        self._conversations = {name_key(c.peer): Contact(c.peer, c.unread, c.last.id) for c in conversations}

    def set_users(self, names: Iterable[str]) -> None:
        self._users = list(names)

    def get(self, name: str) -> Contact | None:
        return self._conversations.get(name_key(name))

    def message(self, m: Message, *, open_peer: str | None) -> Contact:
        """Count a pushed message: its conversation moves to the top, and it is
        unread unless the user sent it or has that conversation open."""
        peer = m.recipient if name_key(m.sender) == name_key(self.me) else m.sender
        contact = self._conversations.setdefault(name_key(peer), Contact(peer))
        contact.last_id = max(contact.last_id, m.id)
        incoming = name_key(m.sender) != name_key(self.me)
        if incoming and (open_peer is None or name_key(open_peer) != name_key(peer)):
            contact.unread += 1
        return contact

    def read(self, name: str) -> None:
        if (contact := self.get(name)) is not None:
            contact.unread = 0

    def visible(self, pattern: str = "*") -> list[Contact]:
        match = wildcard(pattern).fullmatch
        talked = sorted((c for c in self._conversations.values() if match(c.name)), key=lambda c: -c.last_id)
        others = [Contact(n) for n in self._users if match(n) and name_key(n) not in self._conversations]
        return talked + others


# ------------------------------------------------------------------ conversation
SENDING, SENT, FAILED = "sending", "sent", "failed"
_keys = itertools.count(1)


@dataclass
class Entry:
    """One message in the conversation pane."""

    sender: str
    body: str
    sent_at: int | None  # ms; None until the server has stamped it
    id: int | None = None  # None until committed
    state: str = SENT  # SENDING, SENT or FAILED (own messages)
    error: str = ""
    fresh: bool = False  # arrived live while the conversation was open
    selected: bool = False
    key: int = field(default_factory=lambda: next(_keys))  # stable for the widget

    @classmethod
    def of(cls, m: Message, *, fresh: bool = False) -> Entry:
        return cls(m.sender, m.body, m.sent_at, m.id, fresh=fresh)


class ConversationLog:
    """The messages of one conversation that the pane shows: pages of history,
    messages pushed live, and the user's own messages from typed to committed."""

    def __init__(self, me: str, peer: str) -> None:
        self.me, self.peer = me, peer
        self.entries: list[Entry] = []
        self.has_more = False  # the last page of history was full: older messages may exist

    def mine(self, entry: Entry) -> bool:
        return name_key(entry.sender) == name_key(self.me)

    @property
    def oldest_id(self) -> int | None:
        return min((e.id for e in self.entries if e.id is not None), default=None)

    @property
    def newest_id(self) -> int | None:
        return max((e.id for e in self.entries if e.id is not None), default=None)

    @property
    def unsent(self) -> list[Entry]:
        return [e for e in self.entries if e.state == SENDING]

    def reset(self) -> None:
        """Forget the history shown (it is read again), keeping what is still being sent."""
        self.entries = [e for e in self.entries if e.state != SENT]
        self.has_more = False

    def add_page(self, page: list[Message], limit: int) -> int:
        """Add a page of history (newest first, as the server gives it); the
        number of messages it added."""
        known = {e.id for e in self.entries}
        added = [Entry.of(m) for m in page if m.id not in known]
        self.entries.extend(added)
        self.has_more = len(page) >= limit
        self._sort()
        return len(added)

    def add_pending(self, body: str) -> Entry:
        entry = Entry(self.me, body, None, state=SENDING)
        self.entries.append(entry)
        return entry

    def receive(self, m: Message) -> Entry | None:
        """A message pushed live; None if it is shown already. The user's own
        message, when its push comes before the answer to the send, is the
        first one still sending, if the text is the same."""
        if any(e.id == m.id for e in self.entries):
            return None
        pending = next((e for e in self.entries if e.state == SENDING), None)
        if name_key(m.sender) == name_key(self.me) and pending is not None and pending.body == m.body:
            self._commit(pending, m)
            return pending
        entry = Entry.of(m, fresh=name_key(m.sender) != name_key(self.me))
        self.entries.append(entry)
        self._sort()
        return entry

    def confirm(self, entry: Entry, m: Message) -> None:
        """The send of ``entry`` was answered with ``m``."""
        if entry.id is not None and entry.id != m.id:
            # The push matched to it was the same text sent by another session of this user.
            self.entries.append(Entry(entry.sender, entry.body, entry.sent_at, entry.id))
        if all(e.id != m.id or e is entry for e in self.entries):
            self._commit(entry, m)
        else:  # already shown from its push
            self.entries.remove(entry)
        self._sort()

    def fail(self, entry: Entry, reason: str) -> None:
        entry.state, entry.error = FAILED, reason

    def remove(self, ids: Iterable[int]) -> None:
        gone = set(ids)
        self.entries = [e for e in self.entries if e.id not in gone]

    def toggle(self, entry: Entry) -> bool:
        """Select or unselect one of the user's own committed messages; False if it cannot be."""
        if not self.mine(entry) or entry.id is None:
            return False
        entry.selected = not entry.selected
        return True

    def selected_ids(self) -> list[int]:
        return [e.id for e in self.entries if e.selected and e.id is not None]

    def _commit(self, entry: Entry, m: Message) -> None:
        entry.id, entry.sent_at, entry.state, entry.error = m.id, m.sent_at, SENT, ""

    def _sort(self) -> None:
        """By id, which is commit order; what is not committed yet comes last, as typed."""
        self.entries.sort(key=lambda e: (e.id is None, e.id or 0, e.key))


# ----------------------------------------------------------------------- cluster
@dataclass(frozen=True)
class ClusterView:
    """What the status bar shows."""

    connected: str | None = None  # the server the client talks to
    role: str | None = None  # that server's role
    primary: str | None = None  # the primary's client address, if one answers as primary
    reconnecting: bool = False
    reason: str = ""  # why it is reconnecting
    polled: bool = False  # the servers were asked at least once


def primary_of(statuses: list[ServerStatus]) -> ServerStatus | None:
    """The server that answers as primary (of the highest term, should an old one still think it is)."""
    primaries = [s for s in statuses if s.status is not None and s.status.role == "PRIMARY"]
    return max(primaries, key=lambda s: s.status.term if s.status is not None else 0, default=None)


def trouble(statuses: list[ServerStatus], connected: str | None, *, logged_in: bool, retrying: bool) -> str:
    """Why the app is reconnecting, or "" if it is not: its connection broke,
    its server does not answer, no server is primary, or a request is being retried."""
    by_address = {s.address: s for s in statuses}
    if logged_in and connected is None:
        return "connection lost: trying the other servers"
    mine = by_address.get(connected) if connected is not None else None
    if mine is not None and mine.status is None:
        return f"{connected} does not answer"
    if statuses and primary_of(statuses) is None:
        down = sum(s.status is None for s in statuses)
        return f"no primary, {down} of {len(statuses)} servers down: electing one" if down else "no primary: electing one"
    if retrying:
        return "a request is being retried"
    return ""


class Latch:
    """On at once, off only after ``hold`` seconds on: a failover shorter than a
    glance still shows."""

    def __init__(self, hold: float) -> None:
        self.hold = hold
        self.since: float | None = None

    def update(self, on: bool, now: float) -> bool:
        if on:
            if self.since is None:
                self.since = now
        elif self.since is not None and now - self.since >= self.hold:
            self.since = None
        return self.since is not None


# ------------------------------------------------------------------------- times
def clock(ms: int, now: float | None = None) -> str:
    """A message time in local time: the hour today, the day too before today."""
    t = time.localtime(ms / 1000)
    today = time.localtime(now if now is not None else time.time())
    if t[:3] == today[:3]:
        return time.strftime("%H:%M", t)
    if t.tm_year == today.tm_year:
        return time.strftime("%d %b %H:%M", t)
    return time.strftime("%Y-%m-%d %H:%M", t)


def moment(ms: int | None) -> str:
    """A full local time, for the last log-off."""
    return "never" if ms is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))


def since_last_time(last_logoff: int | None, conversations: list[Conversation]) -> str:
    """The greeting after login: when the user last logged off and what arrived since."""
    if last_logoff is None:
        return "First time here: pick someone on the left to write to."
    news = [c for c in conversations if c.last.sent_at > last_logoff and c.unread]
    head = f"You last logged off at {moment(last_logoff)}."
    if not news:
        return f"{head} Nothing new has arrived since."
    return f"{head} Since then, new messages from " + ", ".join(f"{c.peer} ({c.unread} unread)" for c in news) + "."
