"""The client protocol: requests, responses and push events, as typed messages.

Every request is a JSON object with an ``op`` and an ``id`` chosen by the client;
every response names that id, so a client may have many requests in flight
(pipelining). A response is ``{"id", "ok": true, "result"}`` or
``{"id", "ok": false, "error": {"code", "message", "primary"}}``; codes are stable
(see ERROR_CODES and docs/protocol.md). Push events have no id:
``{"event": "message", "message": {...}}``.

Writes carry (client, seq, acked) for exactly-once execution: ``client`` is a
random id the client picks once, ``seq`` numbers its writes from 1, ``acked`` is
the highest seq such that the client has the answer of every seq up to it. Retrying a write with the same
(client, seq), on any server, gets the first answer and changes nothing.

Unknown fields are refused: a send cannot name its sender, which is the logged-in
user of the connection.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated, Any, Literal, get_args

import msgspec

from .frames import MAX_DEPTH, too_deep
from .results import Message

Consistency = Literal["linearizable", "local"]
WriteConcern = Literal["majority", "all", "async"]

# Every field is bounded, so no command can grow past a few kilobytes in the log,
# and every number is exact in any JSON reader (2**53 - 1).
MAX_NUMBER = 2**53 - 1
Number = Annotated[int, msgspec.Meta(ge=0, le=MAX_NUMBER)]
Limit = Annotated[int, msgspec.Meta(ge=1, le=1000)]
Name = Annotated[str, msgspec.Meta(max_length=64)]
Body = Annotated[str, msgspec.Meta(max_length=4000)]
Ids = Annotated[list[Number], msgspec.Meta(max_length=1000)]

ERROR_CODES = {
    # The protocol.
    "malformed": "the frame is not JSON at all",
    "invalid_request": "not a JSON object, an unknown op, a missing, extra or out-of-range field, "
                       "or a field of the wrong type",
    "frame_too_large": "the frame is empty or over the size limit (the connection is closed)",
    "tls_required": "the server speaks TLS only on this port (the connection is closed)",
    "unauthenticated": "log in (or send a valid token with auth) first; or the session was ended "
                       "(log_off, logout_all, a password change) or the account no longer exists",
    "throttled": "too many failed logins, or registrations, from this address or for this name: "
                 "wait retry_after seconds",
    "unavailable": "no primary could take the request in time; retry (the same write: same client and seq), "
                   "maybe on the primary named",
    "busy": "the server is overloaded; retry later",
    "internal": "the server failed to handle a valid request (a bug; it is logged there)",
    # Operating the cluster.
    "forbidden": "a member_ op on a connection that has not proven it knows the cluster secret (admin_auth)",
    "bad_proof": "admin_auth with a proof that is not of this connection's nonce and the cluster secret "
                 "(the connection is closed)",
    "change_pending": "another membership change is not committed yet: one at a time",
    "invalid_change": "an unknown id, an id that is a member already or was removed before, or the last voter",
    "unsafe_change": "a change that would leave fewer voters than a majority able to take part",
    "not_ready": "the primary has not committed an entry of its term yet, or the server has not caught up: "
                 "retry in a moment",
    # Logging in and registering.
    "bad_credentials": "wrong user name or password",
    "invalid_name": "a user name is 3-20 letters or digits",
    "weak_password": "the password needs 8+ characters with a digit and an uppercase letter, no spaces",
    "name_taken": "the name is taken (names are unique regardless of case)",
    # The chat refusing a command.
    "no_such_user": "there is no user of that name",
    "invalid_message": "a message is 1 to 4,000 characters, not only spaces",
    "no_conversation": "there is no conversation with that user",
    "invalid_view_count": "the view count is 1 to 1,000",
    "stale_request": "a write whose seq the client acknowledged long ago (never applied twice)",
    "bad_command": "a log entry that is not a chat command (not sent by the server itself)",
    "invalid_password_hash": "a registration without an argon2id hash (not sent by the server itself)",
}


class Request(msgspec.Struct, kw_only=True, tag_field="op", forbid_unknown_fields=True):
    id: Number


class Write(Request, kw_only=True, forbid_unknown_fields=True):
    client: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    seq: Annotated[int, msgspec.Meta(ge=1, le=MAX_NUMBER)]
    acked: Number = 0
    concern: WriteConcern | None = None  # None: the server's default


class Read(Request, kw_only=True, forbid_unknown_fields=True):
    consistency: Consistency = "linearizable"


class Register(Write, tag="register", kw_only=True, forbid_unknown_fields=True):
    name: Name
    password: Password


class Login(Request, tag="login", kw_only=True, forbid_unknown_fields=True):
    name: Name
    password: Password


class Auth(Request, tag="auth", kw_only=True, forbid_unknown_fields=True):
    token: Annotated[str, msgspec.Meta(max_length=1024)]


class Send(Write, tag="send", kw_only=True, forbid_unknown_fields=True):
    to: Name
    body: Body


class DeleteMessages(Write, tag="delete_messages", kw_only=True, forbid_unknown_fields=True):
    ids: Ids


class MarkRead(Write, tag="mark_read", kw_only=True, forbid_unknown_fields=True):
    peer: Name
    upto: Number


class SetViewCount(Write, tag="set_view_count", kw_only=True, forbid_unknown_fields=True):
    count: Number


class LogOff(Write, tag="log_off", kw_only=True, forbid_unknown_fields=True):
    """Records the log-off time and ends this session: its token stops working
    on every server."""


class LogoutAll(Write, tag="logout_all", kw_only=True, forbid_unknown_fields=True):
    """Ends every session of the user, on every device: every token issued so far."""


Password = Annotated[str, msgspec.Meta(max_length=256)]


class ChangePassword(Write, tag="change_password", kw_only=True, forbid_unknown_fields=True):
    """Every other session ends; the answer holds a new token for this one."""

    old_password: Password
    new_password: Password


class DeleteAccount(Write, tag="delete_account", kw_only=True, forbid_unknown_fields=True):
    pass


class Users(Read, tag="users", kw_only=True, forbid_unknown_fields=True):
    pattern: Name = "*"
    after: Name = ""
    limit: Limit = 50


class Conversations(Read, tag="conversations", kw_only=True, forbid_unknown_fields=True):
    pass


class History(Read, tag="history", kw_only=True, forbid_unknown_fields=True):
    peer: Name
    before: Number | None = None
    limit: Limit = 50


class Stats(Read, tag="stats", kw_only=True, forbid_unknown_fields=True):
    pass


class Subscribe(Request, tag="subscribe", kw_only=True, forbid_unknown_fields=True):
    """Push every message after ``after`` (a message id), then new ones as they come."""

    after: Number = 0


class Status(Request, tag="status", kw_only=True, forbid_unknown_fields=True):
    pass


# ---------------------------------------------------------------- operating the cluster
# An operator proves knowledge of the cluster secret on this connection, against
# a fresh nonce, before any of the member_ ops (docs/protocol.md, section 8).
Address = Annotated[str, msgspec.Meta(min_length=3, max_length=300, pattern=r"^(\[[0-9A-Fa-f:.]+\]|[^:\s\[\]]+):[0-9]{1,5}$")]
ServerId = Annotated[int, msgspec.Meta(ge=1, le=2**31 - 1)]
Proof = Annotated[str, msgspec.Meta(min_length=64, max_length=64, pattern="^[0-9a-f]{64}$")]


def admin_proof(secret: bytes, nonce: str, server_id: int) -> str:
    """What ``admin_auth`` sends: HMAC-SHA256 keyed with the cluster secret over
    "chorus admin" NUL the connection's nonce NUL the server's id, in hex."""
    return hmac.new(secret, b"chorus admin\0" + nonce.encode() + b"\0" + str(server_id).encode(),
                    hashlib.sha256).hexdigest()


class AdminChallenge(Request, tag="admin_challenge", kw_only=True, forbid_unknown_fields=True):
    pass


class AdminAuth(Request, tag="admin_auth", kw_only=True, forbid_unknown_fields=True):
    proof: Proof  # HMAC-SHA256(secret, "chorus admin" NUL nonce NUL server id), hex


class MemberList(Request, tag="member_list", kw_only=True, forbid_unknown_fields=True):
    pass


class MemberAdd(Request, tag="member_add", kw_only=True, forbid_unknown_fields=True):
    server: ServerId
    peer: Address
    client: Address
    learner: bool = False  # stay a learner (serves reads and pushes, never votes)


class MemberRemove(Request, tag="member_remove", kw_only=True, forbid_unknown_fields=True):
    server: ServerId


class MemberMove(Request, tag="member_move", kw_only=True, forbid_unknown_fields=True):
    server: ServerId
    peer: Address
    client: Address


class Backup(Request, tag="backup", kw_only=True, forbid_unknown_fields=True):
    """Take a snapshot of everything committed before this request; then read it
    with backup_chunk."""


class BackupChunk(Request, tag="backup_chunk", kw_only=True, forbid_unknown_fields=True):
    offset: Number


ADMIN = (MemberList, MemberAdd, MemberRemove, MemberMove, Backup, BackupChunk)

AnyRequest = (
    Register | Login | Auth | Send | DeleteMessages | MarkRead | SetViewCount | LogOff | LogoutAll
    | ChangePassword | DeleteAccount | Users | Conversations | History | Stats | Subscribe | Status
    | AdminChallenge | AdminAuth | MemberList | MemberAdd | MemberRemove | MemberMove | Backup | BackupChunk
)
WRITES = (Register, Send, DeleteMessages, MarkRead, SetViewCount, LogOff, LogoutAll, ChangePassword, DeleteAccount)
OPS = sorted(str(cls.__struct_config__.tag) for cls in get_args(AnyRequest))


class _Id(msgspec.Struct):
    id: Number | None = None


class ProtocolError(Exception):
    """A request that cannot be served; ``code`` is one of ERROR_CODES."""

    def __init__(self, code: str, message: str, request_id: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.request_id = request_id


_request_decoder = msgspec.json.Decoder(AnyRequest)
_id_decoder = msgspec.json.Decoder(_Id)
_encoder = msgspec.json.Encoder()


def decode_request(body: bytes) -> AnyRequest:
    """Raises ProtocolError (with the request id when it can be read) for anything
    that is not a well-formed request."""
    try:
        # Typed, with unknown fields refused: decoding never goes deeper than the
        # fields of a request, however the body nests.
        return _request_decoder.decode(body)
    except msgspec.ValidationError as exc:
        try:
            # (This decoder skips what it does not know, recursing: not into a deep body.)
            rid = None if too_deep(body) else _id_decoder.decode(body).id
        except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
            rid = None
        raise ProtocolError("invalid_request", _explain(str(exc)), rid) from None
    except msgspec.DecodeError as exc:
        raise ProtocolError("malformed", f"not a JSON object: {exc}") from None
    except RecursionError:
        raise ProtocolError("malformed", "JSON nested too deeply") from None


def _explain(text: str) -> str:
    if "Invalid value" in text and "$.op" in text:
        return f"unknown op; the ops are {', '.join(OPS)}"
    if "Object contains unknown field" in text:
        return text + " (a request acts as the logged-in user: it cannot name another)"
    return text


def ok(request_id: int, result: Any = None) -> bytes:
    return _encoder.encode({"id": request_id, "ok": True, "result": result})


def error(request_id: int | None, code: str, message: str, primary: str | None = None,
          retry_after: float | None = None) -> bytes:
    err: dict[str, Any] = {"code": code, "message": message, "primary": primary}
    if retry_after is not None:
        err["retry_after"] = retry_after  # seconds (with "throttled")
    return _encoder.encode({"id": request_id, "ok": False, "error": err})


def event(kind: str, payload: Any) -> bytes:
    return _encoder.encode({"event": kind, kind: payload})


def encode(obj: Any) -> bytes:
    return _encoder.encode(obj)


class ErrorBody(msgspec.Struct, frozen=True):
    code: str
    message: str = ""
    primary: str | None = None  # the primary, where the server knows one
    retry_after: float | None = None  # seconds (with "throttled")


class Reply(msgspec.Struct):
    """A response or an event, as a client reads it: ``result`` is decoded by
    whoever knows which request it answers (its type in wire/results.py)."""

    id: int | None = None
    ok: bool | None = None
    result: msgspec.Raw = msgspec.Raw()
    error: ErrorBody | None = None
    event: str | None = None
    message: Message | None = None  # with event "message"


_reply_decoder = msgspec.json.Decoder(Reply)


def decode_reply(body: bytes) -> Reply:
    """Raises msgspec.DecodeError for a reply nested too deeply (a hostile server)."""
    if too_deep(body):
        raise msgspec.DecodeError(f"a reply nested more than {MAX_DEPTH} deep")
    return _reply_decoder.decode(body)
