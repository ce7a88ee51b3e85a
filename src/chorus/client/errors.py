"""What the client library raises: the protocol's errors (chorus.wire.errors)."""

from chorus.wire.errors import (
    Busy,
    ChorusError,
    InvalidRequest,
    NotConnected,
    Rejected,
    Throttled,
    Unauthenticated,
    Unavailable,
)

__all__ = ["Busy", "ChorusError", "InvalidRequest", "NotConnected", "Rejected", "Throttled", "Unauthenticated",
           "Unavailable"]
