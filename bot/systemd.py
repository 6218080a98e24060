"""The systemd notify protocol (`Type=notify`, `WatchdogSec=`) without a dependency.

systemd passes a datagram socket in `$NOTIFY_SOCKET` (a path, or `@name` for the abstract
namespace). We send `READY=1` once the components are up, `STOPPING=1` on shutdown, and
`WATCHDOG=1` only while the health checks pass, so a hung daemon is restarted by systemd.
Outside systemd every call is a cheap no-op that returns False.
"""

from __future__ import annotations

import os
import socket


def notify(state: str, *, environ: dict[str, str] | None = None) -> bool:
    """Send one notification (e.g. "READY=1"); True when a notify socket received it."""
    address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET")
    if not address:
        return False
    target = "\0" + address[1:] if address.startswith("@") else address
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK) as sock:
            sock.connect(target)
            # Non-blocking: a receiver that stopped reading must never stall the daemon's loop.
            sock.send(state.encode("utf-8"), socket.MSG_DONTWAIT)
    except OSError:  # includes BlockingIOError when the receiver's queue is full
        return False
    return True


def watchdog_interval_s(*, environ: dict[str, str] | None = None) -> float | None:
    """How often to feed the watchdog (half of WatchdogSec), or None when it is off for us."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC")
    if not usec or not usec.isdigit() or int(usec) == 0:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(usec) / 1_000_000 / 2
