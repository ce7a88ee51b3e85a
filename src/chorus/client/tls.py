"""How a client reaches the servers: TLS by default, checked against the
cluster's CA.

``tls`` (for :class:`chorus.client.Client`, ``server_status`` and the CLI):

- ``None`` (the default): TLS, against the first CA found: ``$CHORUS_CA``, then,
  for servers on loopback only, ``data/tls/ca.crt`` under the current directory
  (where ``make run`` and ``chorus cluster up`` put it) if it belongs to this
  user and nobody else may write it; with none, the system's trust store (a
  server with a public certificate). ``$CHORUS_CA=system`` asks for the trust
  store, ``$CHORUS_PLAINTEXT=1`` for no TLS;
- a path: TLS against that CA file; ``"system"``: the system's trust store;
- an ``ssl.SSLContext``: used as it is;
- ``False``: plaintext, for a server started without TLS (on loopback, or
  with ``--insecure``).

The server's certificate must name the host the client dialled (as HTTPS
checks it): ``chorus certs issue`` puts the server's host names and addresses
in it.
"""

from __future__ import annotations

import os
import ssl
import stat
from pathlib import Path

from chorus.wire.addresses import host_of, is_loopback

from .errors import NotConnected

LOCAL_CA = Path("data") / "tls" / "ca.crt"
TLSOption = ssl.SSLContext | str | Path | bool | None


def _trusted_file(path: Path) -> bool:
    """Owned by this user, and writable by nobody else (as ssh asks of its keys)."""
    try:
        st = path.stat()
    except OSError:
        return False
    return st.st_uid == os.getuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def find_ca(servers: list[str] | None = None) -> Path | str | None:
    """The CA a client of ``servers`` uses when told nothing: a path, "system",
    or None for plaintext. The local cluster's CA is taken from the current
    directory only for servers on this machine: anyone who could write a file
    there must not get to vouch for a server elsewhere."""
    if os.environ.get("CHORUS_PLAINTEXT", "") not in ("", "0"):
        return None
    env = os.environ.get("CHORUS_CA")
    if env:
        return "system" if env == "system" else Path(env)
    local = servers is None or all(is_loopback(host_of(s)) for s in servers)
    if local and LOCAL_CA.exists() and _trusted_file(LOCAL_CA):
        return LOCAL_CA.resolve()
    return "system"


_cache: dict[tuple, ssl.SSLContext] = {}


def context(tls: TLSOption = None, servers: list[str] | None = None) -> ssl.SSLContext | None:
    """The context to connect to ``servers`` with, or None for plaintext."""
    if isinstance(tls, ssl.SSLContext):
        return tls
    if tls is False:
        return None
    ca = find_ca(servers) if tls is None or tls is True else "system" if tls == "system" else Path(tls)
    if ca is None:
        return None
    try:
        key: tuple = ("system",) if ca == "system" else (str(ca), Path(ca).stat().st_mtime_ns)
    except OSError as exc:
        raise NotConnected("tls", f"cannot use {ca} as the cluster's CA: {exc}") from None
    ctx = _cache.get(key)
    if ctx is None:
        try:
            ctx = ssl.create_default_context(cafile=None if ca == "system" else str(ca))
        except (OSError, ssl.SSLError) as exc:
            raise NotConnected("tls", f"cannot use {ca} as the cluster's CA: {exc}") from None
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        _cache[key] = ctx
    return ctx


def explain(exc: BaseException, address: str) -> str:
    """What a failed TLS connection means, for people."""
    text = str(exc)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (f"{address}: its certificate is not trusted ({exc.verify_message}): give the cluster's CA "
                "(--ca FILE or CHORUS_CA)")
    if "WRONG_VERSION_NUMBER" in text or "wrong version number" in text or "record layer failure" in text:
        return f"{address} does not speak TLS (a server started without it?): try --plaintext"
    if isinstance(exc, ssl.SSLError | ConnectionResetError) or "EOF" in text:
        return f"{address} closed the connection during the TLS handshake (a server without TLS?): {exc}"
    return f"{address}: {exc}"
