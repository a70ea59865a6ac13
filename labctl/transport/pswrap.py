"""The stdin protocol shared by the SSH and local PowerShell runners, and result parsing.

Why a wrapper: over WinRM, pypsrp passes parameters natively (``add_parameters``). Over SSH
(and locally) there is only a process with stdin/stdout, so labctl starts

    powershell.exe -NoProfile -NonInteractive -Command -

and writes ONE line to its stdin::

    & ([scriptblock]::Create([Text.Encoding]::UTF8.GetString(
        [Convert]::FromBase64String('<WRAPPER b64>')))) '<BODY b64>' '<PARAMS b64>'

followed by an empty line, then closes stdin. One line, because ``-Command -`` reads stdin
line by line and a multi-line construct would wait for a blank line; base64, because its
alphabet (``A-Za-z0-9+/=``) is inert inside single quotes, so no value can change the
meaning of the text (quotes, ``$()``, backticks, ``;``, newlines, unicode all arrive intact).
Values never appear in clear text on the wire or in the process list.

The fixed :data:`WRAPPER` (Windows PowerShell 5.1 compatible: no ``ConvertFrom-Json
-AsHashtable``) decodes the body (UTF-8) and the parameters (a UTF-8 JSON object), converts
the JSON object to a hashtable with a small recursive helper, and splats it into
``[scriptblock]::Create(body)`` -- the same named-parameter binding that pypsrp's
``add_parameters`` gives over WinRM. Top-level ``None`` values are not sent
(:func:`bound_params`), as over WinRM. The body's own prelude decides
``$ErrorActionPreference``; the wrapper runs it with the session default (Continue), as PSRP
does.

**Error reporting: a JSON envelope on stdout** (the one choice made for both runners).
Output objects and error records of the body are collected (``2>&1``); terminating errors
are caught. The wrapper then prints a line ``#<labctl-result>#`` followed by the base64 of
the UTF-8 JSON ``{"v": 1, "ok": bool, "output": [str...], "errors": [str...]}`` and exits 0
(ok) or 1. Base64 again, so the console code page cannot garble non-ASCII text. Anything
else on stdout (``Write-Host``, warnings) is ignored. When no envelope arrives (PowerShell
missing, a parse error, the process killed) the exit code and stderr (CLIXML cleaned up) are
reported instead. When an envelope arrives it is authoritative and the exit code is only
informational (how ``exit`` inside a script block sets the code of
``powershell.exe -Command -`` is not something to rely on). Either way the caller gets
:class:`RemoteCommandError` naming the script and the host and quoting the remote message,
scrubbed by ``REDACTOR``.
"""

from __future__ import annotations

import base64
import binascii
import html
import json
import re
from collections.abc import Iterable
from typing import Any

from labctl.core.errors import LabctlError, RemoteCommandError
from labctl.core.secrets import REDACTOR
from labctl.transport.powershell import RenderedScript

POWERSHELL_ARGS = ["-NoProfile", "-NonInteractive", "-Command", "-"]
MARKER = "#<labctl-result>#"

