"""A minimal DNS server for the scanner namespace: every query gets NXDOMAIN at once.

nmap resolves the PTR record of every live host. Inside a test namespace the host's
resolver is unreachable and nmap waits 13 s for it per scan; a lab router would answer at
once. Run with ``ip netns exec NS python3 scan_dns.py``; binds 127.0.0.1:53/udp, prints
``ready``.
"""

from __future__ import annotations

import socket
import sys


def main() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 53))
    print("ready", flush=True)
    while True:
        data, addr = s.recvfrom(2048)
        if len(data) < 12:
            continue
        # header: same id, QR=1, opcode copied, RD copied, RA=1, RCODE=3 (NXDOMAIN);
        # one question echoed back, no answers.
        flags = 0x8000 | (data[2] & 0x79) << 8 | 0x0080 | 0x0003
        reply = data[:2] + flags.to_bytes(2, "big") + data[4:6] + b"\x00\x00" * 3 + data[12:]
        s.sendto(reply, addr)


if __name__ == "__main__":
    sys.exit(main())
