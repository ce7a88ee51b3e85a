"""The screenshots in README.md are there, and show what they say they show."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_shows_the_three_screenshots() -> None:
    readme = (ROOT / "README.md").read_text()
    shown = re.findall(r"!\[[^\]]*\]\((docs/tui-[a-z]+\.svg)\)", readme)
    assert shown == ["docs/tui-login.svg", "docs/tui-conversation.svg", "docs/tui-failover.svg"]
    words = {"login": "register", "conversation": "conversation", "failover": "reconnecting"}
    for path in shown:
        svg = (ROOT / path).read_text()
        assert svg.startswith("<svg") and words[path[9:-4]] in svg, path
