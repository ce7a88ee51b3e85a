"""The simulator's seed sweep, run by `make test`.

CHORUS_SIM_SEEDS sets how many seeds (default 2000); `make sim START=a COUNT=n`
runs any range outside pytest.
"""

from __future__ import annotations

import os

import pytest

from .world import SimFailure, run_seed

SEEDS = int(os.environ.get("CHORUS_SIM_SEEDS", "2000"))
CHUNK = 50


@pytest.mark.parametrize("start", range(0, SEEDS, CHUNK), ids=lambda s: f"seeds{s}-{min(s + CHUNK, SEEDS) - 1}")
def test_seed_range(start: int) -> None:
    failures = []
    for seed in range(start, min(start + CHUNK, SEEDS)):
        try:
            run_seed(seed)
        except SimFailure as exc:
            failures.append(str(exc))
    assert not failures, "\n".join(failures) + "\nreplay one with: make sim SEED=<seed>"


def test_a_seed_replays_exactly() -> None:
    first: list[str] = []
    second: list[str] = []
    run_seed(11, trace=first.append)
    run_seed(11, trace=second.append)
    assert len(first) > 1000 and first == second


def test_trace_is_readable() -> None:
    lines: list[str] = []
    run_seed(5, trace=lines.append)
    text = "\n".join(lines)
    assert lines[0].startswith("[ 0.000000] n1 starts: n1 BACKUP t1")  # (entry 1: the bootstrap)
    for expected in ("seed 5: nodes=", "<- REQUEST_VOTE", "<- REPLICATE ", "is PRIMARY of term", "HEAL", "converged"):
        assert expected in text, expected
    assert all("\n" not in line for line in lines)
