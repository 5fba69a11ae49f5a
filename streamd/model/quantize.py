"""`streamd quantize`: an exported model -> int8 (QDQ) for CPU inference, calibrated on real images.

Weights are int8 per output channel, activations uint8 per tensor, their ranges measured (min/max) on the
network inputs of calibration images made exactly as streamd makes them (gray frame -> luma -> L at the
model's input size). Min/max rather than percentile ranges: percentile clipping gave a smaller mean ab
error but lost more colourfulness on the validation images (BENCHMARKS.md, "int8 on CPU").

The weights use 7 of the 8 bits (-64..64, ONNX Runtime's reduce_range), so that the model computes the same
on every x86 CPU. Without VNNI, ONNX Runtime's uint8 x int8 convolutions add the products of neighbouring
elements in pairs into 16 bits (VPMADDUBSW), which saturate at 32767: 255 x 127 x 2 does not fit, 255 x 64 x 2
does. With full-range weights a copy was 2 to 8 times farther from fp32 on such a CPU than on one with VNNI
(BENCHMARKS.md, "int8 on a CPU").

The annealed-mean decoding (logits / T -> exp -> a 1x1 convolution summing the bins -> one division) stays
in fp32, its convolution included: the exponential turns small logit errors into colour shifts, and these
nodes cost little. The logits themselves
leave the last convolution quantized: keeping that convolution in fp32 left the mean ab error against the
fp32 model where it was (1.14 ab units either way, in a trial), so it is quantized like the rest.

ONNX Runtime has no int8 kernel for a transposed convolution: the two that upsample run in fp32 between a
dequantize and a quantize, a quarter of the copy's time. After quantizing, each becomes the four 2x2
convolutions of its output phases on its own int8 weights, which it runs in int8 (phase_convolutions).

The result is an ordinary streamd model: same input and output, same metadata (the temperature
initializer stays overridable), a model id that says int8, loaded by streamd.infer.Colorizer unchanged.
Needs the `train` extra (onnx).
"""
from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process

from streamd.infer.onnx_runtime import REFERENCE_INPUT
from streamd.colour.lab import rgb_to_lab
from streamd.colour.lightness import luma_to_lightness
from streamd.model.data import IMAGE_SUFFIXES
from streamd.tools.colorize import gray_frame

log = logging.getLogger(__name__)

# what follows the classifier's logits: the annealed mean (streamd.model.network.AnnealedMean.expectations: exp
# of the logits, then a 1x1 convolution that sums the bins), and the shrinkage towards gray and the cast
# correction where export adds them
DECODING_OPS = {"Cast", "Add", "Div", "ReduceMax", "Exp", "Mul", "Sub", "Pow", "ReduceSum", "ReduceMean",
                "Unsqueeze", "Clip", "Constant",
                # a reference model's blend of the reference's colour with its own, at the input's size
                "Resize", "Sigmoid", "Slice", "Shape", "Gather", "Concat"}


def calibration_inputs(images: list[np.ndarray], size: tuple[int, int],
                       reference: bool = False) -> list[dict[str, np.ndarray]]:
    """BGR images -> network inputs at size = (H, W), as streamd.tools.colorize makes them: L (1, 1, H, W) float32,
    and for a reference model a day reference (1, 4, H, W): every other image its own colours (a reference
    that fits), the others the next image's (one that does not), so that both ranges are calibrated."""
    feeds = []
    for i, bgr in enumerate(images):
        feed = {"L": luma_to_lightness(gray_frame(bgr)[0], size)[None, None]}
        if reference:
            day = images[i if i % 2 == 0 else (i + 1) % len(images)]
            lab = rgb_to_lab(cv2.resize(cv2.cvtColor(day, cv2.COLOR_BGR2RGB), size[::-1], interpolation=cv2.INTER_AREA))
            feed[REFERENCE_INPUT] = np.concatenate([lab.transpose(2, 0, 1), np.ones((1, *size), np.float32)])[None]
        feeds.append(feed)
    return feeds


def calibration_images(folder: Path, count: int) -> list[np.ndarray]:
    """`count` BGR images spread evenly over the sorted image files under `folder` (sorted: the choice is
    reproducible; spread: a folder of several datasets is sampled from all of them)."""
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {folder}")
    chosen = [paths[i] for i in np.linspace(0, len(paths) - 1, min(count, len(paths))).round().astype(int)]
    images = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in dict.fromkeys(chosen)]
    return [img for img in images if img is not None]


class _Inputs(CalibrationDataReader):
    def __init__(self, inputs: list[dict[str, np.ndarray]]) -> None:
        self._inputs: Iterator[dict[str, np.ndarray]] = iter(inputs)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._inputs, None)


def fp32_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """Undo export.store_weights_fp16: each fp16 initializer behind a Cast becomes the fp32 initializer the
    Cast produced (exactly the values the fp32 graph computes with), so the quantizer sees plain weights."""
    graph = model.graph
    halves = {i.name: i for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT16}
    casts = [n for n in graph.node if n.op_type == "Cast" and n.input[0] in halves]
    for cast in casts:
        half = halves[cast.input[0]]
        full = numpy_helper.from_array(numpy_helper.to_array(half).astype(np.float32), cast.output[0])
        graph.initializer.remove(half)
        graph.initializer.append(full)
        graph.node.remove(cast)
    return model


