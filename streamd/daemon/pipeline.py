"""The pipeline, top to bottom: sources -> day/night -> batch -> infer -> colour -> sinks.

    Camera (decode thread per camera)
      -> DayNight: colour frames go straight to the camera's outputs, gray ones to the batcher
      -> CameraReference: the camera's day reference joins a night frame where it shows the reference's view
      -> Batcher: one frame per camera, its oldest within [batch] max_delay_ms; one batch per deadline
      -> Colorizer (the inference thread): L batch (+ references) -> ab batch; the reference model for frames
                                           with a reference, the camera's own model for the others
      -> OutputWorker (thread per camera): ab + untouched Y -> colour frame -> ZeroMQ, RTSP, MP4
                                           day frames, now and then -> FrameStore (the camera's own colours)
    reference Builder (one idle-priority thread): store -> the camera's day reference, at nightfall
    AdaptationScheduler (thread + low-priority child process): store -> adapted model -> swapped in

The Pipeline owns every thread and queue it starts, and stops them all in `stop()`.
"""
from __future__ import annotations

import dataclasses
import errno
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import zmq
import zmq.auth

from streamd.daemon import fleet
from streamd.daemon.batch import Batcher
from streamd.daemon.collect import FrameStore, default_state_dir
from streamd.colour.chroma import chroma_planes
from streamd.config import CameraConfig, Config, ConfigError, in_use_hint
from streamd.colour.daynight import DayNight
from streamd.frame import Frame
from streamd.daemon.metrics import Instruments
from streamd.daemon.models import ModelStore
from streamd.infer.onnx_runtime import Colorizer, InferenceUnavailable
from streamd.daemon.recording import Recorder, RetentionSweeper
from streamd.daemon.reference_store import REFERENCE_FILE, Builder, CameraReference
from streamd.daemon.schedule import AdaptationScheduler, adapted_model
from streamd.daemon.sink import OutputTargets, OutputWorker, ZmqPublisher, threads_per_camera
from streamd.daemon.source import MAX_CAMERA_DECODE_THREADS, Camera, SourceSettings, State
from streamd.daemon.status import Latest
from streamd.steps import check_reuses, colour_frame, lightness_of, predict_fresh, reuse_for, warm_up
from streamd.daemon.systemd import Keepalive, no_keepalive
from streamd.colour.temporal import Reuse, Temporal

if TYPE_CHECKING:
    from streamd.colour.chroma_torch import ChromaBatcher

log = logging.getLogger(__name__)

CAMERA_STOP_S = 5.0  # cameras removed or restarted together get this long, all at once, to end their threads
OUTPUTS_CLOSE_S = 5.0  # all cameras' outputs together: an RTSP peer's time-out (rtsp_out_timeout_s) fits
DRAIN_S = 3.0  # at a stop, the frames already decoded are colorized for this long at most...
INFER_STOP_S = 2.0  # ...then the inference thread has this long to finish the batch it is running
SILENT_INTERVALS = 10  # a running camera that has delivered nothing for this many frame intervals is silent
FAILING_BATCHES = 3  # a model that failed this many batches in a row (and none since) makes /healthz degraded...
FAILING_RECENT_S = 600.0  # ...while its last failure is this recent (at day a night model runs on nothing)
WARM_UP_WAIT_S = 10.0  # the cameras start once the model has answered its first call, or after this long


def source_settings(c: CameraConfig) -> SourceSettings:
    return SourceSettings(name=c.name, url=c.url, transport=c.transport, loop=c.loop, realtime=c.realtime,
                          open_timeout=c.open_timeout_s, read_timeout=c.read_timeout_s,
                          stall_timeout=c.stall_timeout_s, synthetic_size=(c.width, c.height), fps=c.fps,
                          duration=c.duration_s or None, hwaccel=c.hwaccel)


def gpu_colour_stage(device: str) -> ChromaBatcher:
    """The full-resolution colour work batched on the GPU (streamd.colour.chroma_torch, which needs torch); a
    ConfigError naming colour.device where this host cannot run it."""
    try:
        from streamd.colour.chroma_torch import ChromaBatcher, TorchChromaPlanes
    except ImportError as e:
        raise ConfigError(f"colour.device: {device!r} needs torch: pip install 'streamd[train]'") from e
    try:
        return ChromaBatcher(TorchChromaPlanes(device))
    except RuntimeError as e:
        raise ConfigError(f"colour.device: {e}") from e


