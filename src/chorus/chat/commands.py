"""The commands of the replicated chat, and their results.

A command is what a client asked for, completed by the primary with everything
that must not vary between replicas: the time (``ts``, milliseconds), the acting
user's id, and for a registration the password hash (argon2id, computed before
proposing: the plaintext never enters the log). Every command carries
(client, seq, acked) for exactly-once execution: ``acked`` is the highest seq
below which the client has received every answer, so results for seqs above it
are kept and a retry gets the saved result.

Commands travel in the log as JSON (msgspec), tagged by ``op``.
"""

from __future__ import annotations

from typing import Any

import msgspec


class Command(msgspec.Struct, frozen=True, kw_only=True, tag_field="op"):
    client: str
    seq: int
    acked: int = 0
    ts: int  # the primary's clock, ms since the epoch


class Register(Command, frozen=True, kw_only=True, tag="register"):
    name: str
    pw_hash: str


class Send(Command, frozen=True, kw_only=True, tag="send"):
    user: int  # the sender's id
    to: str  # the recipient's name, resolved when applied
    body: str


class DeleteMessages(Command, frozen=True, kw_only=True, tag="delete_messages"):
    user: int
    ids: tuple[int, ...]


class MarkRead(Command, frozen=True, kw_only=True, tag="mark_read"):
    user: int
    peer: str
    upto: int  # message id


class SetViewCount(Command, frozen=True, kw_only=True, tag="set_view_count"):
    user: int
    count: int


class LogOff(Command, frozen=True, kw_only=True, tag="log_off"):
    user: int


class DeleteAccount(Command, frozen=True, kw_only=True, tag="delete_account"):
    user: int


AnyCommand = Register | Send | DeleteMessages | MarkRead | SetViewCount | LogOff | DeleteAccount

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(AnyCommand)


def encode(cmd: AnyCommand) -> bytes:
    return _encoder.encode(cmd)


_HEAVY = (b'{"op":"delete_account"',)  # (msgspec writes the tag first)


def is_heavy(data: bytes) -> bool:
    """Whether applying this command may take long: deleting an account deletes
    every message of the user. (A look at the bytes, no decoding.)"""
    return data.startswith(_HEAVY)


def decode(data: bytes) -> AnyCommand:
    """Raises msgspec.DecodeError / ValidationError for anything malformed."""
    return _decoder.decode(data)


class Result(msgspec.Struct, frozen=True, omit_defaults=True):
    """What applying a command produced. ``code`` is "ok" or a stable error code."""

    code: str = "ok"
    message: str = ""
    data: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.code == "ok"


def ok(**data: Any) -> Result:
    return Result(data=data or None)


def error(code: str, message: str) -> Result:
    return Result(code=code, message=message)
