"""The rules for names, passwords and messages, shared by whoever checks them:
the server before proposing (passwords are checked before hashing), the state
machine when applying, the terminal app as the user types."""

from __future__ import annotations

import re

NAME_MIN, NAME_MAX = 3, 20
PASSWORD_MIN = 8
BODY_MAX = 4000
VIEW_COUNT_MAX = 1000
DELETE_MAX = 1000  # message ids in one delete
DEFAULT_VIEW_COUNT = 5

_NAME = re.compile(r"[A-Za-z0-9]+")

NAME_RULE = f"{NAME_MIN}-{NAME_MAX} letters (a-z, A-Z) or digits"
PASSWORD_RULE = f"at least {PASSWORD_MIN} characters, with a digit and an uppercase letter, and no spaces"


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a user name, or None if it can."""
    if not isinstance(name, str) or not NAME_MIN <= len(name) <= NAME_MAX:
        return f"a user name is {NAME_RULE}"
    if not _NAME.fullmatch(name):
        return f"a user name is {NAME_RULE}"
    return None


def name_key(name: str) -> str:
    """Names are unique regardless of case."""
    return name.lower()


def password_problems(password: str) -> list[str]:
    """Everything wrong with a password (empty when it is acceptable)."""
    problems = []
    if len(password) < PASSWORD_MIN:
        problems.append(f"at least {PASSWORD_MIN} characters")
    if not any(c.isdigit() for c in password):
        problems.append("a digit")
    if not any(c.isupper() for c in password):
        problems.append("an uppercase letter")
    if any(c.isspace() for c in password):
        problems.append("no spaces")
    return problems


def body_problem(body: str) -> str | None:
    if not isinstance(body, str) or not body.strip():
        return "a message cannot be empty"
    if len(body) > BODY_MAX:
        return f"a message is at most {BODY_MAX} characters ({len(body)} given)"
    return None
