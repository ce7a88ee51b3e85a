"""The commands of the replicated chat, and their results.

A command is what a client asked for, completed by the primary with everything
that must not vary between replicas: the time (``ts``, milliseconds), the acting
user's id, and for a registration the password hash (argon2id, computed before
proposing: the plaintext never enters the log). Every command carries
(client, seq, acked) for exactly-once execution: ``acked`` is the highest seq
below which the client has received every answer, so results for seqs above it
are kept and a retry gets the saved result.

Commands travel in the log as JSON (msgspec), tagged by ``op``. Every field is
bounded when a command is decoded (numbers within 0..2**53-1, strings and lists
within their limits), so a command that decodes is one that applying cannot
fail on: whatever it asks, the answer is a result (wire/results.py). A primary decodes every
command before it proposes it (a forwarded one too), so nothing else enters
the log.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from . import rules

MAX_NUMBER = 2**53 - 1  # exact in any JSON reader, and far from SQLite's 2**63 - 1
Number = Annotated[int, msgspec.Meta(ge=0, le=MAX_NUMBER)]
Positive = Annotated[int, msgspec.Meta(ge=1, le=MAX_NUMBER)]
ClientId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Name = Annotated[str, msgspec.Meta(max_length=64)]
Body = Annotated[str, msgspec.Meta(max_length=rules.BODY_MAX)]
PasswordHash = Annotated[str, msgspec.Meta(max_length=512)]
Session = Annotated[str, msgspec.Meta(max_length=64)]


class BadCommand(ValueError):
    """Bytes that are not a chat command this version can apply."""


class Command(msgspec.Struct, frozen=True, kw_only=True, tag_field="op", forbid_unknown_fields=True):
    """(Unknown fields are refused, not skipped: decoding never goes deeper
    than the fields themselves, however a hostile command nests.)"""

    client: ClientId
    seq: Positive
    acked: Number = 0
    ts: Number  # the primary's clock, ms since the epoch


class Register(Command, frozen=True, kw_only=True, tag="register"):
    name: Name
    pw_hash: PasswordHash


class Send(Command, frozen=True, kw_only=True, tag="send"):
    user: Positive  # the sender's id
    to: Name  # the recipient's name, resolved when applied
    body: Body


class DeleteMessages(Command, frozen=True, kw_only=True, tag="delete_messages"):
    user: Positive
    ids: Annotated[tuple[Number, ...], msgspec.Meta(max_length=rules.DELETE_MAX)]


class MarkRead(Command, frozen=True, kw_only=True, tag="mark_read"):
    user: Positive
    peer: Name
    upto: Number  # message id


class SetViewCount(Command, frozen=True, kw_only=True, tag="set_view_count"):
    user: Positive
    count: Number


class LogOff(Command, frozen=True, kw_only=True, tag="log_off"):
    """Records the log-off time, and ends the session that asked (its token is
    revoked on every replica)."""

    user: Positive
    session: Session = ""  # the token's session id ("": none to revoke)
    session_expires: Number = 0  # when that token would have expired, s since the epoch


class LogoutAll(Command, frozen=True, kw_only=True, tag="logout_all"):
    """Ends every session of the user: every token issued before is refused."""

    user: Positive


class ChangePassword(Command, frozen=True, kw_only=True, tag="change_password"):
    """A new password hash (argon2id, computed before proposing); every token
    issued before is refused."""

    user: Positive
    pw_hash: PasswordHash


class DeleteAccount(Command, frozen=True, kw_only=True, tag="delete_account"):
    user: Positive


AnyCommand = (
    Register | Send | DeleteMessages | MarkRead | SetViewCount | LogOff | LogoutAll | ChangePassword | DeleteAccount
)

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
    """Raises BadCommand for anything that is not a command within its bounds."""
    try:
        return _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise BadCommand(str(exc)) from None
    except RecursionError:
        raise BadCommand("JSON nested too deeply") from None
