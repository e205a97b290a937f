"""sd_notify with the standard library: READY, WATCHDOG, RELOADING and STOPPING."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping


class SystemdNotifier:
    """Sends notifications to the socket systemd names in NOTIFY_SOCKET; silent without one."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        address = environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]  # an abstract-namespace socket
        self.address = address or None
        usec = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        watchdog = usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid()))
        self.watchdog_interval = int(usec) / 1e6 / 2 if watchdog else None

    def notify(self, *lines: str) -> bool:
        """Send one datagram; False if there is no socket or it could not be sent."""
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto("\n".join(lines).encode(), self.address)
            return True
        except OSError:
            return False

    def ready(self, status: str = "") -> bool:
        """Tell systemd the service is up."""
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> bool:
        """Tell systemd a reload has begun."""
        monotonic_usec = int(time.clock_gettime(time.CLOCK_MONOTONIC) * 1e6)
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec}")

    def stopping(self) -> bool:
        """Tell systemd the service is shutting down."""
        return self.notify("STOPPING=1")

    def watchdog(self) -> bool:
        """Pet the watchdog."""
        return self.notify("WATCHDOG=1")
