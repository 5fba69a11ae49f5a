"""`streamd colorize`: where the files go, and the outputs it refuses to write (over the originals, or two
inputs to one name) before doing any work."""
from __future__ import annotations

import av
import cv2
import numpy as np
import pytest
from skimage import data

from streamd.cli import main
from tests.conftest import write_onnx, write_video


def chroma_spread(path) -> list[float]:
    with av.open(str(path)) as c:
        return [float(f.to_ndarray(format="yuv420p")[240:].std()) for f in c.decode(video=0)]


def gray_photo(path):
    cv2.imwrite(str(path), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2GRAY)[::4, ::4])
    return path


def test_one_video_in_and_a_file_name_out_writes_that_file(tmp_path):
    video = write_video(tmp_path / "clip.mp4", "gray", seconds=1)
    out = tmp_path / "night.mp4"
    assert main(["colorize", str(video), "-o", str(out), "--every-frame"]) == 0
    assert out.is_file()
    spread = chroma_spread(out)
    assert len(spread) == 25 and min(spread) > 2.0  # every frame, in colour


def test_one_image_in_and_a_file_name_out_writes_that_file(tmp_path):
    photo = gray_photo(tmp_path / "photo.png")
    out = tmp_path / "colour.jpg"
    assert main(["colorize", str(photo), "-o", str(out)]) == 0
    image = cv2.imread(str(out))
    assert image.shape == cv2.imread(str(photo)).shape
    assert np.abs(image[..., 2].astype(int) - image[..., 0]).mean() > 2.0  # not gray any more


@pytest.mark.parametrize("output", ["out", "out.mp4/"])
def test_a_folder_stays_a_folder(tmp_path, output):
    """A name without a file suffix, or with a trailing slash, is a folder, whatever it looks like."""
    video = write_video(tmp_path / "clip.mp4", "gray", seconds=1)
    assert main(["colorize", str(video), "-o", f"{tmp_path}/{output}"]) == 0
    assert (tmp_path / output.rstrip("/") / "clip.mp4").is_file()


