"""Named scenarios from the Raft paper and from operating a cluster, each a small
story told step by step on a hand-driven network (tests/raft/net.py)."""

from __future__ import annotations

import dataclasses
import random

import msgspec
import pytest

from chorus.raft import (
    Entry,
    EntryKind,
    HardState,
    Heartbeat,
    InstallSnapshot,
    Membership,
    Persisted,
    RaftNode,
    ReadState,
    Refused,
    Replicate,
    ReplicateAck,
    RequestVote,
    Role,
    TimeoutNow,
    VoteResponse,
)

from .net import CONFIG, Net


def elect(net: Net, i: int, attempts: int = 3) -> None:
    """Campaign until node i is primary (a failed pre-vote teaches it the term first)."""
    for _ in range(attempts):
        net.elect(i)
        if net[i].role is Role.PRIMARY:
            return
    raise AssertionError(f"n{i} did not win:\n{net.status()}")


def rejections(net: Net, frm: int) -> int:
    return sum(1 for m in net.sent if type(m) is ReplicateAck and m.server_id == frm and m.reject)


# ---------------------------------------------------------------- Figure 7
LEADER_LOG = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6]
FIGURE_7 = {
    "a": [1, 1, 1, 4, 4, 5, 5, 6, 6],
    "b": [1, 1, 1, 4],
    "c": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
    "d": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
    "e": [1, 1, 1, 4, 4, 4, 4],
    "f": [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
}


@pytest.mark.parametrize("name", sorted(FIGURE_7))
def test_figure_7_primary_brings_every_follower_log_in_line(name: str) -> None:
    """Raft Figure 7: whatever the follower holds (missing entries, extra
    uncommitted ones, or both), the new primary of term 8 makes its log equal
    to its own, skipping a whole term per rejection."""
    net = Net(3, logs={1: LEADER_LOG, 2: FIGURE_7[name]}, terms={1: 7, 2: 7})
    elect(net, 1)  # n3 (empty log) votes for n1; n2 may refuse (d is more up to date)
    assert net[1].term == 8
    net.propose(1, b"x")
    expected = [*LEADER_LOG, 8, 8]  # the primary's no-op of term 8, then "x"
    assert net.log_terms(1) == expected
    assert net.log_terms(2) == expected, net.status()
    assert net.log_terms(3) == expected
    # One rejection at most: the hint skips the follower's whole conflicting term.
    assert rejections(net, 2) <= 1
    assert net[2].commit == len(expected)


# ---------------------------------------------------------------- Figure 8
FIG8 = dataclasses.replace(CONFIG, max_msg_bytes=1, max_inflight_msgs=1, check_quorum=False)


def without_term(term: int):
    def cut(m):
        if type(m) is Replicate:
            return msgspec.structs.replace(m, entries=tuple(e for e in m.entries if e.term != term))
        return m

    return cut


def figure_8_start() -> Net:
    """Figure 8 (c): S1 led term 2 and put entry 2 on S2; S5 led term 3 and put a
    different entry 2 on itself only (S3, S4 and S5 voted in term 3); S5 is down."""
    net = Net(
        5,
        config=FIG8,
        logs={1: [1, 2], 2: [1, 2], 3: [1], 4: [1], 5: [1, 3]},
        terms={1: 2, 2: 2, 3: 3, 4: 3, 5: 3},
    )
    for i in (1, 2, 3, 4, 5):
        vote = 5 if i in (3, 4, 5) else 1
        net.storage[i].hard_state = dataclasses.replace(net.storage[i].hard_state, vote=vote, commit=1)
    for i in (1, 2, 3, 4, 5):
        net.restart(i)
    net.crash(5)
    return net


def test_figure_8_old_term_entry_is_not_committed_by_counting_replicas() -> None:
    net = figure_8_start()
    net.isolate(4)
    # S1 restarts its career: primary of term 4. It may carry entry 2 (term 2) to S3,
    # but its own term-4 entry is cut out of every message on the way.
    net.filter = without_term(4)
    elect(net, 1)
    assert net[1].term == 4
    net.tick(times=10)
    assert net.log_terms(3) == [1, 2], net.status()
    # Entry 2 is now on S1, S2 and S3, a majority, yet (Raft §5.4.2) it is not
    # committed: it is from term 2, and only entries of the current term are
    # committed by counting replicas.
    assert net[1].progress[2].match >= 2 and net[1].progress[3].match >= 2
    assert net[1].commit == 1
    # Figure 8 (d): S1 crashes, S5 comes back and wins term 5 with the votes of
    # S2, S3 and S4 (its last term, 3, beats their 2); it overwrites entry 2.
    net.crash(1)
    net.heal()
    net.filter = None
    net.restart(5)
    elect(net, 5)
    assert net[5].term >= 5
    assert net.log_terms(2)[:2] == [1, 3]
    assert net.log_terms(3)[:2] == [1, 3]
    # Nobody ever applied the overwritten entry.
    assert all(e.term != 2 for i in (2, 3, 4, 5) for e in net.applied[i])


def test_figure_8_entry_of_current_term_commits_and_protects_the_old_one() -> None:
    """Figure 8 (e): once S1's term-4 entry is on a majority, entries 2 and 3 are
    committed, and S5 can no longer win an election."""
    net = figure_8_start()
    net.isolate(4)
    elect(net, 1)
    net.tick(times=10)
    assert net[1].commit == 3 and net.log_terms(3) == [1, 2, 4]
    net.crash(1)
    net.heal()
    net.restart(5)
    for _ in range(3):
        net.elect(5)
        assert net[5].role is not Role.PRIMARY
    assert net.log_terms(2) == [1, 2, 4]


# ---------------------------------------------------------------- elections
def test_candidate_with_stale_log_loses() -> None:
    """Raft §5.4.1: a voter refuses a candidate whose log is less up to date.
    (Without check-quorum, so that the voter answers rather than ignoring a
    candidate while it still remembers the primary.)"""
    net = Net(3, config=dataclasses.replace(CONFIG, check_quorum=False))
    elect(net, 1)
    net.isolate(3)
    before = net[3].log.last_index
    for k in range(5):
        net.propose(1, b"w%d" % k)
    assert net[1].commit == before + 5 and net[3].log.last_index == before
    net.crash(1)
    net.heal()
    net.sent.clear()
    for _ in range(3):
        net.elect(3)
        assert net[3].role is not Role.PRIMARY
    refused = [m for m in net.sent if m.server_id == 2 and type(m).__name__ == "VoteResponse"]
    assert refused and not any(m.granted for m in refused)
    elect(net, 2)
    assert net[2].commit >= before + 5


def test_partitioned_primary_rejoins_without_disruption() -> None:
    """Pre-vote: the old primary, cut off, steps down and keeps asking for pre-votes
    without ever raising its term; when it comes back it simply follows."""
    net = Net(3)
    elect(net, 1)
    old_term = net[1].term
    net.isolate(1)
    net.tick(times=60)  # three election timeouts and more
    new = net.primary()
    assert new in (2, 3)
    term = net[new].term
    assert net[1].role is not Role.PRIMARY  # check-quorum made it step down
    assert net[1].term == old_term  # pre-votes never bumped its term
    net.heal()
    net.tick(times=5)
    assert net.primary() == new and net[new].term == term
    assert net[1].role is Role.BACKUP and net[1].primary == new and net[1].term == term


def test_without_pre_vote_a_rejoining_node_disrupts() -> None:
    """The contrast: without pre-vote the cut-off node bumps its term while away,
    and the primary it returns to has to step down."""
    net = Net(3, config=dataclasses.replace(CONFIG, pre_vote=False))
    elect(net, 1)
    net.isolate(3)
    net.tick(times=60)
    assert net[3].term > 1
    net.heal()
    net.tick(times=40)
    assert net[1].term > 1 and net[1].term == net[3].term


def test_isolated_primary_steps_down() -> None:
    """Check-quorum: a primary that has not heard from a majority for an election
    timeout stops being primary; what it accepted meanwhile is never committed."""
    net = Net(3)
    elect(net, 1)
    net.isolate(1)
    index = net.propose(1, b"lost")
    assert index is not None
    net.tick(1, times=CONFIG.election_ticks_min * 2)
    assert net[1].role is Role.BACKUP and net[1].primary == 0
    assert net[1].commit < index


def test_without_check_quorum_an_isolated_primary_stays_primary() -> None:
    net = Net(3, config=dataclasses.replace(CONFIG, check_quorum=False))
    elect(net, 1)
    net.isolate(1)
    net.tick(1, times=CONFIG.election_ticks_max * 3)
    assert net[1].role is Role.PRIMARY


def test_one_of_three_left_elects_nobody_and_refuses_proposals() -> None:
    net = Net(3)
    elect(net, 1)
    net.crash(2)
    net.crash(3)
    net.tick(1, times=200)
    assert net[1].role is not Role.PRIMARY
    with pytest.raises(Refused) as err:
        net[1].propose(b"hello")
    assert err.value.code == "no_primary"
    assert "fewer than 2 of the 3 voting servers" in str(err.value)
    with pytest.raises(Refused):
        net[1].read_index(1)


def test_one_vote_per_term_survives_a_restart() -> None:
    """The vote is persisted before the answer leaves, so a restarted voter
    remembers it and cannot vote twice in one term."""
    net = Net(3)
    net[1].campaign()  # pre-vote, then the vote of this term
    net.settle()
    term = net[1].term
    assert net[2].vote == 1 and net.storage[2].hard_state == net[2].hard_state()
    net.crash(2)
    net.restart(2)
    assert net[2].vote == 1 and net[2].term == term
    rv = RequestVote(term=term, server_id=3, to=2, last_index=50, last_term=term)
    net[2].step(rv)
    net.process(2)
    answers = [m for m in net.sent if m.server_id == 2 and m.to == 3]
    assert answers and not answers[-1].granted


def test_forwarded_command_of_a_backup_that_becomes_primary_is_kept() -> None:
    """Defensive: commands accepted for forwarding are never stranded. Here a
    backup wins an election before its next Ready (possible only if the votes
    arrive that fast, so the answers are stepped in by hand); the command goes
    into its own log, once, and no FORWARD ever leaves."""
    net = Net(3)
    elect(net, 1)
    assert net[2].propose(b"client-cmd") is None  # accepted for forwarding to n1
    term = net[1].term
    net[2].step(TimeoutNow(term=term, server_id=1, to=2))
    net[2].step(VoteResponse(term=term + 1, server_id=3, to=2, granted=True))
    assert net[2].role is Role.PRIMARY
    net.inflight = [m for m in net.inflight if m.to != 2]
    net.settle()
    assert [e.data for e in net[2].log.entries].count(b"client-cmd") == 1
    assert not any(type(m).__name__ == "Forward" for m in net.sent)


# ---------------------------------------------------------------- reads
def test_read_on_backup_sees_a_write_acknowledged_before_it_began() -> None:
    net = Net(3)
    elect(net, 1)
    # n3 misses the write: REPLICATE messages to it are lost for now.
    net.filter = lambda m: None if type(m) is Replicate and m.to == 3 else m
    index = net.propose(1, b"acknowledged")
    assert index is not None and net[1].commit >= index
    assert any(e.data == b"acknowledged" for e in net.applied[1])  # the client got its answer
    # Now a read begins on the backup n3.
    net[3].read_index(42)
    net.settle()
    [read] = net.reads[3]
    assert read == ReadState(42, net[1].commit) and read.index >= index
    # n3 may serve it only once it has applied up to read.index; it has not yet.
    assert net.storage[3].applied < read.index
    net.filter = None
    net.tick(times=3)
    assert net.storage[3].applied >= read.index
    assert any(e.data == b"acknowledged" for e in net.applied[3])


def test_read_index_waits_for_a_heartbeat_round() -> None:
    """ReadIndex on the primary: the read is released only once a majority has
    confirmed it is still primary; cut off from everyone, it is never released."""
    net = Net(3)
    elect(net, 1)
    net.isolate(1)
    net[1].read_index(7)
    net.settle()
    assert net.reads[1] == []
    net.heal()
    net.tick(times=CONFIG.heartbeat_ticks)
    assert net.reads[1] == [ReadState(7, net[1].commit)]


def primary_without_commit_in_its_term() -> tuple[Net, int]:
    """n1 dies; a successor is elected, but its no-op cannot reach anyone yet."""
    net = Net(3)
    elect(net, 1)
    net.crash(1)
    net.filter = lambda m: None if type(m) is Replicate else m
    for _ in range(60):
        net.tick()
        if net.primary():
            break
    p = net.primary()
    assert p in (2, 3) and net[p].log.term(net[p].commit) != net[p].term
    return net, p


def test_new_primary_serves_reads_only_after_committing_in_its_term() -> None:
    net, p = primary_without_commit_in_its_term()
    net[p].read_index(1)
    net.tick(times=CONFIG.heartbeat_ticks * 2)
    assert net.reads[p] == []  # a majority answered heartbeats, but commit is unknown
    net.filter = None
    net.tick(times=CONFIG.heartbeat_ticks * 2)
    assert [r.request_id for r in net.reads[p]] == [1]
    assert net.reads[p][0].index == net[p].commit


# ---------------------------------------------------------------- leadership transfer
def test_transfer_to_a_caught_up_backup() -> None:
    net = Net(3)
    elect(net, 1)
    term = net[1].term
    net.propose(1, b"x")
    net[1].hand_over(3)
    net.settle()
    assert net.primary() == 3 and net[3].term == term + 1
    assert net[1].role is Role.BACKUP and net[1].primary == 3
    assert any(type(m) is TimeoutNow and m.to == 3 for m in net.sent)


def test_transfer_to_a_lagging_backup_catches_it_up_first() -> None:
    net = Net(3)
    elect(net, 1)
    net.filter = lambda m: None if type(m) is Replicate and m.to == 3 else m
    for k in range(3):
        net.propose(1, b"w%d" % k)
    net[1].hand_over(3)
    with pytest.raises(Refused) as err:
        net[1].propose(b"during")
    assert err.value.code == "transferring"
    net.settle()
    assert not any(type(m) is TimeoutNow for m in net.sent)  # n3 is not caught up yet
    net.filter = None
    net.tick(1, times=CONFIG.heartbeat_ticks)
    assert net.primary() == 3
    assert net.log_terms(3)[:5] == [1, 1, 1, 1, 2][:5] or net[3].log.last_index >= 5


def test_transfer_to_an_unreachable_backup_is_abandoned() -> None:
    net = Net(3)
    elect(net, 1)
    net.isolate(3)
    net[1].hand_over(3)
    with pytest.raises(Refused):
        net[1].propose(b"during")
    net.tick(1, 2, times=CONFIG.election_ticks_min + 1)
    assert net.primary() == 1
    assert net.propose(1, b"after") is not None


# ---------------------------------------------------------------- membership
def test_add_learner_promote_then_remove_the_primary() -> None:
    net = Net(3)
    elect(net, 1)
    net.propose(1, b"before")
    net.start(4, Membership())  # a new server knows nobody until the primary calls
    net[1].add_learner(4)
    with pytest.raises(Refused) as err:
        net[1].add_learner(5)
    net.settle()
    assert err.value.code == "change_pending"
    assert net[4].membership.learners == {4} and not net[4].promotable
    assert net.log_terms(4) == net.log_terms(1)
    net.tick(times=60)
    assert net[4].role is Role.BACKUP  # a learner never campaigns
    net[1].promote(4)
    net.settle()
    assert net[1].membership.voters == {1, 2, 3, 4}
    assert net[4].membership.voters == {1, 2, 3, 4}
    # Remove the primary itself: it steps down once the change is committed and
    # hands over to the most caught-up voter.
    index = net[1].remove(1)
    net.settle()
    assert net[2].commit >= index
    assert net[1].role is Role.BACKUP and not net[1].promotable
    net.tick(2, 3, 4, times=40)
    new = net.primary()
    assert new in (2, 3, 4) and net[new].membership.voters == {2, 3, 4}
    net.tick(times=60)
    assert net[1].role is Role.BACKUP  # a removed server never campaigns
    assert net.propose(new, b"after") is not None


def test_a_learners_copy_does_not_count_towards_commit() -> None:
    net = Net(3)
    elect(net, 1)
    for learner in (4, 5):
        net.start(learner, Membership())
        net[1].add_learner(learner)
        net.settle()
    net.partition([1, 4, 5], [2, 3])
    index = net.propose(1, b"only-on-1-4-5")
    assert index is not None and net[4].log.last_index >= index and net[5].log.last_index >= index
    assert net[1].commit < index  # three of five servers, but one of three voters
    net.heal()
    net.tick(1, times=CONFIG.heartbeat_ticks)
    assert net[1].commit >= index


def test_removed_server_learns_it_and_never_campaigns() -> None:
    net = Net(3)
    elect(net, 1)
    term = net[1].term
    index = net[1].remove(3)
    net.settle()
    assert net[3].commit >= index or net[3].log.last_index >= index  # it received its removal
    assert not net[3].promotable and 3 not in net[1].progress  # and is no longer replicated to
    net.sent.clear()
    net.tick(times=100)
    assert not any(type(m) is RequestVote and m.server_id == 3 for m in net.sent)
    assert net.primary() == 1 and net[1].term == term


def test_a_removed_id_cannot_come_back() -> None:
    """A server that returns with an empty disk must take a new id: answers meant
    for its old self would otherwise be taken for its own."""
    net = Net(3)
    elect(net, 1)
    net[1].remove(3)
    net.settle()
    with pytest.raises(Refused) as err:
        net[1].add_learner(3)
    assert err.value.code == "invalid" and "new id" in str(err.value)
    assert net[1].membership.removed == {3}


def test_a_server_that_joined_later_knows_the_membership_of_every_index() -> None:
    """The initial membership is entry 1 of the log, so a server added later learns
    it like any other change: a snapshot it takes of an early index names the real
    voters (it once named nobody, and whoever installed it would never campaign)."""
    net = Net(3)
    elect(net, 1)
    net.propose(1, b"early")
    net.start(4, Membership())
    net[1].add_learner(4)
    net.settle()
    assert net[4].log.entry(1).kind == EntryKind.CONFIG
    meta = net.snapshot(4)
    assert meta.membership.voters == {1, 2, 3} and meta.membership.learners == {4}


def test_promote_refuses_a_learner_that_is_far_behind() -> None:
    net = Net(3, config=dataclasses.replace(CONFIG, promote_max_lag=2))
    elect(net, 1)
    net.start(4, Membership())
    net.isolate(4)
    net[1].add_learner(4)
    for k in range(5):
        net.propose(1, b"w%d" % k)
    with pytest.raises(Refused) as err:
        net[1].promote(4)
    assert err.value.code == "not_caught_up"
    net.heal()
    net.tick(times=3)
    net[1].promote(4)
    net.settle()
    assert 4 in net[1].membership.voters


def test_removed_server_that_never_learned_it_cannot_disrupt() -> None:
    net = Net(3)
    elect(net, 1)
    term = net[1].term
    net.isolate(3)
    net[1].remove(3)
    net.settle()
    assert net[1].membership.voters == {1, 2}
    net.heal()
    net.tick(times=100)  # n3 keeps asking for pre-votes; nobody grants them
    assert net.primary() == 1 and net[1].term == term and net[2].term == term


def test_a_removed_server_that_missed_the_commit_of_its_removal_is_told_when_it_campaigns() -> None:
    """The primary tells a removed server the commit once, when it stops
    replicating to it. That one heartbeat lost (seen in the fault-injection
    suite under load), the server holds its removal but not that it is
    committed, and campaigns for good; the primary, asked for a (pre-)vote by a
    server it removed and forgot, tells it the commit as far as their logs
    match, and the server learns it is out."""
    net = Net(3)
    elect(net, 1)
    index = net[1].remove(3)
    net.filter = lambda m: None if type(m) is Heartbeat and m.to == 3 and m.commit >= index else m
    net.settle()
    assert 3 not in net[1].progress and net[3].log.last_index >= index and net[3].commit < index
    net.filter = None
    net.sent.clear()
    net.tick(times=100)
    assert net[3].commit >= index and not net[3].promotable
    assert any(type(m) is RequestVote and m.server_id == 3 for m in net.sent)  # (once, before it was told)
    net.sent.clear()
    net.tick(times=100)
    assert not any(type(m) is RequestVote and m.server_id == 3 for m in net.sent)
    assert net.primary() == 1


def test_membership_change_waits_for_a_commit_in_the_new_term() -> None:
    net, p = primary_without_commit_in_its_term()
    with pytest.raises(Refused) as err:
        net[p].add_learner(9)
    assert err.value.code == "not_ready"


# ---------------------------------------------------------------- snapshots
def test_new_member_is_brought_up_by_snapshot() -> None:
    net = Net(3)
    elect(net, 1)
    for k in range(20):
        net.propose(1, b"w%d" % k)
    snap = net.snapshot(1)
    assert net[1].log.first_index == snap.index + 1
    net.start(4, Membership())
    net[1].add_learner(4)
    net.settle()
    assert any(type(m) is InstallSnapshot and m.to == 4 for m in net.sent)
    assert net.storage[4].snapshot == snap
    assert net.storage[4].applied == net.storage[1].applied
    assert net.storage[4].state == net.storage[1].state
    assert net[4].log.last_index == net[1].log.last_index


def test_follower_back_from_a_crash_gets_a_snapshot_when_the_log_moved_on() -> None:
    net = Net(3)
    elect(net, 1)
    net.propose(1, b"early")
    net.crash(3)
    for k in range(10):
        net.propose(1, b"w%d" % k)
    net.snapshot(1)
    net.snapshot(2)
    net.restart(3)
    net.tick(times=CONFIG.heartbeat_ticks * 2)
    assert net.storage[3].snapshot is not None
    assert net.storage[3].state == net.storage[1].state
    assert net[3].commit == net[1].commit


# ---------------------------------------------------------------- replication flow
def test_proposals_between_readies_travel_in_one_message() -> None:
    net = Net(3)
    elect(net, 1)
    net.sent.clear()
    for k in range(100):
        net[1].propose(b"w%03d" % k)
    net.process(1)
    to2 = [m for m in net.sent if type(m) is Replicate and m.to == 2]
    assert len(to2) == 1 and len(to2[0].entries) == 100


def test_pipelining_sends_batches_without_waiting_and_bounds_bytes_in_flight() -> None:
    per = 10 + 16  # bytes counted per 10-byte entry
    config = dataclasses.replace(CONFIG, max_msg_bytes=per * 5, max_inflight_bytes=per * 20)
    net = Net(3, config=config)
    elect(net, 1)
    net.sent.clear()
    for k in range(100):
        net[1].propose(b"entry-%04d" % k)
    net.process(1)
    to2 = [m for m in net.sent if type(m) is Replicate and m.to == 2]
    # Four batches of five leave at once (pipelining), then the 20-entry byte bound stops it.
    assert [len(m.entries) for m in to2] == [5, 5, 5, 5]
    net.settle()
    assert net[2].log.last_index == net[1].log.last_index
    assert net[1].commit == net[1].log.last_index


def test_an_acknowledgement_of_entries_dropped_before_it_left_is_not_sent() -> None:
    """Found by simulator seed 86617. A backup acknowledges entries of the term-2
    primary, but before that acknowledgement is handed out in a Ready, the
    term-3 primary's REPLICATE replaces those entries. The old acknowledgement
    must not leave with the new Ready: after its fsync the disk no longer holds
    what it claims, and the old primary would count a copy that is gone."""
    log = [Entry(1, 1, EntryKind.COMMAND, b"a")] + [Entry(i, 2, EntryKind.COMMAND, b"x%d" % i) for i in range(2, 6)]
    node = RaftNode(3, Membership(voters=frozenset({1, 2, 3})), config=CONFIG, rng=random.Random(1),
                    persisted=Persisted(HardState(2, 1, 1), None, log, 1))
    node.step(Replicate(term=2, server_id=1, to=3, prev_index=5, prev_term=2, entries=(), commit=1))
    node.step(Replicate(term=3, server_id=2, to=3, prev_index=1, prev_term=1,
                        entries=(Entry(2, 3, EntryKind.NOOP, b""),), commit=1))
    rd = node.ready()
    assert [e.index for e in rd.entries] == [2] and node.last_index == 2
    acks = [m for m in rd.messages if type(m) is ReplicateAck and not m.reject]
    assert acks and all(m.index <= 2 for m in acks), acks
    assert [(m.to, m.term, m.index) for m in acks] == [(2, 3, 2)]
