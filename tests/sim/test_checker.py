"""The simulator's checker has teeth: break the core in a known way and a run of
seeds must report it. (A checker that cannot fail proves nothing.)"""

from __future__ import annotations

import pytest

from chorus.raft import node as node_module
from chorus.raft.log import RaftLog

from . import world
from .world import SimFailure, run_seed


def first_failure(seeds: range, *, early_send: bool = False) -> str:
    for seed in seeds:
        try:
            run_seed(seed, early_send=early_send)
        except SimFailure as exc:
            return str(exc)
    pytest.fail(f"no seed in {seeds} noticed the bug")


def test_vote_sent_before_it_is_persisted(monkeypatch: pytest.MonkeyPatch) -> None:
    ready = node_module.RaftNode.ready

    def forgetful_ready(self):
        vote, self.vote = self.vote, 0  # the hard state handed out lacks the vote
        try:
            return ready(self)
        finally:
            self.vote = vote

    monkeypatch.setattr(node_module.RaftNode, "ready", forgetful_ready)
    assert "before persisting it" in first_failure(range(5))


def test_votes_for_candidates_with_stale_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(RaftLog, "is_up_to_date", lambda self, index, term: True)
    assert "lacks committed entry" in first_failure(range(60))


def test_reads_served_without_confirming_leadership(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        node_module.RaftNode,
        "_primary_read",
        lambda self, origin, req: self._deliver_read(origin, req, self.commit),
    )
    assert "acknowledged before it began" in first_failure(range(200))


def test_appending_without_the_consistency_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """A backup that accepts entries whenever it has *some* entry at prev_index."""
    monkeypatch.setattr(RaftLog, "match_term", lambda self, index, term: self.term(index) is not None)
    failure = first_failure(range(150))
    assert "committed" in failure or "log holds" in failure, failure


def test_acknowledging_before_the_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    """Early sends that let acknowledgements and votes leave before the disk has them."""
    monkeypatch.setattr(world.World, "plan", staticmethod(lambda rd: (rd.messages, ())))
    failure = first_failure(range(20), early_send=True)
    assert "on disk" in failure or "before persisting it" in failure, failure



def test_a_server_back_with_an_empty_disk_that_votes_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A replaced disk taken for a new member's: it votes as if it had never
    promised anything, and a primary without acknowledged entries gets elected
    (or a server votes twice in a term)."""
    monkeypatch.setattr(world.World, "empty_disk_votes", True, raising=False)
    failure = first_failure(range(60))
    assert "lacks committed entry" in failure or "granted votes to" in failure, failure


def test_a_cluster_that_needs_a_recovering_servers_vote_waits_for_it() -> None:
    """Seed 1076974: the server that lost its disk was the last primary, its newest
    entries are only on a learner, and another server's log ends with a promotion
    that is not committed. No server can win without the recovering server's vote,
    which it may not give: the run ends waiting, with every acknowledged write on a
    disk that was not lost, and counts it."""
    assert run_seed(1076974)["waits_for_recovering"] == 1
    assert run_seed(1076975)["waits_for_recovering"] == 0
