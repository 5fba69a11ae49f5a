"""Adaptation inside the daemon: on a schedule or on request, one camera at a time, at the lowest priority.

Each run is `streamd adapt` on the camera's store (streamd.collect) in a child process: a process, not a
thread, so that training never holds the interpreter lock the live frames need, and at SCHED_IDLE (nice 19
where that is not available), so that it only gets CPU time no live frame wants. A model that beats the
generic one on the camera's held-back frames is written as `<state>/<camera>/<camera>-<time>.onnx` (its model
id: `<camera>-<time>-adapted`) and handed to
the pipeline, which swaps it in between two frames; one that does not is dropped and the camera keeps its
model. The outcome of each run is kept in `<state>/<camera>/adapted.json`.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable

from streamd.config import AdaptConfig

log = logging.getLogger(__name__)

POLL_S = 30.0  # how often the schedule is looked at when nothing is requested


def lowest_priority() -> None:
    """Runs in the child before exec: idle scheduling class, else the highest niceness."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.nice(19)


def adapted_model(camera_dir: Path) -> Path | None:
    """The camera's newest adapted model, if it has one."""
    models = sorted(camera_dir.glob("*.onnx"), key=lambda p: p.stat().st_mtime)
    return models[-1] if models else None


class AdaptationScheduler:
    """Owns the thread that starts adaptation runs and the child process of the current one.

    `cameras()` names the cameras that may be adapted (those that collect and have no model fixed in the
    config); `on_adapted(camera, model_path)` is called, on this scheduler's thread, with each model kept.
    """

    def __init__(self, state_dir: Path, settings: AdaptConfig, cameras: Callable[[], list[str]],
                 on_adapted: Callable[[str, Path], None], init: Path | None = None) -> None:
        self.state_dir, self.settings, self.cameras, self.on_adapted, self.init = (
            state_dir, settings, cameras, on_adapted, init)
        self._requests: deque[str] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._child: subprocess.Popen | None = None
        self.running: str | None = None  # the camera being adapted now
        self.results: dict[str, int] = {"kept": 0, "rejected": 0, "failed": 0}
        self._thread = threading.Thread(target=self._loop, name="adaptation", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        with self._lock:
            if self._child and self._child.poll() is None:
                self._child.terminate()
        if self._thread.is_alive():
            self._thread.join(10.0)

    def request(self, camera: str) -> str:
        """Queue a camera for adaptation now; says what happened: queued, already queued, or running."""
        if camera not in self.cameras():
            raise KeyError(camera)
        with self._lock:
            if self.running == camera:
                return "running"
            if camera in self._requests:
                return "already queued"
            self._requests.append(camera)
        self._wake.set()
        return "queued"

    def state(self, camera: str) -> dict:
        """The last run's outcome for the camera ({} if none)."""
        try:
            return json.loads((self.state_dir / camera / "adapted.json").read_text())
        except (OSError, ValueError):
            return {}

    # -- the scheduler's thread ------------------------------------------------------------------------
    def due(self) -> str | None:
        """The camera the schedule adapts next: of those whose last run is `every_h` old and whose store is
        large enough, the one that has waited longest. None if none is due or there is no schedule."""
        if self.settings.every_h <= 0:
            return None
        due = []
        for camera in self.cameras():
            last = self.state(camera).get("finished", 0.0)
            if time.time() - last >= self.settings.every_h * 3600 and self._stored(camera) >= self.settings.min_frames:
                due.append((last, camera))
        return min(due)[1] if due else None

    def _stored(self, camera: str) -> int:
        """Frames in the camera's store (streamd.collect), counted on disk: the store lives in the pipeline."""
        return len(list((self.state_dir / camera).glob("*.jpg")))

    def _next(self) -> str | None:
        with self._lock:
            if self._requests:
                return self._requests.popleft()
        return self.due()

    def _loop(self) -> None:
        while not self._stop.is_set():
            camera = self._next()
            if camera is None:
                self._wake.wait(POLL_S)
                self._wake.clear()
                continue
            try:
                self._adapt(camera)
            except Exception:  # the schedule goes on with the next camera
                log.exception("adaptation of %s failed", camera)
                self.results["failed"] += 1

    def _adapt(self, camera: str) -> None:
        folder = self.state_dir / camera
        stored = self._stored(camera)
        if stored < self.settings.min_frames:
            log.warning("adaptation of %s skipped: %d frames stored, %d needed", camera, stored,
                        self.settings.min_frames)
            self._record(camera, "skipped", f"{stored} frames stored, {self.settings.min_frames} needed")
            return
        if importlib.util.find_spec("torch") is None:
            log.error("adaptation of %s: training needs the train extra (pip install 'streamd[train]')", camera)
            self.results["failed"] += 1
            self._record(camera, "failed", "torch is not installed (pip install 'streamd[train]')")
            return
        started = time.time()
        out = folder / f"{camera}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(started))}.onnx"
        report = folder / "adapt-report.json"
        report.unlink(missing_ok=True)  # the outcome is read from this run's report, not the exit status
        cmd = [sys.executable, "-m", "streamd", "adapt", str(folder), "-o", str(out),
               "--budget-minutes", str(self.settings.budget_minutes), "--json", str(report)]
        if self.init:
            cmd += ["--init", str(self.init)]
        log.info("adapting %s on %d stored frames (budget %.1f min, lowest CPU priority)", camera, stored,
                 self.settings.budget_minutes)
        with self._lock:
            if self._stop.is_set():
                return
            self.running = camera
            with open(folder / "adapt.log", "w") as output:
                self._child = subprocess.Popen(cmd, stdout=output, stderr=subprocess.STDOUT,
                                               preexec_fn=lowest_priority)
        try:
            code = self._child.wait()
        finally:
            with self._lock:
                self.running, self._child = None, None
        if self._stop.is_set():
            return
        kept = json.loads(report.read_text()).get("kept") if report.exists() else None
        if kept and out.exists():
            previous = [p for p in folder.glob("*.onnx") if p != out]
            try:
                self.on_adapted(camera, out)  # in use before the outcome says so: readers of either agree
            except Exception as e:  # the camera keeps its current model, and a restart must not pick this one
                log.exception("adaptation of %s: the adapted model cannot be used", camera)
                for sibling in (out, out.with_suffix(".pt"), out.with_suffix(".md")):
                    sibling.unlink(missing_ok=True)
                self.results["failed"] += 1
                self._record(camera, "failed", f"the adapted model cannot be used: {e}", started, report)
                return
            self.results["kept"] += 1
            self._record(camera, "kept", str(out), started, report)
            for old in previous:  # the camera no longer uses them
                for sibling in (old, old.with_suffix(".pt"), old.with_suffix(".md")):
                    sibling.unlink(missing_ok=True)
        elif kept is False:
            self.results["rejected"] += 1
            self._record(camera, "rejected", "not better than the current model on held-back frames", started, report)
            log.info("adaptation of %s: the adapted model is not better; keeping the current one", camera)
        else:
            self.results["failed"] += 1
            tail = (folder / "adapt.log").read_text()[-500:]
            self._record(camera, "failed", f"exit status {code}", started)
            log.error("adaptation of %s failed (exit status %s): %s", camera, code, tail)

    def _record(self, camera: str, outcome: str, detail: str, started: float | None = None,
                report: Path | None = None) -> None:
        doc = {"outcome": outcome, "detail": detail, "started": started, "finished": time.time()}
        if report and report.exists():
            doc["report"] = json.loads(report.read_text())
        path = self.state_dir / camera / "adapted.json"
        path.write_text(json.dumps(doc, indent=2))
        log.info("adaptation of %s: %s (%s)", camera, outcome, detail)
