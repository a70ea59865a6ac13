"""Credentials the twin owns: its router twin's admin password and the IoT passphrase.

A real router's password comes from the user (environment or prompt). The twin's router is
built by labctl itself, so when the playbook's variables are unset labctl makes random
values once per lab, keeps them in the lab's state directory (mode 0600) and uses them on
both sides: the router twin accepts them and the router stage logs in with them. They are
:class:`Secret` values: never printed, never in plans or logs.
"""

from __future__ import annotations

import json
import os
import secrets as _random
import string
from collections.abc import Mapping
from pathlib import Path

from labctl.core.playbook import LoadedPlaybook
from labctl.core.secrets import Secret
from labctl.core.state import ensure_private_dir, lab_state_dir, write_private_json

FILE = "twin-secrets.json"
ROUTER_PASSWORD_ENV = "LABCTL_TWIN_ROUTER_PASSWORD"  # handed to the router twin process


def _new_value() -> str:
    """24 random characters that always meet a sensor's password policy (upper and lower
    case, digits, symbols), so the same generator serves every twin credential."""
    alphabet = string.ascii_letters + string.digits + "!#%+-.=@^_~"
    classes = (string.ascii_uppercase, string.ascii_lowercase, string.digits, "!#%+-.=@^_~")
    chars = [_random.choice(c) for c in classes]
    chars += [_random.choice(alphabet) for _ in range(24 - len(chars))]
    _random.SystemRandom().shuffle(chars)
    return "".join(chars)


def twin_secret(state_dir: Path, name: str) -> Secret:
    """The lab's secret ``name``, created (random, 0600 file) on first use."""
    path = state_dir / FILE
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        values = {}
    if not isinstance(values.get(name), str):
        values[name] = _new_value()
        ensure_private_dir(state_dir)
        # a new 0600 file made with O_EXCL, then renamed: a planted symlink (at the file
        # or at a fixed temporary name) is never followed
        write_private_json(values, path)
    return Secret(values[name], source=f"twin state {name}")


def _from_env_or_twin(env_name: str | None, loaded: LoadedPlaybook, name: str,
                      environ: Mapping[str, str] | None) -> Secret:
    env = os.environ if environ is None else environ
    if env_name and env.get(env_name):
        return Secret(env[env_name], source=f"env:{env_name}")
    return twin_secret(lab_state_dir(loaded.model.lab), name)


def router_password(loaded: LoadedPlaybook, environ: Mapping[str, str] | None = None) -> Secret:
    r = loaded.model.router
    return _from_env_or_twin(r.password.env if r else None, loaded, "router_password", environ)


def iot_passphrase(loaded: LoadedPlaybook, environ: Mapping[str, str] | None = None) -> Secret:
    r = loaded.model.router
    iot = r.iot_network if r else None
    return _from_env_or_twin(iot.passphrase.env if iot else None, loaded, "iot_passphrase",
                             environ)


def sensor_admin_password(loaded: LoadedPlaybook,
                          environ: Mapping[str, str] | None = None) -> Secret:
    s = loaded.model.sensor
    return _from_env_or_twin(s.admin_password.env if s else None, loaded,
                             "sensor_admin_password", environ)
