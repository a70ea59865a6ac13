#!/usr/bin/env python3
"""A stand-in for ``powershell.exe`` that checks what labctl sends and emulates its wrapper.

Used two ways: by the throwaway sshd (tests/helpers/sshd.py, ``powershell_standin=``), where
the original command line is in ``SSH_ORIGINAL_COMMAND``, and by the local runner through
``LABCTL_POWERSHELL``, where it is ``sys.argv``. Standard library only and independent of labctl
(it re-states the protocol instead of importing it, so a drift in labctl shows up as a test
failure), except for the optional fake-Hyper-V-host mode below.

Checks, each failing with exit code 64 and a message on stderr:
  * the program was started as ``powershell.exe -NoProfile -NonInteractive -Command -``;
  * stdin is exactly one line ``& ([scriptblock]::Create([Text.Encoding]::UTF8.GetString(
    [Convert]::FromBase64String('<b64>')))) '<b64>' '<b64>'`` and a blank line;
  * the decoded wrapper takes the two strings, splats a hashtable into
    ``[scriptblock]::Create(...)``, and avoids ``ConvertFrom-Json -AsHashtable`` (not in 5.1);
  * the parameters are a JSON object; when the body declares ``param(...)``, every parameter
    sent is declared there and every Mandatory one is sent (PowerShell's own binding rules,
    reported as error records the way -NonInteractive PowerShell does).

Emulation: directives written as PowerShell comments in the body, ``#fake: <verb> <arg>``,
processed in order (no directive = ``echo``):
  echo              output {"params": <params>} as one JSON document
  json TEXT         output TEXT as one output string
  outputs JSONLIST  output each string of the list as its own output object
  error TEXT        an error record (TEXT may use {name} to quote a parameter)
  noise             print host text (WARNING: ...) on stdout before the envelope
  raw TEXT          print TEXT on stdout, no envelope, exit 0
  die CODE TEXT     print TEXT on stderr, no envelope, exit CODE
  clixml TEXT       an error as Windows PowerShell's CLIXML on stderr, exit 1
  garble            a result marker followed by something that is not base64
  sleep SECONDS     sleep (for timeouts)
With ``LABCTL_STANDIN_HYPERV_STATE=<pickle>`` a body without directives is a real labctl
Hyper-V script and is run by the stateful fake Hyper-V host stored in that pickle.
Every call is appended as a JSON line to $LABCTL_STANDIN_LOG (or $LABCTL_SSHD_DIR/standin.jsonl).
"""

from __future__ import annotations

import base64
import json
import os
import re
import sys
import time

EXPECTED_ARGS = ["-NoProfile", "-NonInteractive", "-Command", "-"]
LINE_RE = re.compile(
    r"^& \(\[scriptblock\]::Create\(\[Text\.Encoding\]::UTF8\.GetString\("
    r"\[Convert\]::FromBase64String\('([A-Za-z0-9+/=]+)'\)\)\)\) "
    r"'([A-Za-z0-9+/=]*)' '([A-Za-z0-9+/=]+)'$")
MARKER = "#<labctl-result>#"


def fail(msg: str) -> None:
    sys.stderr.write(f"fake_powershell: {msg}\n")
    sys.stderr.flush()
    sys.exit(64)


def record(entry: dict) -> None:
    path = os.environ.get("LABCTL_STANDIN_LOG")
    if not path and os.environ.get("LABCTL_SSHD_DIR"):
        path = os.path.join(os.environ["LABCTL_SSHD_DIR"], "standin.jsonl")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry, ensure_ascii=False) + "\n")


def declared_params(body: str) -> dict[str, bool] | None:
    """``param(...)`` of the body: parameter name -> Mandatory. None when there is no block."""
    m = re.search(r"(?im)^\s*param\s*\(", body)
    if not m:
        return None
    depth, i, quote = 1, m.end(), ""
    segments: list[str] = []
    cur = ""
    while i < len(body):
        ch = body[i]
        i += 1
        if quote:
            quote = "" if ch == quote else quote
        elif ch == "#":  # a comment runs to the end of the line
            while i < len(body) and body[i] != "\n":
                i += 1
            continue
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth == 0:
                break
        elif ch == "," and depth == 1:
            segments.append(cur)
            cur = ""
            continue
        cur += ch
    segments.append(cur)
    out: dict[str, bool] = {}
    for seg in segments:
        seg = re.sub(r"(?m)#.*$", "", seg)
        # the name is the first $variable outside brackets (attributes, type constraints)
        d, name_at = 0, None
        for j, ch in enumerate(seg):
            if ch in "([{":
                d += 1
            elif ch in ")]}":
                d -= 1
            elif ch == "$" and d == 0:
                name_at = j
                break
        if name_at is None:
            continue
        mm = re.match(r"\$([A-Za-z_][A-Za-z0-9_]*)", seg[name_at:])
        if not mm:
            continue
        attrs = seg[:name_at]
        mandatory = bool(re.search(r"Mandatory\s*(=\s*\$true\s*)?[,)]", attrs, re.I))
        out[mm.group(1)] = mandatory
    return out


def envelope(ok: bool, output: list[str], errors: list[str]) -> str:
    data = json.dumps({"v": 1, "ok": ok, "output": output, "errors": errors}, ensure_ascii=False)
    return MARKER + base64.b64encode(data.encode("utf-8")).decode("ascii")


