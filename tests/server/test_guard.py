"""The login throttle and the registration bucket, on a clock of the test's own."""

from __future__ import annotations

import asyncio

import pytest

from chorus.server.config import Limits
from chorus.server.guard import Guard, Throttled, TooBusy


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def attempt(g: Guard, name: str, source: str, ok: bool | None) -> None:
    g.begin_login(name, source)
    g.end_login(name, source, ok)


def test_the_free_failures_then_a_doubling_wait_and_the_right_password_waits_too() -> None:
    clock = Clock()
    g = Guard(Limits(), clock)
    for _ in range(5):
        attempt(g, "alice", "10.0.0.1", ok=False)
    attempt(g, "alice", "10.0.0.1", ok=False)  # the sixth: a wait of 1 s from now
    with pytest.raises(Throttled) as t:
        g.begin_login("alice", "10.0.0.2")  # from anywhere: it is the name's count
    assert 0 < t.value.retry_after <= 1
    clock.now += 1.01
    attempt(g, "alice", "10.0.0.3", ok=False)  # the seventh: 2 s
    clock.now += 1.5
    with pytest.raises(Throttled):
        g.begin_login("alice", "10.0.0.3")
    clock.now += 0.6
    attempt(g, "alice", "10.0.0.3", ok=True)  # the right one, once the wait is over: counts cleared
    attempt(g, "alice", "10.0.0.3", ok=False)
    g.begin_login("alice", "10.0.0.3")  # free again


def test_the_wait_stops_doubling_at_the_maximum() -> None:
    clock = Clock()
    g = Guard(Limits(login_backoff_max_s=60), clock)
    for _ in range(30):
        clock.now += 1000
        attempt(g, "bob", f"10.1.0.{_}", ok=False)
    with pytest.raises(Throttled) as t:
        g.begin_login("bob", "10.9.9.9")
    assert 59 <= t.value.retry_after <= 60


def test_attempts_under_way_count_against_the_free_ones() -> None:
    """A hundred logins sent at once are not a hundred free guesses."""
    g = Guard(Limits(), Clock())
    for _ in range(5):
        g.begin_login("carol", "10.0.0.1")
    with pytest.raises(Throttled, match="under way"):
        g.begin_login("carol", "10.0.0.2")
    for _ in range(5):
        g.end_login("carol", "10.0.0.1", ok=False)
    g.begin_login("carol", "10.0.0.2")  # the free ones spent: one at a time
    with pytest.raises(Throttled):
        g.begin_login("carol", "10.0.0.3")


def test_an_attempt_that_checked_nothing_counts_for_nothing() -> None:
    g = Guard(Limits(), Clock())
    for _ in range(50):
        attempt(g, "dave", "10.0.0.1", ok=None)
    g.begin_login("dave", "10.0.0.1")


def test_an_address_guessing_many_names_is_slowed_down() -> None:
    clock = Clock()
    g = Guard(Limits(), clock)
    for k in range(21):
        attempt(g, f"name{k}", "10.0.0.66", ok=False)
    with pytest.raises(Throttled):
        g.begin_login("someone", "10.0.0.66")
    g.begin_login("someone", "10.0.0.67")  # another address is not


def test_registrations_a_burst_then_a_steady_rate() -> None:
    clock = Clock()
    g = Guard(Limits(register_burst=3, register_per_hour=60), clock)  # one a minute
    for _ in range(3):
        g.check_register("10.0.0.1")
    with pytest.raises(Throttled) as t:
        g.check_register("10.0.0.1")
    assert 59 <= t.value.retry_after <= 60
    g.check_register("10.0.0.2")
    clock.now += 61
    g.check_register("10.0.0.1")
    with pytest.raises(Throttled):
        g.check_register("10.0.0.1")


def test_password_work_is_bounded() -> None:
    async def main():
        g = Guard(Limits(password_jobs=1, password_queue=2))
        release = asyncio.Event()

        async def run(fn, *args):
            await release.wait()
            return fn(*args)

        jobs = [asyncio.create_task(g.password_job(run, lambda x: x, k)) for k in range(3)]
        await asyncio.sleep(0)
        with pytest.raises(TooBusy):
            await g.password_job(run, lambda x: x, 99)
        release.set()
        assert await asyncio.gather(*jobs) == [0, 1, 2]

    asyncio.run(main())
