"""Framing: a 4-byte big-endian length, then that many bytes of UTF-8 JSON.

Sans-I/O: ``FrameDecoder.feed(bytes)`` returns the complete frame bodies and
keeps the rest. The length is checked against the maximum *before* any of the
body is buffered, so a peer announcing a 50 MB frame costs nothing but the four
bytes it sent.
"""

from __future__ import annotations

import struct

DEFAULT_MAX_FRAME = 1 << 20  # 1 MiB
_LEN = struct.Struct(">I")


class FrameError(Exception):
    """The byte stream cannot be a stream of frames: the connection must close."""


def encode_frame(body: bytes, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    if not body:
        raise FrameError("empty frame")
    if len(body) > max_frame:
        raise FrameError(f"frame of {len(body)} bytes is over the {max_frame}-byte limit")
    return _LEN.pack(len(body)) + body


class FrameDecoder:
    __slots__ = ("_buf", "_need", "max_frame")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self._need = -1  # length of the frame being read, -1 while reading its prefix

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        out = []
        while True:
            if self._need < 0:
                if len(buf) < 4:
                    break
                (n,) = _LEN.unpack_from(buf)
                if n > self.max_frame:
                    raise FrameError(f"frame of {n} bytes announced; the limit is {self.max_frame}")
                if n == 0:
                    raise FrameError("empty frame")
                del buf[:4]
                self._need = n
            if len(buf) < self._need:
                break
            out.append(bytes(buf[: self._need]))
            del buf[: self._need]
            self._need = -1
        return out

    @property
    def buffered(self) -> int:
        return len(self._buf)
