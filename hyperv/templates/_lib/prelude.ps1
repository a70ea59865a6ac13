# --- labctl prelude: strict mode, stop on the first error, no CLIXML progress noise ---
Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
# Ownership marker check used by destructive scripts: Notes must carry "labctl lab=<lab>".
function Test-LabctlOwned([string]$Notes, [string]$Lab) {
    if ([string]::IsNullOrEmpty($Notes)) { return $false }
    $pattern = '(?m)managed-by: labctl lab=' + [regex]::Escape($Lab) + '\s*$'
    return [bool]([regex]::IsMatch($Notes, $pattern))
}
# --- end of prelude ---
