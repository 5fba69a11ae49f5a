"""`streamd quantize`: the shipped model to int8, calibrated on scikit-image photos, served by Colorizer."""
from __future__ import annotations

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from skimage import data

from streamd.cli import main
from streamd.infer.onnx_runtime import Colorizer
from streamd.model.quantize import calibration_inputs, fp32_weights, phase_convolutions, saturating_weights
from tests.conftest import MODEL


def test_fp32_weights_reproduce_the_fp16_stored_model_exactly():
    lightness = np.concatenate([f["L"] for f in calibration_inputs([cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)],
                                                                    (192, 320))])
    stored = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    plain = fp32_weights(onnx.load(str(MODEL)))
    assert not any(n.op_type == "Cast" and n.input[0].endswith("_fp16") for n in plain.graph.node)
    unpacked = ort.InferenceSession(plain.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(unpacked.run(["ab"], {"L": lightness})[0], stored.run(["ab"], {"L": lightness})[0])


def quantized_upsampling(weights: np.ndarray, bias: np.ndarray, input_scale: float, output_scale: float) -> onnx.ModelProto:
    """x -> quantize -> a ConvTranspose (kernel 4, stride 2, padding 1) on int8 weights -> quantize, in the
    QDQ form quantize_static leaves the network's upsampling in (its ReLU in the output's zero point)."""
    h, tensor = onnx.helper, numpy_helper.from_array
    scales = np.abs(weights).max(axis=(0, 2, 3)) / 64  # per output channel, 7 bits as streamd quantizes
    constants = [tensor(np.float32(input_scale), "x_scale"), tensor(np.uint8(3), "x_zero"),
                 tensor(np.round(weights / scales[None, :, None, None]).astype(np.int8), "w"),
                 tensor(scales.astype(np.float32), "w_scale"), tensor(np.zeros(len(scales), np.int8), "w_zero"),
                 tensor(np.round(bias / (input_scale * scales)).astype(np.int32), "b"),
                 tensor((input_scale * scales).astype(np.float32), "b_scale"),
                 tensor(np.zeros(len(scales), np.int32), "b_zero"),
                 tensor(np.float32(output_scale), "y_scale"), tensor(np.uint8(0), "y_zero")]
    nodes = [h.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["xq"]),
             h.make_node("DequantizeLinear", ["xq", "x_scale", "x_zero"], ["xd"]),
             h.make_node("DequantizeLinear", ["w", "w_scale", "w_zero"], ["wd"], axis=1),
             h.make_node("DequantizeLinear", ["b", "b_scale", "b_zero"], ["bd"], axis=0),
             h.make_node("ConvTranspose", ["xd", "wd", "bd"], ["up"], name="up", kernel_shape=[4, 4],
                         strides=[2, 2], pads=[1, 1, 1, 1]),
             h.make_node("QuantizeLinear", ["up", "y_scale", "y_zero"], ["yq"]),
             h.make_node("DequantizeLinear", ["yq", "y_scale", "y_zero"], ["y"])]
    sides = ["n", weights.shape[0], "h", "w"]
    graph = h.make_graph(nodes, "upsampling", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, sides)],
                         [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", weights.shape[1], "2h", "2w"])],
                         constants)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8)


def test_the_upsampling_as_phase_convolutions_computes_what_the_transposed_one_did():
    """ONNX Runtime's ConvTranspose on int8 weights against the four 2x2 convolutions and the interleave that
    replace it, on odd sizes: the same output, and no transposed convolution left."""
    rng = np.random.default_rng(0)
    model = quantized_upsampling(rng.normal(0, 0.05, (16, 8, 4, 4)), rng.normal(0, 0.1, 8), 0.02, 0.01)
    x = rng.uniform(-0.05, 3.0, (2, 16, 5, 7)).astype(np.float32)
    transposed = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert phase_convolutions(model) == ["up"]
    onnx.checker.check_model(model)
    ops = [n.op_type for n in model.graph.node]
    assert "ConvTranspose" not in ops and ops.count("Conv") == 4 and ops.count("DepthToSpace") == 1
    phased = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected, got = transposed.run(["y"], {"x": x})[0], phased.run(["y"], {"x": x})[0]
    assert got.shape == expected.shape == (2, 8, 10, 14) and 0.1 < (expected > 0).mean() < 0.9
    differs = np.abs(got - expected) > 1e-6  # at most a rounding step, where a sum falls on a half
    assert differs.mean() < 0.01 and np.abs(got - expected).max() <= 0.01 + 1e-6


