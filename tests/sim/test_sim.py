"""The simulator's seed sweep, run by `make test`.

CHORUS_SIM_SEEDS sets how many seeds (default 2000, and half as many again with
early sends); `make sim START=a COUNT=n [SIMFLAGS=--early-send]` runs any range
outside pytest.
"""

from __future__ import annotations

import os

import pytest

from .world import SimFailure, run_seed

SEEDS = int(os.environ.get("CHORUS_SIM_SEEDS", "2000"))
EARLY_SEEDS = SEEDS // 2  # with early sends, as the real replica loop sends (other seeds than the first run's)
CHUNK = 50


def _run(seeds: range, early_send: bool) -> None:
    failures = []
    for seed in seeds:
        try:
            run_seed(seed, early_send=early_send)
        except SimFailure as exc:
            failures.append(str(exc))
    flags = " SIMFLAGS=--early-send" if early_send else ""
    assert not failures, "\n".join(failures) + f"\nreplay one with: make sim SEED=<seed>{flags}"


@pytest.mark.parametrize("start", range(0, SEEDS, CHUNK), ids=lambda s: f"seeds{s}-{min(s + CHUNK, SEEDS) - 1}")
def test_seed_range(start: int) -> None:
    _run(range(start, min(start + CHUNK, SEEDS)), early_send=False)


@pytest.mark.parametrize("start", range(SEEDS, SEEDS + EARLY_SEEDS, CHUNK),
                         ids=lambda s: f"early-seeds{s}-{min(s + CHUNK, SEEDS + EARLY_SEEDS) - 1}")
def test_seed_range_with_early_sends(start: int) -> None:
    _run(range(start, min(start + CHUNK, SEEDS + EARLY_SEEDS)), early_send=True)


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
