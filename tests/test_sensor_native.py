"""The compiled fused pcap loop (labctl/sensor/native.py, _walk.c): built on first use into a
private cache folder, reused, refused from a folder others can write, and the Python loop
runs whenever it is off or cannot be built. Its results against the Python loop are compared
in test_sensor_flows_store.py and test_sensor_parse.py."""

from __future__ import annotations

import os
import stat
import sysconfig

import pytest

from labctl.sensor import native


@pytest.fixture(autouse=True)
def fresh(monkeypatch, tmp_path):
    monkeypatch.setenv("LABCTL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("LABCTL_NATIVE", raising=False)
    native.reset()
    yield
    native.reset()


def _built(tmp_path):
    return sorted((tmp_path / "cache" / "native").glob("_walk-*"))


def test_built_once_into_a_private_folder_and_reused(tmp_path):
    assert native.walk() is not None, native.status()
    (so,) = _built(tmp_path)
    folder = so.parent
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(so.stat().st_mode) == 0o700
    assert native.status() == f"native ({so})"
    mtime = so.stat().st_mtime_ns
    native.reset()
    assert native.walk() is not None
    assert _built(tmp_path) == [so] and so.stat().st_mtime_ns == mtime  # not rebuilt
    assert not list(folder.glob(".build-*"))  # no temporary left


def test_a_folder_others_can_write_is_refused(tmp_path):
    folder = tmp_path / "cache" / "native"
    folder.mkdir(parents=True)
    os.chmod(folder, 0o777)
    assert native.walk() is None
    assert "not private to this user" in native.status()
    assert not _built(tmp_path)


def test_off_by_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LABCTL_NATIVE", "0")
    native.reset()
    assert native.walk() is None and native.status() == "off (LABCTL_NATIVE=0)"
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("cc, why", [("/nonexistent/cc", "no C compiler"),
                                     ("false", "the C compiler failed")])
def test_without_a_working_compiler_the_python_loop_runs(monkeypatch, tmp_path, cc, why):
    real = sysconfig.get_config_var
    monkeypatch.setattr(sysconfig, "get_config_var",
                        lambda name: cc if name == "CC" else real(name))
    assert native.walk() is None
    assert native.status().startswith(why)
    assert not _built(tmp_path)


def test_replay_says_which_loop_ran_and_both_agree(monkeypatch, tmp_path, cli_run):
    from tests.helpers.sensor_pcaps import write_raw
    from tests.test_sensor_flows_store import _scan_frames

    pcap = write_raw(tmp_path / "scan.pcap", _scan_frames(4, 3000))
    a = cli_run("sensor", "replay", "--pcap", str(pcap), "--json").json()
    monkeypatch.setenv("LABCTL_NATIVE", "0")
    native.reset()
    b = cli_run("sensor", "replay", "--pcap", str(pcap), "--json").json()
    assert a["loop"] == "native" and b["loop"] == "python: off (LABCTL_NATIVE=0)"
    for k in ("alerts", "devices", "connections", "flows", "packets", "malformed"):
        assert a[k] == b[k], k
    assert a["packets"] == 3000 and a["alerts"]


def test_bad_arguments_raise_instead_of_crashing():
    walk = native.walk()
    assert walk is not None
    with pytest.raises(TypeError, match="20 arguments"):
        walk(b"", 0)
    args = [b"\0" * 200, 24, 100, 1e6, object(), [], set(), set(), 0, set(), None, None,
            None, None, None, None, (), 262144, 1 << 20, 0.0]
    with pytest.raises(TypeError):
        walk(*args)  # flow_dirs is a list, the state tuple is empty


def test_flows_stored_before_are_evicted_alike(monkeypatch, tmp_path):
    """A flow already written to the store (take_dirty) and then evicted by a new SYN flow
    is named in the store's bookkeeping (``deleted``), whichever loop evicts it."""
    from labctl.sensor.config import load_config
    from labctl.sensor.engine import Sensor
    from labctl.sensor.pcap import CaptureFile
    from tests.helpers.sensor_pcaps import engines_file, write_raw
    from tests.test_sensor_flows_store import _scan_frames

    cfg = load_config(engines_file(tmp_path, learning=False,
                                   flows={"max_flows": 300, "max_age_days": 7}))
    frames = _scan_frames(5, 2000)
    first = write_raw(tmp_path / "first.pcap", frames[:1000])
    second = write_raw(tmp_path / "second.pcap", frames[1000:])
    out = []
    for off in (False, True):
        if off:
            monkeypatch.setattr(native, "walk", lambda: None)
        s = Sensor(cfg)
        with CaptureFile(first) as cap:
            s.replay(cap, cap.data)
        stored = {r["id"] for r in s.take_dirty()[4]}
        with CaptureFile(second) as cap:
            s.replay(cap, cap.data)
        deleted = s.take_dirty()[5]["deleted"]
        out.append((deleted, s.flow_rows(), s._next_flow))
        assert stored and set(deleted) <= stored and len(deleted) > 100
    assert out[0] == out[1]


def test_a_damaged_build_is_built_again(tmp_path):
    """A cached module that does not load (cut short by a full disk, say) is built again
    once. In fresh processes: a module loaded here stays mapped and cached."""
    import subprocess
    import sys

    probe = [sys.executable, "-c", "from labctl.sensor import native; print(native.status())"]
    env = {**os.environ, "LABCTL_CACHE_DIR": str(tmp_path / "cache")}
    first = subprocess.run(probe, env=env, capture_output=True, text=True, check=True).stdout
    (so,) = _built(tmp_path)
    assert first.strip() == f"native ({so})"
    so.write_bytes(b"not an ELF file")
    again = subprocess.run(probe, env=env, capture_output=True, text=True, check=True).stdout
    assert again == first and so.read_bytes()[:4] == b"\x7fELF"
