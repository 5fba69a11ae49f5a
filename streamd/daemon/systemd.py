"""systemd: its notify protocol (one datagram per message to $NOTIFY_SOCKET, no dependency needed), and
where the shipped unit's sandbox lets the service write (for `streamd check`)."""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

log = logging.getLogger(__name__)

# Long work on the thread that pings the watchdog is wrapped in keepalive(what, limit_s): Notifier.working
# under systemd, no_keepalive elsewhere.
Keepalive = Callable[[str, float], AbstractContextManager[None]]

KEEPALIVE_EVERY_S = 5.0  # how often `working` tells systemd it is still busy (at least twice per watchdog period)


def no_keepalive(what: str, limit_s: float) -> AbstractContextManager[None]:
    return contextlib.nullcontext()


class Notifier:
    """Sends READY=1, WATCHDOG=1, STATUS=..., RELOADING=1, STOPPING=1 and EXTEND_TIMEOUT_USEC=...; a no-op
    outside systemd."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address  # '@' = abstract namespace
        usec = int(env.get("WATCHDOG_USEC", "0") or 0)
        self.watchdog_interval = usec / 2e6 if usec else None  # ping twice per period, as systemd advises
        self._last_ping = 0.0
        self._ping_lock = threading.Lock()  # the main loop and a `working` helper both ping

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
        with self._ping_lock:
            now = time.monotonic()
            if now - self._last_ping < self.watchdog_interval:
                return
            self._last_ping = now
        self.send("WATCHDOG=1")

    @contextlib.contextmanager
    def working(self, what: str, limit_s: float) -> Iterator[None]:
        """Around long work on the main loop's thread (a model load or TensorRT build, cameras whose hosts are
        down being stopped), which would otherwise outlast WatchdogSec or the start or reload timeout: while
        the work lasts, up to `limit_s`, a helper thread pings the watchdog and extends systemd's current
        timeout (EXTEND_TIMEOUT_USEC, which covers the watchdog too), with STATUS= saying what is going on.
        Past `limit_s` the work counts as hung: the helper stops, and systemd's watchdog or timeout acts."""
        if not self.address:
            yield
            return
        done = threading.Event()
        every = min(KEEPALIVE_EVERY_S, self.watchdog_interval or KEEPALIVE_EVERY_S)

        def keep_alive() -> None:
            end = time.monotonic() + limit_s
            while True:
                left = end - time.monotonic()
                if left <= 0:
                    log.error("%s: not done after %g s; taken as hung, no longer keeping the service alive",
                              what, limit_s)
                    return
                # each extension reaches past the next message, never past the limit
                fields = [f"EXTEND_TIMEOUT_USEC={round(min(2 * every, left) * 1e6)}", f"STATUS={what}"]
                if self.watchdog_interval is not None:
                    fields.append("WATCHDOG=1")
                    with self._ping_lock:
                        self._last_ping = time.monotonic()
                self.send(*fields)
                if done.wait(min(every, left)):
                    return

        helper = threading.Thread(target=keep_alive, name="keepalive", daemon=True)
        helper.start()
        try:
            yield
        finally:
            done.set()
            helper.join()


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
