"""Conflict resolution as a property (hypothesis): whatever two logs hold, the
new primary makes the follower's log equal to its own, and the hints skip a
whole term per rejection instead of one entry."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from chorus.raft import ReplicateAck, Role

from .net import Net


@st.composite
def diverging_logs(draw) -> tuple[list[int], list[int]]:
    """A common prefix, then a primary's suffix in even terms and a follower's in
    odd terms (two different histories can never share an (index, term) pair)."""
    prefix = sorted(draw(st.lists(st.integers(1, 3), max_size=6)))
    base = prefix[-1] if prefix else 1
    mine = sorted(draw(st.lists(st.sampled_from([4, 6, 8, 10]), max_size=12)))
    theirs = sorted(draw(st.lists(st.sampled_from([5, 7, 9, 11]), max_size=12)))
    return prefix + [max(base, t) for t in mine], prefix + [max(base, t) for t in theirs]


@settings(max_examples=150, deadline=None)
@given(diverging_logs())
def test_follower_log_converges_to_the_primarys(logs) -> None:
    primary_log, follower_log = logs
    top = max([*primary_log, *follower_log, 1])
    # n3 has an empty log and votes for n1; n2's (possibly longer, higher-term) log loses.
    net = Net(3, logs={1: primary_log, 2: follower_log}, terms={1: top, 2: top})
    for _ in range(3):
        net.elect(1)
        if net[1].role is Role.PRIMARY:
            break
    assert net[1].role is Role.PRIMARY
    net.propose(1, b"x")
    assert net.log_terms(2) == net.log_terms(1) == net.log_terms(3)
    rejects = sum(1 for m in net.sent if type(m) is ReplicateAck and m.server_id == 2 and m.reject)
    divergent_terms = len(set(follower_log) - set(primary_log))
    assert rejects <= divergent_terms + 1, (rejects, follower_log, primary_log)
