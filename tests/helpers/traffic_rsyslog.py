"""A real rsyslogd on 127.0.0.1 with a config the test writes: UDP, TCP and TLS inputs
(gtls driver, certificates made here), every message written to a file as the fields
rsyslog itself parsed, one line per message, separated by ``@@@``."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

SEP = "@@@"
FIELDS = ("pri", "timereported:::date-rfc3339", "hostname", "app-name", "procid", "msgid",
          "structured-data", "msg")


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_certs(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 / localhost signed by it."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "labctl test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_p, cert_p, key_p = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    ca_p.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_p.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_p.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.TraditionalOpenSSL,
                                        serialization.NoEncryption()))
    os.chmod(key_p, 0o600)
    return ca_p, cert_p, key_p


class Rsyslog:
    def __init__(self, folder: Path, tls_port: int | None = None) -> None:
        """``tls_port``: listen there (a second collector with new certificates on the port
        of a first one: a changed certificate)."""
        self.folder = folder
        self.out = folder / "received.log"
        self.udp = free_port(socket.SOCK_DGRAM)
        self.tcp = free_port()
        self.tls = tls_port or free_port()
        self.ca, self.cert, key = make_certs(folder)
        cert = self.cert
        work = folder / "work"
        work.mkdir()
        tmpl = SEP.join(f"%{f}%" for f in FIELDS)
        conf = f"""
global(workDirectory="{work}"
       defaultNetstreamDriverCAFile="{self.ca}"
       defaultNetstreamDriverCertFile="{cert}"
       defaultNetstreamDriverKeyFile="{key}")
module(load="imudp")
module(load="imtcp" maxSessions="20")
template(name="fields" type="string" string="{tmpl}\\n")
ruleset(name="lab") {{ action(type="omfile" file="{self.out}" template="fields"
                              flushOnTXEnd="on" asyncWriting="off") }}
input(type="imudp" address="127.0.0.1" port="{self.udp}" ruleset="lab")
input(type="imtcp" address="127.0.0.1" port="{self.tcp}" ruleset="lab")
input(type="imtcp" address="127.0.0.1" port="{self.tls}" ruleset="lab"
      streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="anon")
"""
        self.conf = folder / "rsyslog.conf"
        self.conf.write_text(conf)
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Rsyslog:
        exe = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
        check = subprocess.run([exe, "-N1", "-f", str(self.conf)], capture_output=True,
                               text=True, timeout=30)
        assert check.returncode == 0, check.stderr
        self.proc = subprocess.Popen([exe, "-n", "-iNONE", "-f", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rsyslogd exited: {self.proc.stderr.read()!r}")  # type: ignore[union-attr]
            try:
                socket.create_connection(("127.0.0.1", self.tls), timeout=0.5).close()
                socket.create_connection(("127.0.0.1", self.tcp), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError("rsyslogd did not listen in 15 s")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def received(self, n: int, timeout: float = 15.0) -> list[dict[str, str]]:
        """Wait (bounded) for ``n`` messages and return them as field dicts."""
        deadline = time.monotonic() + timeout
        lines: list[str] = []
        while time.monotonic() < deadline:
            if self.out.exists():
                lines = [ln for ln in self.out.read_text().splitlines() if ln]
                if len(lines) >= n:
                    break
            time.sleep(0.1)
        names = [f.split(":")[0] for f in FIELDS]
        return [dict(zip(names, ln.split(SEP), strict=True)) for ln in lines]

    def clear(self) -> None:
        if self.out.exists():
            self.out.write_text("")
