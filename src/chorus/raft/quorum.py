"""Majority arithmetic for one configuration of voters (etcd's quorum/majority.go)."""

from __future__ import annotations

from collections.abc import Iterable


def size(voters: int) -> int:
    """How many of ``voters`` make a majority."""
    return voters // 2 + 1


def reached(values: Iterable[int], voters: int) -> int | None:
    """The highest value that a majority of ``voters`` has reached, given the
    values of those that count (one each): the majority-th largest. None when
    fewer than a majority count. Raft §5.3 for commit indexes; the same for the
    heartbeat rounds that confirm reads (dissertation §6.4)."""
    ordered = sorted(values)
    q = size(voters)
    return ordered[len(ordered) - q] if len(ordered) >= q else None


def outcome(granted: int, rejected: int, voters: int) -> bool | None:
    """An election's result so far (Raft §5.2): True once a majority granted,
    False once a majority refused, None while neither is known."""
    q = size(voters)
    if granted >= q:
        return True
    if rejected >= q:
        return False
    return None
