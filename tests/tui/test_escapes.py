"""What a message body may hold reaches the terminal escaped: the chat app and
the command line show control characters as ``\\x1b``, never raw."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from chorus.client.text import visible
from chorus.tui.model import Entry
from chorus.tui.widgets import message_text

HOSTILE = [
    "\x1b]0;owned\x07",  # set the terminal's title
    "\x1b[2J\x1b[H",  # clear the screen
    "fine\rfake line",  # overwrite the line
    "\x9b31m",  # a C1 control sequence introducer
    "abc\u202edcba",  # right-to-left override
    "a\u2028b",  # a line separator
    "bell\x07 backspace\x08 del\x7f nul\x00",
]


@pytest.mark.parametrize("body", HOSTILE)
def test_control_characters_are_shown_escaped(body: str) -> None:
    shown = visible(body)
    assert shown.isprintable() and "\u202e" not in shown
    assert "\\x" in shown or "\\u" in shown or "\\r" in shown


def test_ordinary_text_is_shown_as_it_is() -> None:
    for text in ("hello", "café ✓ 🙂", "👨\u200d👩\u200d👧", "tab-free, back\\slash", "日本語"):
        assert visible(text) == text
    assert visible("two\nlines", newlines=True) == "two\nlines"
    assert visible("two\nlines") == "two\\nlines"


@pytest.mark.parametrize("body", HOSTILE)
def test_the_chat_app_renders_no_escape_to_the_terminal(body: str) -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, color_system=None, width=200)
    console.print(message_text(Entry("mallory", body, 1_700_000_000_000, 5), mine=False))
    rendered = out.getvalue()
    for ch in "\x1b\x07\x08\r\x9b\u202e\u2028\x00\x7f":
        assert ch not in rendered.replace("\n", ""), (ch, rendered)
