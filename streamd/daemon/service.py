"""The daemon's main loop (`streamd run`): the pipeline and its HTTP listener started, then signals (SIGTERM
stop, SIGHUP reload, SIGINT), systemd notifications and watchdog pings, status lines, reloads and the stall
check until a stop; and the end of the process past threads a stop gave up on."""
from __future__ import annotations

import errno
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from streamd import config as cfgmod
from streamd.daemon import fleet
from streamd.daemon.health import HealthServer
from streamd.daemon.pipeline import Pipeline
from streamd.daemon.preflight import state_problem
from streamd.daemon.recording import space_warnings
from streamd.daemon.systemd import Notifier

log = logging.getLogger("streamd")
LOOP_S = 0.2  # the main loop's round: signals, reloads, the watchdog, status lines


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def status_lines(pipeline, elapsed: float, previous: dict[str, int]) -> list[str]:
    lines = []
    for name, r in pipeline.cameras.items():
        out = r.outputs
        lat = list(out.latencies_ms)[-200:]
        fps = (out.published - previous.get(name, 0)) / max(elapsed, 1e-6)
        previous[name] = out.published
        skipped = r.reuse.reused + r.reuse.carried if r.reuse else 0
        reused = (f" ({r.reuse.reused} reusing a still scene's prediction, {r.reuse.carried} carrying it along the "
                  f"flow)") if skipped else ""
        gray = f"gray {r.uncolorized} (inference unavailable), " if r.uncolorized else ""
        lines.append(f"{name}: {r.state()}, {fps:.1f} fps out, colorized {r.colorized}{reused}, "
                     f"passed {r.passed_through}, {gray}dropped {pipeline.dropped(name)}, "
                     f"latency p50 {_percentile(lat, 50):.0f} ms p99 {_percentile(lat, 99):.0f} ms")
    return lines


def summary(pipeline) -> str:
    """One line for systemd's STATUS=: how many cameras run, frames colorized and passed through."""
    states = [r.state() for r in pipeline.cameras.values()]
    return (f"{states.count('running')}/{len(states)} cameras running; "
            f"{sum(r.colorized for r in pipeline.cameras.values())} frames colorized, "
            f"{sum(r.passed_through for r in pipeline.cameras.values())} passed through")


