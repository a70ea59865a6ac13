"""Self-signed TLS certificates for labctl's own servers (embedded sensor, router emulator).

Why self-signed: these servers have no CA, like a fresh Defender for IoT sensor or an ASUS
router. labctl's HTTP client pins the certificate's SHA-256 fingerprint on first use instead
of switching verification off. The certificate names the listen addresses, 127.0.0.1, ::1,
``localhost`` and the host name, so that a client that *does* verify against the file (tests
pass it as the CA bundle) passes hostname checks. The key file is created 0600 with O_EXCL
semantics (never through an existing file or a planted symlink).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import socket
import ssl
from collections.abc import Sequence
from pathlib import Path

from labctl.core.state import ensure_private_dir, write_private


def ensure_self_signed(directory: str | Path, *, stem: str = "cert",
                       common_name: str = "labctl", names: Sequence[str] = ()
                       ) -> tuple[Path, Path]:
    """Return ``(<stem>.pem, <stem>.key)`` in ``directory``, creating them if missing.

    ``names`` are extra subject alternative names (IP addresses or DNS names). An existing
    pair is reused unchanged, so a pinned fingerprint stays valid across restarts.
    """
    d = Path(directory)
    cert_path, key_path = d / f"{stem}.pem", d / f"{stem}.key"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    ensure_private_dir(d)
    key = ec.generate_private_key(ec.SECP256R1())
    host = socket.gethostname()
    alt: list[x509.GeneralName] = [x509.DNSName("localhost")]
    if host and host != "localhost":
        alt.append(x509.DNSName(host))
    seen_ips: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    seen_dns = {"localhost", host}
    for n in ["127.0.0.1", "::1", common_name, *names]:
        try:
            ip = ipaddress.ip_address(n)
        except ValueError:
            if n and n not in seen_dns:
                seen_dns.add(n)
                alt.append(x509.DNSName(n))
            continue
        if ip.is_unspecified or ip in seen_ips:
            continue
        seen_ips.add(ip)
        alt.append(x509.IPAddress(ip))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "labctl")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    write_private(key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()), key_path)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def fingerprint(cert_path: str | Path) -> str:
    """SHA-256 fingerprint (lowercase hex) of a PEM certificate, as labctl pins it."""
    der = ssl.PEM_cert_to_DER_cert(Path(cert_path).read_text())
    return hashlib.sha256(der).hexdigest()


def server_context(cert_path: str | Path, key_path: str | Path) -> ssl.SSLContext:
    """A TLS 1.2+ server context for ``cert_path`` / ``key_path``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert_path), str(key_path))
    return ctx