WRAPPER = r"""param([string]$LabctlBody, [string]$LabctlParams)
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'

function ConvertFrom-LabctlBase64 {
    param([string]$Text)
    return [System.Text.Encoding]::UTF8.GetString([System.Convert]::FromBase64String($Text))
}

function ConvertTo-LabctlValue {
    param($Value)
    if ($null -eq $Value) { return $null }
    if ($Value -is [System.Management.Automation.PSCustomObject]) {
        $table = @{}
        foreach ($prop in $Value.PSObject.Properties) {
            $table[$prop.Name] = ConvertTo-LabctlValue $prop.Value
        }
        return $table
    }
    if (($Value -is [System.Collections.IEnumerable]) -and -not ($Value -is [string])) {
        $list = New-Object System.Collections.ArrayList
        foreach ($item in $Value) { [void]$list.Add((ConvertTo-LabctlValue $item)) }
        return ,($list.ToArray())
    }
    return $Value
}

function Format-LabctlError {
    param($Record)
    if ($Record -is [System.Management.Automation.ErrorRecord]) {
        $text = [string]$Record.Exception.Message
        if (($null -ne $Record.ErrorDetails) -and $Record.ErrorDetails.Message) {
            $text = [string]$Record.ErrorDetails.Message
        }
        return $text
    }
    return [string]$Record
}

$labctlOut = New-Object System.Collections.ArrayList
$labctlErr = New-Object System.Collections.ArrayList
try {
    $labctlText = ConvertFrom-LabctlBase64 $LabctlBody
    $labctlObject = ConvertFrom-Json (ConvertFrom-LabctlBase64 $LabctlParams)
    $labctlSplat = @{}
    if ($null -ne $labctlObject) {
        foreach ($prop in $labctlObject.PSObject.Properties) {
            $labctlSplat[$prop.Name] = ConvertTo-LabctlValue $prop.Value
        }
    }
    $labctlBlock = [scriptblock]::Create($labctlText)
    $ErrorActionPreference = 'Continue'
    & $labctlBlock @labctlSplat 2>&1 | ForEach-Object {
        if ($_ -is [System.Management.Automation.ErrorRecord]) {
            [void]$labctlErr.Add((Format-LabctlError $_))
        } elseif ($null -ne $_) {
            if ($_ -is [string]) { [void]$labctlOut.Add($_) }
            else { [void]$labctlOut.Add((($_ | Out-String).TrimEnd())) }
        }
    }
} catch {
    [void]$labctlErr.Add((Format-LabctlError $_))
}
$labctlEnvelope = @{
    v = 1
    ok = ($labctlErr.Count -eq 0)
    output = $labctlOut.ToArray()
    errors = $labctlErr.ToArray()
}
$labctlJson = ConvertTo-Json -InputObject $labctlEnvelope -Depth 4 -Compress
$labctlBytes = [System.Text.Encoding]::UTF8.GetBytes($labctlJson)
[Console]::Out.WriteLine('')
[Console]::Out.WriteLine('#<labctl-result>#' + [System.Convert]::ToBase64String($labctlBytes))
[Console]::Out.Flush()
if ($labctlErr.Count -gt 0) { exit 1 }
exit 0
"""

BOOTSTRAP = ("& ([scriptblock]::Create([Text.Encoding]::UTF8.GetString("
             "[Convert]::FromBase64String('{wrapper}')))) '{body}' '{params}'")
BOOTSTRAP_RE = re.compile(
    r"^& \(\[scriptblock\]::Create\(\[Text\.Encoding\]::UTF8\.GetString\("
    r"\[Convert\]::FromBase64String\('([A-Za-z0-9+/=]*)'\)\)\)\) "
    r"'([A-Za-z0-9+/=]*)' '([A-Za-z0-9+/=]*)'$")


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def encode_params(params: dict[str, Any]) -> str:
    """UTF-8 JSON of the parameters (``ensure_ascii=False``: PowerShell decodes UTF-8)."""
    try:
        return json.dumps(params, ensure_ascii=False, separators=(",", ":"), default=_json_default)
    except (TypeError, ValueError) as e:
        raise LabctlError(f"a script parameter cannot be sent as JSON: {e}") from None


def _json_default(v: Any) -> Any:
    # ipaddress objects, Paths and enums travel as their text form
    return str(v)


def bound_params(script: RenderedScript) -> dict[str, Any]:
    """The parameters that are sent: secrets revealed, top-level ``None`` values left out so
    the script's own default applies (the same rule as the WinRM runner, where pypsrp would
    otherwise send ``None`` as a bare switch)."""
    return {k: v for k, v in script.plain_params().items() if v is not None}


def stdin_for(script: RenderedScript) -> bytes:
    """The bytes written to ``powershell.exe -Command -``: one bootstrap line, a blank line."""
    line = BOOTSTRAP.format(wrapper=_b64(WRAPPER), body=_b64(script.body),
                            params=_b64(encode_params(bound_params(script))))
    return (line + "\n\n").encode("ascii")


