# labctl bootstrap: give the account labctl uses the rights it needs, and nothing more.
# Run once, as Administrator, on the Hyper-V host:
#   powershell -ExecutionPolicy Bypass -File .\grant-hyperv-rights.ps1 -Account 'LAB\labadmin'
# Hyper-V Administrators: create/modify switches and VMs. Remote Management Users: WinRM.
# NetNat, host vNIC IP/DNS and New-VHD on the VHD folder need local administrator rights on
# most builds; add -LocalAdmin when labctl should manage those too (the reference lab does).
# Params:
#   Account     [string]  DOMAIN\user or user
#   LocalAdmin  [bool]    also add the account to the local Administrators group
#   VhdPath     [string]  folder for the VHDX files (created, Modify right granted)
param(
    [Parameter(Mandatory = $true)][string]$Account,
    [bool]$LocalAdmin = $false,
    [string]$VhdPath = ''
)
Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'

function Add-GroupMemberOnce([string]$Group, [string]$Member) {
    $have = @(Get-LocalGroupMember -Group $Group -ErrorAction SilentlyContinue | Where-Object { $_.Name -eq $Member })
    if ($have.Count -eq 0) { Add-LocalGroupMember -Group $Group -Member $Member }
}

if (-not (Get-Module -ListAvailable -Name Hyper-V)) {
    throw 'the Hyper-V PowerShell module is missing: Install-WindowsFeature -Name Hyper-V -IncludeManagementTools -Restart'
}
Add-GroupMemberOnce -Group 'Hyper-V Administrators' -Member $Account
Add-GroupMemberOnce -Group 'Remote Management Users' -Member $Account
if ($LocalAdmin) { Add-GroupMemberOnce -Group 'Administrators' -Member $Account }
if ($VhdPath) {
    if (-not (Test-Path -LiteralPath $VhdPath)) { New-Item -ItemType Directory -Path $VhdPath | Out-Null }
    $acl = Get-Acl -Path $VhdPath
    $rule = New-Object System.Security.AccessControl.FileSystemAccessRule($Account, 'Modify', 'ContainerInherit,ObjectInherit', 'None', 'Allow')
    $acl.AddAccessRule($rule)
    Set-Acl -Path $VhdPath -AclObject $acl
}
[ordered]@{ account = $Account; groups = @('Hyper-V Administrators', 'Remote Management Users') + @(if ($LocalAdmin) { 'Administrators' }); vhd_path = $VhdPath } |
    ConvertTo-Json -Depth 10 -Compress
