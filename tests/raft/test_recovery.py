"""A server that may have lost what it promised (its disk was replaced, or found
damaged) neither votes nor counts towards any quorum until it has caught up from
a primary elected without it. Scenarios on a hand-driven network."""

from __future__ import annotations

import dataclasses

import pytest

from chorus.raft import Membership, Refused, ReplicateAck, RequestVote, Role

from .net import CONFIG, Net


def elect(net: Net, i: int) -> None:
    net.elect(i)
    assert net.primary() == i, net.status()


def commands_in(net: Net, i: int) -> list[bytes]:
    return [e.data for e in net[i].log.entries if e.kind == 0]


def the_issues_scenario(*, recovering: bool) -> Net:
    """Server 3 down; 100 writes acknowledged by 1 (primary) and 2; then 1 and 2
    stop, 2's disk is lost, and 2 (empty) and 3 (which never had the writes) come
    back while 1 stays down."""
    net = Net(3)
    elect(net, 1)
    net.crash(3)
    for k in range(100):
        net.propose(1, b"ack %d" % k)
    assert net[1].commit >= 100  # acknowledged: on the disks of 1 and 2
    net.crash(1)
    net.lose_disk(2, recovering=recovering)
    net.restart(3)
    return net


def test_an_empty_disk_does_not_elect_a_primary_that_lacks_acknowledged_writes() -> None:
    net = the_issues_scenario(recovering=True)
    for _ in range(5):
        net.elect(3)
        net.tick(times=30)
        assert net.primary() == 0, net.status()  # 2 refuses its vote: it may have promised it
    # 1 comes back: elected without 2, and 2 recovers from it; nothing is lost.
    net.restart(1)
    for _ in range(10):
        net.tick(times=30)
        if net.primary() and not net[2].recovering:
            break
    p = net.primary()
    assert p == 1 and not net[2].recovering, net.status()
    net.propose(1, b"after")
    net.tick(times=10)
    for i in (1, 2, 3):
        assert [b"ack %d" % k for k in range(100)] == [c for c in commands_in(net, i) if c.startswith(b"ack")]


def test_without_recovery_the_same_scenario_loses_acknowledged_writes() -> None:
    """What the rule prevents: the empty server votes as if it had never promised
    anything, 3 is elected without the writes, and 1's entries are overwritten."""
    net = the_issues_scenario(recovering=False)
    for _ in range(10):
        net.elect(3)
        if net.primary() == 3:
            break
    assert net.primary() == 3  # a primary without the 100 acknowledged writes (Leader Completeness broken)
    assert not any(c.startswith(b"ack") for c in commands_in(net, 3))


def test_a_recovering_server_refuses_votes_and_never_campaigns() -> None:
    net = Net(3)
    elect(net, 1)
    node = net.lose_disk(3)
    assert node.recovering and not node.promotable
    node.campaign()
    assert node.role is Role.BACKUP
    node.step(RequestVote(term=9, server_id=2, to=3, last_index=99, last_term=8))
    node.step(RequestVote(term=9, server_id=2, to=3, last_index=99, last_term=8, pre_vote=True))
    net.process(3)
    answers = [m for m in net.sent if m.server_id == 3 and m.to == 2 and m.type == "VOTE_RESPONSE"]
    assert len(answers) == 2 and not any(a.granted for a in answers)


def test_its_acknowledgements_do_not_count_until_it_has_recovered() -> None:
    """A primary cut off in an older term, and a server back with an empty disk that
    takes its entries: counted, the two would commit an entry at an index where a
    later term committed another."""
    net = Net(3)
    elect(net, 1)
    net.propose(1, b"x")
    net.isolate(1)  # 1 goes on believing it leads (nothing ticks it)
    for _ in range(20):
        net.tick(2, 3, times=5)
        if net[2].role is Role.PRIMARY or net[3].role is Role.PRIMARY:
            break
    p = 2 if net[2].role is Role.PRIMARY else 3
    q = 5 - p
    assert net[p].role is Role.PRIMARY and net[p].term > net[1].term
    index = net.propose(p, b"committed in the later term")
    assert index is not None and net[p].commit >= index
    net.crash(p)
    net.lose_disk(q)  # its copy is gone
    net.cut -= {(1, q), (q, 1)}  # the old primary and the empty server see each other
    first = net[1].propose(b"the old primary's")
    net[1].propose(b"and another")
    net.settle()
    assert first is not None and first <= index  # where the later term committed others
    assert net[q].log.term(index) == net[1].term  # q took them (and acknowledged them)
    assert net[1].commit < first, net.status()  # ...which counted for nothing


