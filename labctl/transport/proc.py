"""Run local programs (ip, tc, nft, nmap...) without a shell, translating failures.

Every twin operation is an argv list; this is the one place that runs them, so errors come
out as :class:`~labctl.core.errors.CommandError` (non-zero exit, with stderr) or
:class:`~labctl.core.errors.ToolMissingError` (the program is not installed, with the Debian
package to install) instead of raw ``OSError``/``CalledProcessError``.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence

from labctl.core.errors import CommandError, ConnectTimeout, ToolMissingError
from labctl.transport.netns import netns_argv

# program -> Debian package that provides it (for the hint of ToolMissingError)
DEBIAN_PACKAGES: dict[str, str] = {
    "ip": "iproute2",
    "tc": "iproute2",
    "bridge": "iproute2",
    "nft": "nftables",
    "nmap": "nmap",
    "tcpdump": "tcpdump",
    "ssh": "openssh-client",
}


def tool_missing(program: str) -> ToolMissingError:
    pkg = DEBIAN_PACKAGES.get(program, program)
    return ToolMissingError(f"`{program}` is not installed (or not on PATH)",
                            hint=f"install it: apt-get install -y {pkg}")


def require_tools(*programs: str) -> None:
    """Raise ToolMissingError for the first program not found on PATH."""
    for p in programs:
        if shutil.which(p) is None:
            raise tool_missing(p)


def run(argv: Sequence[str], *, netns: str | None = None, check: bool = True,
        timeout: float = 30.0, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` (inside network namespace ``netns`` if given) and capture text output.

    ``check`` raises CommandError on a non-zero exit; otherwise the caller reads returncode.
    """
    full = netns_argv(netns, list(argv))
    try:
        return _run(full, check=check, timeout=timeout, input=input)
    except FileNotFoundError:
        raise tool_missing(full[0]) from None


def _run(full: list[str], *, check: bool, timeout: float,
         input: str | None) -> subprocess.CompletedProcess[str]:
    try:
        cp = subprocess.run(full, capture_output=True, text=True, timeout=timeout, input=input,
                            check=False)
    except subprocess.TimeoutExpired:
        raise ConnectTimeout(f"{' '.join(full)} did not finish within {timeout:g} s",
                             hint="the command hung; check the namespace and try again") from None
    if check and cp.returncode != 0:
        raise CommandError(full, cp.returncode, cp.stderr or cp.stdout)
    return cp
