"""labctl.transport.sshexec against a real OpenSSH server on 127.0.0.1 (tests/helpers/sshd.py)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path

import pytest

from labctl.core.errors import (
    AuthError,
    ConnectTimeout,
    HostUnreachable,
    TransportError,
    UsageError,
)
from labctl.core.secrets import Secret
from labctl.transport.sshexec import (
    HostKeyError,
    SshConnection,
    SshTarget,
    parse_ssh_spec,
    ssh_exec,
)
from tests.helpers.sshd import free_port, keygen, sshd_server

HOSTILE = "a b; $(touch /tmp/pwned) `id` 'q' \"d\" \\ \n line2 ü ✓ *"


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    with sshd_server(tmp_path_factory.mktemp("sshexec")) as s:
        yield s


def test_returncode_stdout_stderr_and_stdin(srv):
    rc, out, err = ssh_exec(srv.target(), ["sh", "-c", "cat; echo; echo oops >&2; exit 7"],
                            stdin=b"hello\x00bytes")
    assert rc == 7
    assert out == b"hello\x00bytes\n"
    assert err == b"oops\n"


def test_argv_is_shell_quoted_so_hostile_values_stay_one_word(srv):
    rc, out, err = ssh_exec(srv.target(), ["printf", "%s|", HOSTILE, "second"])
    assert (rc, err) == (0, b"")
    assert out.decode() == f"{HOSTILE}|second|"
    assert not Path("/tmp/pwned").exists()
    # the server received exactly shlex.join(argv)
    import shlex

    assert srv.commands()[-1] == shlex.join(["printf", "%s|", HOSTILE, "second"])


def test_string_command_is_sent_as_is(srv):
    rc, out, _ = ssh_exec(srv.target(), "echo $((6*7)) && exit 3")
    assert rc == 3 and out == b"42\n"


def test_large_stdin_and_stdout_do_not_deadlock(srv):
    blob = bytes(range(256)) * 4096  # 1 MiB
    rc, out, _ = ssh_exec(srv.target(), ["cat"], stdin=blob, timeout=30)
    assert rc == 0 and out == blob
    # output produced before stdin is read
    rc, out, _ = ssh_exec(srv.target(), ["sh", "-c", "head -c 2000000 /dev/zero; cat >/dev/null"],
                          stdin=b"x" * 500_000, timeout=30)
    assert rc == 0 and len(out) == 2_000_000


def test_command_timeout_raises_connect_timeout(srv):
    t0 = time.monotonic()
    with pytest.raises(ConnectTimeout) as ei:
        ssh_exec(srv.target(), ["sleep", "20"], timeout=0.5)
    assert time.monotonic() - t0 < 5
    assert f"{srv.host}:{srv.port}" in ei.value.message and "sleep" not in ei.value.message


def test_connection_reused_for_several_commands(srv):
    with SshConnection(srv.target()) as conn:
        results = [conn.exec(["echo", str(i)]) for i in range(3)]
        tr = conn._client.get_transport()  # type: ignore[union-attr]
        assert tr is not None and tr.is_active()
    assert [r[1] for r in results] == [b"0\n", b"1\n", b"2\n"]


def test_wrong_key_is_auth_error(srv, tmp_path):
    other = keygen(tmp_path / "other")
    with pytest.raises(AuthError) as ei:
        ssh_exec(srv.target(key_filename=str(other)), ["true"])
    assert srv.user in ei.value.message and ei.value.hint


def test_missing_key_file_is_usage_error(srv, tmp_path):
    with pytest.raises(UsageError):
        ssh_exec(srv.target(key_filename=str(tmp_path / "nope")), ["true"])


def test_closed_port_is_host_unreachable(srv):
    with pytest.raises(HostUnreachable) as ei:
        ssh_exec(srv.target(port=free_port()), ["true"])
    assert "127.0.0.1" in ei.value.message and ei.value.hint


def test_unresolvable_name_is_host_unreachable(srv):
    with pytest.raises(HostUnreachable):
        ssh_exec(srv.target(host="no-such-host.invalid"), ["true"])


def test_unknown_host_key_is_refused_with_hint(srv, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(HostKeyError) as ei:
        ssh_exec(srv.target(known_hosts=str(empty)), ["true"])
    assert "not in known_hosts" in ei.value.message
    assert "ssh-keyscan" in (ei.value.hint or "")
    assert isinstance(ei.value, TransportError)


def test_changed_host_key_is_refused(srv, tmp_path):
    other = keygen(tmp_path / "otherhost")
    pub = " ".join((tmp_path / "otherhost.pub").read_text().split()[:2])
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[{srv.host}]:{srv.port} {pub}\n")
    with pytest.raises(HostKeyError) as ei:
        ssh_exec(srv.target(known_hosts=str(kh)), ["true"])
    assert "does not match" in ei.value.message
    assert other.exists()


def test_missing_known_hosts_file_is_refused(srv, tmp_path):
    with pytest.raises(HostKeyError):
        ssh_exec(srv.target(known_hosts=str(tmp_path / "missing")), ["true"])


def test_not_an_ssh_server_is_a_transport_error():
    """A server that accepts and talks garbage: a clear TransportError, quickly."""
    t0 = time.monotonic()
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    port = lsock.getsockname()[1]

    def serve():
        conn, _ = lsock.accept()
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        time.sleep(0.5)
        conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        with pytest.raises(TransportError) as ei:
            ssh_exec(SshTarget("u", "127.0.0.1", port, timeout=3.0), ["true"])
        assert "SSH" in str(ei.value) and "SSH server" in (ei.value.hint or "")
        assert time.monotonic() - t0 < 3
    finally:
        t.join(timeout=3)
        lsock.close()


def test_password_canary_never_in_errors_or_logs(tmp_path, caplog):
    canary = "CANARY-ssh-pw-7d1e9f"
    with sshd_server(tmp_path / "pw", password_auth=True) as s:
        caplog.set_level(logging.DEBUG)
        target = s.target(key_filename=None, password=Secret(canary))
        with pytest.raises(AuthError) as ei:
            ssh_exec(target, ["true"])
    text = " ".join([str(ei.value), ei.value.hint or "", repr(ei.value), repr(target),
                     caplog.text])
    assert canary not in text


@pytest.mark.parametrize("spec,user,host,port", [
    ("ssh://kali@192.0.2.10", "kali", "192.0.2.10", 22),
    ("ssh://kali@scanner.lab:2222", "kali", "scanner.lab", 2222),
    ("ssh://root@[::1]:2200", "root", "::1", 2200),
])
def test_parse_ssh_spec(spec, user, host, port):
    t = parse_ssh_spec(spec, key_filename="~/.ssh/id", timeout=5)
    assert (t.user, t.host, t.port, t.key_filename, t.timeout) == (user, host, port, "~/.ssh/id", 5)


@pytest.mark.parametrize("spec", [
    "kali@host", "ssh://host", "ssh://u:pw@host", "ssh://u@host:99999", "http://u@host",
    "ssh://u@host/path",
])
def test_parse_ssh_spec_rejects(spec):
    with pytest.raises(UsageError):
        parse_ssh_spec(spec)


def test_sshd_helper_gives_a_spec_that_parses(srv):
    t = parse_ssh_spec(srv.spec, key_filename=str(srv.key_path), known_hosts=str(srv.known_hosts))
    assert ssh_exec(t, ["id", "-un"])[1].decode().strip() == srv.user


def test_sshd_helper_accepts_a_given_key_and_environment(tmp_path):
    key = keygen(tmp_path / "mine")
    with sshd_server(tmp_path / "s", client_key=key, setenv={"LABCTL_PROBE": "on air"}) as s:
        assert s.key_path == key.resolve()
        rc, out, _ = ssh_exec(s.target(), ["sh", "-c", 'printf %s "$LABCTL_PROBE"'])
    assert (rc, out) == (0, b"on air")


def test_handshake_failure_prints_no_paramiko_traceback(tmp_path):
    """Outside pytest (no logging configured) paramiko's thread must not dump a traceback on
    stderr next to labctl's own error."""
    import subprocess
    import sys

    code = (
        "import socket, threading, time\n"
        "from labctl.transport.sshexec import ssh_exec, SshTarget\n"
        "l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen(1)\n"
        "def serve():\n"
        "    c, _ = l.accept(); c.sendall(b'HTTP/1.1 400 Bad\\r\\n\\r\\n')\n"
        "    time.sleep(0.3); c.close()\n"
        "threading.Thread(target=serve, daemon=True).start()\n"
        "try:\n"
        "    ssh_exec(SshTarget('u', '127.0.0.1', l.getsockname()[1], timeout=3.0), ['true'])\n"
        "except Exception as e:\n"
        "    print(type(e).__name__)\n"
    )
    root = Path(__file__).resolve().parent.parent
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root,
                       timeout=30)
    assert p.stdout.strip() == "TransportError"
    assert "Traceback" not in p.stderr, p.stderr


def test_sshd_helper_stop_ends_running_sessions(tmp_path):
    """A command still running when the server stops (after a client-side timeout) does not
    outlive the test."""
    import os

    with sshd_server(tmp_path / "s") as s:
        marker = f"60.{os.getpid()}{time.monotonic_ns() % 10**9}"  # a unique sleep length
        with pytest.raises(ConnectTimeout):
            ssh_exec(s.target(), ["sleep", marker], timeout=0.5)

        def running() -> bool:
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        if marker.encode() in f.read():
                            return True
                except OSError:
                    pass
            return False

        assert running()
    deadline = time.monotonic() + 5
    while running() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running()
