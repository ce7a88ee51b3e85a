"""The cluster's certificates (``chorus certs``) and how a server uses them:
ids bound in the certificate, keys private, renewals picked up without a restart."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import signal
import ssl
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from chorus.client import tls as client_tls
from chorus.server import certs
from chorus.server.tls import TLS, TLSPaths, peer_id

from .cluster import ROOT, Cluster, tls_socket, wait_for


def _paths(d: Path, i: int) -> TLSPaths:
    crt, key = certs.server_paths(d, i)
    return TLSPaths(d / "ca.crt", crt, key)


def test_a_ca_and_a_server_certificate_that_binds_its_id_and_hosts(tmp_path: Path) -> None:
    certs.create_ca(tmp_path)
    with pytest.raises(certs.CertError, match="holds a CA already"):
        certs.create_ca(tmp_path)
    certs.issue_server(tmp_path, 3, ["10.0.0.3", "chorus-3.example.org"])
    for key in (tmp_path / "ca.key", tmp_path / "server-3.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    info = certs.inspect(tmp_path / "server-3.crt")
    assert info.server_id == 3 and set(info.hosts) == {"10.0.0.3", "chorus-3.example.org"} and not info.is_ca
    assert 360 < info.days_left <= 365
    ca = certs.inspect(tmp_path / "ca.crt")
    assert ca.is_ca and ca.server_id is None


def test_renewing_keeps_the_hosts_and_changes_the_key(tmp_path: Path) -> None:
    certs.create_ca(tmp_path)
    certs.issue_server(tmp_path, 1, ["127.0.0.1", "localhost"], days=10)
    old_key = (tmp_path / "server-1.key").read_bytes()
    certs.renew_server(tmp_path, 1)
    info = certs.inspect(tmp_path / "server-1.crt")
    assert set(info.hosts) == {"127.0.0.1", "localhost"} and info.days_left > 300
    assert (tmp_path / "server-1.key").read_bytes() != old_key
    with pytest.raises(certs.CertError, match="issue it first"):
        certs.renew_server(tmp_path, 2)


def test_a_certificate_for_another_server_is_refused(tmp_path: Path) -> None:
    certs.create_ca(tmp_path)
    certs.issue_server(tmp_path, 2, ["127.0.0.1"])
    wrong = TLSPaths(tmp_path / "ca.crt", *certs.server_paths(tmp_path, 2))
    with pytest.raises(certs.CertError, match="certificate for server 2, and this is server 1"):
        TLS(wrong, 1)


def test_changed_files_are_loaded_for_the_next_connection_and_bad_ones_are_not(tmp_path: Path,
                                                                               caplog: pytest.LogCaptureFixture) -> None:
    certs.create_ca(tmp_path)
    certs.issue_server(tmp_path, 1, ["127.0.0.1"])
    tls = TLS(_paths(tmp_path, 1), 1)
    first = tls.current().client_side
    assert tls.current().client_side is first  # unchanged files: the same contexts
    certs.renew_server(tmp_path, 1)
    assert tls.current().client_side is not first
    renewed = tls.current().client_side
    # A key that does not match its certificate (say, a renewal half copied): the
    # files are refused, with a log line, and the last good ones stay.
    other = tmp_path / "other"
    certs.create_ca(other)
    certs.issue_server(other, 1, ["127.0.0.1"])
    (tmp_path / "server-1.key").write_bytes((other / "server-1.key").read_bytes())
    with caplog.at_level(logging.WARNING, logger="chorus.tls"):
        assert tls.current().client_side is renewed
    assert "previous ones stay in use" in caplog.text


def test_peer_ids_come_from_the_certificate_only() -> None:
    assert peer_id({"subjectAltName": (("URI", "urn:chorus:server:7"), ("DNS", "x"))}) == 7
    assert peer_id({"subjectAltName": (("DNS", "urn:chorus:server:7"),)}) is None
    assert peer_id({"subjectAltName": (("URI", "urn:chorus:server:7"), ("URI", "urn:chorus:server:8"))}) is None
    for bad in ("urn:chorus:server:0", "urn:chorus:server:-1", "urn:chorus:server:x", "urn:chorus:server:" + "9" * 20,
                "urn:chorus:server:\u00b2", "urn:chorus:server:\u0661"):
        assert peer_id({"subjectAltName": (("URI", bad),)}) is None
    assert peer_id(None) is None and peer_id({}) is None


def test_the_certs_command(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}

    def chorus(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "chorus", "certs", "--dir", str(tmp_path / "t"), *args],
                              capture_output=True, text=True, env=env, timeout=60)

    assert chorus("init").returncode == 0
    out = chorus("issue", "2", "--host", "10.1.1.2", "--host", "node2.lan")
    assert out.returncode == 0 and "server 2" in out.stdout
    out = chorus("show")
    assert "CA" in out.stdout and "server 2" in out.stdout and "10.1.1.2" in out.stdout
    assert chorus("renew", "2").returncode == 0
    out = chorus("renew", "3")
    assert out.returncode == 1 and "issue it first" in out.stderr
    assert chorus("init").returncode == 1


def test_a_running_server_uses_a_renewed_certificate_without_a_restart(cluster: Cluster) -> None:
    asyncio.run(cluster.primary())

    def served_certificate() -> str:
        s = tls_socket(cluster.address(1), cluster.ca)
        try:
            return hashlib.sha256(s.getpeercert(binary_form=True)).hexdigest()  # type: ignore[attr-defined]
        finally:
            s.close()

    before = served_certificate()
    certs.renew_server(cluster.tls_dir, 1)
    assert served_certificate() != before  # the next connection
    # SIGHUP loads them at once, and the peers keep talking (a new key, the same CA).
    renewed = served_certificate()
    os.kill(cluster.pid(1), signal.SIGHUP)
    asyncio.run(wait_for(lambda: _true("certificates reloaded" in cluster.log(1)), 10, "the reload to be logged"))
    assert served_certificate() == renewed
    cluster.kill(1)
    cluster.start(1)
    asyncio.run(cluster.converged())


async def _true(value: bool) -> bool:
    return value


def test_clients_find_the_local_ca_by_themselves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CHORUS_CA", raising=False)
    monkeypatch.delenv("CHORUS_PLAINTEXT", raising=False)
    monkeypatch.chdir(tmp_path)
    assert client_tls.find_ca() == "system"  # nothing here: the system's trust store
    certs.create_ca(tmp_path / "data" / "tls")
    local = (tmp_path / "data" / "tls" / "ca.crt").resolve()
    assert client_tls.find_ca() == local
    assert client_tls.find_ca(["127.0.0.1:8091", "localhost:8092", "[::1]:8093"]) == local
    # Not for servers elsewhere, and not a file others may write.
    assert client_tls.find_ca(["10.0.0.11:8091"]) == "system"
    assert client_tls.find_ca(["127.0.0.1:8091", "chorus.example.org:8091"]) == "system"
    local.chmod(0o666)
    assert client_tls.find_ca(["127.0.0.1:8091"]) == "system"
    local.chmod(0o644)
    ctx = client_tls.context()
    assert isinstance(ctx, ssl.SSLContext) and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    monkeypatch.setenv("CHORUS_CA", str(tmp_path / "elsewhere.crt"))
    assert client_tls.find_ca() == tmp_path / "elsewhere.crt"
    monkeypatch.setenv("CHORUS_PLAINTEXT", "1")
    assert client_tls.context() is None
