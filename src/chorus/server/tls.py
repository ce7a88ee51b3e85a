"""TLS for both of a server's ports, with files picked up as they are renewed.

- The client port: TLS 1.3, the server's certificate; clients check it against
  the cluster CA (or the system's trust store, for a public certificate).
- The peer port: mutual TLS 1.3. Both ends present a certificate signed by the
  cluster CA, and each takes the other's server id from it (``urn:chorus:server:N``,
  see certs.py): a connection is the server its certificate names, whatever its
  frames say. A connecting server checks that it reached the id it dialled.

Every new connection takes the current contexts: the files are looked at (a
stat each) and loaded again when one changed, so a renewed certificate is in use
from the next connection on, without a restart; SIGHUP loads them at once. Files
that do not load (half written, a key that does not match) are refused with a
log line and the previous ones stay in use.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

from .certs import CertError, id_from_uri, inspect

log = logging.getLogger("chorus.tls")


@dataclass(frozen=True)
class TLSPaths:
    ca: Path
    cert: Path
    key: Path


def peer_id(cert: dict | None) -> int | None:
    """The server id a verified peer certificate names (``getpeercert()``)."""
    if not cert:
        return None
    ids = {id_from_uri(v) for k, v in cert.get("subjectAltName", ()) if k == "URI"} - {None}
    return ids.pop() if len(ids) == 1 else None


def _base(purpose: int) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


class TLS:
    """The server's TLS contexts, reloaded when the files change."""

    def __init__(self, paths: TLSPaths, server_id: int) -> None:
        self.paths = paths
        self.server_id = server_id
        self._stamp: tuple | None = None
        self._loaded = False
        self.client_side: ssl.SSLContext  # the client port
        self.peer_server: ssl.SSLContext  # connections other servers open to us
        self.peer_client: ssl.SSLContext  # connections we open to them
        self.reload(force=True)

    def _files_stamp(self) -> tuple:
        out = []
        for p in (self.paths.ca, self.paths.cert, self.paths.key):
            st = p.stat()
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(out)

    def _build(self) -> tuple[ssl.SSLContext, ssl.SSLContext, ssl.SSLContext, str]:
        p = self.paths
        info = inspect(p.cert)
        if info.server_id != self.server_id:
            named = f"server {info.server_id}" if info.server_id else "no server id"
            raise CertError(f"{p.cert} is a certificate for {named}, and this is server {self.server_id}")
        client_side = _base(ssl.PROTOCOL_TLS_SERVER)
        client_side.load_cert_chain(p.cert, p.key)
        peer_server = _base(ssl.PROTOCOL_TLS_SERVER)
        peer_server.load_cert_chain(p.cert, p.key)
        peer_server.load_verify_locations(p.ca)
        peer_server.verify_mode = ssl.CERT_REQUIRED
        peer_client = _base(ssl.PROTOCOL_TLS_CLIENT)
        peer_client.load_cert_chain(p.cert, p.key)
        peer_client.load_verify_locations(p.ca)
        peer_client.check_hostname = False  # the id in the certificate is checked instead (PeerLink)
        peer_client.verify_mode = ssl.CERT_REQUIRED
        days = info.days_left
        note = f"{p.cert.name}, valid until {info.not_after:%Y-%m-%d}"
        if days < 30:
            log.warning("the certificate %s expires in %.0f days: renew it (chorus certs renew %d)",
                        p.cert, days, self.server_id)
        return client_side, peer_server, peer_client, note

    def reload(self, force: bool = False) -> bool:
        """Load the files again if they changed (or ``force``). Raises on the first
        load; later, a failed load is logged and the previous contexts stay."""
        try:
            stamp = self._files_stamp()
            if not force and stamp == self._stamp:
                return False
            built = self._build()
        except (OSError, ssl.SSLError, CertError, ValueError) as exc:
            if not self._loaded:
                raise CertError(f"TLS: {exc}") from None
            log.warning("TLS files not reloaded, the previous ones stay in use: %s", exc)
            self._stamp = self._files_stamp_or_none()  # (tried again once they change)
            return False
        self.client_side, self.peer_server, self.peer_client, note = built
        first, self._loaded = not self._loaded, True
        self._stamp = stamp
        log.info("TLS %s: %s", "on" if first else "certificates reloaded", note)
        return True

    def _files_stamp_or_none(self) -> tuple | None:
        try:
            return self._files_stamp()
        except OSError:
            return None

    def current(self) -> TLS:
        """Call for each new connection: picks up renewed files."""
        self.reload()
        return self
