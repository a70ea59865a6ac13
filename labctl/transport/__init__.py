"""Transports: PowerShell (WinRM, SSH, local), HTTP sessions, subprocesses, namespaces."""
