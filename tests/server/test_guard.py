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
    attempt(g, "alice", "10.0.0.3", ok=True)  # the right one, once the wait is over: the name's count cleared
    attempt(g, "alice", "10.0.0.4", ok=False)
    g.begin_login("alice", "10.0.0.4")  # free again


def test_the_wait_stops_doubling_at_the_maximum() -> None:
    """Guessing as fast as allowed: each wait doubles, up to the maximum, and
    stays there (a minute forgives one failure, the next guess adds one)."""
    clock = Clock()
    g = Guard(Limits(login_backoff_max_s=60), clock)
    waits = []
    for k in range(30):
        try:
            g.begin_login("bob", f"10.1.0.{k}")
        except Throttled as t:
            waits.append(t.retry_after)
            clock.now += t.retry_after + 0.01
            g.begin_login("bob", f"10.1.0.{k}")
        g.end_login("bob", f"10.1.0.{k}", ok=False)
    assert waits[:6] == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0], waits
    assert all(59 <= w <= 60 for w in waits[7:]), waits


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


def test_password_work_is_bounded_and_a_place_is_held_until_its_thread_is_done() -> None:
    """A client that asks for a hash and goes away at once must not free the place
    of a hash still being computed (the pool would grow without bound)."""
    import threading

    async def main():
        g = Guard(Limits(password_jobs=1, password_queue=1))
        release = threading.Event()

        def slow(x):
            release.wait(10)
            return x

        first = asyncio.create_task(g.password_job(slow, 1))
        second = asyncio.create_task(g.password_job(slow, 2))
        await asyncio.sleep(0)  # (let both start)
        first.cancel()  # the client went away: its hash goes on
        with pytest.raises(asyncio.CancelledError):
            await first
        with pytest.raises(TooBusy):
            await g.password_job(slow, 3)
        release.set()
        assert await second == 2
        assert await g.password_job(slow, 4) == 4  # places free once the threads are done
        g.close()

    asyncio.run(main())


def test_a_success_does_not_buy_an_address_more_guesses() -> None:
    """Logging in to one's own account between guesses at others (a review found
    that each success took one failure off the address's count)."""
    clock = Clock()
    g = Guard(Limits(), clock)
    for k in range(30):
        clock.now += 0.1
        try:
            attempt(g, f"victim{k}", "10.0.0.7", ok=False)
            attempt(g, "mallory", "10.0.0.7", ok=True)
        except Throttled:
            break
    assert k <= 21, k


def test_failures_are_forgotten_in_time() -> None:
    clock = Clock()
    g = Guard(Limits(), clock)
    for _ in range(5):
        attempt(g, "erin", "10.0.0.1", ok=False)
    clock.now += 30 * 60  # half an hour without a failure
    for _ in range(5):
        attempt(g, "erin", "10.0.0.1", ok=False)  # free again
