"""An int8 model's output with the arithmetic of ONNX Runtime's u8s8 convolutions on an x86 CPU without VNNI.

There, MLAS multiplies the uint8 activations by the int8 weights with VPMADDUBSW, which adds the products
of two neighbouring elements of the reduction (input channels of one kernel tap) into an int16 that
saturates at +-32767; a CPU with VNNI (VPDPBUSD) adds them into an int32. ONNX Runtime has no switch that
makes a CPU with VNNI run the other kernel, so this runs the QDQ graph in onnx's reference evaluator, each
convolution in PyTorch on the dequantized values, plus the error the saturating pairs would make.

    python benchmarks/int8_no_vnni.py MODEL-int8.onnx [IMAGE ...]   # mean and p99 ab error against fp32

It prints, per image, the int8 model's error against the fp32 model (MODEL.onnx, the int8 name without
-int8) as ONNX Runtime computes it on this CPU, as emulated with int32 sums (to check the emulation), and
as emulated with the int16 pairs of a CPU without VNNI (run on such a CPU, the first column is the third
measured). Images: scikit-image's astronaut by default. Needs the train extra (torch, onnx).
"""
from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from streamd.infer.onnx_runtime import Colorizer
from streamd.model.quantize import calibration_inputs

INT16 = 32767


def quantization_params(model: onnx.ModelProto) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Scale and zero point of each DequantizeLinear's output, by the output's name."""
    constants = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return {n.output[0]: (constants[n.input[1]].astype(np.float64), constants[n.input[2]].astype(np.float64))
            for n in model.graph.node if n.op_type == "DequantizeLinear"}


def saturation_error(a: torch.Tensor, w: torch.Tensor, zero: float, attrs: dict) -> torch.Tensor:
    """What int16 pair sums lose against int32 sums: (clipped - exact) summed per output, in integer units.
    a: uint8 activations (N, C, H, W) as floats; w: int8 weights (M, C, kh, kw); zero: the activations'
    zero point, which MLAS pads with. The reduction runs over (kh, kw, C), as ONNX Runtime's QLinearConv
    lays the filter out, and MLAS pads it to a multiple of 4 with zeros."""
    kh, kw = w.shape[2:]
    pads = attrs["pads"]
    a = F.pad(a, (pads[1], pads[3], pads[0], pads[2]), value=zero)
    cols = F.unfold(a, (kh, kw), dilation=attrs["dilations"], stride=attrs["strides"])  # (N, C*T, L)
    n, _, length = cols.shape
    c, taps = w.shape[1], kh * kw
    cols = cols.view(n, c, taps, length).transpose(1, 2).reshape(n, taps * c, length)
    filt = w.reshape(w.shape[0], c, taps).transpose(1, 2).reshape(w.shape[0], taps * c)
    k = -(-taps * c // 4) * 4
    cols, filt = F.pad(cols, (0, 0, 0, k - taps * c)), F.pad(filt, (0, k - taps * c))
    a0, a1 = cols[:, 0::2], cols[:, 1::2]  # (N, K/2, L)
    w0, w1 = filt[:, 0::2], filt[:, 1::2]  # (M, K/2)
    out = torch.zeros(n, w.shape[0], length, dtype=torch.float64)
    step = max(1, int(2e7 // (w.shape[0] * a0.shape[1])))
    for s in range(0, length, step):
        pair = (a0[:, None, :, s:s + step] * w0[None, :, :, None] + a1[:, None, :, s:s + step] * w1[None, :, :, None])
        out[:, :, s:s + step] = (pair.clamp(-INT16 - 1, INT16) - pair).sum(2)
    h = (a.shape[2] - attrs["dilations"][0] * (kh - 1) - 1) // attrs["strides"][0] + 1
    return out.view(n, w.shape[0], h, -1)


def evaluator(model: onnx.ModelProto, saturate: bool) -> ReferenceEvaluator:
    params = quantization_params(model)

    class Conv(OpRun):
        def _run(self, x, w, b=None, dilations=None, group=None, kernel_shape=None, pads=None, strides=None,
                 auto_pad=None):
            attrs = {"dilations": list(dilations or [1, 1]), "pads": list(pads or [0, 0, 0, 0]),
                     "strides": list(strides or [1, 1])}
            xt, wt = torch.from_numpy(x).double(), torch.from_numpy(w).double()
            top, left, bottom, right = attrs["pads"]  # asymmetric in the upsampling's phase convolutions
            y = F.conv2d(F.pad(xt, (left, right, top, bottom)), wt, None if b is None else torch.from_numpy(b).double(),
                         attrs["strides"], 0, attrs["dilations"], group or 1)
            if saturate and group in (None, 1) and self.onnx_node.input[0] in params:  # not the fp32 decoding's
                (sa, za), (sw, _) = params[self.onnx_node.input[0]], params[self.onnx_node.input[1]]
                a = torch.round(xt / float(sa) + float(za))
                q = torch.round(wt / torch.from_numpy(sw).view(-1, 1, 1, 1))
                lost = saturation_error(a, q, float(za), attrs)
                y = y + lost * float(sa) * torch.from_numpy(sw).view(1, -1, 1, 1)
            return (y.float().numpy(),)

    class ConvTranspose(OpRun):  # a model quantized before the upsampling became phase convolutions
        def _run(self, x, w, b=None, dilations=None, group=None, kernel_shape=None, pads=None, strides=None,
                 output_padding=None, auto_pad=None, output_shape=None):
            y = F.conv_transpose2d(torch.from_numpy(x), torch.from_numpy(w), None if b is None else torch.from_numpy(b),
                                   list(strides or [1, 1]), (pads or [0, 0])[:2], list(output_padding or [0, 0]),
                                   group or 1, list(dilations or [1, 1]))
            return (y.numpy(),)

    class DequantizeLinear(OpRun):  # the reference evaluator has these only from opset 19 on
        def _run(self, x, scale, zero=None, axis=1, block_size=None, output_dtype=None):
            shape = [-1 if i == axis else 1 for i in range(x.ndim)] if np.ndim(scale) else []
            z = 0 if zero is None else zero.astype(np.float32).reshape(shape)
            return (((x.astype(np.float32) - z) * scale.reshape(shape)).astype(np.float32),)

    class QuantizeLinear(OpRun):
        def _run(self, x, scale, zero, axis=1, block_size=None, output_dtype=None, saturate=None, precision=None):
            info = np.iinfo(zero.dtype)
            return (np.clip(np.rint(x / scale) + zero, info.min, info.max).astype(zero.dtype),)

    return ReferenceEvaluator(model, new_ops=[Conv, ConvTranspose, DequantizeLinear, QuantizeLinear])


def main(argv: list[str]) -> None:
    int8_path = Path(argv[0])
    fp32_path = int8_path.with_name(int8_path.name.replace("-int8", ""))
    if len(argv) > 1:
        images = [cv2.imread(p, cv2.IMREAD_COLOR) for p in argv[1:]]
    else:
        from skimage import data

        images = [cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)]
    model = onnx.load(str(int8_path))
    fp32, ort_int8 = Colorizer(fp32_path, provider="cpu", threads=1), Colorizer(int8_path, provider="cpu", threads=1)
    size = (fp32.info.input_height, fp32.info.input_width)
    exact, no_vnni = evaluator(model, saturate=False), evaluator(model, saturate=True)
    rows = []
    for image in images:
        lightness = calibration_inputs([image], size)[0]["L"]
        expected = fp32(lightness)
        row = [np.abs(got - expected) for got in
               (ort_int8(lightness), exact.run(["ab"], {"L": lightness})[0], no_vnni.run(["ab"], {"L": lightness})[0])]
        rows.append(row)
        print("  ".join(f"{name} mean {e.mean():.3f} p99 {np.percentile(e, 99):.2f}" for name, e in
                        zip(("onnxruntime here", "emulated int32", "emulated no VNNI"), row)), flush=True)
    for name, i in (("onnxruntime here", 0), ("emulated int32", 1), ("emulated no VNNI", 2)):
        print(f"{name}: mean ab error {np.mean([r[i].mean() for r in rows]):.3f} over {len(rows)} image(s)")


if __name__ == "__main__":
    main(sys.argv[1:])
