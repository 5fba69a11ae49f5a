"""Recordings: each camera's colour video as MP4 segments in a folder, the way NVRs keep them.

    FILE_OUT/CAMERA/2026-11-30T14-05-00Z.mp4      (the segment's start, UTC)

A segment ends at the next multiple of `file_segment_s` on the clock (60 s: on the minute), or sooner when the
camera changes resolution: the next frame starts a new segment at the new size. Segments are fragmented MP4
(a fragment per keyframe, a second of video; each written out as it is made), so a process killed mid-segment
(SIGKILL, an OOM kill, a power cut) leaves every closed segment complete and the current one readable up to
its last fragment. A file is never overwritten: a segment starting in a second that already has one (a
restart, a resolution change) gets -1, -2, ... after its time. As each segment closes or fails, the camera's
segments older than `file_retain_days`, then the oldest beyond `file_retain_gb` in all, are deleted; files of
other names are never touched.

Retention also runs over every camera folder of each recording root (FILE_OUT) at start-up and every
SWEEP_EVERY_S (`RetentionSweeper`): a camera that is down writes no segment, and one removed from the config or
renamed has no recorder at all, yet their footage must not outlive its limits. A configured camera's folder
keeps its own limits; a folder no camera of the config records into gets the most lenient limits of the
cameras recording into that root (0, no limit, being the most lenient). Only segment files directly in a
camera's folder are deleted: other files, folders and what a symbolic link points to are left alone.
"""
from __future__ import annotations

import itertools
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path

import av

from streamd.config import CameraConfig
from streamd.daemon.files import create_file, make_folder
from streamd.frame import Frame
from streamd.daemon.sink import H264Writer, encoder_candidates

log = logging.getLogger(__name__)

NAME_FORMAT = "%Y-%m-%dT%H-%M-%SZ"
_SEGMENT = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ)(?:-(\d+))?\.mp4$")
# empty_moov: the header is written first and holds no sample table; frag_keyframe: a fragment (moof+mdat)
# per keyframe; default_base_moof: offsets relative to each fragment, as players and browsers expect;
# flush_packets: FFmpeg's I/O buffer goes to the file as each fragment is written, not 32 KiB at a time.
FRAGMENTED_MP4 = {"movflags": "frag_keyframe+empty_moov+default_base_moof", "flush_packets": "1"}
RETRY_S = 5.0  # after a failure (disk full, folder gone), the next segment is tried this much later
SWEEP_EVERY_S = 600.0  # retention over every camera folder of the recording roots, and at start-up


def segment_key(name: str) -> tuple[float, int] | None:
    """(start time, repeat number) of a segment's file name; None for any other file."""
    match = _SEGMENT.match(name)
    if match is None:
        return None
    start = datetime.strptime(match[1], NAME_FORMAT).replace(tzinfo=timezone.utc).timestamp()
    return start, int(match[2] or 0)


def segments(folder: Path) -> list[tuple[float, Path, int]]:
    """The segments in a camera's folder as (start time, path, size in bytes), oldest first."""
    found = []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return []
    for entry in entries:
        key = segment_key(entry.name)
        if key is not None and entry.is_file(follow_symlinks=False):
            found.append((key, Path(entry.path), entry.stat(follow_symlinks=False).st_size))
    found.sort()
    return [(key[0], path, size) for key, path, size in found]


def apply_retention(folder: Path, max_age_s: float, max_bytes: int, now: float | None = None) -> list[Path]:
    """Delete the folder's segments that started more than `max_age_s` ago, then the oldest until the rest
    take at most `max_bytes` (0: no limit of that kind). Returns the deleted ones."""
    now = time.time() if now is None else now
    found = segments(folder)
    total = sum(size for _, _, size in found)
    deleted = []
    for start, path, size in found:  # oldest first: once one may stay, all newer ones may too
        if not (max_age_s and start < now - max_age_s) and not (max_bytes and total > max_bytes):
            break
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        total -= size
        deleted.append(path)
    return deleted


Limits = tuple[float, int]  # (max age in seconds, max bytes); 0: no limit of that kind


def _limits(c: CameraConfig) -> Limits:
    return c.file_retain_days * 86400.0, int(c.file_retain_gb * 1e9)


