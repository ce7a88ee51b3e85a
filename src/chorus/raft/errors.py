"""A request the consensus core cannot take."""

from __future__ import annotations

from .ready import NONE


class Refused(Exception):
    """A request the node cannot take now; ``code`` is stable, the message is for people.

    ``primary`` is the primary this node knows of (0 if none), a hint for clients.
    """

    def __init__(self, code: str, message: str, primary: int = NONE) -> None:
        super().__init__(message)
        self.code = code
        self.primary = primary

    def __repr__(self) -> str:
        return f"Refused({self.code}: {self}{f', primary={self.primary}' if self.primary else ''})"
