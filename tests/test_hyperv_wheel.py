"""The wheel carries the assets: templates, bootstrap scripts, profiles, playbooks."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_contains_templates_profiles_and_playbooks(tmp_path):
    pytest.importorskip("build")
    pytest.importorskip("hatchling")
    # --no-isolation: use the installed hatchling instead of downloading one.
    r = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation",
                        "--outdir", str(tmp_path), str(ROOT)],
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    wheels = list(tmp_path.glob("labctl-*.whl"))
    assert len(wheels) == 1
    names = set(zipfile.ZipFile(wheels[0]).namelist())
    from labctl.hyperv.scripts import SCRIPT_NAMES

    for name in SCRIPT_NAMES:
        assert f"labctl/_assets/hyperv/templates/{name}.ps1.j2" in names, name
    assert "labctl/_assets/hyperv/templates/_lib/prelude.ps1" in names
    for p in (ROOT / "hyperv" / "bootstrap").glob("*.ps1"):
        assert f"labctl/_assets/hyperv/bootstrap/{p.name}" in names
    assert "labctl/_assets/sensor/profiles/ot-sensor.yaml" in names
    assert "labctl/_assets/playbooks/home-lab.yaml" in names
    assert "labctl/cli/lab.py" in names and "labctl/hyperv/provider.py" in names
    assert not any(n.startswith("tests/") for n in names)
