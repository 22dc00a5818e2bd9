"""weed's ``-config_dir``, new at every start: master.toml, security.toml (JWT keys), gRPC mutual-TLS certificates."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from pike_stream.storage.ports import HOST
from pike_stream.storage.private_files import private_dir, write_private

CONFIG_DIR = "config"
MASTER_TOML = "master.toml"
SECURITY_TOML = "security.toml"

_MASTER_TOML = """\
# Written by pike_stream: grow one volume at a time, so every bucket (a collection) costs one volume.
[master.volume_growth]
copy_1 = 1
"""
# JWT keys: weed's volume server and filer accept a request only with a token signed by these; only
# weed's own components (master, filer, S3 gateway) hold them. New random keys at every start.
_SECURITY_TOML = """\
# Written by pike_stream at every start (new random keys each time); mode 0600.
[jwt.signing]
key = "{volume_write}"
expires_after_seconds = 10

[jwt.signing.read]
key = "{volume_read}"
expires_after_seconds = 60

[jwt.filer_signing]
key = "{filer_write}"
expires_after_seconds = 10

[jwt.filer_signing.read]
key = "{filer_read}"
expires_after_seconds = 60

[access]
ui = false

[filer.expose_directory_metadata]
enabled = false

# gRPC: mutual TLS with a certificate made for this start (any gRPC peer must present it).
[grpc]
ca = {ca}
"""
_GRPC_COMPONENTS = ("master", "volume", "filer", "s3", "client")


def write_weed_config(data_dir: Path) -> Path:
    """Write ``master.toml``, a ``security.toml`` with new keys and new gRPC certificates into the folder's
    ``config/`` (made 0700, files 0600); returns that folder."""
    config = private_dir(data_dir / CONFIG_DIR)
    write_private(config / MASTER_TOML, _MASTER_TOML)
    names = ("volume_write", "volume_read", "filer_write", "filer_read")
    keys = {name: secrets.token_urlsafe(32) for name in names}
    ca, cert, key = write_grpc_certificates(config)
    security = _SECURITY_TOML.format(**keys, ca=json.dumps(str(ca)))
    for component in _GRPC_COMPONENTS:
        security += f"\n[grpc.{component}]\ncert = {json.dumps(str(cert))}\nkey = {json.dumps(str(key))}\n"
    write_private(config / SECURITY_TOML, security)
    return config


def write_grpc_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A new certificate authority and one certificate (server and client) signed by it, for weed's
    gRPC mutual TLS, written 0600 into ``folder``; the authority's key is thrown away."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    valid = (now - datetime.timedelta(hours=1), now + datetime.timedelta(days=3650))
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pike_stream embedded S3 " + secrets.token_hex(4))])
    ca = (
        x509.CertificateBuilder(subject_name=ca_name, issuer_name=ca_name, public_key=ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    cert = (
        x509.CertificateBuilder(
            subject_name=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "weed")]),
            issuer_name=ca_name,
            public_key=key.public_key(),
        )
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = folder / "grpc-ca.pem", folder / "grpc-cert.pem", folder / "grpc-key.pem"
    write_private(paths[0], ca.public_bytes(serialization.Encoding.PEM).decode())
    write_private(paths[1], cert.public_bytes(serialization.Encoding.PEM).decode())
    pkcs8, none = serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    write_private(paths[2], key.private_bytes(serialization.Encoding.PEM, pkcs8, none).decode())
    return paths
