"""What stands between an attacker and the accounts: login throttling,
registration rate limits, and a bounded pool for password hashing.

All of it is kept by each server in memory, on purpose: a failed login is not
worth a log entry (an attacker could fill the log with them), and a restart
forgets at most a few minutes of backoff. An attacker who spreads attempts over
N servers gets N times the rate, still bounded. See docs/security.md.

- **Logins** are throttled per user name and per source address. The first few
  failures cost nothing; after that each attempt must wait, 1 s doubling up to
  ``login_backoff_max_s`` after every further failure. While it must wait, an
  attempt is refused with ``throttled`` before its password is even looked at,
  so the right password does not work either until the wait is over. Attempts
  under way count against the free ones. Failures are forgotten one a minute
  (``FORGIVE_S``). A success clears the name's count, not the address's: an
  attacker's own account must not buy more guesses at others. Unknown names
  are counted exactly like known ones, so throttling tells nothing about which
  names exist.
- **Registrations** from one source address: a bucket of ``register_burst``
  that refills at ``register_per_hour``.
- **Password hashing** (argon2id, tens of milliseconds of CPU each) runs on a
  pool of ``password_jobs`` threads of its own; ``password_queue`` more may
  wait, beyond which the request is ``busy``. A job holds its place until its
  thread is done, even if the client that asked for it has gone. Logins,
  registrations and password changes all go through it, so no flood of them
  can take the CPU from the replica loop or the threads of other work.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .config import Limits

FORGIVE_S = 60.0  # one failure forgotten per this many seconds without another
MAX_TRACKED = 100_000  # names (and addresses) whose failures are remembered at once


class Throttled(Exception):
    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TooBusy(Exception):
    pass


@dataclass
class _Failures:
    count: float = 0.0
    until: float = 0.0  # no attempt before this (monotonic seconds)
    last: float = 0.0  # of the last failure or attempt
    pending: int = 0  # attempts under way

    def decay(self, now: float) -> None:
        if self.count and now > self.last:
            self.count = max(0.0, self.count - (now - self.last) / FORGIVE_S)
            self.last = now

    def idle(self, now: float) -> bool:
        self.decay(now)
        return not self.pending and self.until <= now and self.count < 1


class Guard:
    def __init__(self, limits: Limits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.clock = clock
        self.by_name: dict[str, _Failures] = {}
        self.by_source: dict[str, _Failures] = {}
        self.buckets: dict[str, tuple[float, float]] = {}  # source -> (tokens, as of)
        self._pool: ThreadPoolExecutor | None = None
        self._busy = 0  # password jobs running or waiting

    # ------------------------------------------------------------------ logins
    def begin_login(self, name_key: str, source: str) -> None:
        """An attempt to check a password for this name, from this address:
        raises Throttled if it must wait. Attempts under way count against the
        free ones (a hundred sent at once are not a hundred free guesses), and
        once those are spent, one at a time. Pair with ``end_login``."""
        now = self.clock()
        entries = ((self.by_name, name_key, self.limits.login_free_failures),
                   (self.by_source, source, self.limits.source_free_failures))
        for table, key, free in entries:
            f = table.get(key)
            if f is None:
                continue
            f.decay(now)
            if f.until > now:
                wait = f.until - now
                raise Throttled(f"too many failed logins: try again in {max(1.0, wait):.0f} s", round(wait, 1))
            if f.pending >= max(1, free - math.ceil(f.count)):
                raise Throttled("too many logins under way for this name or from this address: try again in a "
                                "moment", 1.0)
        for table, key, _ in entries:
            f = self._entry(table, key, now)
            f.pending += 1

    def end_login(self, name_key: str, source: str, ok: bool | None) -> None:
        """The attempt's outcome: the password was right, wrong, or (None) not
        checked at all (no primary to read from, too busy)."""
        now = self.clock()
        for table, key, free in ((self.by_name, name_key, self.limits.login_free_failures),
                                 (self.by_source, source, self.limits.source_free_failures)):
            f = self._entry(table, key, now)
            f.pending = max(0, f.pending - 1)
            if ok is None:
                continue
            if ok:
                if table is self.by_name:
                    f.count, f.until = 0.0, 0.0
                continue
            f.decay(now)
            f.count += 1
            f.last = now
            failures = math.ceil(f.count)  # (a failure is forgotten only once a whole minute has passed)
            if failures > free:
                f.until = now + min(self.limits.login_backoff_max_s, 2.0 ** (failures - free - 1))

    def _entry(self, table: dict[str, _Failures], key: str, now: float) -> _Failures:
        f = table.get(key)
        if f is None:
            if len(table) >= MAX_TRACKED:
                for k in [k for k, e in table.items() if e.idle(now)]:
                    del table[k]
            f = table[key] = _Failures(last=now)
        return f

    # ------------------------------------------------------------------ registrations
    def check_register(self, source: str) -> None:
        now = self.clock()
        burst, rate = self.limits.register_burst, self.limits.register_per_hour / 3600
        tokens, since = self.buckets.get(source, (float(burst), now))
        tokens = min(float(burst), tokens + (now - since) * rate)
        if tokens < 1:
            wait = (1 - tokens) / rate if rate > 0 else 3600.0
            raise Throttled(f"too many registrations from your address: try again in {wait:.0f} s",
                            round(wait, 1))
        if len(self.buckets) >= MAX_TRACKED:  # the full buckets are the same as none
            for key in [k for k, (t, at) in self.buckets.items() if t + (now - at) * rate >= burst]:
                del self.buckets[key]
        self.buckets[source] = (tokens - 1, now)

    # ------------------------------------------------------------------ password work
    async def password_job(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` (hashing or verifying) on the password pool. Its place is
        held until the thread is done, whatever becomes of the caller."""
        if self._busy >= self.limits.password_jobs + self.limits.password_queue:
            raise TooBusy("too many logins and registrations at once; retry in a moment")
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max(1, self.limits.password_jobs), thread_name_prefix="chorus-pw")
        self._busy += 1
        fut = asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        fut.add_done_callback(self._job_done)
        return await asyncio.shield(fut)

    def _job_done(self, _: asyncio.Future) -> None:
        self._busy -= 1

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
