"""CPU instructions per send stored, counted by valgrind: a measure of the store's
cost that the machine's load does not move (its speed does, by a third from
one minute to the next on a shared 2-core machine).

It runs the store's ``save`` path (one transaction and one fsync per batch of
100 sends, the workload of bench/store.py) twice under callgrind, for 50 and
for 250 batches, and divides the difference by the 20,000 sends in between, so
that start-up and the workload's own generation cancel out. Needs valgrind;
takes about two minutes.

    python bench/instructions.py
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import sys, tempfile
sys.path.insert(0, {bench!r})
import store as S
from chorus.store import ReplicaStore
st = ReplicaStore(tempfile.mkdtemp() + "/c.db")
wl = S.Workload()
st.save(S.ready(wl.registrations(), committed=True))
batches = [wl.sends(S.BATCH) for _ in range(250)][: int(sys.argv[1])]  # the same work made either way
for b in batches:
    st.save(S.ready(b, committed=True))
"""


def count(batches: int, script: Path) -> int:
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, str(script), str(batches)],
        capture_output=True, text=True, check=True,
    )
    m = re.search(r"Collected : (\d+)", out.stderr)
    if not m:
        raise RuntimeError(f"no instruction count in valgrind's output:\n{out.stderr[-2000:]}")
    return int(m.group(1))


def main() -> int:
    if shutil.which("valgrind") is None:
        print("valgrind is not installed: this measure needs it", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as d:
        script = Path(d) / "child.py"
        script.write_text(CHILD.format(bench=str(Path(__file__).parent)))
        small, large = count(50, script), count(250, script)
    print(f"{(large - small) / (200 * 100):,.0f} instructions per send (save: persisted and applied, batches of 100)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
