"""The client protocol: decoding requests strictly, and the shapes of answers."""

from __future__ import annotations

import json

import msgspec
import pytest

from chorus.wire import client as W
from chorus.wire import results as R

WRITE = {"client": "c-1", "seq": 3, "acked": 2}

# One valid request per op, with the class it must decode to.
VALID: dict[str, tuple[dict, type]] = {
    "register": ({"name": "alice", "password": "Secret123", **WRITE}, W.Register),
    "login": ({"name": "alice", "password": "Secret123"}, W.Login),
    "auth": ({"token": "abc.def"}, W.Auth),
    "send": ({"to": "bob", "body": "hi", **WRITE, "concern": "all"}, W.Send),
    "delete_messages": ({"ids": [1, 2, 3], **WRITE}, W.DeleteMessages),
    "mark_read": ({"peer": "bob", "upto": 9, **WRITE}, W.MarkRead),
    "set_view_count": ({"count": 20, **WRITE}, W.SetViewCount),
    "log_off": (dict(WRITE), W.LogOff),
    "logout_all": (dict(WRITE), W.LogoutAll),
    "change_password": ({"old_password": "Secret123", "new_password": "Secret456", **WRITE}, W.ChangePassword),
    "delete_account": (dict(WRITE), W.DeleteAccount),
    "users": ({"pattern": "a*", "after": "al", "limit": 10, "consistency": "local"}, W.Users),
    "conversations": ({}, W.Conversations),
    "history": ({"peer": "bob", "before": 40, "limit": 5}, W.History),
    "stats": ({"consistency": "linearizable"}, W.Stats),
    "subscribe": ({"after": 12}, W.Subscribe),
    "status": ({}, W.Status),
    "admin_challenge": ({}, W.AdminChallenge),
    "admin_auth": ({"proof": "ab" * 32}, W.AdminAuth),
    "member_list": ({}, W.MemberList),
    "member_add": ({"server": 4, "peer": "10.0.0.14:8081", "client": "10.0.0.14:8091", "learner": True},
                   W.MemberAdd),
    "member_remove": ({"server": 2}, W.MemberRemove),
    "member_move": ({"server": 2, "peer": "[fd00::2]:8081", "client": "[fd00::2]:8091"}, W.MemberMove),
    "backup": ({}, W.Backup),
    "backup_chunk": ({"offset": 262144}, W.BackupChunk),
}


def _body(obj: object) -> bytes:
    return json.dumps(obj).encode()


def test_the_examples_cover_every_op() -> None:
    assert sorted(VALID) == W.OPS
    assert len(W.OPS) == 25


@pytest.mark.parametrize("op", sorted(VALID))
def test_every_op_decodes_to_its_type_with_its_fields(op: str) -> None:
    fields, cls = VALID[op]
    req = W.decode_request(_body({"op": op, "id": 41, **fields}))
    assert type(req) is cls
    assert req.id == 41
    for k, v in fields.items():
        got = getattr(req, k)
        assert (list(got) if isinstance(got, list | tuple) else got) == v, k
    assert isinstance(req, W.Write) == (cls in W.WRITES)


def test_defaults_are_filled_in() -> None:
    users = W.decode_request(b'{"op":"users","id":1}')
    assert (users.pattern, users.after, users.limit, users.consistency) == ("*", "", 50, "linearizable")
    send = W.decode_request(b'{"op":"send","id":2,"client":"c","seq":1,"to":"b","body":"x"}')
    assert (send.acked, send.concern) == (0, None)
    history = W.decode_request(b'{"op":"history","id":3,"peer":"bob"}')
    assert (history.before, history.limit) == (None, 50)
    assert W.decode_request(b'{"op":"subscribe","id":4}').after == 0


def _refused(body: bytes) -> W.ProtocolError:
    with pytest.raises(W.ProtocolError) as err:
        W.decode_request(body)
    assert err.value.code in W.ERROR_CODES
    return err.value


