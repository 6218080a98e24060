"""The sd_notify protocol against a real datagram socket."""

from __future__ import annotations

import socket
from pathlib import Path

from bot.systemd import notify, watchdog_interval_s


def test_notify_reaches_a_socket(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        assert notify("READY=1", environ={"NOTIFY_SOCKET": str(path)})
        assert server.recv(100) == b"READY=1"


def test_notify_abstract_socket() -> None:
    name = f"orch-test-{id(object())}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("\0" + name)
        assert notify("WATCHDOG=1", environ={"NOTIFY_SOCKET": "@" + name})
        assert server.recv(100) == b"WATCHDOG=1"


def test_notify_without_systemd_is_a_no_op(tmp_path: Path) -> None:
    assert notify("READY=1", environ={}) is False
    assert notify("READY=1", environ={"NOTIFY_SOCKET": str(tmp_path / "missing")}) is False


def test_watchdog_interval() -> None:
    assert watchdog_interval_s(environ={}) is None
    assert watchdog_interval_s(environ={"WATCHDOG_USEC": "20000000"}) == 10.0
    assert watchdog_interval_s(environ={"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "1"}) is None
