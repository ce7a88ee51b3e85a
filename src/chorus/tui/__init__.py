"""``chorus chat``: a terminal chat app (Textual) on the client library, with a
status bar that shows the failovers it rides through."""

from .app import ChatApp

__all__ = ["ChatApp"]
