"""The ASUS router emulator: a stateful ASUSWRT 3.0.0.6-compatible HTTP(S) server.

Why: labctl's ASUS driver must be exercised over real sockets against something that
behaves like the device. :mod:`.state` holds the nvram, sessions and faults;
:mod:`.httpd` serves them. ``labctl twin serve-router`` runs it as a process (the netns
twin starts it in the lab's router namespace); tests start it in a thread.
"""

from labctl.router.asus.emulator.httpd import EmulatorServer, ensure_certificate
from labctl.router.asus.emulator.state import (
    APP_FRAMEWORKS,
    FAULT_KINDS,
    LOCK_SECONDS,
    LOGIN_MAX_FAIL,
    AddressSync,
    Fault,
    RouterEmulator,
    Session,
    char_to_ascii,
    initial_nvram,
    is_app_user_agent,
)

__all__ = ["APP_FRAMEWORKS", "FAULT_KINDS", "LOCK_SECONDS", "LOGIN_MAX_FAIL", "AddressSync",
           "EmulatorServer", "Fault", "RouterEmulator", "Session", "char_to_ascii",
           "ensure_certificate", "initial_nvram", "is_app_user_agent"]