def decoding_nodes(model: onnx.ModelProto) -> list[str]:
    """The nodes of the annealed-mean decoding: everything from the classifier's output on, found by walking
    back from the output `ab` through DECODING_OPS and the convolutions that sum the bins (those of an Exp)."""
    producer = {out: node for node in model.graph.node for out in node.output}

    def decodes(node: onnx.NodeProto) -> bool:
        if node.op_type == "Conv":
            return getattr(producer.get(node.input[0]), "op_type", None) == "Exp"
        return node.op_type in DECODING_OPS

    names, frontier = [], ["ab"]
    while frontier:
        node = producer.get(frontier.pop())
        if node is not None and decodes(node) and node.name not in names:
            names.append(node.name)
            frontier.extend(node.input)
    return names


# Which two of a stride-2, kernel-4, padding-1 transposed convolution's kernel rows (columns) reach an even and
# an odd output row (column): output row 2i reads input rows i - 1 and i through kernel rows 3 and 1, output
# row 2i + 1 rows i and i + 1 through kernel rows 2 and 0.
PHASE_TAPS = ([3, 1], [2, 0])


def phase_convolutions(model: onnx.ModelProto) -> list[str]:
    """Rewrite each quantized upsampling transposed convolution (kernel 4, stride 2, padding 1: the network's
    UpMerge) as the four 2x2 convolutions of its output phases, stacked and interleaved (Concat,
    DepthToSpace). ONNX Runtime runs a ConvTranspose in fp32, between a dequantize and a quantize (2 of the
    int8 network's 8 ms a frame on a CPU), and a quantized Conv in int8. The phases keep the transposed
    convolution's own int8 weights (a phase's kernel is 2x2 of its 4x4 taps, the per-channel scales
    the same), its bias and the quantization of its input and output, so nothing is calibrated anew: the
    copy computes what it did, to the rounding of a sum. Applies to a ConvTranspose between dequantized
    inputs and a per-tensor QuantizeLinear (as quantize_static leaves it, its ReLU in the output's zero
    point).
    Returns the names of the nodes rewritten."""
    graph = model.graph
    constants = {i.name: i for i in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    rewritten = []
    for index, node in enumerate(list(graph.node)):
        if node.op_type != "ConvTranspose":
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        activations, weights = producer.get(node.input[0]), producer.get(node.input[1])
        consumers = [n for n in graph.node if node.output[0] in n.input]
        if (weights is None or activations is None
                or {activations.op_type, weights.op_type} != {"DequantizeLinear"} or weights.input[0] not in constants
                or {a.name: a.i for a in weights.attribute}.get("axis") != 1
                or len(consumers) != 1 or consumers[0].op_type != "QuantizeLinear"
                or any(name not in constants or constants[name].dims for name in consumers[0].input[1:])  # per tensor
                or list(attrs.get("kernel_shape", [])) != [4, 4] or list(attrs.get("strides", [])) != [2, 2]
                or list(attrs.get("pads", [])) != [1, 1, 1, 1] or attrs.get("group", 1) != 1
                or any(v != 1 for v in attrs.get("dilations", [1, 1]))
                or any(v != 0 for v in attrs.get("output_padding", [0, 0])) or "output_shape" in attrs):
            continue
        kernel = numpy_helper.to_array(constants[weights.input[0]])  # int8 (C_in, C_out, 4, 4)
        output_scale = consumers[0].input[1:]  # every phase quantized as the transposed convolution's output
        new_nodes, phases = [], []
        base = node.name or f"ConvTranspose_{index}"
        for a in (0, 1):
            for b in (0, 1):
                name = f"{base}_phase{a}{b}"
                taps = kernel[:, :, PHASE_TAPS[a]][:, :, :, PHASE_TAPS[b]].transpose(1, 0, 2, 3)
                graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(taps), f"{name}_weight"))
                new_nodes += [
                    onnx.helper.make_node("DequantizeLinear", [f"{name}_weight", *weights.input[1:]],
                                          [f"{name}_weight_dq"], name=f"{name}_weight_dq", axis=0),
                    onnx.helper.make_node("Conv", [node.input[0], f"{name}_weight_dq", *node.input[2:]],
                                          [f"{name}_out"], name=name, kernel_shape=[2, 2],
                                          pads=[1 - a, 1 - b, a, b]),  # top, left, bottom, right
                    onnx.helper.make_node("QuantizeLinear", [f"{name}_out", *output_scale], [f"{name}_q"],
                                          name=f"{name}_q"),
                    onnx.helper.make_node("DequantizeLinear", [f"{name}_q", *output_scale], [f"{name}_dq"],
                                          name=f"{name}_dq")]
                phases.append(f"{name}_dq")
        # channel (2a + b) C + c holds phase (a, b) of channel c: DepthToSpace's DCR order
        stacked = f"{base}_phases"
        new_nodes += [
            onnx.helper.make_node("Concat", phases, [stacked], name=stacked, axis=1),
            onnx.helper.make_node("QuantizeLinear", [stacked, *output_scale], [f"{stacked}_q"], name=f"{stacked}_q"),
            onnx.helper.make_node("DequantizeLinear", [f"{stacked}_q", *output_scale], [f"{stacked}_dq"],
                                  name=f"{stacked}_dq"),
            onnx.helper.make_node("DepthToSpace", [f"{stacked}_dq"], [node.output[0]], name=f"{base}_interleave",
                                  blocksize=2, mode="DCR")]
        at = list(graph.node).index(node)
        graph.node.remove(node)
        for offset, new in enumerate(new_nodes):
            graph.node.insert(at + offset, new)
        if not any(weights.output[0] in n.input for n in graph.node):
            graph.node.remove(weights)
            if not any(weights.input[0] in n.input for n in graph.node):
                graph.initializer.remove(constants[weights.input[0]])
        rewritten.append(base)
    return rewritten


