"""The cluster's certificates: a CA of its own, and a certificate per server.

A server's certificate binds its id: the subject alternative name
``urn:chorus:server:N`` (and the common name ``chorus server N``). Servers
accept a peer connection only from a certificate the cluster CA signed, and
take the peer's id from it, never from what the peer says. The certificate
also names the server's host names and addresses, so that clients can check
the server they reach is the one they asked for (as HTTPS does).

Keys are ECDSA P-256 (a TLS 1.3 handshake costs a fraction of RSA's), written
with mode 0600. Every file is written to a temporary name and renamed into
place, so that a server reading it for a new connection never sees half of it.

    layout of a certificate directory (``chorus certs``, ``[tls] dir``):
      ca.crt            the CA's certificate: every server and client needs it
      ca.key            the CA's key: needed only to issue; keep it off the servers if you can
      server-N.crt      server N's certificate
      server-N.key      and its key
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ID_URI = "urn:chorus:server:"
CA_DAYS = 10 * 365
SERVER_DAYS = 365


class CertError(Exception):
    """A certificate or key that cannot be used, said plainly."""


def ca_paths(directory: Path) -> tuple[Path, Path]:
    return directory / "ca.crt", directory / "ca.key"


def server_paths(directory: Path, server_id: int) -> tuple[Path, Path]:
    return directory / f"server-{server_id}.crt", directory / f"server-{server_id}.key"


def _write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)  # (umask)
    tmp.replace(path)


def _key_bytes(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def create_ca(directory: Path, name: str = "chorus cluster CA", days: int = CA_DAYS) -> Path:
    """A new CA in ``directory``; refuses to overwrite one."""
    crt, key_path = ca_paths(directory)
    if crt.exists() or key_path.exists():
        raise CertError(f"{directory} holds a CA already ({crt.name}); remove it first to make a new one")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(key_path, _key_bytes(key), 0o600)
    _write(crt, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return crt


def _load_ca(directory: Path, ca_key: Path | None) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    crt, key_path = ca_paths(directory)
    key_path = ca_key or key_path
    try:
        cert = x509.load_pem_x509_certificates(crt.read_bytes())[0]
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise CertError(f"no CA: {exc.filename} is missing (chorus certs init)") from None
    except ValueError as exc:
        raise CertError(f"the CA in {directory} cannot be read: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertError(f"{key_path}: not an ECDSA key")
    return cert, key


def _san(hosts: list[str], server_id: int) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(f"{ID_URI}{server_id}")]
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    return x509.SubjectAlternativeName(names)


def issue_server(directory: Path, server_id: int, hosts: list[str], days: int = SERVER_DAYS,
                 ca_key: Path | None = None) -> Path:
    """A certificate (and a new key) for server ``server_id``, signed by the CA
    in ``directory``, valid for ``hosts`` (names or addresses). Replaces the
    server's files if there are any (a renewal)."""
    if server_id <= 0:
        raise CertError("a server id is a positive integer")
    if not hosts:
        raise CertError("name at least one host (the address clients and servers use)")
    ca_cert, ca = _load_ca(directory, ca_key)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"chorus server {server_id}")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(_san(hosts, server_id), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.public_key()), critical=False)
        .sign(ca, hashes.SHA256())
    )
    crt, key_path = server_paths(directory, server_id)
    # The key first: a server that reloads between the two renames fails to load a
    # mismatched pair, keeps its old files and logs it; it picks up the pair next time.
    _write(key_path, _key_bytes(key), 0o600)
    _write(crt, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return crt


@dataclass(frozen=True)
class CertInfo:
    path: Path
    subject: str
    server_id: int | None
    hosts: tuple[str, ...]
    not_after: dt.datetime
    is_ca: bool

    @property
    def days_left(self) -> float:
        return (self.not_after - _now()).total_seconds() / 86400


def inspect(path: Path) -> CertInfo:
    """What a certificate says; CertError if it cannot be read, whatever is wrong with it."""
    try:
        return _inspect(path)
    except (OSError, ValueError, IndexError, TypeError) as exc:
        raise CertError(f"{path}: not a certificate this can use ({exc})") from None


def _inspect(path: Path) -> CertInfo:
    cert = x509.load_pem_x509_certificates(path.read_bytes())[0]
    server_id, hosts = None, []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    if san is not None:
        for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
            server_id = id_from_uri(uri) or server_id
        hosts = [str(v) for v in san.get_values_for_type(x509.IPAddress)] + san.get_values_for_type(x509.DNSName)
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    return CertInfo(path, cert.subject.rfc4514_string(), server_id, tuple(hosts), cert.not_valid_after_utc, is_ca)


def renew_server(directory: Path, server_id: int, days: int = SERVER_DAYS, ca_key: Path | None = None,
                 hosts: list[str] | None = None) -> Path:
    """Issue server ``server_id``'s certificate again (a new key, a new validity),
    for the same hosts unless told others."""
    crt, _ = server_paths(directory, server_id)
    if hosts is None:
        if not crt.exists():
            raise CertError(f"{crt} does not exist: issue it first (chorus certs issue {server_id} --host ...)")
        hosts = list(inspect(crt).hosts)
    return issue_server(directory, server_id, hosts, days, ca_key)


def id_from_uri(uri: str) -> int | None:
    if not uri.startswith(ID_URI):
        return None
    text = uri[len(ID_URI):]
    ok = text.isascii() and text.isdigit() and len(text) <= 15  # (not "²", nor Arabic-Indic digits)
    return int(text) if ok and int(text) > 0 else None


def local_cluster(directory: Path, ids: list[int], hosts: list[str]) -> None:
    """What ``chorus cluster up`` needs: a CA and a certificate per server, made
    once and kept; a missing or soon-expiring server certificate is issued again."""
    crt, _ = ca_paths(directory)
    if not crt.exists():
        create_ca(directory, "chorus local cluster CA")
    for i in ids:
        path, key = server_paths(directory, i)
        if not path.exists() or not key.exists() or inspect(path).days_left < 30:
            issue_server(directory, i, hosts)
