"""The short fault-injection run that `make test` includes (about two and a half minutes).
`make chaos` runs the long one. Set CHORUS_CHAOS_SEED / CHORUS_CHAOS_DURATION to
repeat or lengthen it."""

from __future__ import annotations

import asyncio
import json
import os

from tests.chaos.run import run


def test_no_anomalies_under_kill_pause_partition_and_disk_loss(tmp_path):
    seed = int(os.environ.get("CHORUS_CHAOS_SEED", "20261124"))
    duration = float(os.environ.get("CHORUS_CHAOS_DURATION", "100"))  # (every kind of fault at least once)
    lines: list[str] = []
    result = asyncio.run(run(duration, seed, tmp_path / "report", log=lines.append))
    print("\n".join(lines))
    print(result.summary())
    summary = (result.report / "summary.txt").read_text()
    assert result.ok, f"anomalies found (seed {seed}, report in {result.report}):\n{summary}"
    # Not a vacuous pass: the run did real work under real faults.
    kinds = {f["kind"] for f in json.loads((result.report / "faults.json").read_text())}
    expected = {"kill-primary", "kill-random", "kill-majority", "pause-primary", "lose-disk", "damage-disk",
                "member-add"}
    if result.network.startswith("namespaces"):
        expected |= {"isolate-primary", "split", "bridge", "one-way", "lossy"}
    assert expected <= kinds, f"faults not injected: {expected - kinds}"
    assert result.acked_sends >= 200, summary
    assert (result.report / "timeline.png").stat().st_size > 10_000
    # Every replica whose disk was lost or damaged came back and caught up.
    disks = [f for f in json.loads((result.report / "faults.json").read_text()) if "recovered" in f]
    assert all(f["recovered"] is not None for f in disks), summary
    # Servers were added while the faults went on, caught up, were promoted, and left again.
    added = [f for f in json.loads((result.report / "faults.json").read_text()) if f["kind"] == "member-add"]
    assert any("a voter when removed" in " ".join(f["outcome"]) for f in added), summary
    assert not any("NOT REMOVED" in " ".join(f["outcome"]) or "did not stop" in " ".join(f["outcome"])
                   for f in added), summary