def test_an_unknown_op_is_refused_and_the_ops_are_listed() -> None:
    e = _refused(b'{"op":"fly","id":7}')
    assert (e.code, e.request_id) == ("invalid_request", 7)
    assert "unknown op" in str(e)
    for op in W.OPS:
        assert op in str(e)


def test_a_send_cannot_name_its_sender() -> None:
    e = _refused(_body({"op": "send", "id": 5, "client": "x", "seq": 1, "to": "bob", "body": "hi",
                        "sender": "bob"}))
    assert (e.code, e.request_id) == ("invalid_request", 5)
    assert "sender" in str(e)


@pytest.mark.parametrize(
    "obj, rid, fragment",
    [
        # Unknown fields.
        ({"op": "status", "id": 1, "verbose": True}, 1, "verbose"),
        ({"op": "login", "id": 2, "name": "a", "password": "p", "uid": 1}, 2, "uid"),
        ({"op": "history", "id": 3, "peer": "bob", "user": "carol"}, 3, "user"),
        # Wrong types.
        ({"op": "history", "id": 10, "peer": 5}, 10, "peer"),
        ({"op": "send", "id": 11, "client": "c", "seq": "1", "to": "b", "body": "x"}, 11, "seq"),
        ({"op": "delete_messages", "id": 12, "client": "c", "seq": 1, "ids": [1, "2"]}, 12, "ids"),
        ({"op": "delete_messages", "id": 13, "client": "c", "seq": 1, "ids": 1}, 13, "ids"),
        ({"op": "users", "id": 14, "limit": 1.5}, 14, "limit"),
        ({"op": "mark_read", "id": 15, "client": "c", "seq": 1, "peer": "b", "upto": True}, 15, "upto"),
        ({"op": "users", "id": 16, "consistency": "eventual"}, 16, "consistency"),
        ({"op": "send", "id": 17, "client": "c", "seq": 1, "to": "b", "body": "x", "concern": "most"}, 17,
         "concern"),
        ({"op": 5, "id": 18}, 18, "op"),
        # Missing required fields.
        ({"op": "send", "id": 20, "client": "c", "seq": 1, "body": "x"}, 20, "to"),
        ({"op": "send", "id": 21, "to": "b", "body": "x"}, 21, "client"),
        ({"op": "login", "id": 22, "name": "a"}, 22, "password"),
        ({"op": "history", "id": 23}, 23, "peer"),
        ({"op": "auth", "id": 24}, 24, "token"),
        ({"id": 25}, 25, "op"),
        # The id itself missing or unreadable: the error cannot name it.
        ({"op": "status"}, None, "id"),
        ({"op": "status", "id": "7"}, None, "id"),
        ({"op": "status", "id": True}, None, "id"),
        ({"op": "status", "id": None}, None, "id"),
        ({"op": "send", "id": "x", "to": 3}, None, ""),
        # Out of bounds: every number is exact in any JSON reader (at most 2**53 - 1).
        ({"op": "history", "id": 30, "peer": "bob", "before": 2**53}, 30, "before"),
        ({"op": "send", "id": 31, "client": "c", "seq": 2**63, "to": "b", "body": "x"}, 31, "seq"),
        ({"op": "mark_read", "id": 32, "client": "c", "seq": 1, "peer": "b", "upto": -1}, 32, "upto"),
        ({"op": "status", "id": 2**64}, None, "id"),
        # Nested where a string belongs.
        ({"op": "send", "id": 33, "client": "c", "seq": 1, "to": "b", "body": [[["x"]]]}, 33, "body"),
    ],
)
def test_invalid_requests_are_refused_with_their_id(obj: dict, rid: int | None, fragment: str) -> None:
    e = _refused(_body(obj))
    assert e.code == "invalid_request"
    assert e.request_id == rid
    assert fragment in str(e)


