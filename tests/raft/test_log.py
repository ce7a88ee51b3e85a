"""The in-memory log, checked against brute force (hypothesis)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from chorus.raft import Entry, Membership, SnapshotMeta
from chorus.raft.log import ENTRY_OVERHEAD, RaftLog

from .net import entries_for_terms

# A Raft log's terms never decrease.
terms_lists = st.lists(st.integers(1, 6), max_size=40).map(sorted)


def make_log(terms: list[int], snap: int = 0) -> RaftLog:
    log = RaftLog()
    log.append(entries_for_terms(terms))
    if snap:
        log.compact(SnapshotMeta(snap, terms[snap - 1], Membership()))
    return log


@given(terms_lists, st.integers(0, 45), st.integers(0, 7), st.data())
def test_find_conflict_by_term_matches_a_linear_scan(terms, index, term, data) -> None:
    snap = data.draw(st.integers(0, len(terms)))
    log = make_log(terms, snap)
    got = log.find_conflict_by_term(index, term)
    # Brute force: walk down from min(index, last) to the first term <= term.
    i = min(index, len(terms))
    while i > snap and terms[i - 1] > term:
        i -= 1
    if i < snap:
        expected = (i, 0)
    elif i == snap:
        expected = (snap, terms[snap - 1] if snap else 0)
    else:
        expected = (i, terms[i - 1])
    assert got == expected


@given(terms_lists, st.data())
def test_term_lookups_and_bounds(terms, data) -> None:
    snap = data.draw(st.integers(0, len(terms)))
    log = make_log(terms, snap)
    assert log.last_index == len(terms)
    assert log.first_index == snap + 1
    for i in range(len(terms) + 2):
        expected = None if i < snap or i > len(terms) else (terms[i - 1] if i else 0)
        assert log.term(i) == expected


@given(st.lists(st.binary(max_size=30), min_size=1, max_size=30), st.integers(1, 200), st.data())
def test_slice_bytes_takes_the_longest_prefix_within_the_budget(datas, budget, data) -> None:
    log = RaftLog()
    log.append([Entry(i + 1, 1, 0, d) for i, d in enumerate(datas)])
    lo = data.draw(st.integers(1, len(datas)))
    got = log.slice_bytes(lo, budget)
    assert got and got[0].index == lo  # at least one entry, even a big one
    sizes = [len(e.data) + ENTRY_OVERHEAD for e in got]
    assert len(got) == 1 or sum(sizes) <= budget
    nxt = lo + len(got)
    if nxt <= len(datas):  # taking one more would break the budget
        assert sum(sizes) + len(datas[nxt - 1]) + ENTRY_OVERHEAD > budget
    assert log.bytes_between(lo, nxt - 1) == sum(sizes)


@given(terms_lists, st.data())
def test_up_to_date_is_the_raft_rule(terms, data) -> None:
    log = make_log(terms)
    other_index = data.draw(st.integers(0, 45))
    other_term = data.draw(st.integers(0, 7))
    my = (terms[-1] if terms else 0, len(terms))
    assert log.is_up_to_date(other_index, other_term) == ((other_term, other_index) >= my)


def test_truncate_and_compact_keep_byte_counts() -> None:
    log = RaftLog()
    log.append(entries_for_terms([1, 1, 2, 2, 3]))
    full = log.bytes_between(1, 5)
    log.truncate_after(3)
    assert log.last_index == 3 and log.bytes_between(1, 3) < full
    log.compact(SnapshotMeta(2, 1, Membership()))
    assert log.first_index == 3 and log.bytes_between(3, 3) == len(log.entry(3).data) + ENTRY_OVERHEAD
    assert log.find_conflict(entries_for_terms([2, 2], start=3)) == 4