def test_a_heartbeat_beyond_its_log_tells_a_server_it_lost_what_it_promised() -> None:
    """A disk that lost entries without anybody noticing (SQLite drops the WAL
    frames after a bad checksum): the primary's heartbeat names a commit index
    the server acknowledged and no longer holds."""
    net = Net(3)
    elect(net, 1)
    for k in range(5):
        net.propose(1, b"w%d" % k)
    net.crash(3)
    st = net.storage[3]
    st.entries = st.entries[:2]  # the last entries are gone, silently
    st.applied = min(st.applied, 2)
    st.hard_state = dataclasses.replace(st.hard_state, commit=2)
    node = net.restart(3)
    assert not node.recovering
    net.tick(times=10)
    acks = [m for m in net.sent if type(m) is ReplicateAck and m.server_id == 3 and m.recovering]
    assert acks, "it never told the primary"
    for _ in range(10):
        net.tick(times=10)
        if not net[3].recovering:
            break
    assert not net[3].recovering and commands_in(net, 3) == commands_in(net, 1), net.status()


def test_recovery_ends_with_the_vote_of_its_term_taken() -> None:
    """Its vote of this term may be among what it lost: once recovered it holds the
    primary's, so it cannot give another in the same term."""
    net = Net(3)
    elect(net, 1)
    net.propose(1, b"a")
    net.lose_disk(2)
    for _ in range(10):
        net.tick(times=10)
        if not net[2].recovering:
            break
    assert not net[2].recovering and net[2].vote == 1 and net[2].term == net[1].term
    assert net.storage[2].hard_state.recovering is False and net.storage[2].hard_state.vote == 1
    net[2].step(RequestVote(term=net[2].term, server_id=3, to=2, last_index=99, last_term=net[2].term))
    net.process(2)
    last = [m for m in net.sent if m.server_id == 2 and m.type == "VOTE_RESPONSE"][-1]
    assert not last.granted


def test_recovery_survives_a_restart_before_it_ends() -> None:
    net = Net(3)
    elect(net, 1)
    net.isolate(2)
    net.lose_disk(2)
    net.process(2)
    assert net.storage[2].hard_state.recovering  # on disk, like a vote
    net.crash(2)
    assert net.restart(2).recovering


def test_a_primary_refuses_what_would_need_a_recovering_voter() -> None:
    net = Net(3)
    elect(net, 1)
    net.propose(1, b"a")
    net.isolate(3)
    net.lose_disk(3)
    net.heal()
    net.tick(times=3)  # (it has said it is recovering)
    assert net[1].progress[3].recovering
    with pytest.raises(Refused, match="recovering"):
        net[1].hand_over(3)
    with pytest.raises(Refused, match="fewer than a quorum"):
        net[1].remove(2)  # {1, 3} with 3 recovering could never elect a primary again
    assert net[1].most_caught_up() == 2


def test_a_recovering_servers_answer_to_a_probe_counts_for_nothing() -> None:
    """Two lost disks of five: each waits for three others that did not lose theirs."""
    net = Net(5)
    elect(net, 1)
    net.propose(1, b"a")
    net.lose_disk(4)
    net.lose_disk(5)
    net.tick(times=30)
    assert not net[4].recovering and not net[5].recovering, net.status()
    # With three of five recovering, none can (a majority of disks is lost).
    net2 = Net(3, config=CONFIG)
    elect(net2, 1)
    net2.crash(1)
    net2.lose_disk(2)
    net2.lose_disk(3)
    net2.tick(2, 3, times=60)
    assert net2[2].recovering and net2[3].recovering and net2.primary() == 0


def test_a_new_cluster_is_not_recovering() -> None:
    """Only a server that may have lost something recovers: a fresh start elects as before."""
    net = Net(3)
    assert not any(net[i].recovering for i in (1, 2, 3))
    elect(net, 2)
    assert net[2].membership == Membership(frozenset({1, 2, 3}))


