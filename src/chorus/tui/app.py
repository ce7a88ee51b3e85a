"""The app: one client session at a time, the login screen or the chat screen,
and a watch on every server for the status bar."""

from __future__ import annotations

import asyncio
import math
import time

from textual import work
from textual.app import App
from textual.binding import Binding
from textual.reactive import reactive

from chorus.client import ChorusError, Client, server_status
from chorus.client.tls import TLSOption
from chorus.wire.results import ServerStatus

from .chat import ChatScreen, Session, unsent_text
from .dialogs import ConfirmScreen
from .login import LoginScreen
from .model import ClusterView, Latch, primary_of, trouble

LOG_OFF_WAIT = 5.0  # seconds to try to record the log-off when leaving


class ChatApp(App[None]):
    """``chorus chat``: the terminal chat client."""

    TITLE = "chorus"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [Binding("ctrl+q", "quit", "Quit", priority=True)]

    cluster: reactive[ClusterView] = reactive(ClusterView)
    """What the status bar shows; ``cluster.reconnecting`` during a failover."""

    def __init__(self, servers: list[str], *, retry_for: float = math.inf, poll_every: float = 0.5,
                 hold: float = 1.5, shuffle: bool = True, tls: TLSOption = None) -> None:
        """``retry_for``: how long a request keeps being retried; by default as
        long as the app runs, so that a message typed during an outage goes out
        whenever a majority is back (the status bar says what is going on).
        ``poll_every``: seconds between looks at the servers; ``hold``: the least
        time "reconnecting..." stays up. ``tls``: as for ``Client``."""
        super().__init__()
        self.servers = servers
        self.retry_for = retry_for
        self.poll_every = poll_every
        self.shuffle = shuffle
        self.tls = tls
        self.session: Session | None = None
        self.client = self.new_client()
        self._statuses: list[ServerStatus] = []
        self._latch = Latch(hold)
        self._reason = ""

    def new_client(self) -> Client:
        client = Client(self.servers, retry_for=self.retry_for, shuffle=self.shuffle, tls=self.tls)
        client.on_change = lambda: self.call_later(self.update_cluster)
        return client

    def on_mount(self) -> None:
        self.push_screen(LoginScreen(self.client))
        self.watch_servers()

    async def on_unmount(self) -> None:
        await self.client.close()

    # ------------------------------------------------------------------- cluster
    @work(group="servers")
    async def watch_servers(self) -> None:
        """Ask every server for its status, again and again."""
        while True:
            self._statuses = list(await asyncio.gather(
                *(server_status(s, timeout=max(0.5, 2 * self.poll_every), tls=self.tls) for s in self.servers)))
            self.update_cluster()
            await asyncio.sleep(self.poll_every)

    def update_cluster(self) -> None:
        connected = self.client.server
        reason = trouble(self._statuses, connected, logged_in=self.session is not None,
                         retrying=self.client.retrying)
        if reason:
            self._reason = reason
        primary = primary_of(self._statuses)
        role = next((s.status.role for s in self._statuses if s.address == connected and s.status is not None), None)
        self.cluster = ClusterView(
            connected=connected,
            role=role,
            primary=primary.address if primary else None,
            reconnecting=self._latch.update(bool(reason), time.monotonic()),
            reason=self._reason,
            polled=bool(self._statuses),
        )

    # ------------------------------------------------------------------- session
    def on_login_screen_logged_in(self, event: LoginScreen.LoggedIn) -> None:
        r = event.result
        self.session = Session(r.name, r.last_logoff, r.view_count)
        self.switch_screen(ChatScreen(self.client, self.session, event.conversations))
        self.update_cluster()

    def on_chat_screen_session_ended(self, event: ChatScreen.SessionEnded) -> None:
        self.end_session(event.notice, log_off=event.log_off)

    @work(group="session", exclusive=True)
    async def end_session(self, notice: str, *, log_off: bool) -> None:
        """Back to the login screen with a new client (a new client id, no subscription)."""
        await self.close_session(log_off=log_off)
        self.client = self.new_client()
        self.switch_screen(LoginScreen(self.client, notice))
        self.update_cluster()

    def chat_screen(self) -> ChatScreen | None:
        return next((s for s in self.screen_stack if isinstance(s, ChatScreen)), None)

    async def close_session(self, *, log_off: bool) -> None:
        """Stop the chat screen, record the log-off (what "last seen" shows) if
        asked and it can be done in a few seconds, and close the client."""
        if (chat := self.chat_screen()) is not None:
            chat.stop()
        if log_off and self.session is not None:
            try:
                await asyncio.wait_for(self.client.log_off(), LOG_OFF_WAIT)
            except (ChorusError, TimeoutError):
                self.notify("could not record the log-off time", severity="warning")
        self.session = None
        await self.client.close()

    # ---------------------------------------------------------------------- quit
    async def action_quit(self) -> None:
        """Log off and leave; ask first if messages are still being sent."""
        unsent = chat.unsent if (chat := self.chat_screen()) is not None else 0
        if unsent:
            self.push_screen(ConfirmScreen(f"{unsent_text(unsent)} Quit anyway?", "Quit"), self.quit_anyway)
        else:
            self.leave()

    def quit_anyway(self, yes: bool | None) -> None:
        if yes:
            self.leave()

    @work(group="session", exclusive=True)
    async def leave(self) -> None:
        await self.close_session(log_off=True)
        self.exit()