@dataclass
class CameraRuntime:
    """Everything one camera has in the pipeline, and its counters."""

    config: CameraConfig
    source: Camera
    daynight: DayNight
    outputs: OutputWorker
    temporal: Temporal | None
    store: FrameStore | None  # None: the camera does not collect
    reuse: Reuse | None  # None: every gray frame goes to the network
    colorizer: Colorizer  # swapped in place when the camera's model changes
    reference: CameraReference | None = None  # its day reference; None: the camera colours without one
    was_day: bool = True  # whether its last frame was a day frame: nightfall rebuilds a reference when due
    by_colour: dict[str, int] = field(default_factory=dict)  # colorized frames by the colour they got (model kind)
    passed_through: int = 0
    colorized: int = 0
    failed: int = 0  # frames lost because the camera's model failed on them (counted in `dropped`)
    uncolorized: int = 0  # night frames passed through gray because inference was unavailable
    interval_s: float = 0.04  # smoothed time between frames
    last_arrival: float | None = None
    latest: Latest = field(default_factory=Latest)  # newest input and output, for the status page's pictures

    def state(self, now: float | None = None) -> str:
        """The camera's state as reported: its source's, except that a running camera which has delivered
        nothing for SILENT_INTERVALS of its frame intervals (at most silent_after_s) is "silent" - a camera
        that stopped sending without the connection failing (RTSP over UDP whose publisher died), long before
        the read and stall timeouts reconnect it."""
        stats = self.source.stats
        if stats.state != State.RUNNING or not stats.last_frame_at:
            return stats.state.value
        silent_after = min(SILENT_INTERVALS * self.interval_s, self.config.silent_after_s)
        now = time.monotonic() if now is None else now
        return "silent" if now - stats.last_frame_at > silent_after else stats.state.value


def close_outputs(workers: list[OutputWorker], timeout: float) -> None:
    """Close cameras' outputs in parallel under one deadline: a hung peer of one camera costs the others
    nothing, and the whole stays within the service's stop time-out however many cameras there are."""
    for worker in workers:
        worker.request_close()
    deadline = time.monotonic() + timeout
    for worker in workers:
        worker.close(timeout=max(0.0, deadline - time.monotonic()))
    for worker in workers:
        if worker.alive:
            log.warning("camera %s: outputs still closing after %g s; left behind", worker.camera, timeout)