class Daemon:
    """The main loop of `streamd run`: signals, systemd notifications, reloads, status lines."""

    def __init__(self, pipeline, config_path: Path | None, report_every: float, http=None, notifier=None,
                 load: Callable[[Path], cfgmod.Config] = cfgmod.load) -> None:
        """`load` reads the config again on reload (with the command line's overrides)."""
        self.pipeline, self.config_path, self.report_every, self.http = pipeline, config_path, report_every, http
        self.load = load
        self.notifier = notifier or Notifier()
        # Set by the signal handlers, which must take no lock: a handler runs in the main thread between two
        # of its bytecodes, maybe while that thread holds the very lock (Event.wait's), and would wait forever
        # for itself. Plain flags, read by the main loop every LOOP_S.
        self.stop_requested = False
        self.reload_requested = False
        self.failure: str | None = None  # why the loop gave up (a stalled pipeline); None: a normal stop
        self.interrupted = False  # stopped by SIGINT (Ctrl-C): exit 130, as a shell expects

    def install_signals(self) -> None:
        def interrupt(*_) -> None:
            self.interrupted = True
            self.stop_requested = True

        def terminate(*_) -> None:  # systemd's stop: a normal end, exit 0
            self.stop_requested = True

        def reload(*_) -> None:
            self.reload_requested = True

        signal.signal(signal.SIGINT, interrupt)
        signal.signal(signal.SIGTERM, terminate)
        signal.signal(signal.SIGHUP, reload)

    def _reload(self) -> None:
        self.reload_requested = False
        if self.config_path is None:
            log.warning("reload: nothing to re-read (started without -c CONFIG)")
            return
        self.notifier.reloading()
        try:
            config = self.load(self.config_path)
        except cfgmod.ConfigError as e:
            log.error("reload refused, the running configuration stays: %s", e)
        except Exception:  # a fault in reading a config must not end a daemon that runs on a good one
            log.exception("reload refused, the running configuration stays: reading %s failed", self.config_path)
        else:
            changes = self.pipeline.apply(config)
            log.info("reload: %s", "; ".join(changes) or "no camera changed")
        self.notifier.ready(summary(self.pipeline))

    def run(self) -> None:
        self.pipeline.start()
        if self.http:
            self.http.start()
            self.http.phase = "running"
            log.info("status page on http://%s:%d/ (health: /healthz, metrics: /metrics)", *self.http.address[:2])
        self.notifier.ready(summary(self.pipeline))
        last = time.monotonic()
        previous: dict[str, int] = {}
        try:
            while True:
                time.sleep(LOOP_S)  # a signal's handler runs at once; the loop sees its flag after the sleep
                if self.stop_requested:
                    break
                self.failure = self.pipeline.stalled()
                if self.failure:  # no watchdog ping either: a restart is what helps
                    log.error("%s; exiting for the supervisor (systemd: Restart=on-failure) to restart streamd",
                              self.failure)
                    break
                self.notifier.watchdog()
                if self.http:
                    self.http.beat = time.monotonic()
                if self.reload_requested:
                    self._reload()
                now = time.monotonic()
                if now - last >= self.report_every:
                    for line in status_lines(self.pipeline, now - last, previous):
                        print(line, flush=True)
                    self.notifier.status(summary(self.pipeline))
                    last = now
                if self.pipeline.cameras and self.pipeline.finished():  # a shard may have none, and wait
                    time.sleep(0.3)  # let the outputs publish what is in flight
                    break
        finally:
            if self.http:
                self.http.phase = "stopping"
            self.notifier.stopping()
            self.pipeline.stop()
            if self.http:
                self.http.stop()


def run(cfg: cfgmod.Config, config_path: Path | None, report_every: float, shard: fleet.Shard | None,
        load: Callable[[Path], cfgmod.Config]) -> Daemon:
    """`streamd run` once its config is read: the cameras of `shard`, the HTTP listener where the config has
    one, and the main loop until a stop; returns the Daemon, which says how it ended. A config this host
    cannot start raises ConfigError before the model loads."""
    for warning in space_warnings(fleet.mine(cfg.cameras, shard)):
        log.warning(warning)
    problem = state_problem(cfg, fleet.mine(cfg.cameras, shard))
    if problem:  # before the model loads: a start that cannot succeed should end at once
        raise cfgmod.ConfigError(problem)
    notifier = Notifier()
    pipeline = Pipeline(cfg, keepalive=notifier.working, shard=shard)
    http = None
    if cfg.http.listen:
        host, _, port = cfg.http.listen.rpartition(":")
        try:
            http = HealthServer(pipeline, pipeline.instruments.registry, host, int(port), cfg.http.token)
        except OSError as e:
            pipeline.stop()
            raise cfgmod.ConfigError(f"http.listen: cannot listen on {cfg.http.listen}: {e.strerror}"
                                     f"{cfgmod.in_use_hint('--http') if e.errno == errno.EADDRINUSE else ''}") from e
    daemon = Daemon(pipeline, config_path, report_every, http, notifier, load)
    daemon.install_signals()
    log.info("streamd running %d camera(s)%s", len(pipeline.mine(cfg)),
             f", ZeroMQ on {pipeline.publisher.endpoint}" if pipeline.publisher else "")
    daemon.run()
    return daemon


def leave(code: int) -> int:
    """The end of `streamd run`, once the pipeline has stopped. A stop gives up on threads that outlive its
    deadline (a camera stuck connecting to a host that never answers, inside FFmpeg); Python's teardown
    of the interpreter under such a thread can crash the process after a clean stop (exit -11 instead of 0).
    With any left, the process ends here, its output flushed, without that teardown."""
    if all(t is threading.main_thread() or not t.is_alive() for t in threading.enumerate()):
        return code
    log.debug("exiting past %d thread(s) the stop gave up on", threading.active_count() - 1)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
