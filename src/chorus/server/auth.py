"""Session tokens: signed with the cluster secret, so every replica accepts a
token any replica issued. A token names the user's id, which is never reused
(ids are log indexes): once the account is deleted, its tokens stop working."""

from __future__ import annotations

import base64
import hashlib
import hmac

import msgspec


class Claims(msgspec.Struct, frozen=True):
    uid: int
    name: str
    exp: int  # seconds since the epoch


class BadToken(Exception):
    pass


def _mac(secret: bytes, body: bytes) -> str:
    return hmac.new(secret, b"chorus-token:" + body, hashlib.sha256).hexdigest()


def issue(secret: bytes, uid: int, name: str, now_s: int, ttl_s: int) -> str:
    body = base64.urlsafe_b64encode(msgspec.json.encode(Claims(uid, name, now_s + ttl_s))).rstrip(b"=")
    return body.decode() + "." + _mac(secret, body)


def verify(secret: bytes, token: str, now_s: int) -> Claims:
    try:
        body_text, mac = token.rsplit(".", 1)
        body = body_text.encode()
        if not hmac.compare_digest(mac.encode(), _mac(secret, body).encode()):  # bytes: any text is safe
            raise BadToken("the token's signature is not valid")
        claims = msgspec.json.decode(base64.urlsafe_b64decode(body + b"=" * (-len(body) % 4)), type=Claims)
    except (ValueError, msgspec.DecodeError, msgspec.ValidationError, UnicodeError):
        raise BadToken("the token is not valid") from None
    if claims.exp < now_s:
        raise BadToken("the token has expired: log in again")
    return claims
