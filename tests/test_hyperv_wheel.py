"""The wheel carries the assets: templates, bootstrap scripts, profiles, playbooks."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # build and hatchling are test dependencies (pyproject's `test` extra), so this runs in CI
    import build  # noqa: F401
    import hatchling  # noqa: F401

    out = tmp_path_factory.mktemp("wheel")
    # --no-isolation: use the installed hatchling instead of downloading one.
    r = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation",
                        "--outdir", str(out), str(ROOT)],
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    wheels = list(out.glob("labctl-*.whl"))
    assert len(wheels) == 1
    return wheels[0]


@pytest.mark.slow
def test_wheel_contains_templates_profiles_and_playbooks(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    from labctl.hyperv.scripts import SCRIPT_NAMES

    for name in SCRIPT_NAMES:
        assert f"labctl/_assets/hyperv/templates/{name}.ps1.j2" in names, name
    assert "labctl/_assets/hyperv/templates/_lib/prelude.ps1" in names
    for p in (ROOT / "hyperv" / "bootstrap").glob("*.ps1"):
        assert f"labctl/_assets/hyperv/bootstrap/{p.name}" in names
    assert "labctl/_assets/sensor/appliance-sizes.yaml" in names
    assert "labctl/_assets/playbooks/home-lab.yaml" in names
    assert "labctl/cli/lab.py" in names and "labctl/hyperv/provider.py" in names
    assert "labctl/sensor/_walk.c" in names  # the compiled pcap loop is built from it
    assert not any(n.startswith("tests/") for n in names)


@pytest.mark.slow
def test_installed_wheel_finds_its_assets_outside_a_checkout(wheel, tmp_path):
    """Installed from the wheel and run from elsewhere, labctl uses labctl/_assets.

    The wheel goes into its own folder, first on PYTHONPATH, so it shadows the checkout
    (editable install) while the dependencies come from this interpreter.
    """
    import os

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    "--target", str(site), str(wheel)],
                   check=True, timeout=120, capture_output=True)
    env = {k: v for k, v in os.environ.items() if k != "LABCTL_ASSETS"}
    env["PYTHONPATH"] = str(site)
    code = ("import labctl, labctl.core.assets as a; print(labctl.__file__); "
            "print(a.assets_root()); print(a.asset_path('playbooks', 'home-lab.yaml').is_file())")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    pkg, root, found = r.stdout.split()
    assert pkg.startswith(str(site)) and not pkg.startswith(str(ROOT))
    assert root == str(site / "labctl" / "_assets")
    assert found == "True"
    r = subprocess.run([sys.executable, "-m", "labctl", "plan", "-f",
                        root + "/playbooks/home-lab.yaml", "--assume-empty", "--json"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "New-VMSwitch" in r.stdout
