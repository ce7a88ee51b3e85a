"""Prometheus metrics, scraped over HTTPS from real servers as Prometheus would,
and checked against what the cluster was made to do."""

from __future__ import annotations

import asyncio
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from chorus.client import Rejected
from chorus.server.config import ConfigError, load

from .cluster import Cluster, wait_for
from .test_cluster import _subscribed, user

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(c: Cluster, i: int) -> Samples:
    ctx = ssl.create_default_context(cafile=str(c.ca))
    url = f"https://127.0.0.1:{c.metrics_ports[i - 1]}/metrics"
    with urllib.request.urlopen(url, context=ctx, timeout=10) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_metrics_say_what_the_cluster_did(cluster: Cluster) -> None:
    async def main():
        primary = await cluster.primary()
        alice = await user(cluster, "alice", [cluster.address(primary)])
        backup = next(i for i in (1, 2, 3) if i != primary)
        bob = await user(cluster, "bob", [cluster.address(backup)])
        received: list = []

        async def listen():
            async for m in bob.events():
                received.append(m)
                if len(received) == 5:
                    return

        listener = asyncio.create_task(listen())
        await wait_for(lambda: _subscribed(bob), 5, "bob's subscription")
        sent = [await alice.send("bob", f"hello {k}") for k in range(5)]
        with pytest.raises(Rejected):
            await alice.send("nobody", "hi")
        await asyncio.wait_for(listener, 10)
        rows = await cluster.converged()
        applied = rows[0]["applied_index"]

        async def caught_up() -> bool:
            s = scrape(cluster, primary)
            return all(v == 0 for (name, _), v in s.items() if name == "chorus_follower_lag_entries")

        await wait_for(caught_up, 10, "the followers' lag to reach 0")
        by_server = {i: scrape(cluster, i) for i in (1, 2, 3)}
        p = by_server[primary]

        # Roles and terms: one primary, the same term everywhere, the indexes of status.
        for i, s in by_server.items():
            assert value(s, "chorus_role", role="primary") == (1.0 if i == primary else 0.0)
            assert value(s, "chorus_role", role="backup") == (0.0 if i == primary else 1.0)
            assert value(s, "chorus_term") == rows[0]["term"]
            assert value(s, "chorus_applied_index") == applied
            assert value(s, "chorus_commit_index") >= applied
            assert value(s, "chorus_voter") == 1.0 and value(s, "chorus_voters") == 3
            assert value(s, "chorus_healthy") == 1.0 and value(s, "chorus_out_of_disk") == 0.0
            # Every server wrote its log with an fsync and applied what it holds.
            assert value(s, "chorus_persist_seconds_count") > 0
            assert value(s, "chorus_apply_seconds_count") > 0
            assert value(s, "chorus_applied_entries_total") > 0
            assert value(s, "chorus_scrape_loop_stalled") == 0.0
        assert sum(value(s, "chorus_became_primary_total") for s in by_server.values()) >= 1
        assert value(p, "chorus_became_primary_total") >= 1
        assert {labels for (name, labels) in p if name == "chorus_follower_lag_entries"} == {
            (("follower", str(i)),) for i in (1, 2, 3) if i != primary}

        # Requests, by op and result, where they were answered.
        assert value(p, "chorus_requests_total", op="send", result="ok") == len(sent)
        assert value(p, "chorus_requests_total", op="send", result="no_such_user") == 1
        assert value(p, "chorus_request_seconds_count", op="send") == len(sent) + 1
        b = by_server[backup]
        assert value(b, "chorus_requests_total", op="subscribe", result="ok") >= 1
        # alice's sends were proposed on the primary; bob's five pushes went out on his server.
        assert value(p, "chorus_proposals_total") >= len(sent) + 1
        assert value(b, "chorus_pushes_total") == len(sent)
        assert value(b, "chorus_client_connections") >= 1 and value(b, "chorus_users_connected") >= 1
        await alice.close()
        await bob.close()

    asyncio.run(main())


def test_the_metrics_port_speaks_tls_with_the_cluster_certificate(cluster: Cluster) -> None:
    asyncio.run(cluster.primary())  # (every server is up)
    port = cluster.metrics_ports[0]
    with pytest.raises(urllib.error.URLError) as e:  # a client that trusts only the public CAs
        urllib.request.urlopen(f"https://127.0.0.1:{port}/metrics", timeout=10)
    assert "CERTIFICATE_VERIFY_FAILED" in str(e.value)
    with pytest.raises((urllib.error.URLError, ConnectionError)):  # and nothing in plaintext
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    assert "chorus_term" in {name for name, _ in scrape(cluster, 1)}


@pytest.mark.parametrize("port, why", [("8092", "metrics_port"), (8092, "share an address")])
def test_a_metrics_port_that_cannot_work_is_refused(tmp_path: Path, port: object, why: str) -> None:
    path = tmp_path / "c.toml"
    value = f'"{port}"' if isinstance(port, str) else port
    path.write_text(
        '[[server]]\nid = 1\npeer_port = 8081\nclient_port = 8091\n'
        f'[[server]]\nid = 2\npeer_port = 8082\nclient_port = 8092\n'
        f'[[server]]\nid = 3\npeer_port = 8083\nclient_port = 8093\nmetrics_port = {value}\n')
    with pytest.raises(ConfigError, match=why):
        load(path, env={})
