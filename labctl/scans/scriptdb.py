"""NSE scripts a profile may name: nmap's own script database, and labctl's category policy.

nmap resolves ``--script X`` by looking X up in ``scripts/script.db`` first and, failing
that, as a file or directory path (``X``, ``scripts/X.nse``...). So a name that is not in the
database, a path, a glob or a boolean expression could make nmap load Lua from anywhere,
and nmap runs it with the scanner's privileges (often root). labctl therefore accepts only:

* a **script name** (without ``.nse``) listed in the installed ``script.db``, whose
  categories include none of :data:`DENIED_CATEGORIES`;
* a **category** from :data:`ALLOWED_CATEGORIES`.

The database is read from ``$LABCTL_NMAP_SCRIPT_DB`` if set, else from the first of
:data:`DB_PATHS` that exists. Without a database no script name is accepted (categories
still are: nmap ships them).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

DB_PATHS = ("/usr/share/nmap/scripts/script.db", "/usr/local/share/nmap/scripts/script.db")

# Categories a profile may name as a whole. `default` is what `-sC` and `-A` run and
# `version` what `-sV` runs. Both are nmap's standard scans (the reference lab's
# `nmap -sV -sC`). Every other category holds scripts that leave the targets or harm them:
# `safe` and `discovery` include `external` scripts (whois, ASN, geolocation lookups on
# third-party servers) and `broadcast` scripts (they probe the whole segment and can add
# targets); `vuln` and `auth` include `dos`, `exploit` and `brute` scripts.
ALLOWED_CATEGORIES = frozenset({"default", "version"})

# A script in any of these categories may not be named either. `broadcast`: packets to
# broadcast/multicast addresses and new targets the scope guard never saw; `external`:
# traffic to third-party servers on the internet; `dos`, `exploit`, `fuzzer`, `malware`,
# `brute`: they can crash, change or lock out lab devices (fragile OT equipment).
# `intrusive` scripts may be named one by one (e.g. modbus-discover): the user chose them.
DENIED_CATEGORIES = frozenset({"broadcast", "external", "dos", "exploit", "fuzzer",
                               "malware", "brute"})

_ENTRY = re.compile(r'^Entry\s*\{\s*filename\s*=\s*"([A-Za-z0-9_.\-]+)\.nse"\s*,\s*'
                    r'categories\s*=\s*\{([^}]*)\}\s*\}\s*$')
_CAT = re.compile(r'"([a-z]+)"')
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.\-]{0,79}$")


@dataclass(frozen=True)
class ScriptDb:
    path: str | None
    scripts: dict[str, frozenset[str]]  # script name (no .nse) -> its categories

    def categories(self) -> frozenset[str]:
        return frozenset(c for cats in self.scripts.values() for c in cats)


_cache: dict[tuple[str, float], ScriptDb] = {}


def db_path() -> str | None:
    env = os.environ.get("LABCTL_NMAP_SCRIPT_DB")
    if env:
        return env
    return next((p for p in DB_PATHS if os.path.isfile(p)), None)


def parse_script_db(text: str) -> dict[str, frozenset[str]]:
    """``Entry { filename = "x.nse", categories = { "a", "b", } }`` lines -> {x: {a, b}}."""
    out: dict[str, frozenset[str]] = {}
    for line in text.splitlines():
        m = _ENTRY.match(line.strip())
        if m:
            out[m.group(1)] = frozenset(_CAT.findall(m.group(2)))
    return out


def load_script_db() -> ScriptDb:
    path = db_path()
    if path is None:
        return ScriptDb(None, {})
    try:
        mtime = os.stat(path).st_mtime
        key = (path, mtime)
        if key not in _cache:
            _cache[key] = ScriptDb(path, parse_script_db(Path(path).read_text("utf-8")))
        return _cache[key]
    except (OSError, UnicodeDecodeError):
        return ScriptDb(path, {})


def check_script_item(item: str) -> None:
    """Raise ValueError unless ``item`` is an allowed category or an allowed script name."""
    if not item:
        raise ValueError("an empty script name")
    if "/" in item or item.endswith(".nse") or item.startswith((".", "+")):
        raise ValueError(f"{item!r}: scripts are named from nmap's script database, never "
                         "by path or file name (no '/', no '.nse', no '+')")
    if not NAME_RE.match(item):
        raise ValueError(f"{item!r} is not a script name: globs and boolean expressions "
                         "(*, ?, and, or, not) are not accepted")
    if item in ALLOWED_CATEGORIES:
        return
    if item == "all":
        raise ValueError("'all' runs every NSE script, including dos, exploit and external "
                         "ones")
    db = load_script_db()
    if item in db.categories() or item in DENIED_CATEGORIES or item in (
            "safe", "discovery", "vuln", "auth", "intrusive"):
        raise ValueError(
            f"the script category {item!r} is not allowed (allowed categories: "
            f"{', '.join(sorted(ALLOWED_CATEGORIES))}); name single scripts instead")
    if db.path is None:
        raise ValueError(f"script {item!r}: nmap's script database (script.db) was not "
                         f"found ({', '.join(DB_PATHS)}), so no script name can be checked")
    cats = db.scripts.get(item)
    if cats is None:
        raise ValueError(f"script {item!r} is not in nmap's script database ({db.path})")
    bad = sorted(cats & DENIED_CATEGORIES)
    if bad:
        raise ValueError(f"script {item!r} is in the {', '.join(bad)} categor"
                         f"{'y' if len(bad) == 1 else 'ies'}, which labctl never runs")


def check_script_list(value: str) -> None:
    """``--script`` value: comma-separated names or categories, each checked."""
    for item in value.split(","):
        check_script_item(item)