def test_json_nested_too_deeply_is_refused_not_raised() -> None:
    """A RecursionError would drop the connection (and what was pipelined behind)."""
    deep = b"[" * 100_000 + b"]" * 100_000
    for body in (deep, b'{"op":"send","id":7,"client":"c","seq":1,"to":"b","body":' + deep + b"}",
                 b'{"op":"status","id":1,"x":' + deep + b"}", b'{"op":"history","id":1,"peer":"a","before":' + deep + b"}",
                 b'{"op":"status","id":1,"x":' + b'{"a":' * 100_000 + b"1" + b"}" * 100_001):
        assert _refused(body).code in ("malformed", "invalid_request")


@pytest.mark.parametrize("body", [b"[1,2,3]", b"[]", b"1", b'"status"', b"null", b"true"])
def test_json_that_is_not_an_object_is_refused(body: bytes) -> None:
    # As the running server answers it (tests/server/test_cluster.py): invalid_request, no id.
    e = _refused(body)
    assert (e.code, e.request_id) == ("invalid_request", None)
    assert "object" in str(e)


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"", b"{", b'{"op":"status","id":1', b'{"op":"status","id":1} trailing',
     b'{"op":"status","id":1,}', b"\xff\xfe", b"{'op': 'status'}"],
)
def test_malformed_json_is_refused(body: bytes) -> None:
    e = _refused(body)
    assert (e.code, e.request_id) == ("malformed", None)


def test_ok_has_the_documented_shape() -> None:
    assert json.loads(W.ok(3, {"n": [1, 2]})) == {"id": 3, "ok": True, "result": {"n": [1, 2]}}
    assert json.loads(W.ok(4)) == {"id": 4, "ok": True, "result": None}


def test_error_has_the_documented_shape() -> None:
    assert json.loads(W.error(5, "unavailable", "no primary", "127.0.0.1:8091")) == {
        "id": 5, "ok": False,
        "error": {"code": "unavailable", "message": "no primary", "primary": "127.0.0.1:8091"},
    }
    assert json.loads(W.error(None, "malformed", "bad")) == {
        "id": None, "ok": False, "error": {"code": "malformed", "message": "bad", "primary": None},
    }


def test_event_has_the_documented_shape_and_no_id() -> None:
    msg = {"id": 9, "from": "alice", "to": "bob", "body": "hi"}
    obj = json.loads(W.event("message", msg))
    assert obj == {"event": "message", "message": msg}
    assert "id" not in obj


def test_decode_reply_reads_responses_and_events_back() -> None:
    r = W.decode_reply(W.ok(3, R.ViewCountSet(7)))
    assert (r.id, r.ok, r.error, r.event) == (3, True, None, None)
    assert msgspec.json.decode(r.result, type=R.ViewCountSet) == R.ViewCountSet(7)  # decoded as what it answers
    r = W.decode_reply(W.error(4, "busy", "later", "h:1"))
    assert (r.id, r.ok, bytes(r.result)) == (4, False, b"")
    assert r.error == W.ErrorBody("busy", "later", "h:1")
    r = W.decode_reply(W.error(None, "frame_too_large", "too big"))
    assert (r.id, r.ok, r.error.code if r.error else None) == (None, False, "frame_too_large")
    msg = R.Message(9, "ann", "bob", "hi", 5)
    r = W.decode_reply(W.event("message", msg))
    assert (r.id, r.ok, r.event, r.message) == (None, None, "message", msg)


def test_decode_reply_refuses_garbage() -> None:
    with pytest.raises(msgspec.DecodeError):
        W.decode_reply(b"{nope")
    with pytest.raises(msgspec.ValidationError):
        W.decode_reply(b'{"id": "x"}')


def test_a_request_encoded_by_a_client_decodes_back() -> None:
    req = W.Send(id=8, client="c", seq=2, acked=1, to="bob", body="yo")
    assert W.decode_request(W.encode(req)) == req
    assert json.loads(W.encode(req))["op"] == "send"
