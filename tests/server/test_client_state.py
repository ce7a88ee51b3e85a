"""What the client library tells a UI about its connection: ``server``,
``retrying`` and ``on_change``."""

from __future__ import annotations

import asyncio

from .cluster import Cluster, wait_for

PASSWORD = "Secret123"


def test_a_ui_sees_the_connection_break_and_a_write_wait_for_a_majority(cluster: Cluster) -> None:
    async def main():
        p = await cluster.primary()
        order = [cluster.address(p)] + [a for a in cluster.addresses if a != cluster.address(p)]
        client = cluster.client(order, shuffle=False, retry_for=60)
        seen: list[tuple[str | None, bool]] = []
        client.on_change = lambda: seen.append((client.server, client.retrying))
        await client.register("alice", PASSWORD)
        await client.login("alice", PASSWORD)
        assert client.server == cluster.address(p) and not client.retrying
        assert seen[0] == (cluster.address(p), False)  # connected

        async def listen():
            async for _ in client.events():
                pass

        listener = asyncio.create_task(listen())
        await wait_for(lambda: _true(client._subscribed and client.server is not None), 5, "the subscription")
        other = next(i for i in range(1, 4) if i != p)
        cluster.kill(p)
        cluster.kill(other)  # one server left: no majority
        await wait_for(lambda: _true((None, False) in seen), 5, "the broken connection to be told")
        send = asyncio.create_task(client.send("alice", "a note to self"))
        await wait_for(lambda: _true(client.retrying), 10, "the send to be retried")
        assert not send.done()
        cluster.start(p)
        sent = await asyncio.wait_for(send, 60)
        assert not client.retrying and seen[-1][1] is False
        assert [m.body for m in await client.history("alice")] == ["a note to self"]
        assert sent.id > 0
        listener.cancel()
        await client.close()

    asyncio.run(main())


async def _true(value: bool) -> bool:
    return value
