"""Text from the network, made safe to show on a terminal.

A message body is whatever its sender typed, and a terminal obeys some of what
it is given: ESC sequences change its title, clear it or move the cursor, a
carriage return overwrites the line, Unicode's direction overrides reorder
what follows. ``visible`` shows every such character as an escape instead
(``\\x1b``, ``\\r``, ``\\u202e``), so that what is shown is what was sent, and
nothing more. A backslash is left as it is: it changes nothing on a terminal.
"""

from __future__ import annotations

import unicodedata

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Format characters that reorder text (bidi embeddings, overrides and isolates).
# Other format characters are left alone: the zero-width joiner builds emoji.
_ESCAPED = frozenset(("Cc", "Zl", "Zp", "Cs"))  # controls, line and paragraph separators, surrogates
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _escape(ch: str) -> str:
    named = _NAMED.get(ch)
    if named is not None:
        return named
    n = ord(ch)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}"


def visible(text: str, *, newlines: bool = False) -> str:
    """``text`` with control characters escaped; with ``newlines``, line breaks
    are kept (for a view that shows a message over several lines)."""
    if text.isprintable() and not any(ch in _BIDI for ch in text):  # the common case, at C speed
        return text
    out = []
    for ch in text:
        if newlines and ch == "\n":
            out.append(ch)
        elif ch in _BIDI or unicodedata.category(ch) in _ESCAPED:
            out.append(_escape(ch))
        else:
            out.append(ch)
    return "".join(out)
