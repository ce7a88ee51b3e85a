"""The timeline of a run: every operation's latency over time, by outcome, with
the fault windows shaded and the primary changes marked."""

from __future__ import annotations

from pathlib import Path


def timeline(path: Path, ops: list[dict], faults: list, primaries: list, seed: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(14, 6), dpi=100)
    styles = {
        ("ok", "write"): ("tab:green", ".", "write ok"),
        ("ok", "read"): ("tab:blue", ".", "read ok"),
        ("fail", "write"): ("tab:red", "x", "refused"),
        ("fail", "read"): ("tab:red", "x", None),
        ("unknown", "write"): ("tab:orange", "^", "unknown (timed out)"),
        ("unknown", "read"): ("tab:orange", "^", None),
    }
    for (outcome, kind), (color, marker, label) in styles.items():
        xs, ys = [], []
        for o in ops:
            if o["type"] == outcome and (o["f"] == "history") == (kind == "read"):
                xs.append(o["start"])
                ys.append(max(o["end"] - o["start"], 1e-4) * 1000)
        if xs:
            ax.scatter(xs, ys, s=6 if outcome == "ok" else 18, c=color, marker=marker, label=label,
                       alpha=0.5 if outcome == "ok" else 0.9, linewidths=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("latency (ms), at the operation's start")
    top = ax.get_ylim()[1]
    colors = {"kill": "tab:red", "pause": "tab:purple", "isolate": "tab:brown", "split": "tab:brown",
              "bridge": "tab:olive", "one-way": "tab:pink", "lossy": "tab:gray", "slow": "tab:cyan"}
    for f in faults:
        color = next((c for k, c in colors.items() if f.kind.startswith(k)), "tab:gray")
        ax.axvspan(f.start, f.end, color=color, alpha=0.12)
        ax.text(f.start, top, f.desc, rotation=90, fontsize=6, va="top", ha="left", color=color)
    for t, primary, _term in primaries:
        ax.axvline(t, color="black", linestyle=":", linewidth=0.7)
        ax.text(t, ax.get_ylim()[0], f"n{primary}" if primary else "none", fontsize=6, va="bottom")
    acked = sum(1 for o in ops if o["f"] == "send" and o["type"] == "ok")
    ax.set_title(f"chorus fault injection, seed {seed}: {len(ops)} operations, {acked} sends acknowledged, "
                 f"{len(faults)} faults (shaded), primary changes (dotted)")
    ax.legend(loc="upper right", fontsize=8, markerscale=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
