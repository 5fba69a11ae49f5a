"""Adaptation inside the daemon: by itself or on request, one camera at a time, at the lowest priority.

A camera is adapted without being asked once its store (streamd.daemon.collect) is ready: at least `min_frames` day
frames spread over at least `min_span_h` hours (the store already skips near-duplicates, so these are
different views and lights). It is adapted again once `readapt_share` of its store is newer than the frames
its last run saw: the store has turned over (a new season, a moved camera, new light). Runs, automatic
or requested, share a daily CPU budget: the child's real CPU time (all its threads, as the kernel reports it)
is counted in a ledger of the last 24 hours kept in the state directory, a run starts (or a request is taken)
only when at least half a run fits into what is left, and its training time is shortened to fit.

Each run is `streamd adapt` on the camera's store in a child process: a process, not a thread, so that
training never holds the interpreter lock the live frames need. The child is the leader of its own process
group (start_new_session, no code between fork and exec) and puts itself in the idle CPU class first thing
(`--idle-priority`: SCHED_IDLE, nice 19 where that is not available), so that it only gets CPU time no live
frame wants. A child still running `grace_minutes` after its budget is killed with its whole process group.

A model that beats the camera's current one (its adapted model, else the generic one) on the camera's
held-back frames is written as `<state>/<camera>/<camera>-<time>.onnx` (its model id:
`<camera>-<time>-adapted`, with an int8 copy beside it) and handed to the pipeline, which swaps it in between
two frames; one that does not is dropped and the camera keeps its model. The outcome of each run is kept in
`<state>/<camera>/adapted.json`, and in memory, so that a state directory that cannot be written does not
make the schedule run the same camera again and again. Failures back off per camera, exponentially.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable

from streamd.tools.adapt import WORK_SUFFIX
from streamd.daemon.collect import capture_time, stored_frames
from streamd.config import AdaptConfig
from streamd.infer.onnx_runtime import int8_copy

log = logging.getLogger(__name__)

POLL_S = 30.0  # how often the schedule is looked at when nothing is requested
BACKOFF_FIRST_S = 30.0  # a failure keeps the camera out of the schedule this long, doubling with each one
BACKOFF_MAX_S = 3600.0
DAY_S = 24 * 3600.0  # the daily budget's window
CLOCK_SLACK_S = 300.0  # a time this far ahead of the clock is of a clock that was wrong, not of a small correction
WAIT_STEP_S = 0.25  # how often a running child is looked at (its exit, its deadline, a stop)
# The run in progress and the CPU time its child has used, rewritten this often: when the daemon dies with its
# child (SIGKILL, a crash: nobody reaps the child to read its rusage), the next start charges what it says
RUNNING = "adapt-running.json"
NOTE_EVERY_S = 5.0
OUTCOMES = ("kept", "rejected", "failed", "timeout")


def lowest_priority() -> None:
    """Put every thread of this process in the idle scheduling class, or at nice 19 where that class is not
    available; threads started later inherit it from their creator."""
    try:
        threads = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        threads = [0]  # the calling thread
    for tid in threads:
        try:
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
            continue
        except ProcessLookupError:  # a thread that ended meanwhile
            continue
        except (AttributeError, OSError):
            pass
        try:
            os.setpriority(os.PRIO_PROCESS, tid, 19)
        except ProcessLookupError:
            pass


def end_with_parent(parent_pid: int) -> None:
    """Have the kernel kill this process (SIGKILL) when the daemon that started it ends, however it ends (a
    crash or SIGKILL outside systemd's control group): a run nobody waits for must not go on, or a restarted
    daemon's next run of the same camera would share its files. Linux only; elsewhere nothing happens."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the daemon ended before the request took effect
        os._exit(1)


def adapted_model(camera_dir: Path) -> Path | None:
    """The camera's newest adapted model, if it has one (not its int8 copy, which the runtime picks itself)."""
    models = sorted((p for p in camera_dir.glob("*.onnx") if not p.stem.endswith("-int8")),
                    key=lambda p: p.stat().st_mtime)
    return models[-1] if models else None


def remove_model(model: Path) -> None:
    """An adapted model and what belongs to it: its weights, card and int8 copy."""
    for sibling in (model, model.with_suffix(".pt"), model.with_suffix(".md"), int8_copy(model)):
        sibling.unlink(missing_ok=True)


def remove_leftovers(folder: Path) -> list[Path]:
    """The scratch folders (streamd.tools.adapt.work_folder: weights, candidate models, files half written) that
    killed runs left in a camera's folder; a run that ends by itself removes its own. Returns those removed."""
    leftovers = [p for p in folder.glob(f".*{WORK_SUFFIX}") if p.is_dir() and not p.is_symlink()]
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)
    return leftovers