def _vote_in_flight_then_lost_disk(net: Net) -> None:
    """Five servers, 1 primary. 2 starts an election of the next term and 3 votes
    for it; then 3's disk is lost before 2's vote requests reach 4, 5 and 1. 3
    (empty) asks 1, 4 and 5, who are all still in the old term, and recovers in
    that term from 1."""
    elect(net, 1)
    net.propose(1, b"a")
    old = net[1].term
    net[2]._campaign(pre_vote=False, transfer=True)  # (a transfer: voters answer while they hear 1)
    net.process(2)
    held = [m for m in net.inflight if m.to != 3]
    net.inflight = [m for m in net.inflight if m.to == 3]
    net.settle()  # 3's vote reaches 2: two of the three it needs
    assert net[2].votes == {2: True, 3: True} and net[2].role is Role.CANDIDATE
    net.isolate(2)
    net.lose_disk(3)
    for _ in range(40):
        net.tick(1, 3, 4, 5)
        if not net[3].recovering:
            break
    assert not net[3].recovering and net[3].term == old and net.primary() == 1, net.status()
    # 2's requests arrive now: 4 votes for it, while 5 campaigns in the same term
    # on the other side and gets the votes of 1 and of 3 (whose first vote is gone).
    net.heal()
    net.partition({2, 4}, {1, 3, 5})
    for m in held:
        if m.to == 4:
            net.deliver(m)
    net[5]._campaign(pre_vote=False, transfer=True)
    net.settle()
    assert net[5].role is Role.PRIMARY and net[5].term == old + 1, net.status()


def test_a_vote_given_before_the_disk_was_lost_does_not_elect_a_second_primary() -> None:
    """The answers to 3's probe came from servers in the old term, so they bound
    nothing of the new one; but 4 answered before it voted for 2, and its vote
    says that 3's store is a new one: 2 does not count the vote 3 gave before its
    loss, and the term has one primary."""
    net = Net(5)
    _vote_in_flight_then_lost_disk(net)
    assert net[2].role is not Role.PRIMARY, net.status()
    assert net[4].vote == 2 and net[2].votes.get(4) is True  # (4's vote came: not counting 3's is what stopped 2)


def test_an_acknowledgement_from_before_the_disk_was_lost_counts_for_nothing() -> None:
    """An acknowledgement 3 sent before its disk was lost arrives after the ones of
    its new, empty disk: the primary does not take it for 3's log (which would
    count 3 as holding what it no longer has, and as recovered)."""
    net = Net(3)
    elect(net, 1)
    net.crash(2)
    net[1].propose(b"x")
    net.process(1)
    net.deliver(next(m for m in net.inflight if m.to == 3))
    net.inflight = []
    net.process(3)
    stale = next(m for m in net.inflight if m.to == 1 and isinstance(m, ReplicateAck))
    net.inflight = []
    index = stale.index
    net.lose_disk(3)
    net.tick(1, 3, times=3)  # 3 tells 1 it is recovering, and begins to catch up
    assert net[1].progress[3].recovering and net[1].commit < index, net.status()
    net.isolate(3)  # (nothing more from the new store for now)
    net[1].step(stale)
    net.settle()
    assert net[1].progress[3].recovering, "a stale acknowledgement cleared the recovery"
    assert net[1].commit < index, "an entry was committed on an acknowledgement of a lost disk"


def test_a_store_named_below_the_one_it_replaces_takes_a_higher_number() -> None:
    """A clock set back: the new store's incarnation is below the lost one's. The
    others say so, their answers do not count, and it asks again above it."""
    net = Net(3)
    elect(net, 1)
    net.propose(1, b"a")
    net.lose_disk(3)
    net.tick(times=30)
    first = net[3].incarnation
    assert not net[3].recovering and net[1].hard_state().fenced == ((3, first),), net.status()
    # Its disk is lost again, the new store named one below the first.
    assert net.lose_disk(3, incarnation=first - 1).incarnation == first - 1
    net.tick(times=30)
    assert not net[3].recovering, net.status()
    assert net[3].incarnation == first + 1
    assert (3, first + 1) in net[1].hard_state().fenced and (3, first + 1) in net[2].hard_state().fenced