def _most_lenient(limits: list[Limits]) -> Limits:
    """The limits under which none of the given ones would delete a segment the others keep."""
    ages, sizes = [age for age, _ in limits], [size for _, size in limits]
    return 0.0 if 0.0 in ages else max(ages), 0 if 0 in sizes else max(sizes)


def sweep(cameras: Iterable[CameraConfig], now: float | None = None) -> dict[Path, list[Path]]:
    """Retention over every camera folder of the recording roots of `cameras` (those that record), configured
    cameras under their own limits, other folders under the root's most lenient ones. Returns the deleted
    segments by folder (only folders where some were)."""
    roots: dict[Path, dict[str, Limits]] = {}
    for c in cameras:
        if c.file_out:
            roots.setdefault(Path(c.file_out).absolute(), {})[c.name] = _limits(c)
    deleted = {}
    for root, own in roots.items():
        lenient = _most_lenient(list(own.values()))
        try:
            folders = [Path(e.path) for e in os.scandir(root) if e.is_dir(follow_symlinks=False)]
        except FileNotFoundError:  # nothing recorded there yet
            continue
        for folder in folders:
            max_age_s, max_bytes = own.get(folder.name, lenient)
            try:
                gone = apply_retention(folder, max_age_s, max_bytes, now)
            except OSError as e:  # one folder this process may not change: the others still get their turn
                log.warning("recordings: retention in %s failed: %s", folder, e)
                continue
            if gone:
                deleted[folder] = gone
    return deleted


class RetentionSweeper:
    """`sweep` at start-up and every `every_s` on a thread of its own, over the cameras `cameras()` returns
    (the config's, all of them: a camera of another shard recording into the same root keeps its limits)."""

    def __init__(self, cameras: Callable[[], Iterable[CameraConfig]], every_s: float = SWEEP_EVERY_S) -> None:
        self.cameras, self.every_s = cameras, every_s
        self.sweeps = 0  # finished, failed ones included
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="retention", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)

    def _run(self) -> None:
        while True:
            try:
                for folder, gone in sweep(self.cameras()).items():
                    log.info("recordings: deleted %d old segment(s) in %s", len(gone), folder)
            except Exception:  # a disk gone or unreadable: the next sweep tries again, the cameras go on
                log.exception("recordings: the retention sweep failed; next in %.0f s", self.every_s)
            self.sweeps += 1
            if self._stop.wait(self.every_s):
                return


def reserve(folder: Path, start: float) -> Path:
    """Create the empty file of a segment starting at `start` (wall-clock seconds), under a name no file has."""
    stem = time.strftime(NAME_FORMAT, time.gmtime(start))
    for n in itertools.count():
        path = folder / (f"{stem}.mp4" if n == 0 else f"{stem}-{n}.mp4")
        try:
            os.close(create_file(path, exclusive=True))  # FILE_MODE: footage is not for every user of the host
            return path
        except FileExistsError:
            continue
    raise AssertionError("unreachable")


def folder_problem(folder: Path) -> str | None:
    """Why this process could not record into `folder` (created at the first segment if missing), or None."""
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        return f"{existing} is not a folder" if existing else f"no folder to create {folder} in"
    if not os.access(existing, os.W_OK | os.X_OK):  # also false on a read-only mount
        where = "" if existing == folder else f" (to create {folder} in)"
        return f"{existing} is not writable{where} by user {os.getuid()}"
    return None


def space_warnings(cameras: Iterable[CameraConfig]) -> list[str]:
    """Where the recording size limits (`file_retain_gb`) of the cameras that record add up to more than the
    file system they record on holds in all: that disk fills before retention deletes anything. A camera
    without a size limit (0) is bounded by its age limit alone, which says nothing of size, and is left out."""
    by_disk: dict[int, tuple[Path, list[str], float]] = {}
    for c in cameras:
        if not c.file_out or not c.file_retain_gb:
            continue
        folder = Path(c.file_out).absolute() / c.name
        existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
        if existing is None:
            continue
        device = existing.stat().st_dev
        anchor, names, total_gb = by_disk.get(device, (existing, [], 0.0))
        by_disk[device] = (anchor, [*names, c.name], total_gb + c.file_retain_gb)
    warnings = []
    for anchor, cameras, total_gb in by_disk.values():
        disk_gb = shutil.disk_usage(anchor).total / 1e9
        if total_gb > disk_gb:
            warnings.append(f"the recordings of {', '.join(cameras)} may take up to {total_gb:g} GB on the file "
                            f"system of {anchor}, which holds {disk_gb:.0f} GB in all: lower file_retain_gb so "
                            "that they fit")
    return warnings


