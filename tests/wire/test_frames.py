"""Framing: a 4-byte big-endian length, then the body; the limit is checked first."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chorus.wire import (
    DEFAULT_MAX_FRAME,
    MAX_DEPTH,
    FrameDecoder,
    FrameError,
    encode_frame,
    too_deep,
)

bodies = st.lists(st.binary(min_size=1, max_size=300), max_size=20)


def _stream(frames: list[bytes]) -> bytes:
    return b"".join(encode_frame(f) for f in frames)


def test_encoding_is_a_big_endian_length_then_the_body() -> None:
    assert encode_frame(b"hello") == b"\x00\x00\x00\x05hello"
    assert encode_frame(b"x" * 258) == b"\x00\x00\x01\x02" + b"x" * 258


def test_one_feed_with_several_frames_yields_them_all_in_order() -> None:
    d = FrameDecoder()
    frames = [b"a", b'{"op":"status","id":1}', b"\x00" * 1000]
    assert d.feed(_stream(frames)) == frames
    assert d.buffered == 0
    assert d.feed(b"") == []


@settings(deadline=None)
@given(bodies)
def test_fed_byte_by_byte_yields_exactly_the_frames(frames: list[bytes]) -> None:
    data = _stream(frames)
    d = FrameDecoder()
    out: list[bytes] = []
    ends = set()
    pos = 0
    for f in frames:
        pos += 4 + len(f)
        ends.add(pos)
    for i in range(len(data)):
        got = d.feed(data[i : i + 1])
        # A frame comes out exactly when its last byte arrives, and not before.
        assert len(got) == (1 if i + 1 in ends else 0)
        out += got
    assert out == frames
    assert d.buffered == 0


@settings(deadline=None)
@given(bodies, st.data())
def test_fed_in_arbitrary_pieces_yields_exactly_the_frames(frames: list[bytes], data: st.DataObject) -> None:
    stream = _stream(frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=30), label="cuts"))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    assert b"".join(pieces) == stream
    d = FrameDecoder()
    out: list[bytes] = []
    fed = 0
    for p in pieces:
        out += d.feed(p)
        fed += len(p)
        # After each piece: every frame wholly received, and nothing more.
        complete, pos = 0, 0
        for f in frames:
            pos += 4 + len(f)
            if pos <= fed:
                complete += 1
        assert out == frames[:complete]
    assert out == frames
    assert d.buffered == 0


def test_a_frame_split_inside_its_length_prefix_is_reassembled() -> None:
    d = FrameDecoder()
    data = encode_frame(b"payload")
    assert d.feed(data[:2]) == []
    assert d.feed(data[2:5]) == []
    assert d.feed(data[5:]) == [b"payload"]


def test_an_oversized_length_is_refused_from_its_four_header_bytes() -> None:
    d = FrameDecoder()
    header = struct.pack(">I", 50 * 1024 * 1024)
    with pytest.raises(FrameError, match="limit"):
        d.feed(header)
    # Nothing of the announced body was waited for or buffered.
    assert d.buffered <= 4


def test_an_oversized_length_is_refused_when_the_header_comes_in_pieces() -> None:
    d = FrameDecoder()
    header = struct.pack(">I", 50 * 1024 * 1024)
    assert d.feed(header[:3]) == []
    with pytest.raises(FrameError):
        d.feed(header[3:])


def test_an_oversized_frame_after_a_good_one_is_refused() -> None:
    d = FrameDecoder()
    assert d.feed(encode_frame(b"ok")) == [b"ok"]
    with pytest.raises(FrameError):
        d.feed(struct.pack(">I", DEFAULT_MAX_FRAME + 1))


def test_the_limit_is_the_decoders_own() -> None:
    d = FrameDecoder(max_frame=10)
    assert d.feed(encode_frame(b"x" * 10)) == [b"x" * 10]
    with pytest.raises(FrameError):
        d.feed(struct.pack(">I", 11))


def test_a_zero_length_frame_is_refused() -> None:
    with pytest.raises(FrameError, match="empty"):
        FrameDecoder().feed(b"\x00\x00\x00\x00")


def test_a_zero_length_frame_after_a_good_one_is_refused() -> None:
    d = FrameDecoder()
    assert d.feed(encode_frame(b"a")) == [b"a"]
    with pytest.raises(FrameError):
        d.feed(b"\x00\x00" + b"\x00\x00")


def test_encode_refuses_bodies_over_the_limit() -> None:
    assert encode_frame(b"x" * DEFAULT_MAX_FRAME)[4:] == b"x" * DEFAULT_MAX_FRAME
    with pytest.raises(FrameError, match="limit"):
        encode_frame(b"x" * (DEFAULT_MAX_FRAME + 1))
    assert encode_frame(b"x" * 10, max_frame=10) == b"\x00\x00\x00\x0a" + b"x" * 10
    with pytest.raises(FrameError):
        encode_frame(b"x" * 11, max_frame=10)


# ---------------------------------------------------------------------------- nesting
def _depth(body: bytes) -> int:
    """The nesting of a JSON text, the slow and obvious way."""
    depth = best = 0
    in_string = escaped = False
    for ch in body.decode():
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            best = max(best, depth)
        elif ch in "]}":
            depth -= 1
    return best


def _nested(depth: int, leaf: object = 1) -> object:
    value = leaf
    for k in range(depth):
        value = [value, "x]]"] if k % 2 else {"k[{": value, "s": 'a"b'}
    return value


@settings(deadline=None)
@given(st.integers(0, 80), st.sampled_from([1, "[[[{{", "\\\"[", None]))
def test_too_deep_agrees_with_counting_by_hand(depth: int, leaf: object) -> None:
    body = json.dumps(_nested(depth, leaf)).encode()
    assert _depth(body) == depth
    assert too_deep(body) == (depth > MAX_DEPTH)


def test_brackets_inside_strings_are_not_nesting_and_cannot_hide_it() -> None:
    assert not too_deep(json.dumps({"body": "[" * 100}).encode())
    assert not too_deep(json.dumps({"entries": [[i, 1, 0, "eA=="] for i in range(5000)]}).encode())
    # Closing brackets in strings between the real opening ones (a review found this
    # hid nesting from a check that ignored strings), and escaped quotes around them.
    hidden = b"".join(b'["]]",' for _ in range(100)) + b"1" + b"]" * 100
    assert too_deep(hidden)
    value: object = 1
    for _ in range(100):
        value = ['"]]\\', value]  # a quote, closing brackets and a backslash in each string
    escaped = json.dumps(value).encode()
    assert b'\\"]]\\\\"' in escaped and _depth(escaped) == 100 and too_deep(escaped)


def test_a_body_too_deep_is_refused_before_decoding_even_if_the_recursion_limit_was_raised() -> None:
    """msgspec stops at Python's recursion limit; with it raised (as a test
    framework or an application may), a deep enough body crashed the process
    (a segmentation fault) instead of raising."""
    code = (
        "import sys; sys.setrecursionlimit(10**7)\n"
        "from chorus.wire import client as W, peer\n"
        "from chorus.raft import MessageError\n"
        "import msgspec\n"
        "deep = b'[' * 2_000_000 + b']' * 2_000_000\n"
        "try:\n"
        "    peer.decode_peer(b'{\"type\":\"HEARTBEAT\",\"payload\":' + deep + b'}')\n"
        "except MessageError as e: print('peer:', e)\n"
        "try:\n"
        "    W.decode_reply(b'{\"id\":1,\"ok\":true,\"result\":' + deep + b'}')\n"
        "except msgspec.DecodeError as e: print('reply:', e)\n"
        "try:\n"
        "    W.decode_request(b'{\"op\":\"status\",\"id\":1,\"x\":' + deep + b'}')\n"
        "except W.ProtocolError as e: print('request:', e.code)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "peer: not a peer frame: JSON nested too deeply" in out.stdout
    assert "reply: a reply nested more than 32 deep" in out.stdout
    assert "request: invalid_request" in out.stdout
