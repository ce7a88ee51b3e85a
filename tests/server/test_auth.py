"""Session tokens: signed with the cluster secret, checked by every replica."""

from __future__ import annotations

import base64

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chorus.server.auth import BadToken, Claims, issue, verify

SECRET = b"cluster-secret-0123456789"
NOW = 1_700_000_000
TTL = 7 * 24 * 3600


def test_issue_then_verify_gives_back_the_claims() -> None:
    token = issue(SECRET, 42, "alice", NOW, TTL, epoch=3, session="s-1")
    assert verify(SECRET, token, NOW) == Claims(uid=42, name="alice", exp=NOW + TTL, sid="s-1", ep=3)
    # Any replica, any time before it expires.
    assert verify(SECRET, token, NOW + TTL - 1).uid == 42


def test_every_token_is_a_session_of_its_own() -> None:
    a, b = (verify(SECRET, issue(SECRET, 42, "alice", NOW, TTL), NOW) for _ in range(2))
    assert a.sid != b.sid and len(a.sid) >= 16


@settings(deadline=None)
@given(st.integers(1, 2**53 - 1), st.text(min_size=1, max_size=40), st.integers(0, 2**40), st.integers(1, 10**8),
       st.integers(0, 2**53 - 1))
def test_round_trip_for_any_user(uid: int, name: str, now: int, ttl: int, epoch: int) -> None:
    token = issue(SECRET, uid, name, now, ttl, epoch=epoch, session="abc")
    assert token.isascii() and " " not in token
    assert verify(SECRET, token, now) == Claims(uid, name, now + ttl, "abc", epoch)


def test_tokens_of_different_users_differ() -> None:
    assert issue(SECRET, 1, "alice", NOW, TTL) != issue(SECRET, 2, "alice", NOW, TTL)
    assert issue(SECRET, 1, "alice", NOW, TTL) != issue(SECRET, 1, "alicf", NOW, TTL)


def test_a_token_signed_with_another_secret_is_refused() -> None:
    token = issue(b"some-other-cluster-secret", 42, "alice", NOW, TTL)
    with pytest.raises(BadToken):
        verify(SECRET, token, NOW)


def test_an_expired_token_is_refused() -> None:
    token = issue(SECRET, 42, "alice", NOW, TTL)
    with pytest.raises(BadToken, match="expired"):
        verify(SECRET, token, NOW + TTL + 1)
    with pytest.raises(BadToken):
        verify(SECRET, token, NOW + 10 * TTL)


@settings(deadline=None)
@given(st.data())
def test_a_token_with_one_character_of_its_body_changed_is_refused(data: st.DataObject) -> None:
    token = issue(SECRET, 42, "alice", NOW, TTL)
    body, mac = token.split(".")
    i = data.draw(st.integers(0, len(body) - 1), label="position")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    c = data.draw(st.sampled_from(alphabet).filter(lambda ch: ch != body[i]), label="replacement")
    forged = body[:i] + c + body[i + 1 :] + "." + mac
    with pytest.raises(BadToken):
        verify(SECRET, forged, NOW)


def test_a_body_rewritten_to_another_user_is_refused() -> None:
    token = issue(SECRET, 42, "alice", NOW, TTL)
    _, mac = token.split(".")
    other = base64.urlsafe_b64encode(msgspec.json.encode(Claims(1, "admin", NOW + TTL, "s", 0))).rstrip(b"=").decode()
    with pytest.raises(BadToken):
        verify(SECRET, other + "." + mac, NOW)
    # Nor can the expiry be pushed back.
    later = base64.urlsafe_b64encode(msgspec.json.encode(Claims(42, "alice", NOW + 100 * TTL, "s", 0))).rstrip(b"=").decode()
    with pytest.raises(BadToken):
        verify(SECRET, later + "." + mac, NOW)


def test_a_token_with_its_signature_changed_is_refused() -> None:
    token = issue(SECRET, 42, "alice", NOW, TTL)
    body, mac = token.split(".")
    flipped = ("1" if mac[0] == "0" else "0") + mac[1:]
    for bad in (body + "." + flipped, body + "." + mac[:-1], body + "." + mac + "0", body + "." + mac.upper(),
                body, body + "."):
        with pytest.raises(BadToken):
            verify(SECRET, bad, NOW)


@pytest.mark.parametrize(
    "token",
    ["", "abc", "a.b", "....", ".", "..", "a.", ".b", "not a token at all", "é", "é.abc", "a.é", "\x00.\x00",
     "ab" * 40, "a" * 10 + "." + "0" * 64],
)
def test_garbage_is_refused(token: str) -> None:
    with pytest.raises(BadToken):
        verify(SECRET, token, NOW)


def test_a_properly_signed_body_that_is_not_claims_is_refused() -> None:
    # Only a holder of the secret could make these; they must still not crash verify.
    from chorus.server.auth import _mac

    for raw in (b"not json", b"[1,2,3]", b'{"uid":"42","name":"a","exp":1}', b'{"uid":42}', b"\xff",
                b'{"uid":42,"name":"a","exp":99999999999,"sid":"s","ep":9223372036854775808}',
                b'{"uid":42,"name":"a","exp":99999999999}',  # a token of the format before sessions
                b"[" * 100_000 + b"]" * 100_000):
        body = base64.urlsafe_b64encode(raw).rstrip(b"=")
        with pytest.raises(BadToken):
            verify(SECRET, body.decode() + "." + _mac(SECRET, body), NOW)