def test_onnx_runtime_runs_the_shipped_copys_upsampling_in_int8(tmp_path):
    """The point of the rewrite: in the graph ONNX Runtime runs, every convolution of the network is a
    QLinearConv (the upsampling's phases too) and the interleave reads the uint8 stack, not a dequantized one."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(MODEL.with_name("streamd-base-int8.onnx")), options, providers=["CPUExecutionProvider"])
    graph = onnx.load(str(tmp_path / "optimized.onnx")).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("QLinearConv") == 16 + 2 * 4 and "ConvTranspose" not in ops
    producer = {out: n for n in graph.node for out in n.output}
    interleaves = [n for n in graph.node if n.op_type == "DepthToSpace"]
    assert len(interleaves) == 2 and all(producer[n.input[0]].op_type == "QLinearConcat" for n in interleaves)


def test_quantized_model_loads_in_colorizer_and_stays_close(tmp_path):
    calibration = tmp_path / "calibration"
    calibration.mkdir()
    for name in ("coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "colorwheel"):
        cv2.imwrite(str(calibration / f"{name}.png"), cv2.cvtColor(getattr(data, name)(), cv2.COLOR_RGB2BGR))
    out = tmp_path / "int8.onnx"
    assert main(["quantize", str(MODEL), "-o", str(out), "--calibration", str(calibration)]) == 0

    fp32, int8 = Colorizer(MODEL, provider="cpu", threads=1), Colorizer(out, provider="cpu", threads=1)
    assert int8.info.model_id == f"{fp32.info.model_id}-int8"
    assert (int8.info.input_height, int8.info.input_width, int8.info.temperature) == \
        (fp32.info.input_height, fp32.info.input_width, fp32.info.temperature)
    graph = onnx.load(str(out)).graph
    assert any(n.op_type == "DequantizeLinear" for n in graph.node)
    dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    # every convolution of the network, the upsampling's phases included, reads a quantized input: int8
    network_convs = [n for n in graph.node if n.op_type in ("Conv", "ConvTranspose") and "/net/" in n.name]
    assert len(network_convs) == 16 + 2 * 4 and all(n.op_type == "Conv" for n in network_convs)
    assert all(n.input[0] in dequantized and n.input[1] in dequantized for n in network_convs)
    exp = next(n for n in graph.node if n.op_type == "Exp")  # the decoding in fp32: its exp, and the bins' sums
    assert exp.input[0] not in dequantized
    bin_sums = next(n for n in graph.node if n.op_type == "Conv" and n.input[0] == exp.output[0])
    assert not set(bin_sums.input) & dequantized
    # nothing after the logits' Cast takes a quantized input (the log-correction's Add and the division by
    # the temperature are quantizable ops: quantized, they would shift the colours)
    decoding = [n for n in graph.node if "/net/" not in n.name and n.op_type not in ("Cast", "DequantizeLinear",
                                                                                    "QuantizeLinear", "Constant")]
    assert {n.op_type for n in decoding} >= {"Add", "Div", "ReduceMax", "Exp", "Conv"}
    assert not [n.name for n in decoding if set(n.input) & dequantized]
    assert int8.info.cast_correction == fp32.info.cast_correction > 0
    frame_mean = next(n for n in graph.node if n.op_type == "ReduceMean")  # the cast correction, in fp32 too
    assert not any(n.op_type == "DequantizeLinear" and n.output[0] in frame_mean.input for n in graph.node)

    # A photo that was not among the calibration images, batched as the daemon batches.
    lightness = np.concatenate([f["L"] for f in calibration_inputs([cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)] * 2,
                                                                    (192, 320))])
    expected, got = fp32(lightness), int8(lightness)
    assert got.shape == expected.shape and got.dtype == np.float32
    error = np.abs(got - expected)
    # ab units (colours span about +-100): 0.26 and 1.2 measured, the same on every CPU since no weight can
    # saturate a sum (below). Full-range weights gave 0.29 and 1.4 with VNNI, 2.26 and 11.2 without.
    assert error.mean() < 0.5 and np.percentile(error, 99) < 3.0, (error.mean(), np.percentile(error, 99))
    assert not saturating_weights(onnx.load(str(out)))

    # The temperature stays overridable per session, in the shipped model and its int8 copy: another T gives
    # other colours.
    for path, default in ((MODEL, expected), (out, got)):
        sharper = Colorizer(path, provider="cpu", threads=1, temperature=0.2)
        assert np.abs(sharper(lightness) - default).mean() > 1.0


def test_the_shipped_int8_copy_sums_the_same_with_and_without_vnni():
    """Its convolutions' weights fit the int16 pair sums of the uint8 x int8 kernels of x86 CPUs without VNNI
    (VPMADDUBSW): the copy colours alike on every CPU, which running it on one CPU could not show. One
    full-range weight is found."""
    shipped = onnx.load(str(MODEL.with_name("streamd-base-int8.onnx")))
    assert not saturating_weights(shipped)  # the upsampling's phase convolutions included:
    assert sum(n.op_type == "Conv" and "_phase" in n.name for n in shipped.graph.node) == 8
    weights = next(i for i in shipped.graph.initializer if i.name == "net.classify.weight_quantized")
    full = numpy_helper.to_array(weights).copy()
    full.flat[0] = 127
    weights.CopyFrom(numpy_helper.from_array(full, weights.name))
    assert saturating_weights(shipped) == ["net.classify.weight_quantized"]


def test_daemon_runs_a_models_int8_copy_on_the_cpu_and_export_removes_a_stale_one(tmp_path):
    model = tmp_path / "yard.onnx"
    assert main(["export", str(MODEL.with_suffix(".pt")), "-o", str(model)]) == 0
    assert Colorizer(model, int8="auto").path == model  # no copy yet: the model itself
    with pytest.raises(FileNotFoundError, match="yard-int8.onnx"):
        Colorizer(model, int8="on")
    calibration = tmp_path / "calibration"
    calibration.mkdir()
    cv2.imwrite(str(calibration / "coffee.png"), cv2.cvtColor(data.coffee(), cv2.COLOR_RGB2BGR))
    assert main(["quantize", str(model), "--calibration", str(calibration)]) == 0  # -o defaults to the copy
    copy = tmp_path / "yard-int8.onnx"
    auto = Colorizer(model, provider="cpu", int8="auto")
    assert auto.path == copy and auto.info.model_id.endswith("-int8")
    assert Colorizer(model, int8="off").path == model
    assert main(["export", str(MODEL.with_suffix(".pt")), "-o", str(model), "--temperature", "0.6"]) == 0
    assert not copy.exists()  # it belonged to the weights just replaced


def test_a_reference_model_is_quantized_with_references_and_blends_in_fp32(tmp_path):
    """The reference model's copy is calibrated with day references (fitting and not), its blend of the
    reference's colour with its own stays fp32, and it colours as the original does."""
    from streamd.infer.onnx_runtime import REFERENCE_MODEL, shipped_model
    from streamd.model.quantize import quantize_images

    source = shipped_model(REFERENCE_MODEL)
    images = [cv2.cvtColor(getattr(data, name)(), cv2.COLOR_RGB2BGR)
              for name in ("coffee", "chelsea", "rocket", "astronaut", "immunohistochemistry", "colorwheel")]
    out = tmp_path / "reference-int8.onnx"
    quantize_images(source, out, images)
    graph = onnx.load(str(out)).graph
    quantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    for op in ("Sigmoid", "Resize"):  # the trust and the blend read fp32 values, not dequantized ones
        assert all(not set(n.input) & quantized for n in graph.node if n.op_type == op)
    fp32, int8 = Colorizer(source, provider="cpu", threads=1), Colorizer(out, provider="cpu", threads=1)
    assert int8.takes_reference
    feeds = calibration_inputs([cv2.cvtColor(data.cat(), cv2.COLOR_RGB2BGR)] * 2, (192, 320), reference=True)
    lightness, planes = (np.concatenate([f[k] for f in feeds]) for k in ("L", "reference"))
    error = np.abs(int8(lightness, planes) - fp32(lightness, planes))
    assert error.mean() < 1.0 and np.percentile(error, 99) < 5.0, (error.mean(), np.percentile(error, 99))
