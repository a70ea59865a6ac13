# --- labctl prelude: strict mode, stop on the first error, no CLIXML progress noise ---
Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
# Ownership marker check used by destructive scripts: one line of Notes must be exactly
# "managed-by: labctl lab=<lab>" (spaces, tabs and a CR around it are ignored; any other
# text on that line, such as the marker quoted inside a sentence, does not count).
function Test-LabctlOwned([string]$Notes, [string]$Lab) {
    if ([string]::IsNullOrEmpty($Notes)) { return $false }
    $want = 'managed-by: labctl lab=' + $Lab
    foreach ($line in $Notes.Split([char]10)) {
        if ($line.Trim([char[]]@([char]32, [char]9, [char]13)) -ceq $want) { return $true }
    }
    return $false
}
# --- end of prelude ---
