"""``chorus serve``: run one replica until SIGTERM or SIGINT.

On SIGTERM a primary first hands leadership to a caught-up backup, so clients
see no error, then stops.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path

from .config import DEV_SECRET, Config, ConfigError, load
from .peers import PeerTransport
from .replica import Replica
from .sessions import ClientServer

log = logging.getLogger("chorus.server")


async def serve(cfg: Config, server_id: int, ready: asyncio.Event | None = None) -> None:
    replica = Replica(cfg, server_id)
    peers = PeerTransport(replica, cfg)
    clients = ClientServer(replica, cfg)
    replica.transport = peers
    replica.push = clients.push
    replica.account_deleted = clients.account_deleted
    replica.start()
    await peers.start()
    await clients.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    spec = replica.spec
    print(f"chorus server {server_id} ready: clients on {spec.client_address}, peers on {spec.peer_address}",
          flush=True)
    if ready is not None:
        ready.set()
    await stop.wait()
    log.info("server %d stopping", server_id)
    clients.stop_accepting()
    await replica.stop(graceful=True)
    clients.close()
    await peers.close()
    log.info("server %d stopped", server_id)


def run(server_id: int, config: Path | None, log_level: str = "INFO") -> int:
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        cfg = load(config)
        cfg.spec(server_id)
    except ConfigError as exc:
        print(f"chorus serve: {exc}", file=sys.stderr)
        return 2
    if cfg.secret == DEV_SECRET:
        log.warning("using the built-in development secret: fine on one machine, set CHORUS_SECRET "
                    "or [cluster] secret for anything else")
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        runner(serve(cfg, server_id))
    except OSError as exc:
        print(f"chorus serve: {exc}", file=sys.stderr)
        return 1
    return 0
