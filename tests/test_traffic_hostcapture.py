"""--host-capture building block: pktmon templates on the fake Hyper-V host, the pcapng
fetched back in chunks and checked, then reported like any capture."""

from __future__ import annotations

from pathlib import Path

import pytest

from labctl.core.errors import LabctlError, RemoteCommandError
from labctl.core.render import render
from labctl.traffic.flows import read_captures
from labctl.traffic.hostcapture import host_capture
from tests.helpers.fake_pktmon import FakePktmonHost
from tests.helpers.traffic_pcaps import write_pcapng
from tests.test_traffic_report import frames

NAMES = ("start", "stop", "read", "remove")


def _host(tmp_path: Path) -> tuple[FakePktmonHost, bytes]:
    host = FakePktmonHost.reference()
    data = write_pcapng(tmp_path / "span.pcapng", frames()).read_bytes()
    host.traffic["Default Switch"] = data
    return host, data


def test_capture_is_fetched_in_chunks_and_reported(tmp_path: Path) -> None:
    host, data = _host(tmp_path)
    slept: list[float] = []
    dest = tmp_path / "host.pcapng"
    res = host_capture(host, "default switch", 600, dest, sleep=slept.append, chunk=4096,
                       stamp="t1")
    assert slept == [600] and dest.read_bytes() == data
    assert dest.stat().st_mode & 0o777 == 0o600
    names = [c.name for c in host.calls]
    n_chunks = -(-len(data) // 4096)
    assert names == ["pktmon/start", "pktmon/stop"] + ["pktmon/read"] * n_chunks + \
        ["pktmon/remove"]
    assert host.calls[0].params == {"Switch": "default switch",
                                    "EtlPath": r"C:\ProgramData\labctl\captures\labctl-t1.etl"}
    assert host.running is None and host.host_files == {}  # stopped and cleaned up
    assert res["size"] == len(data) and res["components"] == [100]
    table = read_captures([dest])
    direct = read_captures([tmp_path / "span.pcapng"])
    assert sorted(table.records(), key=repr) == sorted(direct.records(), key=repr)


def test_interrupted_capture_still_stops(tmp_path: Path) -> None:
    host, _ = _host(tmp_path)

    def interrupted(_: float) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        host_capture(host, "Default Switch", 60, tmp_path / "x.pcapng", sleep=interrupted)
    assert host.running is None
    assert [c.name for c in host.calls] == ["pktmon/start", "pktmon/stop"]


def test_a_damaged_chunk_is_caught_by_the_hash(tmp_path: Path) -> None:
    host, _ = _host(tmp_path)
    host.corrupt_chunk_at = 4096
    with pytest.raises(LabctlError, match="another SHA-256"):
        host_capture(host, "Default Switch", 1, tmp_path / "x.pcapng", sleep=lambda s: None,
                     chunk=4096)


def test_older_windows_and_unknown_switch(tmp_path: Path) -> None:
    host, _ = _host(tmp_path)
    host.has_pktmon = False
    with pytest.raises(RemoteCommandError, match="Windows Server 2022"):
        host_capture(host, "Default Switch", 1, tmp_path / "x.pcapng", sleep=lambda s: None)
    host.has_pktmon = True
    with pytest.raises(RemoteCommandError, match="virtual switch"):
        host_capture(host, "NoSuch", 1, tmp_path / "x.pcapng", sleep=lambda s: None)


@pytest.mark.parametrize("name", NAMES)
def test_templates_parse_and_follow_the_contract(name: str) -> None:
    import tree_sitter_powershell as tsp
    from tree_sitter import Language, Parser

    body = render("hyperv", f"templates/pktmon/{name}.ps1.j2", script=f"pktmon/{name}")
    bad: list[object] = []

    def walk(node) -> None:
        if node.type == "ERROR" or node.is_missing:
            bad.append((node.type, node.start_point))
        for c in node.children:
            walk(c)

    walk(Parser(Language(tsp.language())).parse(body.encode()).root_node)
    assert bad == []
    assert body.startswith(f"# labctl pktmon/{name}:") and "param(" in body
    assert "Set-StrictMode -Version Latest" in body and "ConvertTo-Json" in body
    # PowerShell 5.1: no ternary, no null-coalescing, no pipeline chain operators
    for token in (" ?? ", " ? ", "&&", "||", "ForEach-Object -Parallel"):
        assert token not in body


def test_app_host_capture_reports_the_switch_traffic(tmp_path: Path) -> None:
    from labctl.app.traffic import traffic_host_capture
    from labctl.core.context import LabContext
    from labctl.core.playbook import load_playbook
    from tests.test_traffic_report import FEEDER

    host, _ = _host(tmp_path)
    pb = tmp_path / "lab.yaml"
    pb.write_text("version: 1\nlab: home\nprovider: netns\n")
    ctx = LabContext(loaded=load_playbook(str(pb)), sleep=lambda s: None)
    doc = traffic_host_capture(ctx, "Default Switch", "10m", runner=host)
    assert doc["sources"]["kind"] == "host-capture"
    f = {d["ip"]: d for d in doc["devices"]}[FEEDER]
    assert f["packets_out"] == 54
    assert f["periodicity"][0]["text"].endswith("daily at about 01:00, 09:00 and 18:00")
