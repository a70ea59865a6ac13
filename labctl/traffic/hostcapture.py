"""A capture on the Hyper-V host itself: Windows' Packet Monitor on one virtual switch.

Sequence, each step a template of ``hyperv/templates/pktmon/`` run through the PowerShell
transport (values as parameters, one JSON document back): ``start`` (find the vSwitch's
pktmon component, ``pktmon start --capture --comp ID --file-name X.etl``), wait for the
duration, ``stop`` (``pktmon stop``, ``pktmon etl2pcap`` to pcapng, size and SHA-256), then
``read`` in chunks (base64) until the file is whole, checking the hash, and ``remove``. The
stop runs in ``finally``, so an interrupted capture does not keep running on the host.
Needs Windows Server 2022 or later (pktmon's ``--comp`` filter and ``etl2pcap``).
"""

from __future__ import annotations

import base64
import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from labctl.core.errors import LabctlError
from labctl.core.render import render
from labctl.transport.powershell import PowerShellRunner, RenderedScript

CHUNK = 4 << 20  # bytes per read: about 5.6 MB of base64 in one JSON document


def _script(name: str, params: dict[str, Any]) -> RenderedScript:
    return RenderedScript(name=f"pktmon/{name}",
                          body=render("hyperv", f"templates/pktmon/{name}.ps1.j2",
                                      script=f"pktmon/{name}"),
                          params=params)


def host_capture(runner: PowerShellRunner, switch: str, seconds: float, dest: Path, *,
                 remote_dir: str = r"C:\ProgramData\labctl\captures",
                 sleep: Callable[[float], None] = time.sleep, chunk: int = CHUNK,
                 stamp: str | None = None) -> dict[str, Any]:
    """Capture ``seconds`` on ``switch``; the pcapng lands at ``dest`` (0600)."""
    tag = stamp or time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    etl = f"{remote_dir}\\labctl-{tag}.etl"
    pcap = f"{remote_dir}\\labctl-{tag}.pcapng"
    started = runner.run(_script("start", {"Switch": switch, "EtlPath": etl}))
    stopped: dict[str, Any] | None = None
    try:
        sleep(seconds)
    finally:
        stopped = runner.run(_script("stop", {"EtlPath": etl, "PcapPath": pcap}))
    size = int(stopped["size"])
    digest = hashlib.sha256()
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        off = 0
        while off < size:
            got = runner.run(_script("read", {"Path": pcap, "Offset": off,
                                              "Length": min(chunk, size - off)}))
            data = base64.b64decode(got["data"])
            if int(got["offset"]) != off or not data:
                raise LabctlError(f"host capture: chunk at {off} of {pcap} came back "
                                  f"{'empty' if not data else 'at ' + str(got['offset'])}")
            out.write(data)
            digest.update(data)
            off += len(data)
    if digest.hexdigest() != str(stopped["sha256"]).lower():
        raise LabctlError(f"host capture: {pcap} arrived with another SHA-256 than the host "
                          "computed", hint="run the capture again")
    runner.run(_script("remove", {"EtlPath": etl, "PcapPath": pcap}))
    return {"switch": switch, "components": started.get("components", []), "size": size,
            "sha256": stopped["sha256"], "remote": pcap, "local": str(dest)}