# The largest int8 weight whose products with uint8 activations, added in pairs, fit in an int16: 255 x 64 x 2
PAIR_SAFE_WEIGHT = 64


def saturating_weights(model: onnx.ModelProto) -> list[str]:
    """The int8 weights of the model's convolutions that could saturate an int16 pair sum (u8s8 without VNNI)."""
    constants = {i.name: i for i in model.graph.initializer}
    producer = {out: node for node in model.graph.node for out in node.output}
    found = []
    for conv in (n for n in model.graph.node if n.op_type == "Conv"):
        weights = producer.get(conv.input[1])
        if weights is None or weights.op_type != "DequantizeLinear" or weights.input[0] not in constants:
            continue
        values = numpy_helper.to_array(constants[weights.input[0]])
        if values.dtype == np.int8 and np.abs(values.astype(np.int16)).max() > PAIR_SAFE_WEIGHT:
            found.append(weights.input[0])
    return found


def quantize(source: Path, out: Path, calibration: Path, count: int = 64) -> dict:
    """Quantize the model at `source` to `out`, calibrated on `count` images under `calibration`; returns
    the metadata written into `out`."""
    return quantize_images(source, out, calibration_images(calibration, count))


def metadata_value(text: str):
    """A metadata value as streamd writes it (JSON), or as another tool did (kept as the text it is)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def quantize_images(source: Path, out: Path, images: list[np.ndarray]) -> dict:
    """`quantize`, calibrated on the given BGR images (an adapted model: its camera's own frames)."""
    if not images:
        raise ValueError("no calibration images")
    model = onnx.load(str(source))
    meta = {p.key: metadata_value(p.value) for p in model.metadata_props}
    size = (int(meta.get("input_height", 192)), int(meta.get("input_width", 320)))
    takes_reference = any(i.name == REFERENCE_INPUT for i in model.graph.input)
    inputs = calibration_inputs(images, size, takes_reference)
    excluded = decoding_nodes(model)
    with tempfile.TemporaryDirectory(prefix="streamd-quantize-") as work:
        plain, prepared = Path(work) / "fp32.onnx", Path(work) / "prepared.onnx"
        onnx.save(fp32_weights(model), str(plain))
        # Shape inference, as ONNX Runtime recommends before quantize_static, but no graph optimization: it
        # would fold the division by the temperature initializer away (T = 1), and with it the override.
        quant_pre_process(str(plain), str(prepared), skip_optimization=True, skip_symbolic_shape=True)
        quantize_static(str(prepared), str(out), _Inputs(inputs), quant_format=QuantFormat.QDQ,
                        per_channel=True, weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                        reduce_range=True,  # 7-bit weights: the same sums with and without VNNI (above)
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=excluded,
                        # BatchNormalization's scale is 1-D: its channels are axis 0, not the default 1
                        extra_options={"QDQOpTypePerChannelSupportToAxis": {"BatchNormalization": 0}})
    quantized = onnx.load(str(out))
    phased = phase_convolutions(quantized)
    saturating = saturating_weights(quantized)
    if saturating:  # reduce_range not applied: the copy would colour differently on CPUs without VNNI
        raise RuntimeError(f"quantized weights beyond +-{PAIR_SAFE_WEIGHT}: {', '.join(saturating)}")
    # set_model_props replaces the quantizer's own entries too: those are not JSON, which Colorizer expects
    meta.update(model_id=f"{meta.get('model_id', source.stem)}-int8",
                quantization={"source": meta.get("model_id", source.stem), "weights": "int8 per channel, 7 bits",
                              "activations": "uint8 per tensor, min/max", "calibration_images": len(inputs),
                              "fp32_nodes": excluded, "phase_convolutions": phased})
    onnx.helper.set_model_props(quantized, {k: json.dumps(v) for k, v in meta.items()})
    onnx.save(quantized, str(out))
    log.info("quantized %s -> %s (%s), calibrated on %d images, fp32: %s; upsampling as phase convolutions: %s",
             source, out, meta["model_id"], len(inputs), ", ".join(excluded), ", ".join(phased) or "none")
    return meta
