#!/usr/bin/env python3
"""A ``powershell.exe`` stand-in that runs labctl's Hyper-V scripts against a FakeHyperVHost
whose state lives in a JSON file ($LABCTL_FAKE_HYPERV_STATE), so the whole chain
``labctl up`` -> HyperVProvider -> make_runner -> LocalRunner -> subprocess -> stdin wrapper
-> this program -> JSON envelope is exercised with a real process per script.

The wire protocol is checked by tests/helpers/fake_powershell.py's parser (independent of
labctl's transport code); the script is identified by its header line ``# labctl <name>:``.
Every call is appended to $LABCTL_STANDIN_LOG.
"""

from __future__ import annotations

import base64
import json
import os
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))  # the checkout: tests.helpers and labctl

from tests.helpers.fake_hyperv import FakeHyperVHost  # noqa: E402
from tests.helpers.fake_powershell import EXPECTED_ARGS, LINE_RE, declared_params, envelope  # noqa: E402

_FIELDS = ("hyperv_module", "default_route_alias", "net_adapters", "switches", "vnics", "nats",
           "vms", "files", "free_gb", "_ids")


def load(path: Path) -> FakeHyperVHost:
    if not path.exists():
        return FakeHyperVHost.reference()
    data = json.loads(path.read_text())
    host = FakeHyperVHost(**{k: data[k] for k in _FIELDS if k != "_ids"})
    host.isos = set(data["isos"])
    host._ids = data["_ids"]
    return host


def save(host: FakeHyperVHost, path: Path) -> None:
    data = {k: getattr(host, k) for k in _FIELDS}
    data["isos"] = sorted(host.isos)
    path.write_text(json.dumps(data))


def main() -> int:
    from labctl.core.errors import RemoteCommandError
    from labctl.transport.powershell import RenderedScript

    if sys.argv[1:] != EXPECTED_ARGS:
        sys.stderr.write(f"unexpected arguments {sys.argv[1:]!r}\n")
        return 64
    line = sys.stdin.read().split("\n")[0]
    m = LINE_RE.match(line)
    if not m:
        sys.stderr.write("stdin does not match the wrapper form\n")
        return 64
    body = base64.b64decode(m.group(2)).decode("utf-8")
    params = json.loads(base64.b64decode(m.group(3)).decode("utf-8"))
    name_m = re.match(r"# labctl (\S+):", body)
    if not name_m:
        sys.stderr.write("not a labctl Hyper-V script\n")
        return 64
    name = name_m.group(1)
    declared = declared_params(body) or {}
    unknown = [p for p in params if p not in declared]
    missing = [p for p, mand in declared.items() if mand and p not in params]
    log = os.environ.get("LABCTL_STANDIN_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(json.dumps({"name": name, "params": params}) + "\n")
    if unknown or missing:
        print(envelope(False, [], [f"parameter binding: unknown {unknown}, missing {missing}"]))
        return 1
    if name == os.environ.get("LABCTL_STANDIN_FAIL"):
        print(envelope(False, [], [f"{name}: Access is denied. (injected, value \"{params}\")"]))
        return 1
    state = Path(os.environ["LABCTL_FAKE_HYPERV_STATE"])
    host = load(state)
    try:
        result = host.run(RenderedScript(name, body, params))
    except RemoteCommandError as e:
        save(host, state)
        print(envelope(False, [], e.errors))
        return 1
    save(host, state)
    print("WARNING: host noise before the envelope is ignored")
    print(envelope(True, [json.dumps(result)], []))
    return 0


if __name__ == "__main__":
    sys.exit(main())
