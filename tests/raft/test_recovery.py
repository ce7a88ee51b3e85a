"""A server that may have lost what it promised (its disk was replaced, or found
damaged) neither votes nor counts towards any quorum until it has caught up from
a primary elected without it. Scenarios on a hand-driven network."""

from __future__ import annotations

import dataclasses

import pytest

from chorus.raft import Membership, ReplicateAck, RequestVote, Role
from chorus.raft.node import Refused

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
        net[1].transfer_leadership(3)
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
