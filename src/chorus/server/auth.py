"""Session tokens: signed with the cluster secret, so every replica accepts a
token any replica issued.

A token names the user's id (never reused: ids are log indexes, so once the
account is deleted its tokens stop working), a session id of its own, and the
user's session epoch when it was issued. A replica accepts it only while its
session was not ended (``log_off`` ends one) and the user's epoch has not moved
on (``logout --all`` and a password change move it): both are replicated state,
so a token ended on one replica is refused by all of them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from typing import Annotated

import msgspec

_Num = Annotated[int, msgspec.Meta(ge=0, le=2**53 - 1)]


class Claims(msgspec.Struct, frozen=True):
    uid: _Num
    name: Annotated[str, msgspec.Meta(max_length=64)]
    exp: _Num  # seconds since the epoch
    sid: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]  # the session's id
    ep: _Num  # the user's session epoch when it was issued


class BadToken(Exception):
    pass


def _mac(secret: bytes, body: bytes) -> str:
    return hmac.new(secret, b"chorus-token/2:" + body, hashlib.sha256).hexdigest()


def new_session_id() -> str:
    return secrets.token_hex(12)


def sign(secret: bytes, claims: Claims) -> str:
    body = base64.urlsafe_b64encode(msgspec.json.encode(claims)).rstrip(b"=")
    return body.decode() + "." + _mac(secret, body)


def issue(secret: bytes, uid: int, name: str, now_s: int, ttl_s: int, epoch: int = 0,
          session: str | None = None) -> str:
    return sign(secret, Claims(uid, name, now_s + ttl_s, session or new_session_id(), epoch))


def verify(secret: bytes, token: str, now_s: int) -> Claims:
    try:
        body_text, mac = token.rsplit(".", 1)
        body = body_text.encode()
        if not hmac.compare_digest(mac.encode(), _mac(secret, body).encode()):  # bytes: any text is safe
            raise BadToken("the token's signature is not valid")
        claims = msgspec.json.decode(base64.urlsafe_b64decode(body + b"=" * (-len(body) % 4)), type=Claims)
    except (ValueError, msgspec.DecodeError, msgspec.ValidationError, UnicodeError, RecursionError):
        raise BadToken("the token is not valid") from None
    if claims.exp < now_s:
        raise BadToken("the token has expired: log in again")
    return claims
