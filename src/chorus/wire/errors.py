"""The errors of the client protocol, on both sides: what the server answers a
request with, and what the client library raises. Every error has a stable
``code`` (wire.client.ERROR_CODES, docs/protocol.md), a message for people, and
``primary``: the server that was named as primary, when one was."""

from __future__ import annotations


class ChorusError(Exception):
    def __init__(self, code: str, message: str, primary: str | None = None) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
        self.primary = primary


class Unavailable(ChorusError):
    """No server could take the request in time (retried for ``retry_for`` seconds)."""


class Busy(Unavailable):
    """The server is overloaded."""


class Unauthenticated(ChorusError):
    """Log in first, or the session's account no longer exists."""


class InvalidRequest(ChorusError):
    """The request was malformed (a bug in the caller, not a refusal)."""


class Rejected(ChorusError):
    """The chat refused the command: a taken name, an unknown recipient, ..."""


class Throttled(Rejected):
    """Too many failed logins (or registrations): wait ``retry_after`` seconds."""

    def __init__(self, code: str, message: str, primary: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(code, message, primary)
        self.retry_after = retry_after


class NotConnected(ChorusError):
    """No connection could be made for a reason that retrying does not fix: the
    server's certificate is not trusted, or one side speaks TLS and the other not."""
