"""systemd: its notify protocol (one datagram per message to $NOTIFY_SOCKET, no dependency needed), and
where the shipped unit's sandbox lets the service write (for `streamd check`)."""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path


class Notifier:
    """Sends READY=1, WATCHDOG=1, STATUS=..., RELOADING=1 and STOPPING=1; a no-op outside systemd."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address  # '@' = abstract namespace
        usec = int(env.get("WATCHDOG_USEC", "0") or 0)
        self.watchdog_interval = usec / 2e6 if usec else None  # ping twice per period, as systemd advises
        self._last_ping = 0.0

    def send(self, *fields: str) -> None:
        if not self.address:
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            try:
                s.sendto("\n".join(fields).encode(), self.address)
            except OSError:
                pass  # systemd went away (shutdown); nothing to tell

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        self.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def watchdog(self) -> None:
        """Ping if half the watchdog period has passed; call it from the main loop."""
        if self.watchdog_interval is None:
            return
        now = time.monotonic()
        if now - self._last_ping >= self.watchdog_interval:
            self.send("WATCHDOG=1")
            self._last_ping = now


# Where systemd's directory settings put a service's own directories (it creates them, owned by User=).
_MANAGED = {"StateDirectory": "/var/lib", "CacheDirectory": "/var/cache", "LogsDirectory": "/var/log",
            "RuntimeDirectory": "/run"}


def unit_settings(texts: list[str]) -> dict[str, list[str]]:
    """The [Service] settings of a unit file and its drop-ins, in order: values of a setting that may be
    given more than once accumulate, and an empty assignment clears it (as systemd reads them)."""
    settings: dict[str, list[str]] = {}
    for text in texts:
        section = ""
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("["):
                section = line.strip("[]")
            elif section == "Service" and "=" in line:
                key, _, value = line.partition("=")
                key, value = key.strip(), value.strip()
                settings[key] = settings.get(key, []) + value.split() if value else []
    return settings


def writable_paths(texts: list[str], instance: str) -> tuple[list[Path], list[Path]] | None:
    """Where a service of this unit (file and drop-ins) may write: (the directories systemd creates for it,
    ReadWritePaths=); None when the unit leaves the file system writable (no ProtectSystem=strict).
    /tmp is private to the service (PrivateTmp=) and emptied when it stops, so it is not counted."""
    settings = unit_settings(texts)
    if (settings.get("ProtectSystem") or [""])[-1] != "strict":
        return None

    def expand(value: str) -> str:
        return value.replace("%%", "\0").replace("%i", instance).replace("%I", instance).replace("\0", "%")

    managed = [Path(base) / expand(v) for key, base in _MANAGED.items() for v in settings.get(key, [])]
    listed = [Path(expand(v.lstrip("-+"))) for v in settings.get("ReadWritePaths", [])]
    return managed, listed