def main() -> None:
    command = os.environ.get("SSH_ORIGINAL_COMMAND")
    if command is not None:
        if command != "powershell.exe " + " ".join(EXPECTED_ARGS):
            fail(f"unexpected command line {command!r}")
        argv = command.split(" ")[1:]
    else:
        argv = sys.argv[1:]
        if argv != EXPECTED_ARGS:
            fail(f"unexpected arguments {argv!r}")
    raw = sys.stdin.buffer.read()
    entry: dict = {"argv": argv, "command": command, "stdin": raw.decode("latin-1")}
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        record(entry)
        fail("stdin is not plain ASCII (values must travel as base64)")
    lines = text.split("\n")
    if len(lines) != 3 or lines[1:] != ["", ""]:
        record(entry)
        fail(f"stdin must be one line and a blank line, got {len(lines)} parts")
    m = LINE_RE.match(lines[0])
    if not m:
        record(entry)
        fail("stdin line does not match the bootstrap form")
    wrapper = base64.b64decode(m.group(1)).decode("utf-8")
    body = base64.b64decode(m.group(2)).decode("utf-8")
    params_text = base64.b64decode(m.group(3)).decode("utf-8")
    entry.update(wrapper=wrapper, body=body, params_json=params_text)
    for needle in ("param([string]$LabctlBody, [string]$LabctlParams)", "[scriptblock]::Create(",
                   "ConvertFrom-Json", "@labctlSplat", "#<labctl-result>#"):
        if needle not in wrapper:
            record(entry)
            fail(f"wrapper lacks {needle!r}")
    if "-AsHashtable" in wrapper:
        record(entry)
        fail("wrapper uses ConvertFrom-Json -AsHashtable (PowerShell 6+ only)")
    try:
        params = json.loads(params_text)
    except ValueError as e:
        record(entry)
        fail(f"params are not JSON: {e}")
    if not isinstance(params, dict):
        record(entry)
        fail("params are not a JSON object")
    entry["params"] = params
    record(entry)

    declared = declared_params(body)
    if declared is not None:
        known = {d.lower() for d in declared}
        for name in params:
            if name.lower() not in known:
                print(envelope(False, [], [
                    f"A parameter cannot be found that matches parameter name '{name}'."]))
                sys.exit(1)
        sent = {k.lower() for k in params}
        missing = [d for d, mand in declared.items() if mand and d.lower() not in sent]
        if missing:  # -NonInteractive: PowerShell refuses instead of prompting
            print(envelope(False, [], [
                "Cannot process command because of one or more missing mandatory parameters: "
                + " ".join(missing) + "."]))
            sys.exit(1)

    state_file = os.environ.get("LABCTL_STANDIN_HYPERV_STATE")
    if state_file and "#fake:" not in body:
        run_on_fake_host(state_file, body, params)
        return

    output: list[str] = []
    errors: list[str] = []
    directives = re.findall(r"(?m)^\s*#fake:\s*(\w+)[ \t]*(.*)$", body) or [("echo", "")]
    for verb, arg in directives:
        arg = arg.rstrip("\r")
        if verb == "echo":
            output.append(json.dumps({"params": params}, ensure_ascii=False))
        elif verb == "json":
            output.append(arg)
        elif verb == "outputs":
            output.extend(json.loads(arg))
        elif verb == "error":
            errors.append(arg.format(**params))
        elif verb == "noise":
            print("WARNING: this is host output, not a result")
        elif verb == "raw":
            sys.stdout.write(arg + "\n")
            sys.exit(0)
        elif verb == "die":
            code, _, msg = arg.partition(" ")
            sys.stderr.write(msg + "\n")
            sys.exit(int(code))
        elif verb == "clixml":
            esc = arg.replace("&", "&amp;").replace("<", "&lt;")
            sys.stderr.write('#< CLIXML\r\n<Objs Version="1.1.0.1" '
                             'xmlns="http://schemas.microsoft.com/powershell/2004/04">'
                             f'<S S="Error">{esc}_x000D__x000A_</S></Objs>')
            sys.exit(1)
        elif verb == "garble":
            print(MARKER + "!!!not-base64!!!")
            sys.exit(0)
        elif verb == "sleep":
            time.sleep(float(arg))
        else:
            fail(f"unknown directive {verb!r}")
    sys.stdout.write("\n" + envelope(not errors, output, errors) + "\n")
    sys.stdout.flush()
    sys.exit(1 if errors else 0)


def run_on_fake_host(state_file: str, body: str, params: dict) -> None:
    """Hand a real labctl Hyper-V script to the stateful fake host (tests/helpers/fake_hyperv),
    whose state lives in a pickle between SSH sessions, and answer with the wrapper's
    envelope. The script's name comes from its header comment (``# labctl <name>: ...``).
    This is the only part of the stand-in that imports labctl."""
    import pickle
    from pathlib import Path

    here = Path(__file__).resolve().parent
    sys.path[:0] = [str(here.parent.parent), str(here.parent)]
    from labctl.core.errors import LabctlError, RemoteCommandError
    from labctl.transport.powershell import RenderedScript

    m = re.match(r"#\s*labctl\s+([a-z_]+/[a-z_]+):", body)
    if not m:
        fail("a Hyper-V script must start with its header comment '# labctl <name>:'")
    with open(state_file, "rb") as f:
        host = pickle.load(f)
    output: list[str] = []
    errors: list[str] = []
    try:
        output.append(json.dumps(host.run(RenderedScript(m.group(1), body, params))))
    except RemoteCommandError as e:
        errors.extend(e.errors or [e.message])
    except LabctlError as e:
        errors.append(e.message)
    with open(state_file + ".tmp", "wb") as f:
        pickle.dump(host, f)
    os.replace(state_file + ".tmp", state_file)
    sys.stdout.write("\n" + envelope(not errors, output, errors) + "\n")
    sys.stdout.flush()
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
