"""Scenarios written as transcripts (after etcd-io/raft's testdata/*.txt).

Each file in testdata/ is a list of commands; under each, after ``----``, what
happened: every message delivered, in order, and every role change. Run with
CHORUS_REWRITE=1 to regenerate the expected output after a deliberate change,
then read the diff.

Commands: ``net N [pre_vote=false] [check_quorum=false] [readies=true]``
(with readies, every Ready handled is printed too: ``sync`` when it must be
on disk before its ``after`` messages leave), ``campaign I``, ``propose I
DATA``, ``tick [I ...] [times=N]``, ``isolate I``, ``heal``, ``crash I``,
``restart I``, ``read I REQUEST_ID``, ``transfer I TARGET``, ``add_learner I
ID`` (and start server ID, empty), ``promote I ID``, ``remove I ID``,
``snapshot I`` (I snapshots its applied state and compacts its log),
``status``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from chorus.raft import Membership, Refused

from .net import CONFIG, Net

DATA = Path(__file__).parent / "testdata"
FILES = sorted(DATA.glob("*.txt"))


def run_command(state: dict, line: str) -> list[str]:
    words = line.split()
    cmd, args = words[0], [w for w in words[1:] if "=" not in w]
    opts = dict(w.split("=", 1) for w in words[1:] if "=" in w)
    if cmd == "net":
        config = dataclasses.replace(
            CONFIG,
            pre_vote=opts.get("pre_vote", "true") == "true",
            check_quorum=opts.get("check_quorum", "true") == "true",
        )
        state["net"] = Net(int(args[0]), config=config)
        state["net"].transcript = []
        state["net"].show_readies = opts.get("readies", "false") == "true"
        return ["ok"]
    net: Net = state["net"]
    out: list[str] = []
    net.transcript = out
    try:
        if cmd == "campaign":
            net.elect(int(args[0]))
        elif cmd == "propose":
            index = net.propose(int(args[0]), args[1].encode())
            out.insert(0, f"index {index}" if index is not None else "forwarded")
        elif cmd == "tick":
            ids = [int(a) for a in args]
            net.tick(*ids, times=int(opts.get("times", "1")))
        elif cmd == "isolate":
            net.isolate(int(args[0]))
        elif cmd == "heal":
            net.heal()
        elif cmd == "crash":
            net.crash(int(args[0]))
        elif cmd == "restart":
            net.restart(int(args[0]))
        elif cmd == "read":
            node = int(args[0])
            net[node].read_index(int(args[1]))
            net.settle()
            out.extend(f"n{node} may read request {r.request_id} once applied >= {r.index}" for r in net.reads[node])
            net.reads[node].clear()
        elif cmd == "transfer":
            net[int(args[0])].hand_over(int(args[1]))
            net.settle()
        elif cmd == "add_learner":
            primary, new = int(args[0]), int(args[1])
            index = net[primary].add_learner(new)
            net.start(new, Membership())
            out.insert(0, f"index {index}")
            net.settle()
        elif cmd in ("promote", "remove"):
            index = getattr(net[int(args[0])], cmd)(int(args[1]))
            out.insert(0, f"index {index}")
            net.settle()
        elif cmd == "snapshot":
            out.append(repr(net.snapshot(int(args[0]))))
        elif cmd == "status":
            out.append(net.status())
        else:
            raise ValueError(f"unknown command {cmd!r}")
    except Refused as exc:
        out.append(f"refused: {exc.code}: {exc}")
    return out or ["ok"]


def run_file(path: Path) -> str:
    """Run a transcript file and return it with actual output under each command."""
    state: dict = {}
    result: list[str] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip() or line.startswith("#"):
            result.append(line)
            i += 1
            continue
        result.append(line)
        i += 1
        assert i < len(lines) and lines[i] == "----", f"{path.name}: '----' expected after {line!r}"
        i += 1
        while i < len(lines) and lines[i].strip():  # skip the old expected output
            i += 1
        result.append("----")
        result.extend(run_command(state, line))
    return "\n".join(result) + "\n"


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_transcript(path: Path) -> None:
    actual = run_file(path)
    if os.environ.get("CHORUS_REWRITE"):
        path.write_text(actual)
    assert actual == path.read_text(), f"{path.name} differs; rerun with CHORUS_REWRITE=1 and read the diff"


def test_there_are_transcripts() -> None:
    assert len(FILES) >= 3
