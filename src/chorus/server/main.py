"""``chorus serve``: run one replica until SIGTERM or SIGINT.

On SIGTERM a primary first hands leadership to a caught-up backup, so clients
see no error, then stops. SIGHUP loads the TLS files again (they are also
picked up by themselves when they change, for each new connection; the
metrics port, if any, reads them when the server starts).

Secure by default: a server that listens on an address other than loopback
must have TLS and a secret of its own; ``--insecure`` lets it start without,
and it then says so in its log, loudly.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from chorus.store import StoreCorrupt, StoreUnreadable
from chorus.wire.addresses import is_loopback

from .admin import Joining
from .certs import CertError
from .config import DEV_SECRET, Config, ConfigError, ServerSpec, load
from .listen import raise_open_file_limit
from .members import RemovedFromCluster
from .peers import PeerTransport
from .replica import Replica
from .sessions import ClientServer
from .tls import TLS

log = logging.getLogger("chorus.server")


async def serve(cfg: Config, server_id: int, ready: asyncio.Event | None = None, *,
                join: Joining | None = None, insecure: bool = False) -> None:
    """``join``: what a member said of the cluster (``chorus serve --join``),
    used if this server's disk is empty; ``insecure``: start even where
    :func:`refusal` says not to."""
    own = next((s for s in cfg.servers if s.id == server_id), None)
    why = refusal(cfg, server_id, insecure, own) if own is not None else None
    if why is not None:
        raise ConfigError(why)
    replica = Replica(cfg, server_id, join)
    why = refusal(cfg, server_id, insecure, replica.spec) if own is None else None  # (where it joined)
    if why is not None:
        replica.store.close()
        raise ConfigError(why)
    tls = TLS(cfg.tls.paths(server_id), server_id) if cfg.tls is not None else None
    peers = PeerTransport(replica, cfg, tls)
    clients = ClientServer(replica, cfg, tls)
    replica.transport = peers
    replica.push = clients.push
    replica.account_deleted = clients.account_deleted
    replica.sessions_ended = clients.sessions_ended
    replica.state_replaced = clients.state_replaced
    replica.start()
    await peers.start()
    await clients.start()
    metrics = replica.metrics
    metrics.replica, metrics.clients = replica, clients
    spec = replica.spec
    if spec.metrics_port is not None:
        files = cfg.tls.paths(server_id) if cfg.tls is not None else None
        metrics.serve(spec.host, spec.metrics_port, *((str(files.cert), str(files.key)) if files else ()))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if tls is not None:
        loop.add_signal_handler(signal.SIGHUP, lambda: tls.reload(force=True))
    print(f"chorus server {server_id} ready: clients on {spec.client_address}, peers on {spec.peer_address}"
          f"{' (TLS)' if tls is not None else ''}", flush=True)
    if ready is not None:
        ready.set()
    stopping = loop.create_task(stop.wait())
    assert replica.failed is not None
    await asyncio.wait([stopping, replica.failed], return_when=asyncio.FIRST_COMPLETED)
    failure = replica.failed.result() if replica.failed.done() else None
    if isinstance(failure, RemovedFromCluster):
        log.warning("server %d: %s; it stops (its data directory may be deleted)", server_id, failure)
        failure = None
    log.info("server %d stopping", server_id)
    clients.stop_accepting()
    await replica.stop(graceful=failure is None and replica.id in replica.membership.members)
    clients.close()
    metrics.close()
    await peers.close()
    log.info("server %d stopped", server_id)
    if failure is not None:
        raise LoopFailed(f"the replica loop failed: {failure!r} (see the log); a supervisor should start "
                         "the server again")


class LoopFailed(Exception):
    """The replica loop stopped on an error: the process must end, and say so."""


def refusal(cfg: Config, server_id: int, insecure: bool, spec: ServerSpec | None = None) -> str | None:
    """Why this server must not start as configured (None: it may), and, with
    ``insecure``, the warnings instead. ``spec``: where it listens (default:
    its [[server]] table)."""
    spec = spec or cfg.spec(server_id)
    exposed = not is_loopback(spec.host)
    problems = []
    if exposed and cfg.tls is None:
        problems.append("without TLS ([tls] in the configuration; chorus certs makes the files)")
    if exposed and cfg.secret == DEV_SECRET:
        problems.append("with the public development secret ([cluster] secret, or CHORUS_SECRET)")
    if not problems:
        return None
    text = f"server {server_id} listens on {spec.host}, not on loopback, " + " and ".join(problems)
    if insecure:
        log.warning("INSECURE (--insecure): %s. Anyone on the network can read and forge its traffic.", text)
        return None
    return text + ". Fix that, or start it with --insecure to accept the risk."


def run(server_id: int, config: Path | None, log_level: str = "INFO", insecure: bool = False,
        join: Callable[[Config], Joining] | None = None) -> int:
    """``join``: asks a member of the cluster what this server joins (used when
    its disk is empty; the server then needs no [[server]] table of its own)."""
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    joining = None
    try:
        cfg = load(config)
        if not (cfg.replica_dir(server_id) / "chorus.db").exists():
            if join is not None:
                joining = join(cfg)
            else:
                cfg.spec(server_id)  # (a server that joined finds itself in its membership)
    except ConfigError as exc:
        print(f"chorus serve: {exc}", file=sys.stderr)
        return 2
    if cfg.secret == DEV_SECRET:
        log.warning("using the built-in development secret: fine on one machine, set CHORUS_SECRET "
                    "or [cluster] secret for anything else")
    if cfg.tls is None:
        log.warning("no TLS: traffic on both ports is in plaintext (fine on loopback only)")
    log.info("open files allowed: %d", raise_open_file_limit())
    try:
        import uvloop

        runner: Callable[..., None] = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        runner(serve(cfg, server_id, join=joining, insecure=insecure))
    except ConfigError as exc:
        print(f"chorus serve: {exc}", file=sys.stderr)
        return 2
    except CertError as exc:
        print(f"chorus serve: {exc}", file=sys.stderr)
        return 2
    except LoopFailed as exc:
        print(f"chorus serve: server {server_id}: {exc}", file=sys.stderr)
        return 1
    except StoreUnreadable as exc:
        print(f"chorus serve: server {server_id}: {exc}: run the chorus that wrote it", file=sys.stderr)
        return 1
    except StoreCorrupt as exc:  # (alone in its configuration: nobody to recover from)
        print(f"chorus serve: server {server_id}: {exc}. It is the only server of its configuration, so there is "
              "nothing to rebuild it from: restore its data directory from a backup, or move it aside to start "
              "an empty cluster", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"chorus serve: {exc}", file=sys.stderr)
        return 1
    return 0
