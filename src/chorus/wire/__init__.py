"""The codec between bytes and typed messages, with no I/O.

- ``frames``: 4-byte length + JSON framing, the size limit checked first;
- ``client``: the client protocol (requests, responses, push events);
- ``peer``: the peer protocol (the consensus messages in their envelope, HELLO,
  SNAPSHOT_CHUNK).
"""

from . import client, peer
from .frames import DEFAULT_MAX_FRAME, MAX_DEPTH, FrameDecoder, FrameError, encode_frame, too_deep

__all__ = ["DEFAULT_MAX_FRAME", "MAX_DEPTH", "FrameDecoder", "FrameError", "client", "encode_frame", "peer",
           "too_deep"]
