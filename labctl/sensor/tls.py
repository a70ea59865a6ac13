"""The sensor's self-signed TLS certificate, made at first start (like a fresh D4IoT sensor).

Why self-signed: the embedded sensor has no CA; labctl's HTTP client pins the certificate's
SHA-256 fingerprint on first use instead of switching verification off. The certificate
names the listen address, 127.0.0.1, ``localhost`` and the host name so that a client that
*does* verify against the file (tests pass it as the CA bundle) passes hostname checks.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import socket
import ssl
from pathlib import Path
from typing import Sequence


def ensure_certificate(state_dir: str | Path, names: Sequence[str] = ()) -> tuple[Path, Path]:
    """Return (cert.pem, key.pem) in ``<state>/tls``, creating them if missing."""
    tls = Path(state_dir) / "tls"
    cert_path, key_path = tls / "cert.pem", tls / "key.pem"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    tls.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    host = socket.gethostname()
    alt: list[x509.GeneralName] = [x509.DNSName("localhost")]
    if host:
        alt.append(x509.DNSName(host))
    seen_ips = set()
    for n in ["127.0.0.1", "::1", *names]:
        try:
            ip = ipaddress.ip_address(n)
        except ValueError:
            if n and n not in ("localhost", host):
                alt.append(x509.DNSName(n))
            continue
        if ip.is_unspecified or ip in seen_ips:
            continue
        seen_ips.add(ip)
        alt.append(x509.IPAddress(ip))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "labctl embedded sensor"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "labctl")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    fd = os.open(str(key_path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def fingerprint(cert_path: str | Path) -> str:
    """SHA-256 fingerprint (lowercase hex) of a PEM certificate, as labctl pins it."""
    der = ssl.PEM_cert_to_DER_cert(Path(cert_path).read_text())
    return hashlib.sha256(der).hexdigest()


def server_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert_path), str(key_path))
    return ctx
