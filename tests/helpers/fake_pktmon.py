"""Packet Monitor on the fake Hyper-V host: the four pktmon templates, with pktmon's state
(one capture at a time, components per vSwitch), files on the host, and faults.

Behaviour from Microsoft's pktmon documentation: ``start`` while a capture runs fails;
``stop`` without one fails; ``etl2pcap`` writes pcapng. The "capture" is the pcapng bytes the
test gives for a switch (what the switch carried), written at etl2pcap time.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from typing import Any

from tests.helpers.fake_hyperv import FakeHyperVHost, _PsError


@dataclass
class FakePktmonHost(FakeHyperVHost):
    running: dict[str, Any] | None = None
    host_files: dict[str, bytes] = field(default_factory=dict)  # path -> bytes
    traffic: dict[str, bytes] = field(default_factory=dict)  # switch -> pcapng it carried
    corrupt_chunk_at: int | None = None
    has_pktmon: bool = True

    def _do_pktmon_start(self, p: dict[str, Any]) -> dict[str, Any]:
        if not self.has_pktmon:
            raise _PsError("pktmon.exe was not found: Packet Monitor needs Windows Server "
                           "2022 or later")
        found = self._switch(p["Switch"])
        if not found:
            raise _PsError(f"Hyper-V was unable to find a virtual switch with name "
                           f"\"{p['Switch']}\".")
        if self.running is not None:
            raise _PsError("pktmon start failed: Packet Monitor is already running.")
        name = found[0]["name"]
        comp = 100 + sorted(s["name"] for s in self.switches).index(name)
        self.running = {"switch": name, "etl": p["EtlPath"]}
        self.host_files[p["EtlPath"]] = b"ETL"
        return {"changed": True, "switch": p["Switch"], "components": [comp],
                "etl": p["EtlPath"]}

    def _do_pktmon_stop(self, p: dict[str, Any]) -> dict[str, Any]:
        if self.running is None:
            raise _PsError("pktmon stop failed: Packet Monitor is not running.")
        if p["EtlPath"] not in self.host_files:
            raise _PsError(f"pktmon etl2pcap failed: {p['EtlPath']} not found")
        data = self.traffic.get(self.running["switch"], b"")
        self.running = None
        self.host_files[p["PcapPath"]] = data
        return {"changed": True, "pcap": p["PcapPath"], "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest()}

    def _do_pktmon_read(self, p: dict[str, Any]) -> dict[str, Any]:
        data = self.host_files.get(p["Path"])
        if data is None:
            raise _PsError(f"Could not find file '{p['Path']}'.")
        off, n = int(p["Offset"]), int(p["Length"])
        piece = data[off:off + n]
        if self.corrupt_chunk_at is not None and off == self.corrupt_chunk_at and piece:
            piece = bytes([piece[0] ^ 0xFF]) + piece[1:]
        return {"offset": off, "length": len(piece), "size": len(data),
                "data": base64.b64encode(piece).decode()}

    def _do_pktmon_remove(self, p: dict[str, Any]) -> dict[str, Any]:
        removed = [k for k in (p["EtlPath"], p["PcapPath"]) if self.host_files.pop(k, None)
                   is not None]
        return {"changed": bool(removed), "removed": removed}
