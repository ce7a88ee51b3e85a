"""Fixtures shared across the test packages."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server.cluster import Cluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Three real servers on loopback with fast elections, stopped afterwards."""
    c = Cluster(tmp_path, 3)
    c.start()
    yield c
    c.stop_all()
