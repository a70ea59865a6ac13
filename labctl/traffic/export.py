"""Flow export records: one plain document per directed flow (JSON lines today; the same
documents are what syslog and Sentinel export will carry)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from labctl.traffic.flows import FlowTable
from labctl.traffic.report import iso, proto_name


def flow_documents(table: FlowTable) -> Iterator[dict[str, Any]]:
    """Directed flows, oldest first, with the DNS name of each end when the capture had one."""
    names = table.dns_names()
    macs = table.mac_of()
    for f in sorted(table.records(), key=lambda r: (r.first, r.src, r.dst, r.sport)):
        yield {
            "TimeGenerated": iso(f.last), "FirstSeen": iso(f.first), "LastSeen": iso(f.last),
            "Vlan": f.vlan, "SrcIp": f.src, "DstIp": f.dst, "SrcMac": macs.get(f.src),
            "Protocol": proto_name(f.proto),
            "SrcPort": f.sport if f.sport >= 0 else None,
            "DstPort": f.dport if f.dport >= 0 else None,
            "Packets": f.packets, "Bytes": f.bytes,
            "SrcName": names.get(f.src), "DstName": names.get(f.dst),
        }
