"""The consensus core: Raft as a pure state machine, with no I/O.

What it offers:
- :class:`RaftNode`, driven by ``tick``, ``step``, ``propose``, ``read_index``,
  membership and transfer requests, and producing :class:`Ready` batches;
- :class:`RaftConfig` (timeouts in ticks, flow-control limits) and ``FAST``;
- the log entry, membership, snapshot and peer message types, with
  ``to_envelope`` / ``from_envelope`` for the JSON envelope.
"""

from .config import FAST, RaftConfig
from .errors import Refused
from .messages import (
    MAX_NUMBER,
    MESSAGE_TYPES,
    Entry,
    EntryKind,
    Forward,
    Heartbeat,
    HeartbeatAck,
    InstallSnapshot,
    Member,
    Membership,
    Message,
    MessageError,
    Probe,
    ProbeResp,
    ReadIndex,
    ReadIndexResp,
    Replicate,
    ReplicateAck,
    RequestVote,
    SnapshotMeta,
    TimeoutNow,
    VoteResponse,
    from_envelope,
    to_envelope,
)
from .node import RaftNode
from .ready import HardState, Persisted, ReadState, Ready, Role, SoftState

__all__ = [
    "FAST",
    "MAX_NUMBER",
    "MESSAGE_TYPES",
    "Entry",
    "EntryKind",
    "Forward",
    "HardState",
    "Heartbeat",
    "HeartbeatAck",
    "InstallSnapshot",
    "Member",
    "Membership",
    "Message",
    "MessageError",
    "Persisted",
    "Probe",
    "ProbeResp",
    "RaftConfig",
    "RaftNode",
    "ReadIndex",
    "ReadIndexResp",
    "ReadState",
    "Ready",
    "Refused",
    "Replicate",
    "ReplicateAck",
    "RequestVote",
    "Role",
    "SnapshotMeta",
    "SoftState",
    "TimeoutNow",
    "VoteResponse",
    "from_envelope",
    "to_envelope",
]
