"""How a client reaches the servers: TLS by default, checked against the
cluster's CA.

``tls`` (for :class:`chorus.client.Client`, ``server_status`` and the CLI):

- ``None`` (the default): TLS, against the first CA found: ``$CHORUS_CA``, then
  ``data/tls/ca.crt`` under the current directory (where ``make run`` and
  ``chorus cluster up`` put it); with none, the system's trust store (a server
  with a public certificate). ``$CHORUS_CA=system`` asks for the trust store,
  ``$CHORUS_PLAINTEXT=1`` for no TLS;
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
from pathlib import Path

from .errors import NotConnected

LOCAL_CA = Path("data") / "tls" / "ca.crt"
TLSOption = ssl.SSLContext | str | Path | bool | None


def find_ca() -> Path | str | None:
    """The CA a client uses when told nothing: a path, "system", or None for plaintext."""
    if os.environ.get("CHORUS_PLAINTEXT", "") not in ("", "0"):
        return None
    env = os.environ.get("CHORUS_CA")
    if env:
        return "system" if env == "system" else Path(env)
    if LOCAL_CA.exists():
        return LOCAL_CA.resolve()
    return "system"


_cache: dict[tuple, ssl.SSLContext] = {}


def context(tls: TLSOption = None) -> ssl.SSLContext | None:
    """The context to connect with, or None for plaintext."""
    if isinstance(tls, ssl.SSLContext):
        return tls
    if tls is False:
        return None
    ca = find_ca() if tls is None or tls is True else "system" if tls == "system" else Path(tls)
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
