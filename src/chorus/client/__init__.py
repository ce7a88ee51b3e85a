"""The client library: ``Client`` (any server list in; failover, primary hints,
exactly-once retries, a resumable event stream) and the errors it raises."""

from .client import Client, Conversation, Message, Stats, server_status
from .errors import (
    Busy,
    ChorusError,
    InvalidRequest,
    NotConnected,
    Rejected,
    Throttled,
    Unauthenticated,
    Unavailable,
)

__all__ = [
    "Busy",
    "ChorusError",
    "Client",
    "Conversation",
    "InvalidRequest",
    "Message",
    "NotConnected",
    "Rejected",
    "Stats",
    "Throttled",
    "Unauthenticated",
    "Unavailable",
    "server_status",
]