def child_cpu_seconds(pid: int) -> float:
    """The CPU time (user and system, all threads) a running child has used so far: what its rusage says when
    it is reaped."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def backoff_s(failures: int) -> float:
    return min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (failures - 1))


class BudgetSpent(Exception):
    """A requested run that would not fit into what is left of the day's CPU budget."""


class RecordError(Exception):
    """A run's outcome could not be written to the state directory (it is still kept in memory)."""


class CpuLedger:
    """The CPU seconds adaptation runs used in the last 24 hours, in a file, so that a restart does not give
    the day's budget back. A file that cannot be written leaves the ledger in memory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.runs: list[tuple[float, float]] = []  # (finished, CPU seconds)
        try:
            self.runs = [(float(t), float(s)) for t, s in json.loads(path.read_text())]
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError) as e:
            log.warning("adaptation: cannot read the CPU ledger %s (%s); counting from zero", path, e)

    def spent(self, now: float | None = None) -> float:
        now = time.time() if now is None else now
        return sum(s for t, s in self._today(now))

    def add(self, cpu_s: float, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self.runs = self._today(now) + [(now, cpu_s)]
        try:
            tmp = self.path.with_name(f".{self.path.name}.part")
            tmp.write_text(json.dumps(self.runs))
            os.replace(tmp, self.path)
        except OSError as e:
            log.error("adaptation: cannot write the CPU ledger %s (%s); a restart will not know today's runs",
                      self.path, e)

    def _today(self, now: float) -> list[tuple[float, float]]:
        """The runs of the last 24 hours. A run dated later than now was recorded under a clock that was wrong
        (set ahead, then corrected): it is dropped, or it would hold the budget for as long as the clock was
        ahead."""
        return [(t, s) for t, s in self.runs if 0 <= now - t + CLOCK_SLACK_S and now - t < DAY_S]


class AdaptationScheduler:
    """Owns the thread that starts adaptation runs and the child process of the current one.

    `cameras()` names the cameras that may be adapted (those that collect and have no model fixed in the
    config); `on_adapted(camera, model_path)` is called, on this scheduler's thread, with each model kept.
    `init`: the weights runs start from (default: the shipped ones); `generic`: the generic ONNX model the
    cameras run until adapted (default: the shipped one).
    """

    def __init__(self, state_dir: Path, settings: AdaptConfig, cameras: Callable[[], list[str]],
                 on_adapted: Callable[[str, Path], None], init: Path | None = None,
                 generic: Path | None = None) -> None:
        self.state_dir, self.settings, self.cameras, self.on_adapted, self.init, self.generic = (
            state_dir, settings, cameras, on_adapted, init, generic)
        self.threads = settings.threads or os.cpu_count() or 1
        self.ledger = CpuLedger(state_dir / "adapt-cpu.json")
        self._requests: deque[str] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._child: subprocess.Popen | None = None
        self._last: dict[str, dict] = {}  # each camera's last outcome, also when it could not be written
        self._failures: dict[str, int] = {}  # failures in a row, per camera
        self._retry_at: dict[str, float] = {}  # monotonic time before which the schedule leaves a camera alone
        self._budget_spent_logged = False
        self.trainable = importlib.util.find_spec("torch") is not None
        self.running: str | None = None  # the camera being adapted now
        self.results: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        self.cpu_seconds = 0.0  # the children's CPU time, all runs of this process
        self._thread = threading.Thread(target=self._loop, name="adaptation", daemon=True)

    @property
    def scheduled(self) -> bool:
        """Whether runs start without a request."""
        return self.settings.auto or self.settings.every_h > 0

    def start(self) -> None:
        if self.scheduled and not self.trainable:
            log.warning("automatic adaptation is off: training needs torch (pip install 'streamd[train]'); "
                        "cameras keep the generic model")
        self._thread.start()

    def stop(self) -> None:
        """Stop the schedule; a running child is killed (with its process group) by the scheduler's thread."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(10.0)

    def request(self, camera: str) -> str:
        """Queue a camera for adaptation now; says what happened: queued, already queued, or running. A request
        is held to the daily CPU budget as the schedule's runs are (BudgetSpent when not half a run fits)."""
        if camera not in self.cameras():
            raise KeyError(camera)
        if self.run_budget_s() is None:
            raise BudgetSpent(f"the daily adaptation budget is spent ({self.ledger.spent() / 60:.1f} of "
                              f"{self.settings.daily_budget_minutes:g} CPU minutes in the last 24 h)")
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
        if camera in self._last:
            return self._last[camera]
        try:
            return json.loads((self.state_dir / camera / "adapted.json").read_text())
        except (OSError, ValueError):
            return {}

    def current_model(self, camera: str) -> Path | None:
        """The model the camera runs now, which an adapted one must beat: its adapted model, else the generic
        one (None: the shipped model)."""
        return adapted_model(self.state_dir / camera) or self.generic

    # -- the schedule ----------------------------------------------------------------------------------
    def why_due(self, camera: str, now: float | None = None) -> str | None:
        """Why the schedule would adapt the camera now (None: it would not): its store is ready and it was
        never adapted, or its store has turned over since, or (every_h) its last run is that old."""
        s, now = self.settings, time.time() if now is None else now
        frames = stored_frames(self.state_dir / camera)
        if len(frames) < s.min_frames:
            return None
        span_h = (capture_time(frames[-1]) - capture_time(frames[0])) / 3600
        if span_h < s.min_span_h:
            return None
        last = self.state(camera)
        if s.auto:
            if not last:
                return f"its store holds {len(frames)} day frames over {span_h:.1f} h"
            # Frames named under a clock that was ahead sort after every frame named since: they are neither
            # "new" nor a valid mark of what the last run saw
            future = now + CLOCK_SLACK_S
            seen = last.get("newest_frame")
            if seen is not None and capture_time(Path(seen)) > future:
                seen = None
            new = sum(1 for f in frames if capture_time(f) <= future and (seen is None or f.name > seen)) / len(frames)
            if new >= s.readapt_share:
                return f"{new:.0%} of its {len(frames)} stored frames are newer than its last run"
        finished = last.get("finished", 0.0)
        if s.every_h > 0 and (now - finished >= s.every_h * 3600 or finished > now + CLOCK_SLACK_S):
            return f"its last run is more than {s.every_h:g} h old"
        return None

    def run_budget_s(self, now: float | None = None) -> float | None:
        """Training time of the next automatic run: budget_minutes, shortened so that its CPU time (at most
        `threads` cores) fits into what is left of the daily budget; None when not even half a run fits."""
        left = self.settings.daily_budget_minutes * 60 - self.ledger.spent(now)
        full, fits = self.settings.budget_minutes * 60, left / self.threads
        return None if fits < full / 2 else min(full, fits)

    def due(self) -> tuple[str, str] | None:
        """(camera, why) for the camera the schedule adapts next: of those due, the one whose last run is
        oldest. None if none is due, automatic runs are off, or the day's CPU budget is spent."""
        if not self.scheduled or not self.trainable:
            return None
        now, clock = time.time(), time.monotonic()
        due = []
        for camera in self.cameras():
            if self._retry_at.get(camera, 0.0) > clock:
                continue
            why = self.why_due(camera, now)
            if why:
                due.append((self.state(camera).get("finished", 0.0), camera, why))
        if not due:
            return None
        if self.run_budget_s(now) is None:
            if not self._budget_spent_logged:
                log.info("adaptation: the daily CPU budget is spent (%.1f of %g min in the last 24 h); %s waits",
                         self.ledger.spent(now) / 60, self.settings.daily_budget_minutes,
                         ", ".join(sorted(c for _, c, _ in due)))
                self._budget_spent_logged = True
            return None
        self._budget_spent_logged = False
        _, camera, why = min(due)
        return camera, why

    def _next(self) -> tuple[str, str | None] | None:
        """(camera, why) of the next run; why is None for a request."""
        with self._lock:
            if self._requests:
                return self._requests.popleft(), None
        return self.due()

    def _tidy_after_the_previous_process(self) -> None:
        """What a daemon that ended during a run (SIGKILL, a crash, a power cut) left behind: the run's CPU time,
        charged as far as it was noted, and the scratch folders of runs killed with it."""
        marker = self.state_dir / RUNNING
        try:
            run = json.loads(marker.read_text())
            cpu_s = float(run["cpu_seconds"])
            self.ledger.add(cpu_s)
            log.warning("adaptation: the run of %s ended with the previous process; its %.1f s of CPU time are "
                        "charged to the daily budget", run.get("camera"), cpu_s)
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError, KeyError) as e:
            log.warning("adaptation: cannot read %s (%s); the run it notes is not charged", marker, e)
        marker.unlink(missing_ok=True)
        for folder in (p for p in self.state_dir.glob("*") if p.is_dir() and not p.is_symlink()):
            for path in remove_leftovers(folder):
                log.info("adaptation: removed %s, left by a run that was killed", path)

    def _note_running(self, camera: str, cpu_s: float) -> None:
        """Keep the run's CPU time so far where the next start finds it (RUNNING)."""
        path = self.state_dir / RUNNING
        part = path.with_name(f".{RUNNING}.part")
        try:
            part.write_text(json.dumps({"camera": camera, "cpu_seconds": cpu_s}))
            os.replace(part, path)
        except OSError as e:  # the ledger will say so too, if it cannot be written either
            log.debug("adaptation: cannot note the run in progress in %s: %s", path, e)

    def _loop(self) -> None:
        try:
            self._tidy_after_the_previous_process()
        except Exception:  # a state directory that cannot be read must not keep adaptation from running
            log.exception("adaptation: tidying up after the previous process failed")
        failures = 0  # in a row, of the schedule itself (not of one camera's run)
        while not self._stop.is_set():
            try:
                chosen = self._next()
                failures = 0
            except Exception:
                failures += 1
                log.exception("adaptation: the schedule failed; next look in %.0f s", backoff_s(failures))
                self._stop.wait(backoff_s(failures))
                continue
            if chosen is None:
                self._wake.wait(POLL_S)
                self._wake.clear()
                continue
            camera, why = chosen
            try:
                self._adapt(camera, why)
                self._failures.pop(camera, None)
            except Exception as e:
                if not isinstance(e, RecordError):  # a record that failed belongs to a run already counted
                    self.results["failed"] += 1
                n = self._failures[camera] = self._failures.get(camera, 0) + 1
                self._retry_at[camera] = time.monotonic() + backoff_s(n)
                log.error("adaptation of %s failed (%s); the schedule leaves it alone for %.0f s", camera,
                          e, backoff_s(n), exc_info=not isinstance(e, RecordError))

    # -- one run ---------------------------------------------------------------------------------------
    def _adapt(self, camera: str, why: str | None) -> None:
        folder, s = self.state_dir / camera, self.settings
        frames = stored_frames(folder)
        if len(frames) < s.min_frames:
            log.warning("adaptation of %s skipped: %d frames stored, %d needed", camera, len(frames), s.min_frames)
            self._record(camera, "skipped", f"{len(frames)} frames stored, {s.min_frames} needed")
            return
        if not self.trainable:
            log.error("adaptation of %s: training needs the train extra (pip install 'streamd[train]')", camera)
            self.results["failed"] += 1
            self._record(camera, "failed", "torch is not installed (pip install 'streamd[train]')")
            return
        budget_s = self.run_budget_s()  # shortened to what is left of the day's budget, requested or not
        if budget_s is None:  # spent since the camera was chosen or requested
            if why is None:
                self._record(camera, "skipped", "the daily CPU budget was spent before the requested run started")
            return
        deadline_s = budget_s + s.grace_minutes * 60
        started = time.time()
        out = folder / f"{camera}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(started))}.onnx"
        report = folder / "adapt-report.json"
        report.unlink(missing_ok=True)  # the outcome is read from this run's report, not the exit status
        current = self.current_model(camera)
        cmd = [sys.executable, "-m", "streamd", "adapt", str(folder), "-o", str(out), "--json", str(report),
               "--budget-minutes", f"{budget_s / 60:.4f}", "--device", s.device, "--threads", str(self.threads),
               "--idle-priority", "--parent", str(os.getpid())]
        if self.init:
            cmd += ["--init", str(self.init)]
        if current:
            cmd += ["--against", str(current)]
        log.info("adapting %s (%s): %d stored frames, %.1f min of training on %s (%d threads, idle CPU class), "
                 "killed after %.1f min; it must beat %s", camera, why or "requested", len(frames), budget_s / 60,
                 s.device, self.threads, deadline_s / 60, current.name if current else "the shipped model")
        with self._lock:
            if self._stop.is_set():
                return
            with open(folder / "adapt.log", "w") as output:
                self._child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=output,
                                               stderr=subprocess.STDOUT, start_new_session=True)
            self.running = camera
        self._note_running(camera, 0.0)
        try:
            code, cpu_s, timed_out = self._wait(self._child, deadline_s, lambda used: self._note_running(camera, used))
        finally:
            with self._lock:
                self.running, self._child = None, None
        self.cpu_seconds += cpu_s
        self.ledger.add(cpu_s)
        (self.state_dir / RUNNING).unlink(missing_ok=True)  # after the ledger: a crash between charges it twice
        remove_leftovers(folder)  # a killed child's scratch folder (one that ended by itself removed its own)
        future = time.time() + CLOCK_SLACK_S  # frames named under a clock that was ahead do not mark what it saw
        newest = next((f for f in reversed(frames) if capture_time(f) <= future), frames[-1])
        seen = {"newest_frame": newest.name, "frames": len(frames), "cpu_seconds": round(cpu_s, 2),
                "budget_minutes": round(budget_s / 60, 4)}
        if self._stop.is_set():
            return  # killed by the daemon's stop: no outcome
        if timed_out:
            remove_model(out)  # whatever the killed run had begun to write
            self.results["timeout"] += 1
            log.error("adaptation of %s still running %.1f min after it started; killed (its process group)",
                      camera, deadline_s / 60)
            self._record(camera, "timeout", f"killed after {deadline_s / 60:.1f} min (budget {budget_s / 60:.1f} + "
                         f"grace {s.grace_minutes:g})", started, seen=seen)
            return
        kept = json.loads(report.read_text()).get("kept") if report.exists() else None
        if kept and out.exists():
            previous = [p for p in folder.glob("*.onnx") if p != out and p != int8_copy(out)]
            try:
                self.on_adapted(camera, out)  # in use before the outcome says so: readers of either agree
            except Exception as e:  # the camera keeps its current model, and a restart must not pick this one
                log.exception("adaptation of %s: the adapted model cannot be used", camera)
                remove_model(out)
                self.results["failed"] += 1
                self._record(camera, "failed", f"the adapted model cannot be used: {e}", started, report, seen)
                return
            self.results["kept"] += 1
            for old in previous:  # the camera no longer uses them
                remove_model(old)
            self._record(camera, "kept", str(out), started, report, seen)
        elif kept is False:
            self.results["rejected"] += 1
            self._record(camera, "rejected", "not better than the current model on held-back frames", started,
                         report, seen)
        else:
            remove_model(out)  # whatever the failed run had begun to write
            self.results["failed"] += 1
            tail = (folder / "adapt.log").read_text(errors="replace")[-500:]
            log.error("adaptation of %s failed (exit status %s): %s", camera, code, tail)
            self._record(camera, "failed", f"exit status {code}", started, seen=seen)

    def _wait(self, child: subprocess.Popen, deadline_s: float,
              note: Callable[[float], None]) -> tuple[int, float, bool]:
        """Wait for the child to exit; past the deadline, or when the scheduler stops, kill its process
        group first. Meanwhile `note` gets its CPU seconds so far every NOTE_EVERY_S. Returns (exit status,
        the child's CPU seconds from its rusage, whether the deadline killed it)."""
        end = time.monotonic() + deadline_s
        timed_out = False
        next_note = time.monotonic() + NOTE_EVERY_S
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() >= next_note:
                next_note += NOTE_EVERY_S
                try:
                    note(child_cpu_seconds(child.pid))
                except (OSError, IndexError, ValueError):  # exited (a zombie's stat is still there) or no /proc
                    pass
            if self._stop.is_set() or time.monotonic() >= end:
                timed_out = not self._stop.is_set()
                try:
                    os.killpg(child.pid, signal.SIGKILL)  # still unreaped: the group id cannot have been reused
                except ProcessLookupError:
                    pass  # the child's group has just exited by itself
                pid, status, usage = os.wait4(child.pid, 0)
                break
            self._stop.wait(WAIT_STEP_S)
        child.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
        return child.returncode, usage.ru_utime + usage.ru_stime, timed_out

    def _record(self, camera: str, outcome: str, detail: str, started: float | None = None,
                report: Path | None = None, seen: dict | None = None) -> None:
        doc = {"outcome": outcome, "detail": detail, "started": started, "finished": time.time(), **(seen or {})}
        if report and report.exists():
            doc["report"] = json.loads(report.read_text())
        self._last[camera] = doc
        log.info("adaptation of %s: %s (%s)", camera, outcome, detail)
        path = self.state_dir / camera / "adapted.json"
        part = path.with_name(".adapted.json.part")
        try:  # whole or not at all: a power cut mid-write must not make the camera look never adapted
            with open(part, "w") as f:
                f.write(json.dumps(doc, indent=2))
                f.flush()
                os.fsync(f.fileno())
            os.replace(part, path)
        except OSError as e:
            raise RecordError(f"cannot write {path}: {e.strerror or e}") from e
