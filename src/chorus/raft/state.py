"""The state every part of the core shares, declared once for the type checker.

:class:`chorus.raft.node.RaftNode` is made of parts (elections, replication,
recovery, reconfiguration, output), each in a module of its own; they read and
change one server's state, which ``RaftNode.__init__`` creates. This base class
says what that state is, and which methods of the other parts each may call.
At run time it holds nothing: the declarations are annotations, and the methods
exist only for the type checker.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import RaftConfig
    from .log import RaftLog
    from .membership import History
    from .messages import Membership, Message, SnapshotMeta
    from .progress import Progress
    from .reads import ReadQueue
    from .ready import Hard, ReadState, Ready, Role


class NodeState:
    # Identity and configuration.
    id: int
    cfg: RaftConfig
    rng: random.Random

    # Persistent state (Raft Figure 2, and what recovery from a lost disk adds).
    term: int
    vote: int
    recovering: bool
    incarnation: int
    _fence: dict[int, int]  # voter -> the lowest incarnation of its store still believed
    _fenced: tuple[tuple[int, int], ...]  # the same, as the hard state holds it
    log: RaftLog
    commit: int

    # Membership.
    history: History
    membership: Membership
    pending_conf_index: int
    transferee: int

    # Volatile state.
    role: Role
    primary: int
    election_elapsed: int
    heartbeat_elapsed: int
    randomized_timeout: int
    progress: dict[int, Progress]
    votes: dict[int, bool]
    _vote_incarnation: dict[int, int]
    _vote_fence: dict[int, int]
    reads: ReadQueue
    _probe: dict[int, int]
    _probe_term: int | None
    _probe_elapsed: int
    _recover_target: tuple[int, int] | None

    # Output bookkeeping.
    applied: int
    _outbox: list[Message]
    _reads_out: list[ReadState]
    _forward_buf: list[bytes]
    _unsaved_from: int
    _persisted: int
    _apply_from: int
    _snapshot_out: SnapshotMeta | None
    _membership_changed: bool
    _prev_hard: Hard
    _prev_soft: tuple[Role, int]
    _outstanding: Ready | None

    if TYPE_CHECKING:
        # node.py
        @property
        def last_index(self) -> int: ...
        def quorum(self) -> int: ...
        def _hard(self) -> Hard: ...
        def _reset(self, term: int) -> None: ...
        def _reset_randomized_timeout(self) -> None: ...
        def _become_backup(self, term: int, primary: int) -> None: ...
        def _become_primary(self) -> None: ...
        def _step_backup(self, m: Message) -> None: ...
        def _append_local(self, kind: int, data: bytes) -> int: ...
        def _check_can_append(self, size: int) -> None: ...
        def propose_batch(self, commands: Sequence[bytes]) -> int | None: ...
        def _primary_read(self, origin: int, request_id: int) -> None: ...
        def _release_reads(self) -> None: ...

        # replication.py
        def _replicate(self) -> None: ...
        def _broadcast_heartbeat(self) -> None: ...
        def _forward(self, commands: list[bytes]) -> None: ...
        def _maybe_commit(self) -> bool: ...

        # recovery.py
        def _start_recovery(self) -> None: ...
        def _maybe_end_recovery(self) -> None: ...
        def _voters_fenced(self) -> tuple[tuple[int, int], ...]: ...

        # reconfig.py
        def _set_membership(self, index: int, membership: Membership) -> None: ...
        def _membership_became(self, membership: Membership) -> None: ...
        def most_caught_up(self) -> int: ...

        # output.py
        def _send(self, m: Message) -> None: ...
