"""Development certificates with `cryptography`: a local CA, a server certificate for localhost/127.0.0.1 and a
client certificate (mutual TLS), for tests and demos. Production deployments bring their own PKI.

Private keys are written with mode 0600; each file is written to a temporary name and then renamed.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

FILES = ("ca.pem", "ca.key", "server.pem", "server.key", "client.pem", "client.key")


def _write(path: Path, data: bytes, private: bool) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedfingpt dev"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_dev_certs(out_dir: str | Path, hosts: tuple[str, ...] = ("localhost", "127.0.0.1"), days: int = 30,
                   client_name: str = "dev-client") -> dict[str, Path]:
    """CA, server (SAN = hosts) and client certificates in `out_dir`; returns the paths by file name."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("fedfingpt dev CA")).issuer_name(_name("fedfingpt dev CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))

    def leaf(cn: str, usage, sans):
        key = ec.generate_private_key(ec.SECP256R1())
        b = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca.subject).public_key(key.public_key())
             .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
             .not_valid_after(now + dt.timedelta(days=days))
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return b.sign(ca_key, hashes.SHA256()), key

    sans = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    server, server_key = leaf(hosts[0], ExtendedKeyUsageOID.SERVER_AUTH, sans)
    client, client_key = leaf(client_name, ExtendedKeyUsageOID.CLIENT_AUTH, [])
    pem = serialization.Encoding.PEM
    files = {"ca.pem": (ca.public_bytes(pem), False), "ca.key": (_key_pem(ca_key), True),
             "server.pem": (server.public_bytes(pem), False), "server.key": (_key_pem(server_key), True),
             "client.pem": (client.public_bytes(pem), False), "client.key": (_key_pem(client_key), True)}
    for name, (data, private) in files.items():
        _write(out / name, data, private)
    return {name: out / name for name in FILES}


def make_node_key_pair(out_dir: str | Path, name: str, overwrite: bool = False) -> tuple[Path, Path]:
    """A SuperNode's authentication key pair, as Flower reads it: `NAME.key` (EC P-384 private key in OpenSSH format,
    mode 0600) and `NAME.pub` (its OpenSSH public key, which the coordinator registers). An existing key is kept
    unless `overwrite`: a new key must be registered again."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    key_path, pub_path = out / f"{name}.key", out / f"{name}.pub"
    if key_path.exists() and not overwrite:
        raise FileExistsError(f"{key_path} exists; keep it (its public key may be registered already) or pass "
                              "--force to replace it (then register the new public key)")
    key = ec.generate_private_key(ec.SECP384R1())
    _write(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                       serialization.NoEncryption()), private=True)
    _write(pub_path, key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                   serialization.PublicFormat.OpenSSH) + f" {name}\n".encode(),
           private=False)
    return key_path, pub_path


def read_node_public_key(path: str | Path) -> str:
    """The OpenSSH public key of a SuperNode's private key file (what the SuperLink must have registered)."""
    key = serialization.load_ssh_private_key(Path(path).read_bytes(), None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path} is not an EC private key (Flower's SuperNode authentication needs one)")
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