class Recorder:
    """One camera's recording: segments, their rotation and retention. Used on the camera's output thread."""

    def __init__(self, folder: Path, camera: str, segment_s: float = 60.0, retain_days: float = 7.0,
                 retain_gb: float = 50.0, fps: float | Callable[[], float] = 25.0, keyframe_interval_s: float = 1.0,
                 encoder: str = "auto", threads: Callable[[], int] | None = None) -> None:
        """`threads`: libx264's, asked when a segment's encoder opens (streamd.daemon.sink.H264Writer)."""
        self.folder = Path(folder) / camera
        self.camera, self.segment_s = camera, segment_s
        self.max_age_s, self.max_bytes = retain_days * 86400.0, int(retain_gb * 1e9)
        # One writer for all segments: an encoder that fails to open is passed over once, not every segment
        self._writer = H264Writer("", "mp4", FRAGMENTED_MP4, fps=fps, keyframe_interval_s=keyframe_interval_s,
                                  encoders=encoder_candidates(encoder), label=f"camera {camera}: recording",
                                  threads=threads)
        self.path: Path | None = None  # the segment being written
        self.closed = 0  # segments closed
        self._frames = 0  # in the current segment
        self._started = 0.0  # monotonic time of the segment's first frame
        self._ends_at = 0.0  # wall-clock time the segment ends
        self._retry_at = 0.0

    @property
    def fallbacks(self) -> int:
        return self._writer.fallbacks

    def write(self, frame: Frame) -> None:
        if self.path is not None and (self._writer.size != (frame.width, frame.height)
                                      or frame.capture_time >= self._ends_at
                                      or frame.arrival - self._started >= self.segment_s):  # the clock stepped back
            self._finish()
        if self.path is None:
            if time.monotonic() < self._retry_at:
                return
            self._begin(frame)
        try:
            self._writer.write(frame)
        except (av.error.FFmpegError, OSError):
            self._abandon()
            raise
        self._frames += 1

    def _begin(self, frame: Frame) -> None:
        try:
            make_folder(self.folder)
            self.path = reserve(self.folder, frame.capture_time)
        except OSError as e:
            self._retry_at = time.monotonic() + RETRY_S
            self._retain()  # a disk too full to create a file in: the expired segments must still go
            raise OSError(e.errno, f"camera {self.camera}: cannot record into {self.folder}: {e.strerror}") from e
        self._writer.target = str(self.path)
        self._frames, self._started = 0, frame.arrival
        self._ends_at = (frame.capture_time // self.segment_s + 1) * self.segment_s
        log.log(logging.INFO if self.closed == 0 else logging.DEBUG, "camera %s: recording to %s", self.camera,
                self.path)

    def _abandon(self) -> None:
        """A segment that failed: closed as far as it goes; removed if nothing of it was written. Retention
        runs as when a segment closes: while writes fail (a full disk) no segment closes, and the old ones
        must still go."""
        self._writer.close()
        if self._frames == 0 and self.path is not None:
            self.path.unlink(missing_ok=True)
        self.path, self._retry_at = None, time.monotonic() + RETRY_S
        self._retain()

    def _finish(self) -> None:
        self._writer.close()
        self.path = None
        self.closed += 1
        self._retain()

    def _retain(self) -> None:
        try:
            deleted = apply_retention(self.folder, self.max_age_s, self.max_bytes)
        except OSError as e:
            log.warning("camera %s: retention in %s failed: %s", self.camera, self.folder, e)
            return
        if deleted:
            log.info("camera %s: deleted %d old segment(s) (file_retain_days %g, file_retain_gb %g)", self.camera,
                     len(deleted), self.max_age_s / 86400.0, self.max_bytes / 1e9)

    def close(self) -> None:
        if self.path is not None:
            self._finish()