def test_output_into_the_input_folder_is_refused(tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    original = gray_photo(photos / "a.png").read_bytes()
    video = write_video(photos / "b.avi", "gray", seconds=1)
    for argv in (["colorize", str(photos), "-o", str(photos)],  # the folder itself
                 ["colorize", str(video), str(photos / "a.png"), "-o", str(photos)],  # files in it
                 ["colorize", str(photos / "a.png"), "-o", str(photos / "a.png")]):  # one file, over itself
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "streamd colorize: " in err and str(photos) in err, err
    # b.avi would become photos/b.mp4: over no input, so only the rule for an input's folder refuses it
    assert main(["colorize", str(video), "-o", str(photos)]) == 2
    err = capsys.readouterr().err
    assert f"-o {photos} is where the input {video} lies" in err, err
    assert sorted(p.name for p in photos.iterdir()) == ["a.png", "b.avi"]
    assert (photos / "a.png").read_bytes() == original


def test_two_inputs_with_one_output_name_are_refused(tmp_path, capsys):
    (tmp_path / "day1").mkdir(), (tmp_path / "day2").mkdir()
    first, second = gray_photo(tmp_path / "day1" / "gate.png"), gray_photo(tmp_path / "day2" / "gate.png")
    assert main(["colorize", str(first), str(second), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{first} and {second} would both be written to {tmp_path / 'out' / 'gate.png'}" in err, err
    assert not (tmp_path / "out").exists()  # refused before any work
    # a video and another of the same stem both become <stem>.mp4
    clip, other = write_video(tmp_path / "day1" / "yard.mp4", seconds=1), write_video(tmp_path / "day2" / "yard.mkv", seconds=1)
    assert main(["colorize", str(clip), str(other), "-o", str(tmp_path / "out")]) == 2
    assert "would both be written" in capsys.readouterr().err


def test_a_video_of_odd_size_is_colorized_without_its_last_row_and_column(tmp_path):
    """Codecs other than H.264 carry odd sizes (MJPEG here); the frame drops a row and a column rather than
    failing (PyAV's to_ndarray refuses odd 4:2:0 frames)."""
    video = tmp_path / "odd.avi"
    gray = cv2.cvtColor(cv2.resize(data.astronaut(), (161, 121)), cv2.COLOR_RGB2GRAY)
    with av.open(str(video), "w") as container:
        stream = container.add_stream("mjpeg", rate=10)
        stream.width, stream.height, stream.pix_fmt = 161, 121, "yuvj420p"
        for _ in range(5):
            frame = av.VideoFrame.from_ndarray(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR), format="bgr24")
            container.mux(stream.encode(frame.reformat(format="yuvj420p")))
        container.mux(stream.encode())
    out = tmp_path / "night.mp4"
    assert main(["colorize", str(video), "-o", str(out), "--every-frame"]) == 0
    with av.open(str(out)) as c:
        frames = [f.to_ndarray(format="yuv420p") for f in c.decode(video=0)]
    assert len(frames) == 5 and frames[0].shape == (120 * 3 // 2, 160)
    assert min(float(f[120:].std()) for f in frames) > 2.0  # in colour


def small_onnx(path, input_name="L", output_name="ab", shape=("batch", 1, "height", "width"), **metadata):
    """A one-node ONNX graph (an average pool: N x 1 x H x W in, N x 1 x H/4 x W/4 out) under the given names."""
    return write_onnx(path, "AveragePool", [], input_name=input_name, output_name=output_name, shape=shape,
                      metadata=metadata, kernel_shape=[4, 4], strides=[4, 4])


@pytest.mark.parametrize("model,words", [
    (dict(input_name="x", output_name="y"), "needs an input named L and an output named ab"),
    (dict(input_width='"wide"'), "metadata input_width"),
    (dict(shape=(1, 3, 100, 100)), "input L has shape [1, 3, 100, 100]"),
])
def test_a_model_streamd_cannot_run_is_refused_naming_the_file_and_the_fault(tmp_path, capsys, model, words):
    bad = small_onnx(tmp_path / "bad.onnx", **model)
    assert main(["colorize", str(gray_photo(tmp_path / "p.png")), "-o", str(tmp_path / "out.jpg"),
                 "--model", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"model {bad}" in err and words in err and "unexpected error" not in err


def test_metadata_of_other_tools_is_left_alone(tmp_path):
    """Keys streamd does not write (an author, a licence) are not streamd's to parse."""
    from streamd.infer.onnx_runtime import Colorizer

    model = small_onnx(tmp_path / "m.onnx", author="someone", licence="CC BY 4.0", model_id='"pool"')
    colorizer = Colorizer(model)
    assert colorizer.info.model_id == "pool"
    assert colorizer(np.zeros((2, 1, 192, 320), np.float32)).shape == (2, 1, 48, 80)


def test_a_cameras_model_of_another_fixed_size_falls_back_to_the_generic_one(tmp_path, caplog):
    """A model whose input is fixed at 100x100, where the config feeds 320x192: it would fail on every batch,
    so it is refused at load, with both sizes named, and the camera runs the generic model."""
    from streamd import config as cfgmod
    from streamd.daemon.pipeline import Pipeline

    fixed = small_onnx(tmp_path / "fixed.onnx", shape=(1, 1, 100, 100), model_id='"fixed"')
    pipeline = Pipeline(cfgmod.parse({"camera": [{"name": "gate", "url": "synthetic:", "model": str(fixed)}],
                                      "zmq": {"endpoint": ""}}))
    with caplog.at_level("ERROR", logger="streamd.daemon.pipeline"):
        model = pipeline.model_for(pipeline.config.cameras[0])
    assert model is pipeline.colorizer
    assert any("fixed at 100x100" in r.getMessage() and "feeds 320x192" in r.getMessage() for r in caplog.records)


def test_the_network_stage_runs_ahead_in_order_and_stops_with_its_caller():
    """colorize_video's two stages: the frames come in order, at most a few ahead; a caller that stops early
    stops the thread and closes the decoder; an error there (a broken file mid-way) reaches the caller."""
    from streamd.tools.colorize import ahead

    made: list = []

    def numbers():
        try:
            for i in range(100):
                made.append(i)
                yield i
        finally:
            made.append("closed")

    got, source = [], numbers()  # held here too, so that only ahead() can have closed it
    for i in ahead(source, 4, "test"):
        got.append(i)
        if i == 9:
            break
    assert got == list(range(10))
    assert made[-1] == "closed" and len(made) <= 10 + 4 + 1 + 1  # the queue's 4, one in hand, the close

    def failing():
        yield 1
        raise ValueError("frame 2 could not be decoded")

    with pytest.raises(ValueError, match="frame 2"):
        list(ahead(failing(), 4, "test"))
