"""Prometheus metrics (/metrics): the histograms the frame path feeds, and everything else read from the pipeline
when scraped (a custom collector), so the frame path carries no metrics code except the latency histograms,
which need every observation."""
from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

from streamd.daemon.source import State


LATENCY_BUCKETS = (0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0)


class Instruments:
    """The histograms the pipeline feeds; one registry per pipeline (no global state)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram("streamd_frame_latency_seconds", "Decode-to-publish latency of a frame",
                                 ["camera"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("streamd_inference_batch_size", "Frames per inference batch",
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry)
        self.batch_seconds = Histogram("streamd_inference_seconds", "Time of one inference batch",
                                       buckets=LATENCY_BUCKETS, registry=self.registry)


class PipelineCollector:
    """Per-camera counters and states, queue depths and the execution provider, read at scrape time."""

    def __init__(self, pipeline) -> None:
        self.pipeline = pipeline

    def collect(self):
        p = self.pipeline
        frames = CounterMetricFamily("streamd_frames", "Frames decoded", labels=["camera"])
        colorized = CounterMetricFamily("streamd_frames_colorized", "Frames colorized", labels=["camera"])
        passed = CounterMetricFamily("streamd_frames_passed_through", "Colour frames passed through", labels=["camera"])
        reused = CounterMetricFamily("streamd_frames_reused", "Gray frames of a still scene that reused the last "
                                     "prediction instead of running the network", labels=["camera"])
        carried = CounterMetricFamily("streamd_frames_carried", "Gray frames of a moving scene that got the last "
                                      "prediction carried along the optical flow instead of running the network",
                                      labels=["camera"])
        uncolorized = CounterMetricFamily("streamd_frames_uncolorized", "Night frames passed through gray because "
                                          "inference was unavailable (an inference server away)", labels=["camera"])
        dropped = CounterMetricFamily("streamd_frames_dropped", "Frames dropped (pipeline behind, or the camera's model failed on them)", labels=["camera"])
        published = CounterMetricFamily("streamd_frames_published", "Frames sent to the outputs", labels=["camera"])
        reconnects = CounterMetricFamily("streamd_reconnects", "Source reconnects", labels=["camera"])
        out_reconnects = CounterMetricFamily("streamd_output_reconnects", "RTSP output reconnects", labels=["camera"])
        fallbacks = CounterMetricFamily("streamd_encoder_fallbacks", "Outputs (RTSP, recording) whose first encoder "
                                        "(NVENC) did not open and that encode with libx264 instead", labels=["camera"])
        state = GaugeMetricFamily("streamd_camera_state", "1 for the camera's current state", labels=["camera", "state"])
        age = GaugeMetricFamily("streamd_camera_last_frame_age_seconds", "Seconds since the camera's last decoded "
                                "frame (absent before its first)", labels=["camera"])
        now = time.monotonic()
        for name, r in list(p.cameras.items()):
            stats = r.source.stats
            frames.add_metric([name], stats.frames)
            colorized.add_metric([name], r.colorized)
            passed.add_metric([name], r.passed_through)
            reused.add_metric([name], r.reuse.reused if r.reuse else 0)
            carried.add_metric([name], r.reuse.carried if r.reuse else 0)
            uncolorized.add_metric([name], r.uncolorized)
            dropped.add_metric([name], p.dropped(name))
            published.add_metric([name], r.outputs.published)
            reconnects.add_metric([name], stats.reconnects)
            out_reconnects.add_metric([name], r.outputs.rtsp.reconnects if r.outputs.rtsp else 0)
            fallbacks.add_metric([name], r.outputs.encoder_fallbacks)
            for s in State:
                state.add_metric([name, s.value], 1.0 if stats.state == s else 0.0)
            if stats.last_frame_at:
                age.add_metric([name], now - stats.last_frame_at)
        queue = GaugeMetricFamily("streamd_batch_queue_frames", "Frames waiting for inference")
        queue.add_metric([], p.batcher.waiting())
        provider = InfoMetricFamily("streamd_model", "Each camera's model, which kind it is (generic, adapted, "
                                    "camera: named in its config) and its execution provider", labels=["camera"])
        for name, r in list(p.cameras.items()):
            provider.add_metric([name], {"model": r.colorizer.info.model_id, "kind": p.model_kind(r),
                                         "provider": r.colorizer.provider})
        stored = GaugeMetricFamily("streamd_store_frames", "Day frames kept for adaptation", labels=["camera"])
        for name, r in list(p.cameras.items()):
            if r.store is not None:
                stored.add_metric([name], len(r.store))
        available = GaugeMetricFamily("streamd_inference_available", "1 while inference can run, 0 while it "
                                      "cannot (an inference server away: night frames pass through gray)")
        available.add_metric([], 0.0 if p.unavailable() else 1.0)
        shard = GaugeMetricFamily("streamd_shard_info", "The shard of the fleet this process runs "
                                  "(streamd.daemon.fleet); absent when it runs every camera of its config",
                                  labels=["shard", "shards"])
        shard_cameras = GaugeMetricFamily("streamd_shard_camera", "1 for each camera this process runs as its "
                                          "shard", labels=["camera", "shard"])
        if p.shard:
            shard.add_metric([str(p.shard.index), str(p.shard.count)], 1.0)
            for name in list(p.cameras):
                shard_cameras.add_metric([name, str(p.shard.index)], 1.0)
        adaptations = CounterMetricFamily("streamd_adaptations", "Adaptation runs by outcome", labels=["outcome"])
        for outcome, n in p.adaptation.results.items():  # timeout: a run killed at its deadline
            adaptations.add_metric([outcome], n)
        adapt_cpu = CounterMetricFamily("streamd_adaptation_cpu_seconds", "CPU time of the adaptation runs' "
                                        "child processes (the daily budget counts this)")
        adapt_cpu.add_metric([], p.adaptation.cpu_seconds)
        by_colour = CounterMetricFamily("streamd_frames_colour", "Frames colorized, by the colour they got: reference "
                                        "(from the camera's day reference), generic, adapted or camera",
                                        labels=["camera", "kind"])
        reference_frames = GaugeMetricFamily("streamd_reference_day_frames", "Day frames the camera's day reference "
                                             "is the median of (absent while it has none)", labels=["camera"])
        reference_age = GaugeMetricFamily("streamd_reference_age_seconds", "Seconds since the camera's day reference "
                                          "was built", labels=["camera"])
        reference_fits = GaugeMetricFamily("streamd_reference_fits", "1 while the camera's night shows its day "
                                           "reference's view, 0 while it does not (moved, another preset)",
                                           labels=["camera"])
        for name, r in list(p.cameras.items()):
            for kind, n in sorted(dict(r.by_colour).items()):
                by_colour.add_metric([name, kind], n)
            status = r.reference.status() if r.reference else None
            if status:
                reference_frames.add_metric([name], status["frames"])
                reference_age.add_metric([name], status["age_s"])
                reference_fits.add_metric([name], 1.0 if status["fits"] else 0.0)
        yield from (frames, colorized, passed, reused, carried, uncolorized, dropped, published, reconnects,
                    out_reconnects, fallbacks, state, age, queue, provider, stored, available, shard, shard_cameras,
                    adaptations, adapt_cpu, by_colour, reference_frames, reference_age, reference_fits)
