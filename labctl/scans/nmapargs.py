"""The nmap argument allow-list: every option a profile may use, with the values it takes.

An argument is accepted only if it is one of the forms below, with a value of the shape
listed for it. Everything else is refused, including options nmap knows and labctl does not
list, abbreviations (``--scr``: nmap accepts unique prefixes of long options) and the
single-dash spelling of long options (``-script=x``, ``-excludefile=x``: nmap parses its
command line with ``getopt_long_only``, so one dash is enough for a long option).

Forms:

* flags: ``-sV``, ``-Pn``, ``--open`` ... (:data:`SHORT_FLAGS`, :data:`LONG_FLAGS`);
* ``-s`` with scan-type letters glued together (``-sSV``, ``-sCV``), from
  :data:`SCAN_LETTERS` (no ``I``: the idle scan takes a zombie host);
* short options with a value, glued or as the next item (``-p80,443``, ``-p 1-1024``,
  ``-T4``, ``-T aggressive``, ``-g53``);
* host-discovery probes with an optional glued port list (``-PS22,80``, ``-PU``);
* long options with a value as ``--opt=VALUE`` or ``--opt VALUE`` (:data:`LONG_VALUE`).

Refused with a reason (:data:`FORBIDDEN`): output options, target lists, files and
directories nmap would read, interface and spoofing options, proxies, DNS servers, resumed
scans and labctl's own progress option.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from labctl.core.errors import LabctlError
from labctl.scans.scope import parse_target
from labctl.scans.scriptdb import check_script_list

ValueCheck = Callable[[str], None]

# Every long option nmap 7.9x defines, underscore spellings included. Used to recognise
# the single-dash spelling of a long option and abbreviations, which are refused.
NMAP_LONG_OPTIONS = frozenset({
    "osscan-limit", "osscan_limit", "osscan-guess", "osscan_guess", "fuzzy", "ff", "help",
    "version", "datadir", "servicedb", "versiondb", "debug", "verbose", "randomize-hosts",
    "randomize_hosts", "rH", "min-hostgroup", "min_hostgroup", "max-hostgroup",
    "max_hostgroup", "min-parallelism", "min_parallelism", "max-parallelism",
    "max_parallelism", "host-timeout", "host_timeout", "max-rtt-timeout", "max_rtt_timeout",
    "min-rtt-timeout", "min_rtt_timeout", "initial-rtt-timeout", "initial_rtt_timeout",
    "max-retries", "max_retries", "scan-delay", "scan_delay", "max-scan-delay",
    "max_scan_delay", "max-os-tries", "packet-trace", "packet_trace", "version-trace",
    "version_trace", "data-length", "data_length", "send-eth", "send-ip", "stylesheet",
    "no-stylesheet", "no_stylesheet", "webxml", "vv", "privileged", "unprivileged", "mtu",
    "append-output", "append_output", "noninteractive", "spoof-mac", "spoof_mac", "thc",
    "badsum", "ttl", "traceroute", "reason", "allports", "version-intensity",
    "version-light", "version_light", "version-all", "version_all", "system-dns",
    "system_dns", "resolve-all", "log-errors", "deprecated-xml-osclass", "adler32",
    "stats-every", "disable-arp-ping", "route-dst", "resume", "script", "script-trace",
    "script-updatedb", "script-help", "script-args", "script-args-file", "script-timeout",
    "ip-options", "min-rate", "max-rate", "open", "excludefile", "exclude", "exclude-ports",
    "iflist", "nogcc", "release-memory", "top-ports", "port-ratio", "scanflags",
    "defeat-rst-ratelimit", "defeat-icmp-ratelimit", "dns-servers", "discovery-ignore-rst",
    "nsock-engine", "proxies", "proxy", "data", "data-string", "unique", "source-port",
    "source_port", "interactive",
})

_OUTPUT = "output options are managed by labctl (XML goes to the state directory; use " \
          "--xml-out for a copy)"
_FILE = "nmap would read an arbitrary local file"
_SPOOF = "packets with another source, through another interface or relayed by a third " \
         "host are not a lab scan"
FORBIDDEN: dict[str, str] = {
    "--append-output": _OUTPUT, "--stylesheet": _OUTPUT, "--webxml": _OUTPUT,
    "--no-stylesheet": _OUTPUT, "--no_stylesheet": _OUTPUT,
    "-iL": "targets come from the command line so the scope guard can check them",
    "-iR": "random targets would bypass the scope guard",
    "--excludefile": "exclusions come from the playbook and --exclude",
    "--script-args-file": _FILE, "--servicedb": _FILE, "--versiondb": _FILE,
    "--datadir": "nmap would load data files and scripts from an arbitrary directory",
    "--resume": "a resumed scan bypasses the scope guard",
    "--stats-every": "progress reporting is managed by labctl",
    "--script-updatedb": "it rewrites nmap's script database",
    "--script-help": "not a scan", "--iflist": "not a scan", "--interactive": "not a scan",
    "-e": "the interface is the scanner's route into the lab (checked by the route guard)",
    "--send-eth": "raw Ethernet frames bypass the routing table the route guard checks",
    "--send-ip": "the sending method is left to nmap",
    "-S": _SPOOF, "-D": _SPOOF, "-sI": _SPOOF, "-b": _SPOOF, "--spoof-mac": _SPOOF,
    "--spoof_mac": _SPOOF,
    "--proxies": "a proxy relays the scan to hosts the scope guard never saw",
    "--proxy": "a proxy relays the scan to hosts the scope guard never saw",
    "--dns-servers": "DNS queries would go to servers outside the lab",
    "--ip-options": "IP options such as source routing send packets through other hosts",
    "--route-dst": "not a scan",
    "--data": "arbitrary payloads are not part of a lab profile",
    "--data-string": "arbitrary payloads are not part of a lab profile",
}


def _int_range(lo: int, hi: int) -> ValueCheck:
    def check(v: str) -> None:
        if not re.fullmatch(r"[0-9]{1,9}", v) or not lo <= int(v) <= hi:
            raise ValueError(f"{v!r} is not a whole number from {lo} to {hi}")
    return check


def _number(lo: float, hi: float) -> ValueCheck:
    def check(v: str) -> None:
        if not re.fullmatch(r"[0-9]{1,9}(\.[0-9]{1,6})?", v) or not lo <= float(v) <= hi:
            raise ValueError(f"{v!r} is not a number from {lo:g} to {hi:g}")
    return check


def _time(v: str) -> None:
    if not re.fullmatch(r"[0-9]{1,9}(\.[0-9]{1,3})?(ms|s|m|h)?", v):
        raise ValueError(f"{v!r} is not a time (e.g. 500ms, 5s, 2m, 1h)")


def _port_number(text: str, v: str) -> int:
    n = int(text)
    if not 0 <= n <= 65535:
        raise ValueError(f"port {n} in {v!r} is outside 0-65535")
    return n


def ports(v: str, *, protocols: bool = True) -> None:
    """nmap port lists: ``22``, ``1-1024``, ``-`` (all), ``1024-``, ``T:22,U:53``."""
    if not v:
        raise ValueError("an empty port list")
    for tok in v.split(","):
        body = tok
        if protocols and re.match(r"^[TUSP]:", tok):
            body = tok[2:]
        m = re.fullmatch(r"([0-9]{1,5})?(-([0-9]{1,5})?)?", body)
        if not body or m is None:
            raise ValueError(f"{tok!r} in {v!r} is not a port, a range or T:/U:/S:/P: list "
                             "(service names and wildcards are not accepted)")
        lo = _port_number(m.group(1), v) if m.group(1) else 0
        hi = _port_number(m.group(3), v) if m.group(3) else 65535
        if m.group(2) is None:
            hi = lo
        if lo > hi:
            raise ValueError(f"port range {tok!r} in {v!r} runs backwards")


def _probe_ports(v: str) -> None:
    ports(v, protocols=False)


def _protocols(v: str) -> None:
    for tok in v.split(","):
        if not re.fullmatch(r"[0-9]{1,3}", tok) or int(tok) > 255:
            raise ValueError(f"{tok!r} in {v!r} is not an IP protocol number 0-255")


def _timing(v: str) -> None:
    if not re.fullmatch(r"[0-5]|paranoid|sneaky|polite|normal|aggressive|insane", v):
        raise ValueError(f"{v!r} is not a timing template (0-5 or paranoid ... insane)")


def _mtu(v: str) -> None:
    _int_range(8, 1500)(v)
    if int(v) % 8:
        raise ValueError(f"--mtu {v} must be a multiple of 8")


def _scanflags(v: str) -> None:
    if not (re.fullmatch(r"[0-9]{1,3}", v) and int(v) <= 255) and \
            not re.fullmatch(r"(URG|ACK|PSH|RST|SYN|FIN|ECE|CWR|NS)+", v):
        raise ValueError(f"{v!r} is not a TCP flag set (e.g. SYNFIN or 9)")


def _nsock(v: str) -> None:
    if v not in ("epoll", "poll", "select"):
        raise ValueError(f"{v!r} is not an nsock engine (epoll, poll, select)")


def _exclude(v: str) -> None:
    for item in v.split(","):
        try:
            parse_target(item)
        except LabctlError as e:
            raise ValueError(str(e)) from None


def _bool_text(v: str) -> None:
    if v.lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError(f"{v!r} is not true/false")


def _word(v: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9._:/()+\-]{1,200}", v):
        raise ValueError(f"{v!r} has characters that are not allowed (letters, digits and "
                         "._:/()+- only)")


def _hostkey_format(v: str) -> None:
    if v not in ("full", "bubble", "visual", "sshfp", "all"):
        raise ValueError(f"{v!r} is not full, bubble, visual, sshfp or all")


# --script-args keys labctl lets a profile set, with the shape of their values. None of
# them names a file, a directory, a proxy or a new target.
SCRIPT_ARGS: dict[str, ValueCheck] = {
    "http.useragent": _word,
    "http.max-body-size": _int_range(0, 1 << 30),
    "http.max-cache-size": _int_range(0, 1 << 30),
    "http.max-pipeline": _int_range(1, 1000),
    "http.pipeline": _int_range(1, 1000),
    "http.truncated-ok": _bool_text,
    "banner.timeout": _time,
    "banner.ports": _probe_ports,
    "modbus-discover.aggressive": _bool_text,
    "mqtt-subscribe.listen-time": _time,
    "mqtt-subscribe.listen-msgs": _int_range(1, 10000),
    "mqtt-subscribe.topic": _word,
    "mqtt-subscribe.client-id": _word,
    "vulns.showall": _bool_text,
    "vulns.short": _bool_text,
    "ssh_hostkey": _hostkey_format,
    "smbport": _int_range(1, 65535),
}
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


def script_args(v: str) -> None:
    """``--script-args key=value,key2=value2`` with keys from :data:`SCRIPT_ARGS`."""
    for item in v.split(","):
        key, eq, val = item.partition("=")
        if not _TOKEN_RE.match(key):
            raise ValueError(f"{item!r} in --script-args is not key=value (tables and "
                             "quoting are not accepted)")
        low = key.lower()
        if low in ("newtargets", "max-newtargets") or low.startswith("targets-") or \
                ".targets" in low or low.endswith(("file", "path", "dir", "db")) or \
                "proxy" in low:
            raise ValueError(f"script argument {key!r} adds targets, relays traffic or reads "
                             "files, which a profile may not do")
        check = SCRIPT_ARGS.get(key)
        if check is None:
            raise ValueError(f"script argument {key!r} is not one labctl allows (allowed: "
                             f"{', '.join(sorted(SCRIPT_ARGS))})")
        if not eq:
            raise ValueError(f"script argument {key!r} needs a value ({key}=VALUE)")
        try:
            check(val)
        except ValueError as e:
            raise ValueError(f"script argument {key}: {e}") from None


SHORT_FLAGS = frozenset({
    "-Pn", "-PE", "-PP", "-PM", "-PR", "-n", "-R", "-F", "-r", "-O", "-A", "-6", "-v", "-vv",
    "-d", "-f",
})
# Scan types that may be glued after -s: -sS -sT -sA -sW -sM -sU -sN -sF -sX -sY -sZ -sO
# -sn -sL -sV -sC -sR. Not I (idle scan through a zombie) and not the FTP bounce.
SCAN_LETTERS = frozenset("STAWMUNFXYZOnLVCR")
# Short options that take a value, glued (-p80) or as the next item (-p 80).
SHORT_VALUE: dict[str, ValueCheck] = {"-p": ports, "-T": _timing, "-g": _int_range(1, 65535)}
# Host-discovery probes with an optional glued list: -PS, -PS22,80.
PROBES: dict[str, ValueCheck] = {"-PS": _probe_ports, "-PA": _probe_ports,
                                 "-PU": _probe_ports, "-PY": _probe_ports, "-PO": _protocols}
LONG_FLAGS = frozenset({
    "--open", "--reason", "--traceroute", "--version-light", "--version-all",
    "--version-trace", "--osscan-limit", "--osscan-guess", "--system-dns", "--privileged",
    "--unprivileged", "--disable-arp-ping", "--badsum", "--allports", "--packet-trace",
    "--defeat-rst-ratelimit", "--defeat-icmp-ratelimit", "--discovery-ignore-rst",
    "--noninteractive",
})
LONG_VALUE: dict[str, ValueCheck] = {
    "--exclude-ports": ports,
    "--top-ports": _int_range(1, 65535),
    "--port-ratio": _number(0, 1),
    "--source-port": _int_range(1, 65535),
    "--min-rate": _number(0.001, 1_000_000),
    "--max-rate": _number(0.001, 1_000_000),
    "--max-retries": _int_range(0, 100),
    "--host-timeout": _time,
    "--scan-delay": _time,
    "--max-scan-delay": _time,
    "--min-rtt-timeout": _time,
    "--max-rtt-timeout": _time,
    "--initial-rtt-timeout": _time,
    "--script-timeout": _time,
    "--min-hostgroup": _int_range(1, 65536),
    "--max-hostgroup": _int_range(1, 65536),
    "--min-parallelism": _int_range(1, 65536),
    "--max-parallelism": _int_range(1, 65536),
    "--version-intensity": _int_range(0, 9),
    "--max-os-tries": _int_range(1, 50),
    "--data-length": _int_range(0, 1400),
    "--ttl": _int_range(1, 255),
    "--mtu": _mtu,
    "--scanflags": _scanflags,
    "--nsock-engine": _nsock,
    "--exclude": _exclude,
    "--script": check_script_list,
    "--script-args": script_args,
}
SCRIPT_OPTIONS = ("-sC", "-A", "--script")
UDP_SCAN_LETTERS = frozenset("UYZ")


def _single_dash_long(arg: str) -> str | None:
    """The long option nmap would read ``-name[=v]`` as, or None."""
    if arg.startswith("--") or not arg.startswith("-"):
        return None
    name = arg[1:].partition("=")[0]
    if len(name) < 2:
        return None
    if name in NMAP_LONG_OPTIONS:
        return name
    matches = sorted(o for o in NMAP_LONG_OPTIONS if o.startswith(name))
    return matches[0] if matches else None


def _forbidden(arg: str) -> str | None:
    name = arg.partition("=")[0]
    if arg == "--":
        return "it ends nmap's options, so every later item would be a target"
    if arg.startswith("-o") or arg.startswith("-i"):
        return _OUTPUT if arg.startswith("-o") else FORBIDDEN.get(arg[:3], "not a scan")
    if name in FORBIDDEN:
        return FORBIDDEN[name]
    for short in ("-e", "-S", "-D", "-b", "-sI"):
        if arg.startswith(short):
            return FORBIDDEN[short]
    if arg.startswith("--"):
        # abbreviations nmap would expand into a forbidden option
        hits = [o for o in FORBIDDEN if o.startswith("--") and o.startswith(name)]
        if hits and name not in LONG_FLAGS and name not in LONG_VALUE:
            return f"{name} is an abbreviation of {hits[0]}: {FORBIDDEN[hits[0]]}"
    return None


def _scan_letters(arg: str) -> str | None:
    """``-sSV`` -> ``SV`` when every letter is an allowed scan type, else None."""
    if not arg.startswith("-s") or arg.startswith("--") or len(arg) < 3:
        return None
    letters = arg[2:]
    if set(letters) <= SCAN_LETTERS and len(set(letters)) == len(letters):
        return letters
    return None


class _Item:
    """Where an argument came from, for error messages."""

    def __init__(self, index: int, arg: str) -> None:
        self.index, self.arg = index, arg

    def fail(self, msg: str) -> ValueError:
        return ValueError(f"item {self.index} ({self.arg!r}): {msg}")


def check_nmap_args(args: list[str], *, allow_scripts: bool = True,
                    allow_udp: bool = True) -> list[str]:
    """Validate an nmap argument list against the allow-list; raise ValueError naming the
    bad item. Returns the list unchanged."""
    pending: tuple[str, ValueCheck, _Item] | None = None
    for i, arg in enumerate(args):
        it = _Item(i, arg)
        if not isinstance(arg, str):
            raise ValueError(f"item {i} ({arg!r}) must be a string")
        if arg == "" or any(c.isspace() for c in arg):
            raise it.fail("contains spaces: give each option and value as its own list "
                          "item, and no value may contain a space")
        if not arg.isascii() or not arg.isprintable():
            raise it.fail("only printable ASCII is accepted in nmap arguments")
        bad = sorted(set(arg) & set(";|&$`<>\\\"'!{}~#*?[]"))
        if bad:
            raise it.fail(f"contains {''.join(bad)!r}: shell metacharacters, globs and "
                          "quoting are not allowed in nmap arguments")
        if pending is not None:
            opt, check, owner = pending
            pending = None
            if arg.startswith("-") and not re.match(r"^-[0-9]", arg):
                raise owner.fail(f"option {opt} needs a value, got {arg!r}")
            try:
                check(arg)
            except ValueError as e:
                raise it.fail(f"value for {opt}: {e}") from None
            _profile_limits(it, opt, arg, allow_scripts, allow_udp)
            continue
        if not arg.startswith("-"):
            raise it.fail("is not an option: targets are given on the command line, never "
                          "in a profile")
        if arg in SHORT_FLAGS:
            _profile_limits(it, arg, "", allow_scripts, allow_udp)
            continue
        long_name = _single_dash_long(arg)
        if long_name is not None:
            why = FORBIDDEN.get("--" + long_name)
            extra = f" ({why})" if why else ""
            raise it.fail(f"nmap reads {arg.partition('=')[0]} as the long option "
                          f"--{long_name}; single-dash long options are not accepted{extra}")
        why = _forbidden(arg)
        if why:
            raise it.fail(f"{arg.partition('=')[0]} is not allowed: {why}")
        letters = _scan_letters(arg)
        if letters is not None:
            _profile_limits(it, "-s", letters, allow_scripts, allow_udp)
            continue
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            if name in LONG_FLAGS and not eq:
                continue
            if name in LONG_VALUE:
                if eq:
                    try:
                        LONG_VALUE[name](value)
                    except ValueError as e:
                        raise it.fail(f"value for {name}: {e}") from None
                    _profile_limits(it, name, value, allow_scripts, allow_udp)
                else:
                    pending = (name, LONG_VALUE[name], it)
                continue
            raise it.fail(f"{name} is not an nmap option labctl knows (see "
                          "labctl/scans/nmapargs.py; abbreviations are not accepted)")
        probe = next((p for p in PROBES if arg.startswith(p)), None)
        if probe is not None:
            glued = arg[len(probe):]
            if glued:
                try:
                    PROBES[probe](glued)
                except ValueError as e:
                    raise it.fail(f"value for {probe}: {e}") from None
            _profile_limits(it, probe, glued, allow_scripts, allow_udp)
            continue
        short = arg[:2]
        if short in SHORT_VALUE:
            glued = arg[2:]
            if glued:
                try:
                    SHORT_VALUE[short](glued)
                except ValueError as e:
                    raise it.fail(f"value for {short}: {e}") from None
                _profile_limits(it, short, glued, allow_scripts, allow_udp)
            else:
                pending = (short, SHORT_VALUE[short], it)
            continue
        raise it.fail("is not an nmap option labctl knows (see labctl/scans/nmapargs.py)")
    if pending is not None:
        raise pending[2].fail(f"option {pending[0]} at the end needs a value")
    return args


def _profile_limits(it: _Item, opt: str, value: str, allow_scripts: bool,
                    allow_udp: bool) -> None:
    """The profile's own switches: ``allow_scripts: false`` and ``allow_udp: false``."""
    if not allow_scripts and (opt in SCRIPT_OPTIONS or opt == "--script-args"
                              or (opt == "-s" and "C" in value)):
        raise it.fail("runs NSE scripts, which this profile forbids (allow_scripts: false)")
    if not allow_udp and ((opt == "-s" and set(value) & UDP_SCAN_LETTERS) or opt == "-PU"
                          or (opt == "-p" and "U:" in value)):
        raise it.fail("scans UDP, which this profile forbids (allow_udp: false)")


def scan_letters(args: list[str]) -> set[str]:
    """Every scan-type letter the arguments request (``-sSV`` -> {S, V})."""
    out: set[str] = set()
    for a in args:
        letters = _scan_letters(a)
        if letters:
            out |= set(letters)
    return out

