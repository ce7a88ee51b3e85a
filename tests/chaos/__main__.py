"""python -m tests.chaos [--duration S] [--seed N] [--report DIR]: one fault-injection run."""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path

from .run import run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    ap.add_argument("--duration", type=float, default=600, help="seconds of faults and load (default 600)")
    ap.add_argument("--seed", type=int, default=None, help="the schedule's seed (default: random, printed)")
    ap.add_argument("--size", type=int, default=3)
    ap.add_argument("--workers", type=int, default=12, help="concurrent clients (default 12)")
    ap.add_argument("--default-timeouts", action="store_true",
                    help="the default election timeouts (1.5-3.0 s) instead of the fast profile (150-300 ms)")
    ap.add_argument("--faults", default=None,
                    help="only these kinds of fault, comma-separated (e.g. lose-disk,damage-disk,kill-random)")
    ap.add_argument("--report", type=Path, default=None, help="the report folder (default chaos-report/<time>-seed<N>)")
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    report = args.report or Path("chaos-report") / f"{time.strftime('%Y%m%d-%H%M%S')}-seed{seed}"
    result = asyncio.run(run(args.duration, seed, report, size=args.size, workers=args.workers,
                             fast=not args.default_timeouts,
                             faults=args.faults.split(",") if args.faults else None))
    print((report / "summary.txt").read_text(), end="")
    print(f"report: {report}/ (history.jsonl, faults.json, timeline.png, server logs)")
    if args.faults:
        print(f"repeat with: python -m tests.chaos --seed {seed} --duration {args.duration:.0f} --faults {args.faults}")
    else:
        print(f"repeat with: make chaos SEED={seed} DURATION={args.duration:.0f}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
