"""The colour stage's full-resolution half on a GPU, for many cameras at once ([colour] device = "cuda").

On a GPU host the network is a few milliseconds per batch, and the CPU's share of each 1080p frame, the
chroma planes made from the guide coefficients (streamd.colour.chroma.chroma_planes: upsample, apply to L) was
most of the work left. Done per frame on the cameras' output threads, the sixty-odd
threads of 32 cameras spent up to 200 ms per frame on it, half the cores idle: they wait for each other
(the GIL, OpenCV's pool) more than they compute (BENCHMARKS.md, GPU). Here the output threads hand their
frame's luma and coefficients to one thread that runs everything waiting as one batch on the device: a
dozen GPU calls per batch instead of a dozen numpy and OpenCV calls per frame. The work on the network's
grid (Temporal, the guide coefficients) stays on the cameras' threads, where each camera's state lives.

Needs torch (the `train` extra); nothing imports this module unless [colour] device asks for it.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from streamd.colour.lightness import lightness_table

log = logging.getLogger(__name__)


class TorchChromaPlanes:
    """streamd.colour.chroma.chroma_planes for a batch of same-size frames on a torch device."""

    def __init__(self, device: str = "cuda") -> None:
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"{device!r}, but CUDA is not available here (torch.cuda.is_available() is False)")
        self._tables: dict[bool, torch.Tensor] = {}

    def _lightness_table(self, full_range: bool) -> torch.Tensor:
        """The Y' -> L table, on the device."""
        if full_range not in self._tables:
            self._tables[full_range] = torch.from_numpy(lightness_table(full_range)).to(self.device)
        return self._tables[full_range]

    @torch.inference_mode()
    def __call__(self, lumas: list[np.ndarray], coeffs: list[np.ndarray],
                 full_range: bool) -> list[tuple[np.ndarray, np.ndarray]]:
        """Y' at chroma size (H, W) uint8 and guide coefficients of U and V (h, w, 4) per frame -> U, V per
        frame."""
        luma = torch.from_numpy(np.stack(lumas)).to(self.device).long()  # (N, H, W)
        grid = torch.from_numpy(np.stack(coeffs)).to(self.device).permute(0, 3, 1, 2)
        # align_corners=False is OpenCV's INTER_LINEAR: pixel centres at half-integers, clamped at the edges
        up = F.interpolate(grid, size=luma.shape[1:], mode="bilinear", align_corners=False)
        lightness = self._lightness_table(full_range)[luma][:, None]
        lo, hi = (0, 255) if full_range else (16, 240)
        planes = (up[:, 0::2] * lightness + up[:, 1::2]).round_().clamp_(lo, hi).to(torch.uint8)
        planes = planes.cpu().numpy()  # (N, 2, H, W): U, V
        return [(frame[0], frame[1]) for frame in planes]


@dataclass(eq=False)
class _Request:
    luma: np.ndarray
    coeffs: np.ndarray
    full_range: bool
    done: threading.Event = field(default_factory=threading.Event)
    planes: tuple[np.ndarray, np.ndarray] | None = None
    error: Exception | None = None


class ChromaBatcher:
    """A streamd.colour.chroma.ChromaPlanes that many threads call at once: each call waits while one thread of
    its own runs all waiting requests (grouped by size and range) as one batch through `planes`.
    Whoever creates it starts and closes it."""

    def __init__(self, planes: TorchChromaPlanes, max_batch: int = 64) -> None:
        self.planes, self.max_batch = planes, max_batch
        self.batches = self.frames = 0
        self.busy_since: float | None = None  # monotonic time the batch on the device now began
        self._waiting: list[_Request] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="colour-gpu", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def __call__(self, luma: np.ndarray, coeffs: np.ndarray, full_range: bool) -> tuple[np.ndarray, np.ndarray]:
        request = _Request(luma, coeffs, full_range)
        with self._cond:
            if self._closed:
                raise RuntimeError("the GPU colour stage is closed")
            self._waiting.append(request)
            self._cond.notify()
        request.done.wait()
        if request.error is not None:
            raise RuntimeError(f"GPU colour stage: {request.error}") from request.error
        return request.planes

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closed:
                    self._cond.wait()
                if not self._waiting:  # closed, nothing left to answer
                    return
                taken, self._waiting = self._waiting[:self.max_batch], self._waiting[self.max_batch:]
            groups: dict[tuple, list[_Request]] = {}
            for request in taken:
                groups.setdefault((request.luma.shape, request.coeffs.shape, request.full_range), []).append(request)
            for (_, _, full_range), requests in groups.items():
                self._answer(requests, full_range)

    def _answer(self, requests: list[_Request], full_range: bool) -> None:
        self.busy_since = time.monotonic()
        try:
            planes = self.planes([r.luma for r in requests], [r.coeffs for r in requests], full_range)
            for request, result in zip(requests, planes):
                request.planes = result
            self.batches, self.frames = self.batches + 1, self.frames + len(requests)
        except Exception as e:  # a failed batch fails its frames' cameras, not the stage
            log.exception("GPU colour stage failed for a batch of %d frames", len(requests))
            for request in requests:
                request.error = e
        self.busy_since = None
        for request in requests:
            request.done.set()
