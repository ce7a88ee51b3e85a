"""The timeline of a run. For each stretch of up to two minutes there are three
strips that share the time axis:
- every operation's latency, coloured by outcome;
- the faults, one lane per kind;
- which server was primary, as the servers said ("-" for none)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

SEGMENT = 120.0  # seconds per row of the figure
KINDS = ["kill-primary", "kill-random", "kill-majority", "pause-primary", "isolate-primary", "split",
         "bridge", "one-way", "lossy", "slow", "lose-disk", "damage-disk", "member-add"]
STYLES = [  # (outcome, is a read, colour, marker, label)
    ("ok", False, "tab:green", ".", "write ok"),
    ("ok", True, "tab:blue", ".", "read ok"),
    ("fail", False, "tab:red", "x", "refused"),
    ("fail", True, "tab:red", "x", None),
    ("unknown", False, "tab:orange", "^", "unknown (timed out)"),
    ("unknown", True, "tab:orange", "^", None),
]


def timeline(path: Path, ops: list[dict], faults: list, primaries: list, seed: int) -> None:
    import matplotlib

    faults = [SimpleNamespace(**f) if isinstance(f, dict) else f for f in faults]
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    end = max([o["end"] for o in ops] + [f.end for f in faults] + [1.0])
    rows = max(1, math.ceil(end / SEGMENT))
    kinds = [k for k in KINDS if any(f.kind == k for f in faults)] or ["none"]
    fig, axes = plt.subplots(3 * rows, 1, figsize=(14, 4.2 * rows),
                             gridspec_kw={"height_ratios": [5, 0.25 * len(kinds) + 0.6, 1] * rows})
    servers = sorted({p for _, p, _ in primaries if p is not None}) or [1]
    for r in range(rows):
        lo, hi = r * SEGMENT, min((r + 1) * SEGMENT, end + 1)
        lat, lanes, prim = axes[3 * r], axes[3 * r + 1], axes[3 * r + 2]
        for outcome, is_read, color, marker, label in STYLES:
            pts = [(o["start"], max(o["end"] - o["start"], 1e-4) * 1000) for o in ops
                   if o["type"] == outcome and (o["f"] == "history") == is_read and lo <= o["start"] < hi]
            if pts:
                xs, ys = zip(*pts, strict=True)
                lat.scatter(xs, ys, s=4 if outcome == "ok" else 16, c=color, marker=marker,
                            label=label if r == 0 else None, alpha=0.5 if outcome == "ok" else 0.9, linewidths=0.8)
        lat.set_yscale("log")
        lat.set_ylabel("latency (ms)")
        for f in faults:
            if f.end > lo and f.start < hi:
                lat.axvspan(max(f.start, lo), min(f.end, hi), color="tab:red", alpha=0.07)
                lanes.broken_barh([(f.start, f.end - f.start)], (kinds.index(f.kind) - 0.4, 0.8), color="tab:red",
                                  alpha=0.6)
        lanes.set_yticks(range(len(kinds)), kinds, fontsize=7)
        lanes.set_ylim(-0.6, len(kinds) - 0.4)
        xs, ys = [], []
        for t, p, _term in primaries:
            xs.append(t)
            ys.append(p or 0)
        if xs:
            prim.step([*xs, end], [*ys, ys[-1]], where="post", color="black", linewidth=1)
        prim.set_yticks([0, *servers], ["-", *[f"n{s}" for s in servers]], fontsize=7)
        prim.set_ylabel("primary", fontsize=8)
        for ax in (lat, lanes, prim):
            ax.set_xlim(lo, lo + SEGMENT)
            ax.grid(axis="x", alpha=0.3)
        for ax in (lat, lanes):
            ax.tick_params(labelbottom=False)
        prim.set_xlabel("time since start (s)" if r == rows - 1 else "")
    acked = sum(1 for o in ops if o["f"] == "send" and o["type"] == "ok")
    axes[0].set_title(f"chorus fault injection, seed {seed}: {len(ops):,} operations, {acked:,} sends acknowledged, "
                      f"{len(faults)} faults")
    axes[0].legend(loc="upper right", fontsize=8, markerscale=2)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def redraw(report: Path) -> None:
    """Draw timeline.png again from a report folder's files."""
    ops = [json.loads(line) for line in (report / "history.jsonl").open()]
    faults = json.loads((report / "faults.json").read_text())
    primaries = json.loads((report / "primaries.json").read_text())
    seed = int((report / "summary.txt").read_text().split()[1].rstrip(";"))
    timeline(report / "timeline.png", ops, faults, primaries, seed)


if __name__ == "__main__":  # python -m tests.chaos.plot REPORT_DIR
    redraw(Path(sys.argv[1]))