def remote_error(script_name: str, host: str, messages: Iterable[str],
                 hint: str | None = None) -> RemoteCommandError:
    """A RemoteCommandError whose message names the script and the host, scrubbed."""
    msgs = [REDACTOR.scrub(str(m)) for m in messages if m is not None and str(m).strip()]
    err = RemoteCommandError(script_name, msgs, hint=hint)
    quoted = "; ".join(m.strip() for m in msgs) or "no message"
    err.message = f"{script_name} failed on {host}: {quoted}"
    err.args = (err.message,)
    return err


def name_script(err: LabctlError, script_name: str) -> LabctlError:
    """Prefix a transport error's message with the script it interrupted (same object)."""
    if not err.message.startswith(f"{script_name}: "):
        err.message = f"{script_name}: {err.message}"
        err.args = (err.message,)
    return err


def single_json(script_name: str, host: str, outputs: Iterable[Any]) -> Any:
    """Parse the script's output strings as exactly one JSON document."""
    parts = [o if isinstance(o, str) else str(o) for o in outputs if o is not None]
    text = "\n".join(p for p in parts if p.strip()).strip()
    if not text:
        raise remote_error(script_name, host, ["the script printed nothing; it must print "
                                               "exactly one JSON document"],
                           hint="end the script with ConvertTo-Json -Depth 10 -Compress")
    try:
        value, end = json.JSONDecoder().raw_decode(text)
    except json.JSONDecodeError as e:
        raise remote_error(script_name, host, [
            f"the output is not a JSON document ({e.msg} at char {e.pos}; output starts "
            f"{_snippet(text)})"], hint="a script must print exactly one JSON document "
                                       "(ConvertTo-Json -Depth 10 -Compress) and nothing else") \
            from None
    if text[end:].strip():
        raise remote_error(script_name, host, [
            f"the output holds more than one JSON document or trailing text (after char {end}: "
            f"{_snippet(text[end:].strip())})"],
            hint="a script must print exactly one JSON document and nothing else")
    return value


def _snippet(text: str, n: int = 60) -> str:
    first = text.splitlines()[0] if text else ""
    return repr(REDACTOR.scrub(first[:n]) + ("..." if len(first) > n or "\n" in text else ""))


_CLIXML_S = re.compile(r'<S S="Error">(.*?)</S>', re.S)
_XESC = re.compile(r"_x([0-9A-Fa-f]{4})_")


def clean_stderr(raw: bytes | str) -> str:
    """stderr as readable text; CLIXML error streams are reduced to their messages."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    if "#< CLIXML" in text:
        pieces = _CLIXML_S.findall(text)
        text = "".join(html.unescape(_XESC.sub(lambda m: chr(int(m.group(1), 16)), p))
                       for p in pieces)
    return REDACTOR.scrub(text.strip())


def parse_result(script_name: str, host: str, returncode: int, stdout: bytes,
                 stderr: bytes) -> Any:
    """Turn a wrapper run into the script's JSON value, or a RemoteCommandError."""
    out = stdout.decode("utf-8", "replace")
    envelope_line = None
    for line in out.splitlines():
        if line.startswith(MARKER):
            envelope_line = line[len(MARKER):].strip()
    if envelope_line is None:
        err_text = clean_stderr(stderr)
        detail = err_text[-1500:] if err_text else "no error text on stderr"
        if returncode != 0:
            msg = f"powershell exited {returncode} without a result: {detail}"
        else:
            msg = f"powershell ended without a result (exit 0): {detail}"
        raise remote_error(script_name, host, [msg],
                           hint="is Windows PowerShell (powershell.exe) available to this "
                                "account, and did the script call exit? Scripts must not "
                                "exit; they print one JSON document")
    try:
        envelope = json.loads(base64.b64decode(envelope_line, validate=True).decode("utf-8"))
        ok = envelope["ok"]
        output = envelope.get("output") or []
        errors = envelope.get("errors") or []
    except (binascii.Error, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise remote_error(script_name, host, [f"the result envelope is garbled ({e})"]) \
            from None
    if isinstance(output, str):  # ConvertTo-Json may collapse one-element arrays
        output = [output]
    if isinstance(errors, str):
        errors = [errors]
    if not ok or errors:
        raise remote_error(script_name, host, [str(e) for e in errors] or ["unknown error"])
    return single_json(script_name, host, output)
