"""What stands between an attacker and the accounts: login throttling,
registration rate limits, and a bounded queue for password hashing.

All of it is kept by each server in memory, on purpose: a failed login is not
worth a log entry (an attacker could fill the log with them), and a restart
forgets at most a few minutes of backoff. An attacker who spreads attempts over
N servers gets N times the rate, still bounded. See docs/security.md.

- **Logins** are throttled per user name and per source address. The first few
  failures cost nothing; after that each attempt must wait, 1 s doubling up to
  ``login_backoff_max_s`` after every further failure. While it must wait, an
  attempt is refused with ``throttled`` before its password is even looked at,
  so the right password does not work either until the wait is over. A success
  clears the name's count. Unknown names are counted exactly like known ones,
  so throttling tells nothing about which names exist.
- **Registrations** from one source address: a bucket of ``register_burst``
  that refills at ``register_per_hour``.
- **Password hashing** (argon2id, tens of milliseconds of CPU each) runs at most
  ``password_jobs`` at a time; ``password_queue`` more may wait, beyond which
  the request is ``busy``. Logins, registrations and password changes all go
  through it, so no flood of them can take the CPU from the replica loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .config import Limits

FORGET_AFTER_S = 24 * 3600  # counts idle this long are dropped


class Throttled(Exception):
    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TooBusy(Exception):
    pass


@dataclass
class _Failures:
    count: int = 0
    until: float = 0.0  # no attempt before this (monotonic seconds)
    last: float = 0.0
    pending: int = 0  # attempts under way


class Guard:
    def __init__(self, limits: Limits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.clock = clock
        self.by_name: dict[str, _Failures] = {}
        self.by_source: dict[str, _Failures] = {}
        self.buckets: dict[str, tuple[float, float]] = {}  # source -> (tokens, as of)
        self._jobs = asyncio.Semaphore(max(1, limits.password_jobs))
        self._waiting = 0
        self._last_sweep = clock()

    # ------------------------------------------------------------------ logins
    def begin_login(self, name_key: str, source: str) -> None:
        """An attempt to check a password for this name, from this address:
        raises Throttled if it must wait. Attempts under way count against the
        free ones (a hundred sent at once are not a hundred free guesses), and
        once those are spent, one at a time. Pair with ``end_login``."""
        now = self.clock()
        self._sweep(now)
        entries = ((self.by_name, name_key, self.limits.login_free_failures),
                   (self.by_source, source, self.limits.source_free_failures))
        for table, key, free in entries:
            f = table.get(key)
            if f is None:
                continue
            if f.until > now:
                wait = f.until - now
                raise Throttled(f"too many failed logins: try again in {max(1.0, wait):.0f} s", round(wait, 1))
            if f.pending >= max(1, free - f.count):
                raise Throttled("too many logins under way for this name or from this address: try again in a "
                                "moment", 1.0)
        for table, key, _ in entries:
            f = table.setdefault(key, _Failures())
            f.pending += 1
            f.last = now

    def end_login(self, name_key: str, source: str, ok: bool | None) -> None:
        """The attempt's outcome: the password was right, wrong, or (None) not
        checked at all (no primary to read from, too busy)."""
        now = self.clock()
        for table, key, free in ((self.by_name, name_key, self.limits.login_free_failures),
                                 (self.by_source, source, self.limits.source_free_failures)):
            f = table.setdefault(key, _Failures())
            f.pending = max(0, f.pending - 1)
            f.last = now
            if ok is None:
                continue
            if ok:
                if table is self.by_name:
                    f.count, f.until = 0, 0.0
                elif f.count:
                    f.count -= 1  # one success does not wash away many failures from an address
                continue
            f.count += 1
            if f.count > free:
                f.until = now + min(self.limits.login_backoff_max_s, 2.0 ** (f.count - free - 1))

    # ------------------------------------------------------------------ registrations
    def check_register(self, source: str) -> None:
        now = self.clock()
        self._sweep(now)
        burst, rate = self.limits.register_burst, self.limits.register_per_hour / 3600
        tokens, since = self.buckets.get(source, (float(burst), now))
        tokens = min(float(burst), tokens + (now - since) * rate)
        if tokens < 1:
            wait = (1 - tokens) / rate if rate > 0 else float(FORGET_AFTER_S)
            raise Throttled(f"too many registrations from your address: try again in {wait:.0f} s",
                            round(wait, 1))
        self.buckets[source] = (tokens - 1, now)

    # ------------------------------------------------------------------ password work
    async def password_job(self, run: Callable[..., Any], fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` (hashing or verifying) through ``run`` (off the event loop),
        at most ``password_jobs`` at a time."""
        if self._waiting >= self.limits.password_jobs + self.limits.password_queue:
            raise TooBusy("too many logins and registrations at once; retry in a moment")
        self._waiting += 1
        try:
            async with self._jobs:
                return await run(fn, *args)
        finally:
            self._waiting -= 1

    def _sweep(self, now: float) -> None:
        if now - self._last_sweep < 60:
            return
        self._last_sweep = now
        for table in (self.by_name, self.by_source):
            for key in [k for k, f in table.items()
                        if now - f.last > FORGET_AFTER_S and f.until < now and not f.pending]:
                del table[key]
        burst = float(self.limits.register_burst)
        rate = self.limits.register_per_hour / 3600
        for key in [k for k, (t, since) in self.buckets.items() if t + (now - since) * rate >= burst]:
            del self.buckets[key]
