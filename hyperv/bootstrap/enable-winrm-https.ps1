# labctl bootstrap: WinRM over HTTPS (5986) on the Hyper-V host, for `transport: winrm`.
# Run once, as Administrator, in Windows PowerShell 5.1 on the host:
#   powershell -ExecutionPolicy Bypass -File .\enable-winrm-https.ps1 -DnsName hyperv01.lab.example
# It creates (or reuses) a certificate for DnsName, adds an HTTPS listener, opens TCP 5986 in
# the firewall (optionally only from one address), and exports the certificate so labctl can
# trust it (hyperv.ca_trust_path) instead of turning verification off.
# Params:
#   DnsName        [string]  the name labctl connects to (must match hyperv.host)
#   RemoteAddress  [string]  allowed client address or range for 5986 (default: Any)
#   CertThumbprint [string]  use this existing certificate (e.g. from your CA) instead of a self-signed one
#   ExportPath     [string]  where to write the public certificate (PEM)
param(
    [Parameter(Mandatory = $true)][string]$DnsName,
    [string]$RemoteAddress = 'Any',
    [string]$CertThumbprint = '',
    [string]$ExportPath = "$env:USERPROFILE\labctl-winrm.pem"
)
Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'

Enable-PSRemoting -SkipNetworkProfileCheck -Force | Out-Null

if ($CertThumbprint) {
    $cert = Get-Item -Path ('Cert:\LocalMachine\My\' + $CertThumbprint)
} else {
    $cert = Get-ChildItem -Path Cert:\LocalMachine\My |
        Where-Object { $_.Subject -eq ('CN=' + $DnsName) -and $_.NotAfter -gt (Get-Date).AddDays(30) } |
        Select-Object -First 1
    if (-not $cert) {
        $cert = New-SelfSignedCertificate -DnsName $DnsName -CertStoreLocation Cert:\LocalMachine\My `
            -KeyExportPolicy NonExportable -NotAfter (Get-Date).AddYears(2)
    }
}

$existing = Get-ChildItem -Path WSMan:\localhost\Listener | Where-Object { $_.Keys -contains 'Transport=HTTPS' }
foreach ($l in @($existing)) { Remove-Item -Path $l.PSPath -Recurse -Force }
New-Item -Path WSMan:\localhost\Listener -Transport HTTPS -Address * -CertificateThumbPrint $cert.Thumbprint -Force | Out-Null

# Basic auth and unencrypted traffic stay off; negotiate/kerberos/NTLM over TLS are used.
Set-Item -Path WSMan:\localhost\Service\Auth\Basic -Value $false
Set-Item -Path WSMan:\localhost\Service\AllowUnencrypted -Value $false

$rule = Get-NetFirewallRule -Name 'labctl-WinRM-HTTPS' -ErrorAction SilentlyContinue
if ($rule) { Remove-NetFirewallRule -Name 'labctl-WinRM-HTTPS' }
New-NetFirewallRule -Name 'labctl-WinRM-HTTPS' -DisplayName 'WinRM over HTTPS (labctl)' -Direction Inbound `
    -Protocol TCP -LocalPort 5986 -RemoteAddress $RemoteAddress -Action Allow -Profile Any | Out-Null

$b64 = [Convert]::ToBase64String($cert.RawData, 'InsertLineBreaks')
$pem = "-----BEGIN CERTIFICATE-----`r`n" + $b64 + "`r`n-----END CERTIFICATE-----`r`n"
[System.IO.File]::WriteAllText($ExportPath, $pem)

[ordered]@{
    listener = 'HTTPS'; port = 5986; dns_name = $DnsName; thumbprint = $cert.Thumbprint
    sha256 = ([System.BitConverter]::ToString(
        [System.Security.Cryptography.SHA256]::Create().ComputeHash($cert.RawData))).Replace('-', ':')
    exported = $ExportPath
} | ConvertTo-Json -Depth 10 -Compress
