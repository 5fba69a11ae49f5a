"""The GPU colour stage (streamd.colour.chroma_torch), run on PyTorch's CPU device: the same planes as the CPU
path, from many camera threads at once, and through the real pipeline."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from skimage import data

from streamd.colour.chroma import chroma_planes, guide_coefficients, lab_to_uv
from streamd.colour.chroma_torch import ChromaBatcher, TorchChromaPlanes
from streamd.frame import Frame
from streamd.colour.lightness import luma_at_chroma_size, luma_to_lightness


def photo_frame(image: np.ndarray, matrix: str = "bt709", full_range: bool = False) -> tuple[Frame, np.ndarray]:
    """A real photo as a YUV frame, and the guide coefficients of U and V that streamd.colour.chroma.recombine would
    fit for a colourful prediction on the network's grid."""
    frame = Frame.from_bgr("test", 0, image[..., ::-1], matrix=matrix, full_range=full_range)
    lightness = luma_to_lightness(frame, (48, 80))
    rng = np.random.default_rng(0)
    ab = np.stack([np.full((48, 80), 20.0), np.linspace(-60, 60, 80)[None].repeat(48, 0)]).astype(np.float32)
    ab += rng.normal(0, 5, ab.shape).astype(np.float32)
    return frame, guide_coefficients(lab_to_uv(lightness, ab[0], ab[1], matrix, full_range), lightness)


def assert_same_planes(ours: tuple[np.ndarray, np.ndarray], theirs: tuple[np.ndarray, np.ndarray]) -> None:
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape and a.dtype == np.uint8
        diff = np.abs(a.astype(int) - b)
        # float rounding in another order can move a value to the next code value, rarely
        assert diff.max() <= 1 and (diff == 0).mean() > 0.999


@pytest.mark.parametrize("matrix,full_range", [("bt709", False), ("bt601", True)])
def test_torch_planes_match_the_cpu_path(matrix, full_range):
    frame, coeffs = photo_frame(data.astronaut(), matrix, full_range)
    luma = luma_at_chroma_size(frame)
    u_cpu, v_cpu = chroma_planes(luma, coeffs, full_range)
    [(u, v)] = TorchChromaPlanes("cpu")([luma], [coeffs], full_range)
    assert_same_planes((u, v), (u_cpu, v_cpu))
    assert np.abs(u.astype(int) - 128).mean() > 3  # and there is colour in it


def test_batcher_serves_many_threads_with_their_own_frames():
    images = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    inputs = [photo_frame(image) for image in images]
    expected = [chroma_planes(luma_at_chroma_size(f), c, f.full_range) for f, c in inputs]
    stage = ChromaBatcher(TorchChromaPlanes("cpu"))
    results: dict[int, list] = {}

    def camera(i: int) -> None:
        frame, coeffs = inputs[i % len(inputs)]
        results[i] = [stage(luma_at_chroma_size(frame), coeffs, frame.full_range) for _ in range(3)]

    threads = [threading.Thread(target=camera, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(stage._waiting) < 8 and time.monotonic() < deadline:  # every camera's first frame queued...
        time.sleep(0.01)
    stage.start()  # ...so the first batch holds all eight
    for t in threads:
        t.join(60)
    stage.close()
    assert stage.frames == 24 and stage.batches <= 1 + 16
    assert len(results) == 8
    for i, planes in results.items():
        for got in planes:  # each thread got its own frame's planes back, whatever it was batched with
            assert_same_planes(got, expected[i % len(inputs)])
    with pytest.raises(RuntimeError, match="closed"):
        stage(luma_at_chroma_size(inputs[0][0]), inputs[0][1], False)


def test_pipeline_with_the_batched_colour_stage(tmp_path):
    """Two gray cameras through the real pipeline, their chroma made by the batched stage: every frame
    colorized by it, luma bit-exact."""
    import av

    from tests.conftest import write_video
    from tests.test_pipeline import run_pipeline

    videos = [write_video(tmp_path / f"gray{i}.mp4", "gray", seconds=2) for i in range(2)]
    stage = ChromaBatcher(TorchChromaPlanes("cpu"))
    pipeline, got = run_pipeline([{"name": f"cam{i}", "url": str(v)} for i, v in enumerate(videos)], seconds=30,
                                 colour_stage=stage)
    assert {h["camera"] for h, _ in got} == {"cam0", "cam1"}
    assert all(h["colorized"] for h, _ in got)
    assert stage.frames == len(got) == sum(r.outputs.published for r in pipeline.cameras.values())
    sources = {}
    for i, video in enumerate(videos):
        with av.open(str(video)) as c:
            sources[f"cam{i}"] = [f.to_ndarray(format="yuv420p") for f in c.decode(video=0)]
    for header, planes in got:
        source = sources[header["camera"]][header["seq"]]
        assert np.array_equal(planes[:240], source[:240])
        assert planes[240:].std() > source[240:].std() + 1