class Pipeline:
    def __init__(self, config: Config, colorizer: Colorizer | None = None,
                 colour_stage: ChromaBatcher | None = None, keepalive: Keepalive = no_keepalive,
                 shard: fleet.Shard | None = None) -> None:
        """`colorizer` and `colour_stage` replace what the config names (the bench times them, the tests
        run the GPU colour stage on the CPU); the pipeline starts and closes either way. `keepalive` wraps
        the long work done on the caller's thread (model loads, cameras stopping): under systemd it keeps
        the watchdog fed meanwhile (streamd.systemd.Notifier.working). With a `shard`, it runs only the
        cameras of the config that the shard owns (streamd.daemon.fleet), also after reloads."""
        self.config = config
        self.shard = shard
        m = config.model
        self._keepalive = keepalive
        self.models = ModelStore(config, keepalive, colorizer)
        self.colorizer = self.models.generic
        # A swap waits for the batch in progress, so that no batch mixes a camera's old model with its reset Reuse
        self._batch_lock = threading.Lock()
        # Full-resolution chroma: on the cameras' output threads, or one GPU batch for all of them
        self.colour_stage = colour_stage
        if colour_stage is None and config.colour.device != "cpu":
            self.colour_stage = gpu_colour_stage(config.colour.device)
        self.batcher = Batcher(config.batch.max_size, (config.batch.deadline_ms or 40.0) / 1000.0,
                               config.batch.max_delay_ms / 1000.0)
        self.instruments = Instruments()
        self._zmq_context = zmq.Context()
        self.publisher = None
        if config.zmq.endpoint:
            keys = (None, None)
            if config.zmq.curve_secret_key_file:
                keys = zmq.auth.load_certificate(config.zmq.curve_secret_key_file)
            try:
                self.publisher = ZmqPublisher(self._zmq_context, config.zmq.endpoint, config.zmq.hwm,
                                              curve_secret_key=keys[1], curve_public_key=keys[0],
                                              client_keys=config.zmq.curve_client_keys)
            except zmq.ZMQError as e:  # the socket is left open: only destroy() lets the context go
                self._zmq_context.destroy(linger=0)
                raise ConfigError(f"zmq.endpoint: cannot bind {config.zmq.endpoint}: {zmq.strerror(e.errno)}"
                                  f"{in_use_hint('--zmq') if e.errno == errno.EADDRINUSE else ''}") from e
        self.cameras: dict[str, CameraRuntime] = {}
        self.state_dir = Path(config.adapt.state_dir) if config.adapt.state_dir else default_state_dir()
        # Adaptation fine-tunes the generic model's training weights (beside it as .pt; the shipped ones
        # when the configured model has none).
        weights = Path(m.path).with_suffix(".pt") if m.path else None
        self.adaptation = AdaptationScheduler(self.state_dir, config.adapt, self.adaptable, self.use_adapted,
                                              init=weights if weights and weights.exists() else None,
                                              generic=Path(m.path) if m.path else None)
        self.retention = RetentionSweeper(lambda: self.config.cameras)
        self._stop = threading.Event()
        # Reuse's checks of a batch in parallel (GIL released in OpenCV): on a host with many cameras, one
        # after the other on the inference thread they held up every batch
        self._reuse_pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="reuse")
        self._batch_since: float | None = None  # monotonic time the inference thread took its current batch
        self._model_failures: dict[str, int] = {}  # failed batches by model id (inference thread only)
        # failed batches in a row and the monotonic time of the last, by model id, while it fails
        self._failing_models: dict[str, tuple[int, float]] = {}
        self._infer_thread = threading.Thread(target=self._infer_loop, name="inference", daemon=True)
        self._warmed_up = threading.Event()
        self.reference_builder = Builder()
        self._references: dict[str, CameraReference] = {}  # by camera name, kept across a camera's restarts
        # last, after every check that can refuse the config: a reference model may take long to load
        self.reference_model = (self.models.load_reference(keepalive)
                                if any(c.reference for c in self.mine(config)) else None)

    def mine(self, config: Config) -> tuple[CameraConfig, ...]:
        """The config's cameras that this process runs: its shard's, or all of them."""
        return fleet.mine(config.cameras, self.shard)

    def model_for(self, c: CameraConfig) -> Colorizer:
        """The camera's model: the one its config names, else the one adapted to it, else the generic one.
        Each file is loaded once and shared by the cameras that use it; a model that cannot be loaded is
        logged and the camera falls back to the generic one (it keeps running either way). Called on the
        thread that feeds the watchdog (start, reload), which is kept alive while a model loads."""
        path = c.model or str(adapted_model(self.state_dir / c.name) or "")
        try:
            return self.models.get(path, self._keepalive)
        except Exception as e:  # a broken file must not take the camera down
            log.error("camera %s: model %s cannot be loaded (%s); using the generic model", c.name, path, e)
            return self.colorizer

    def model_kind(self, runtime: CameraRuntime, model_id: str | None = None) -> str:
        """Which kind of model the camera runs now (or made a frame, by the frame's model id): "reference" (the
        reference model, from the camera's day reference, where it fits the night), "generic" (the [model] one,
        also when the camera's own could not be loaded), "camera" (the one its config names), or "adapted"
        (learned from its own day frames)."""
        if self.reference_model is not None:
            if model_id is None:
                reference = runtime.reference
                if reference is not None and reference.reference is not None and reference.fits:
                    return "reference"
            elif model_id == self.reference_model.info.model_id:
                return "reference"
        if runtime.colorizer is self.colorizer if model_id is None else model_id == self.colorizer.info.model_id:
            return "generic"
        return "camera" if runtime.config.model else "adapted"

    def adaptable(self) -> list[str]:
        """Cameras the daemon may adapt: those that collect and have no model fixed by the config."""
        return [c.name for c in self.mine(self.config) if c.collect and not c.model]

    def use_adapted(self, camera: str, path: Path) -> None:
        """Swap in a camera's newly adapted model between two of its frames (called by the scheduler, on
        its own thread: the load happens there, the swap between two batches)."""
        runtime = self.cameras.get(camera)
        if runtime is None:
            return
        model = self.models.get(str(path), no_keepalive)
        if not self._swap_model(runtime, model, adapted=True):  # removed, restarted or given a model of its
            return  # own by a reload while this one loaded: not for it now
        log.info("camera %s now uses its adapted model %s", camera, runtime.colorizer.info.model_id)

    def _swap_model(self, runtime: CameraRuntime, model: Colorizer, config: CameraConfig | None = None,
                    adapted: bool = False) -> bool:
        """Give the camera `model` between two batches: no batch runs its frames on one model and remembers
        the prediction after the swap reset its Reuse, so the next frame shows the new model at once. A
        reload's swap sets the camera's `config` with its model; an `adapted` model is not swapped in (False)
        once the camera is gone or its config names its own. Both under the batch lock: a reload and an
        adapted model in the same moment cannot leave the camera on one model and its config on the other."""
        with self._batch_lock:
            if adapted and (self.cameras.get(runtime.config.name) is not runtime or runtime.config.model):
                old = model
            else:
                old, runtime.colorizer = runtime.colorizer, model
                if config is not None:
                    runtime.config = config
                if runtime.reuse:
                    runtime.reuse.forget()
        self._release_unused(old)
        return old is not model

    def _release_unused(self, old: Colorizer) -> None:
        """Free a replaced model once no camera uses it."""
        self.models.release(old, lambda model: any(r.colorizer is model for r in list(self.cameras.values())))

    # -- life cycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        if self.colour_stage:
            self.colour_stage.start()
        self._infer_thread.start()  # it warms the steps up first (_infer_loop), before the cameras start...
        if not self._warmed_up.wait(WARM_UP_WAIT_S):  # ...unless the model hangs: `stalled` will say so
            log.warning("the model has not answered its first call after %g s; starting the cameras", WARM_UP_WAIT_S)
        if self.shard:
            names = [c.name for c in self.mine(self.config)]
            log.info("shard %s: running %d of the config's %d cameras (%s)", self.shard, len(names),
                     len(self.config.cameras), ", ".join(names) or "none")
        for c in self.mine(self.config):
            self.add_camera(c)
        self.adaptation.start()
        self.retention.start()

    def add_camera(self, c: CameraConfig) -> None:
        runtime: CameraRuntime | None = None

        def fps() -> float:  # the camera's measured rate, asked when an encoder opens
            return 1.0 / runtime.interval_s if runtime else c.fps

        recording = Recorder(Path(c.file_out), c.name, c.file_segment_s, c.file_retain_days, c.file_retain_gb,
                             fps=fps, keyframe_interval_s=c.keyframe_interval_s, encoder=c.encoder,
                             threads=self._encoder_threads) if c.file_out else None
        targets = OutputTargets(zmq=self.publisher, zmq_format=c.zmq_format or self.config.zmq.format,
                                rtsp_url=c.rtsp_out or None, rtsp_transport=c.rtsp_out_transport or c.transport,
                                rtsp_timeout_s=c.rtsp_out_timeout_s, recording=recording, encoder=c.encoder,
                                encoder_threads=self._encoder_threads,
                                keyframe_interval_s=c.keyframe_interval_s)
        temporal = Temporal() if c.temporal else None  # used on the camera's output thread only
        store = self._store_for(c)
        # Colour work happens in `prepare`, on the camera's output thread: full-resolution chroma is made in
        # parallel across cameras, and the temporal state and the store are touched by one thread only.
        make_chroma = self.colour_stage or chroma_planes
        latest = Latest()  # references only: pictures are encoded when someone asks (streamd.daemon.status)

        def prepare(frame: Frame) -> Frame:
            if store is not None and frame.prediction is None and not frame.passed_gray:
                store.offer(frame)  # a day frame: the camera's own colours, kept for adaptation
            return latest.keep_output(colour_frame(frame, temporal, make_chroma))

        outputs = OutputWorker(c.name, targets, prepare=prepare,
                               observe_latency=self.instruments.latency.labels(c.name).observe, fps=fps,
                               max_delay_s=self.config.batch.max_delay_ms / 1000.0)
        runtime = CameraRuntime(c, None, DayNight(self.config.daynight.to_night_s, self.config.daynight.to_day_s),
                                outputs, temporal, store, reuse_for(c),
                                self.model_for(c), self._reference_for(c, store), latest=latest)
        runtime.source = Camera(source_settings(c), lambda frame, r=runtime: self._on_frame(r, frame),
                                decode_threads=self._decode_threads)
        self.cameras[c.name] = runtime
        kind = self.model_kind(runtime)
        until = ""
        if kind == "generic" and store is not None and self.adaptation.scheduled:
            a = self.config.adapt
            until = (f" until it is adapted to its own day frames (once its store holds {a.min_frames} over "
                     f"{a.min_span_h:g} h)")
        log.info("camera %s: %s model %s%s", c.name, kind, runtime.colorizer.info.model_id, until)
        self._update_batching()
        runtime.source.start()

    def _encoder_threads(self) -> int:
        """libx264's threads for a camera's encoder as it opens: the cores shared among the cameras."""
        return threads_per_camera(max(len(self.cameras), len(self.mine(self.config))))

    def _decode_threads(self) -> int:
        """Threads for a camera's decoder as it opens: its share of the cores, at most two (source.py)."""
        return min(MAX_CAMERA_DECODE_THREADS, self._encoder_threads())

    def _reference_for(self, c: CameraConfig, store: FrameStore | None) -> CameraReference | None:
        """The camera's day reference (its file, or the one built from its store), if it colours from one. A
        camera restarted by a reload keeps the one it had: a build in progress lands where its frames look."""
        if not c.reference or self.reference_model is None or (store is None and not c.reference_file):
            self._references.pop(c.name, None)
            return None
        folder, fixed = (None, Path(c.reference_file)) if c.reference_file else (store.folder, None)
        kept = self._references.get(c.name)
        if kept is not None and kept.folder == folder and kept.path == (fixed or folder / REFERENCE_FILE):
            return kept
        r = self.config.reference
        self._references[c.name] = CameraReference(c.name, folder, self.reference_builder, fixed, r.min_frames,
                                                   r.max_frames, r.rebuild_every_h)
        return self._references[c.name]

    def _store_for(self, c: CameraConfig) -> FrameStore | None:
        if not c.collect:
            return None
        a = self.config.adapt
        try:
            store = FrameStore(self.state_dir / c.name, a.collect_every_s, a.min_change, a.max_frames)
            log.info("camera %s: keeping up to %d day frames in %s for adaptation (collect = false opts out)",
                     c.name, a.max_frames, store.folder)
            return store
        except OSError as e:  # an unwritable state directory costs the camera its store, not its stream
            log.error("camera %s: cannot keep day frames in %s (%s); not collecting", c.name, self.state_dir, e)
            return None

    def remove_cameras(self, names: list[str]) -> None:
        """Stop cameras, then close their outputs, each all at once under one deadline: a camera whose host is
        down holds its thread in a connection attempt, an RTSP peer that went away holds its output thread up
        to its time-out, and one after the other a reload of many such cameras took minutes. The watchdog is
        kept alive meanwhile."""
        if not names:
            return
        runtimes = [self.cameras.pop(name) for name in names]
        with self._keepalive(f"stopping camera(s) {', '.join(names)}", CAMERA_STOP_S + OUTPUTS_CLOSE_S + 1):
            for runtime in runtimes:
                runtime.source.request_stop()
            deadline = time.monotonic() + CAMERA_STOP_S
            for runtime in runtimes:
                runtime.source.stop(timeout=max(0.0, deadline - time.monotonic()))
            for name in names:
                self.batcher.discard(name)
            close_outputs([runtime.outputs for runtime in runtimes], OUTPUTS_CLOSE_S)
        for name, runtime in zip(names, runtimes):
            self.instruments.latency.remove(name)
            self._release_unused(runtime.colorizer)
        self._update_batching()

    def apply(self, new: Config) -> list[str]:
        """Reload: start added cameras, stop removed ones, restart changed ones; the others keep running
        untouched. Returns what changed. Model, batch, ZeroMQ and HTTP settings need a restart."""
        changes = []
        old = {c.name: c for c in self.mine(self.config)}
        wanted = {c.name: c for c in self.mine(new)}
        removed = [name for name in old if name not in wanted]
        only_model = {name for name, c in wanted.items()
                      if name in old and old[name] != c and dataclasses.replace(old[name], model=c.model) == c}
        restarted = [name for name, c in wanted.items() if name in old and old[name] != c and name not in only_model]
        self.remove_cameras(removed + restarted)
        for name in removed:
            self._references.pop(name, None)
        changes += [f"removed {name}" for name in removed]
        for name, c in wanted.items():
            if name in only_model:
                runtime = self.cameras[name]  # only the model changed: swap it, the camera keeps streaming
                self._swap_model(runtime, self.model_for(c), c)
                changes.append(f"model of {name} is now {runtime.colorizer.info.model_id}")
            elif name in restarted:
                self.add_camera(c)
                changes.append(f"restarted {name}")
            elif name not in old:
                self.add_camera(c)
                changes.append(f"added {name}")
        for section in ("model", "colour", "batch", "zmq", "http", "adapt", "reference", "fleet"):
            if getattr(new, section) != getattr(self.config, section):
                log.warning("reload: [%s] changed; that takes effect at the next restart", section)
        if new.daynight != self.config.daynight:
            for runtime in list(self.cameras.values()):  # the running cameras' settle times too
                runtime.daynight.to_night_s, runtime.daynight.to_day_s = new.daynight.to_night_s, new.daynight.to_day_s
        self.config = dataclasses.replace(self.config, cameras=new.cameras, daynight=new.daynight)
        return changes

    def stop(self) -> None:
        self._stop.set()
        try:
            runtimes = list(self.cameras.values())
            for runtime in runtimes:  # all at once: a camera stuck opening a dead host must not hold up the rest
                runtime.source.request_stop()
            self.adaptation.stop()
            self.reference_builder.shutdown()
            self.retention.stop()
            deadline = time.monotonic() + CAMERA_STOP_S
            for runtime in runtimes:
                runtime.source.stop(timeout=max(0.0, deadline - time.monotonic()))
        finally:
            self.batcher.close()  # the frames decoded so far go through: a few per camera, within the budget...
        if self._infer_thread.is_alive():
            self._infer_thread.join(DRAIN_S)
            self.batcher.abandon()  # ...unless the model is too slow for that: then they count as dropped
            self._infer_thread.join(INFER_STOP_S)
        self._reuse_pool.shutdown(wait=False, cancel_futures=True)
        close_outputs([runtime.outputs for runtime in self.cameras.values()], OUTPUTS_CLOSE_S)
        if self.colour_stage:  # after the outputs: they may be waiting on it
            self.colour_stage.close()
        if self.publisher:
            self.publisher.close()
        self._zmq_context.term()

    def finished(self) -> bool:
        """True when no camera can deliver another frame (files at their end, cameras failed) and every
        frame already decoded has been colorized and sent."""
        return (all(r.source.stats.state in (State.FINISHED, State.FAILED, State.STOPPED) and not r.source.alive
                    for r in self.cameras.values())
                and self.batcher.pending() == 0
                and all(r.outputs.idle for r in self.cameras.values()))

    # -- data flow ------------------------------------------------------------------------------------
    def _on_frame(self, runtime: CameraRuntime, frame: Frame) -> None:
        """In the camera's decode thread: must never block."""
        if runtime.last_arrival is not None:
            runtime.interval_s = 0.9 * runtime.interval_s + 0.1 * (frame.arrival - runtime.last_arrival)
        runtime.last_arrival = frame.arrival
        runtime.latest.keep_input(frame)
        if runtime.daynight.update(frame, frame.arrival):
            runtime.passed_through += 1
            runtime.was_day = True
            runtime.outputs.put(frame)
            return
        if runtime.reference is not None:  # nightfall: yesterday's day frames make tonight's reference
            if runtime.was_day:
                runtime.was_day = False
                try:
                    runtime.reference.rebuild_if_due()
                except OSError as e:  # a store being cleaned under it: the next nightfall tries again
                    log.error("camera %s: day reference not rebuilt: %s", runtime.config.name, e)
            frame.reference_planes = runtime.reference.planes_for(
                frame.width, frame.height, lightness_of(frame, self.models.input_size(self.reference_model)))
            if frame.reference_planes is not None:
                frame.reference_info = runtime.reference.status()
        runtime.was_day = False
        if runtime.reuse is not None:  # Reuse compares it; computed here, in parallel across cameras
            lightness_of(frame, self.models.input_size(runtime.colorizer))
        self.batcher.put(frame)

    def _update_batching(self) -> None:
        """A batch never waits for more frames than there are cameras, nor longer than one frame interval
        of the fastest camera (unless the config fixes the deadline)."""
        self.batcher.max_size = max(1, min(self.config.batch.max_size, len(self.cameras)))
        runtimes = list(self.cameras.values())  # a reload may add or remove cameras meanwhile
        if not self.config.batch.deadline_ms and runtimes:
            fastest = min(r.interval_s for r in runtimes)
            self.batcher.deadline_s = float(np.clip(fastest, 0.005, 0.1))

    def _infer_loop(self) -> None:
        # The steps' first calls cost far more than the next (steps.warm_up): taken here, before start() starts
        # the cameras, not on all their first frames at once. Timed as a batch: a model hanging here is a stall.
        self._batch_since = time.monotonic()
        try:
            warm_up(self.colorizer, self.models.input_size(self.colorizer))  # a failure is logged there
        finally:
            self._batch_since = None
            self._warmed_up.set()
        while True:  # until stop() has closed the batcher and its last frames are through
            try:
                closed = self.batcher.closed  # read first: a frame put before the close is still taken below
                batch = self.batcher.next_batch(timeout=0.5)
                if not batch:
                    if closed:
                        break
                    continue
                self._batch_since = time.monotonic()
                try:
                    self._run_batch(batch)
                finally:
                    self._batch_since = None
                    self.batcher.done()
                self._update_batching()
            except Exception:  # keep serving: the next batch may well be fine; `stalled` sees a dead thread
                log.exception("inference thread: a batch failed")

    def _run_batch(self, batch: list[Frame]) -> None:
        """One batch, between two model swaps (see _swap_model)."""
        with self._batch_lock:
            self._colorize(batch)

    def _colorize(self, batch: list[Frame]) -> None:
        """One network run per model in the batch: cameras sharing a model share the batch. Frames whose
        camera's last prediction still holds (a still scene, or one carried along the flow) skip it. Frames
        the reference model fails on get their cameras' own colour instead of none."""
        by_model = self._by_model(batch, use_reference=True)
        # Reuse's checks over the whole batch, whatever model each frame is for: the network runs renewing
        # carries are spread over the batches across all the models (steps.check_reuses)
        check_reuses([(frames, reuses, self.models.input_size(colorizer))
                      for colorizer, frames, reuses in by_model.values()], self._reuse_pool)
        t0 = time.perf_counter()
        predicted, failed, gray = 0, set(), set()
        for colorizer, frames, reuses in by_model.values():
            count = self._predict(colorizer, frames, reuses, gray)
            if count is None and colorizer is self.reference_model:
                for frame in frames:
                    frame.reference_planes = None
                for own, again, again_reuses in self._by_model(frames, use_reference=False).values():
                    count = self._predict(own, again, again_reuses, gray)
                    predicted += count or 0
                    failed.update(id(f) for f in again if count is None)
            else:
                predicted += count or 0
                failed.update(id(f) for f in frames if count is None)
        if predicted:
            self.instruments.batch_seconds.observe(time.perf_counter() - t0)
            self.instruments.batch_size.observe(predicted)
        for frame in batch:
            runtime = self.cameras.get(frame.camera)
            if runtime is None:  # removed while its frame was in flight
                continue
            if id(frame) in failed:
                runtime.failed += 1
                continue
            if id(frame) in gray:
                frame.passed_gray = True
                runtime.uncolorized += 1
                runtime.outputs.put(frame)
                continue
            frame.model_kind = self.model_kind(runtime, frame.model_id)  # of the model that made its colour
            runtime.by_colour[frame.model_kind] = runtime.by_colour.get(frame.model_kind, 0) + 1
            runtime.colorized += 1
            runtime.outputs.put(frame)

    def _by_model(self, frames: list[Frame], use_reference: bool) -> dict[int, tuple[Colorizer, list[Frame], list]]:
        """The frames grouped by the model each gets (the reference model for those with a reference, if
        `use_reference`; else their camera's own), each with its camera's Reuse."""
        by_model: dict[int, tuple[Colorizer, list[Frame], list[Reuse | None]]] = {}
        for frame in frames:
            runtime = self.cameras.get(frame.camera)
            colorizer = runtime.colorizer if runtime else self.colorizer
            if use_reference and frame.reference_planes is not None and self.reference_model is not None:
                colorizer = self.reference_model
            reuse = runtime.reuse if runtime else None
            if reuse is not None and reuse.last_model_id not in (None, colorizer.info.model_id):
                reuse.forget()  # the other model's colour is not this frame's to reuse
            _, grouped, reuses = by_model.setdefault(id(colorizer), (colorizer, [], []))
            grouped.append(frame)
            reuses.append(reuse)
        return by_model

    def _predict(self, colorizer: Colorizer, frames: list[Frame], reuses: list, gray: set[int]) -> int | None:
        """predict_fresh on one model's frames (the batch's Reuse checks done): how many ran the network, or None
        if the model failed (logged, and counted towards /healthz's failing models). Frames an inference server
        could not take go to `gray`."""
        try:
            count = predict_fresh(colorizer, frames, reuses, self.models.input_size(colorizer))
            self._failing_models.pop(colorizer.info.model_id, None)
            return count
        except InferenceUnavailable:  # an inference server away: the cameras keep flowing, gray
            gray.update(id(f) for f in frames if f.prediction is None)  # the others reuse a prediction
            return 0
        except Exception:  # one model failing (a camera's own, say) costs its frames, not the others'
            model_id = colorizer.info.model_id
            count = self._model_failures[model_id] = self._model_failures.get(model_id, 0) + 1
            in_a_row = self._failing_models.get(model_id, (0, 0.0))[0] + 1
            self._failing_models[model_id] = (in_a_row, time.monotonic())
            if count == 1 or count % 100 == 0:  # a model that fails on every batch must not flood the log
                log.exception("model %s failed on a batch of %d frames (cameras %s; %d failed batches so far)",
                              model_id, len(frames), ", ".join(sorted({f.camera for f in frames})), count)
            return None

    # -- reporting -----------------------------------------------------------------------------------
    def stalled(self) -> str | None:
        """Why the pipeline is stuck, or None. A network call or GPU colour batch that has not returned
        within [model] stall_timeout_s is a hung GPU or driver: no camera reconnect fixes that, a restart
        of the process may."""
        if self._infer_thread.ident is not None and not self._infer_thread.is_alive() and not self._stop.is_set():
            return "inference: the thread has ended"
        limit, now = self.config.model.stall_timeout_s, time.monotonic()
        for stage, since in (("inference", self._batch_since),
                             ("GPU colour", self.colour_stage.busy_since if self.colour_stage else None)):
            if since is not None and now - since > limit:
                return f"{stage}: one batch has not returned for {now - since:.0f} s (stall_timeout_s {limit:g})"
        return None

    def unavailable(self) -> str | None:
        """Why inference cannot run now (an inference server that went away), or None."""
        return next((c.unavailable for c in self.models.loaded() if c.unavailable), None)

    def failing(self) -> str | None:
        """Which models in use fail batch after batch now (FAILING_BATCHES in a row or more), or None: their
        cameras' night frames are being dropped. A model no camera runs any more (the config fixed, the camera
        removed) does not count, whatever it did before, nor one that has not failed for FAILING_RECENT_S
        (it may have had nothing to run on since: day frames pass by the network)."""
        in_use = {r.colorizer.info.model_id for r in list(self.cameras.values())}
        if self.reference_model is not None and any(r.reference for r in list(self.cameras.values())):
            in_use.add(self.reference_model.info.model_id)  # its failures cost colour from the references
        recent = time.monotonic() - FAILING_RECENT_S
        failing = {m: n for m, (n, last) in dict(self._failing_models).items()
                   if n >= FAILING_BATCHES and last > recent and m in in_use}
        return "; ".join(f"model {m} failed its last {n} batches" for m, n in sorted(failing.items())) or None

    def dropped(self, name: str) -> int:
        runtime = self.cameras[name]
        return self.batcher.dropped.get(name, 0) + runtime.outputs.dropped + runtime.failed
