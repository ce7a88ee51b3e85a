"""Run the simulator from the command line.

    python -m tests.sim --seed 42 --trace       replay one seed, printing every event
    python -m tests.sim --start 0 --count 1000  run a range; ends with "N passed, M failed"
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor

from .world import SimFailure, run_seed


def _one(seed: int, early_send: bool = False) -> tuple[int, str | None]:
    try:
        run_seed(seed, early_send=early_send)
    except SimFailure as exc:
        return seed, str(exc)
    except Exception as exc:  # a crash of the core itself is a failure too
        return seed, f"seed {seed}: {type(exc).__name__}: {exc}"
    return seed, None


def run_range(start: int, count: int, jobs: int, early_send: bool = False) -> list[tuple[int, str]]:
    failures: list[tuple[int, str]] = []
    seeds = range(start, start + count)
    t0 = time.monotonic()
    done = 0
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        for seed, err in pool.map(_one, seeds, [early_send] * count, chunksize=max(1, min(50, count // (jobs * 8) or 1))):
            done += 1
            if err is not None:
                failures.append((seed, err))
                print(f"FAIL {err}", flush=True)
            if done % 1000 == 0:
                print(f"... {done}/{count} seeds, {len(failures)} failed, {time.monotonic() - t0:.0f}s", flush=True)
    return failures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.sim", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, help="replay this one seed")
    ap.add_argument("--trace", action="store_true", help="print every event of the run")
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--early-send", action="store_true",
                    help="send what may leave before the fsync first, as the real replica does")
    args = ap.parse_args(argv)

    if args.seed is not None:
        trace = print if args.trace else None
        try:
            stats = run_seed(args.seed, trace=trace, early_send=args.early_send)
        except SimFailure as exc:
            print(f"FAILED: {exc}")
            return 1
        print(f"seed {args.seed} passed: " + " ".join(f"{k}={v}" for k, v in stats.items()))
        return 0

    t0 = time.monotonic()
    failures = run_range(args.start, args.count, args.jobs, args.early_send)
    print(f"{args.count - len(failures)} passed, {len(failures)} failed "
          f"(seeds {args.start}..{args.start + args.count - 1}{', early sends' if args.early_send else ''}, "
          f"{time.monotonic() - t0:.0f}s)")
    if failures:
        print("failing seeds: " + " ".join(str(s) for s, _ in failures))
        print(f"replay one with: make sim SEED={failures[0][0]}" + (" SIMFLAGS=--early-send" if args.early_send else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
