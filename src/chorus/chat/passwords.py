"""Password hashing (argon2id). Slow on purpose: servers run it off the event
loop. The primary hashes before proposing, so the plaintext never enters the log."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()  # argon2id with the library's current defaults


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(pw_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(pw_hash, password)
    except (VerificationError, InvalidHashError):
        return False


_dummy: str | None = None


def dummy_hash() -> str:
    """A hash of no one's password, with the same parameters as every other: a
    login for a name that does not exist verifies against it, so that it takes
    as long as a wrong password for a name that does (no enumeration by timing)."""
    global _dummy
    if _dummy is None:
        import secrets

        _dummy = hash_password(secrets.token_hex(16))
    return _dummy
