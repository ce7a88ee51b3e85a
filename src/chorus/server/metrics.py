"""Prometheus metrics for one server, on an HTTP port of its own.

What changes on the hot path is counted in plain integers (a send bumps a few
of them and observes one histogram); everything else (role, term, indexes,
each follower's lag, connections) is read when Prometheus scrapes, on the
event loop, so that the numbers of one scrape are of one moment. The HTTP
server is prometheus-client's, in a thread of its own: a scrape costs the
event loop one call of well under a millisecond.

docs/operations.md lists every metric and the alerts worth setting.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from chorus.raft import Role

if TYPE_CHECKING:
    from .replica import Replica
    from .sessions import ClientServer

log = logging.getLogger("chorus.metrics")

# Disk writes and applies: from a tenth of a millisecond (an apply of one entry)
# to seconds (an fsync on a loaded disk).
DISK_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SCRAPE_WAIT_S = 2.0  # the longest a scrape waits for the event loop


class Metrics:
    """One server's counters and histograms, and the collector that reads the rest."""

    def __init__(self, server_id: int) -> None:
        self.server_id = server_id
        # Counted where they happen (plain ints: cheaper than a labelled Counter).
        self.elections = 0  # campaigns this server started (CANDIDATE)
        self.pre_votes = 0  # pre-vote rounds (PRE_CANDIDATE)
        self.became_primary = 0
        self.proposals = 0  # commands proposed on this server (a backup's are forwarded)
        self.applied_entries = 0
        self.pushes = 0  # messages pushed to sessions connected here
        self.requests: Counter[tuple[object, str]] = Counter()  # (op, "ok" or the error code)
        self.registry = CollectorRegistry()
        self.persist_seconds = Histogram(
            "chorus_persist_seconds", "One write of the log and the hard state, with its fsync (rounds that must sync)",
            buckets=DISK_BUCKETS, registry=self.registry)
        self.apply_seconds = Histogram(
            "chorus_apply_seconds", "Applying one batch of committed entries to the chat tables (one transaction)",
            buckets=DISK_BUCKETS, registry=self.registry)
        self.request_seconds = Histogram(
            "chorus_request_seconds", "Client requests, from decoded to answered, by op",
            ["op"], buckets=REQUEST_BUCKETS, registry=self.registry)
        self._request_timers: dict[object, Any] = {}
        self.replica: Replica | None = None
        self.clients: ClientServer | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._http: Any = None
        self.registry.register(_Sampled(self))

    # ------------------------------------------------------------------ the hot path
    def request(self, op: object, result: str, seconds: float) -> None:
        """A client request answered: ``op`` its tag, ``result`` "ok" or the error's code."""
        self.requests[(op, result)] += 1
        timer = self._request_timers.get(op)
        if timer is None:
            timer = self._request_timers[op] = self.request_seconds.labels(str(op))
        timer.observe(seconds)

    def role_changed(self, role: Role) -> None:
        if role is Role.CANDIDATE:
            self.elections += 1
        elif role is Role.PRE_CANDIDATE:
            self.pre_votes += 1
        elif role is Role.PRIMARY:
            self.became_primary += 1

    # ------------------------------------------------------------------ serving
    def serve(self, host: str, port: int, certfile: str | None = None, keyfile: str | None = None) -> None:
        """Serve /metrics on ``host:port`` (over TLS with the server's own
        certificate when the cluster has TLS)."""
        self.loop = asyncio.get_running_loop()
        server, _thread = start_http_server(port, host, registry=self.registry, certfile=certfile, keyfile=keyfile)
        self._http = server
        log.info("server %d: metrics on %s://%s:%d/metrics", self.server_id, "https" if certfile else "http",
                 host, port)

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    # ------------------------------------------------------------------ scraping
    def sample(self) -> list[Metric]:
        """Everything read at scrape time. On the event loop."""
        out: list[Metric] = []

        def gauge(name: str, doc: str, value: float, labels: dict[str, str] | None = None) -> None:
            g = GaugeMetricFamily(name, doc, labels=list(labels) if labels else None)
            g.add_metric(list(labels.values()) if labels else [], value)
            out.append(g)

        def counter(name: str, doc: str, value: float) -> None:
            out.append(CounterMetricFamily(name, doc, value=value))

        counter("chorus_elections", "Elections this server started (as CANDIDATE)", self.elections)
        counter("chorus_pre_votes", "Pre-vote rounds this server started (as PRE_CANDIDATE)", self.pre_votes)
        counter("chorus_became_primary", "Times this server became the primary", self.became_primary)
        counter("chorus_proposals", "Commands proposed on this server (on a backup, forwarded to the primary)",
                self.proposals)
        counter("chorus_applied_entries", "Log entries applied to the chat tables here", self.applied_entries)
        counter("chorus_pushes", "Messages pushed to the sessions connected here", self.pushes)
        requests = CounterMetricFamily("chorus_requests", "Client requests answered here, by op and result "
                                       "(ok, or the error's code)", labels=["op", "result"])
        for (op, result), count in sorted(self.requests.items(), key=str):
            requests.add_metric([str(op), result], count)
        out.append(requests)
        r = self.replica
        if r is not None:
            n = r.node
            role = GaugeMetricFamily("chorus_role", "1 for this server's role, 0 for the others", labels=["role"])
            for each in Role:
                role.add_metric([each.value.lower()], 1.0 if n.role is each else 0.0)
            out.append(role)
            members = n.membership
            gauge("chorus_voter", "1 if this server votes (0: a learner, or not a member)",
                  1.0 if r.id in members.voters else 0.0)
            gauge("chorus_voters", "Voting members in the configuration this server knows", len(members.voters))
            gauge("chorus_learners", "Learners in the configuration this server knows", len(members.learners))
            gauge("chorus_term", "The current term", n.term)
            gauge("chorus_commit_index", "The highest log index known to be committed", n.commit)
            gauge("chorus_applied_index", "The highest log index applied to the chat tables here", r.applied)
            gauge("chorus_last_index", "The last index of the log here", n.last_index)
            gauge("chorus_snapshot_index", "The index of the latest snapshot the log was compacted to",
                  n.log.snapshot.index)
            gauge("chorus_primary_known", "1 if this server knows a primary", 1.0 if n.primary else 0.0)
            health, _why = r._health()
            gauge("chorus_healthy", "1 when the server is healthy, 0 when recovering or out of disk",
                  1.0 if health == "ok" else 0.0)
            gauge("chorus_out_of_disk", "1 while the disk refuses writes", 1.0 if r.out_of_disk else 0.0)
            gauge("chorus_pending_writes", "Client writes waiting for commit here", len(r._waiters))
            lag = GaugeMetricFamily("chorus_follower_lag_entries", "On the primary: entries each follower lacks "
                                    "(the primary's last index minus what the follower acknowledged)",
                                    labels=["follower"])
            if n.role is Role.PRIMARY:
                for pid, p in sorted(n.progress.items()):
                    if pid != r.id:
                        lag.add_metric([str(pid)], max(0, n.last_index - p.match))
            out.append(lag)
        c = self.clients
        if c is not None:
            gauge("chorus_client_connections", "Client connections open here", len(c.sessions))
            gauge("chorus_client_connections_unauthenticated", "Client connections without a session yet",
                  len(c.unauthenticated))
            gauge("chorus_users_connected", "Users with at least one connection here", len(c.by_user))
        return out


class _Sampled(Collector):
    """Asks the event loop for :meth:`Metrics.sample` (from the HTTP thread)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Metric]:
        return []  # (the names are only known when sampled)

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        loop = m.loop
        stalled = GaugeMetricFamily("chorus_scrape_loop_stalled", "1 if the event loop did not answer this scrape "
                                    f"within {SCRAPE_WAIT_S:.0f} s (the other numbers are then missing)")
        if loop is None or loop.is_closed():
            return
        fut: concurrent.futures.Future[list[Metric]] = concurrent.futures.Future()

        def run(fn: Callable[[], list[Metric]] = m.sample) -> None:
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn())
                except BaseException as exc:
                    fut.set_exception(exc)

        try:
            loop.call_soon_threadsafe(run)
            sampled = fut.result(SCRAPE_WAIT_S)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            stalled.add_metric([], 1.0)
            yield stalled
            return
        except RuntimeError:  # the loop closed meanwhile
            return
        stalled.add_metric([], 0.0)
        yield stalled
        yield from sampled
