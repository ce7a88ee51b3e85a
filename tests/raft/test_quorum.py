"""Quorum arithmetic (hypothesis): the commit index a primary computes is the
highest index held by a majority of voters, counting only its own term."""

from __future__ import annotations

import itertools
import random

from hypothesis import given
from hypothesis import strategies as st

from chorus.raft import HardState, Membership, Persisted, RaftNode, Role
from chorus.raft.progress import Progress

from .net import entries_for_terms


@given(st.integers(1, 9))
def test_any_two_majorities_intersect(n: int) -> None:
    voters = range(n)
    q = Membership(voters=frozenset(range(1, n + 1)))
    quorum = len(q.voters) // 2 + 1
    for a in itertools.combinations(voters, quorum):
        for b in itertools.combinations(voters, quorum):
            assert set(a) & set(b)
    assert quorum * 2 > n and (quorum - 1) * 2 <= n


@given(st.integers(1, 7), st.data())
def test_commit_index_is_the_highest_index_a_majority_holds(n: int, data) -> None:
    ids = list(range(1, n + 1))
    learners = data.draw(st.lists(st.integers(10, 12), unique=True, max_size=2))
    node = RaftNode(1, Membership(frozenset(ids), frozenset(learners)), rng=random.Random(0),
                    persisted=Persisted(HardState(1, 0, 0)))  # not a fresh start: no bootstrap entry
    # Make it primary of term 2 with a log of terms [1]*5 + [2]*5.
    node.term, node.role, node.primary = 2, Role.PRIMARY, 1
    node.log.append(entries_for_terms([1] * 5 + [2] * 5))
    matches = {i: data.draw(st.integers(0, 10)) for i in [*ids, *learners]}
    node.progress = {i: Progress(11, is_learner=i in learners) for i in matches}
    recovering = set(data.draw(st.lists(st.sampled_from(ids[1:]), unique=True)) if n > 1 else [])
    for i, m in matches.items():
        node.progress[i].match = m
        node.progress[i].recovering = i in recovering  # (each acknowledged, and said whether it recovers)
    node._maybe_commit()
    # Brute force: the largest index k that a majority of voters (not learners) hold,
    # committed by counting only if its entry is from the current term (index > 5);
    # a voter recovering a lost disk counts for nothing.
    best = 0
    for k in range(10, 0, -1):
        if sum(1 for i in ids if matches[i] >= k and i not in recovering) * 2 > n:
            best = k
            break
    expected = best if best > 5 else 0
    assert node.commit == expected
