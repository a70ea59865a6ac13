# labctl bootstrap: Windows OpenSSH server on the Hyper-V host, for `transport: ssh`.
# Run once, as Administrator, in Windows PowerShell 5.1 on the host:
#   powershell -ExecutionPolicy Bypass -File .\enable-openssh.ps1 -AuthorizedKey 'ssh-ed25519 AAAA... you@laptop'
# It installs the OpenSSH.Server capability, starts sshd (automatic start), opens TCP 22,
# makes Windows PowerShell the default shell, and installs your public key.
# Params:
#   AuthorizedKey  [string]  public key allowed to log in ('' to skip)
#   ForAdmins      [bool]    the account is an administrator (key goes to administrators_authorized_keys)
#   RemoteAddress  [string]  allowed client address or range for port 22 (default: Any)
param(
    [string]$AuthorizedKey = '',
    [bool]$ForAdmins = $true,
    [string]$RemoteAddress = 'Any'
)
Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'

$cap = Get-WindowsCapability -Online | Where-Object { $_.Name -like 'OpenSSH.Server*' } | Select-Object -First 1
if ($cap.State -ne 'Installed') { Add-WindowsCapability -Online -Name $cap.Name | Out-Null }
Set-Service -Name sshd -StartupType Automatic
Start-Service -Name sshd

New-ItemProperty -Path 'HKLM:\SOFTWARE\OpenSSH' -Name DefaultShell -PropertyType String -Force `
    -Value "$env:SystemRoot\System32\WindowsPowerShell\v1.0\powershell.exe" | Out-Null

$rule = Get-NetFirewallRule -Name 'labctl-OpenSSH' -ErrorAction SilentlyContinue
if ($rule) { Remove-NetFirewallRule -Name 'labctl-OpenSSH' }
New-NetFirewallRule -Name 'labctl-OpenSSH' -DisplayName 'OpenSSH server (labctl)' -Direction Inbound `
    -Protocol TCP -LocalPort 22 -RemoteAddress $RemoteAddress -Action Allow -Profile Any | Out-Null

if ($AuthorizedKey) {
    if ($ForAdmins) {
        $file = "$env:ProgramData\ssh\administrators_authorized_keys"
        Add-Content -Path $file -Value $AuthorizedKey
        # sshd ignores the file unless only SYSTEM and Administrators can write it.
        icacls.exe $file /inheritance:r /grant 'Administrators:F' /grant 'SYSTEM:F' | Out-Null
    } else {
        $dir = "$env:USERPROFILE\.ssh"
        if (-not (Test-Path -LiteralPath $dir)) { New-Item -ItemType Directory -Path $dir | Out-Null }
        Add-Content -Path "$dir\authorized_keys" -Value $AuthorizedKey
    }
}
Restart-Service -Name sshd
$keys = @(Get-ChildItem -Path "$env:ProgramData\ssh" -Filter 'ssh_host_*_key.pub' | ForEach-Object { (Get-Content -Path $_.FullName -Raw).Trim() })
[ordered]@{ sshd = [string](Get-Service -Name sshd).Status; port = 22; host_keys = $keys } | ConvertTo-Json -Depth 10 -Compress
