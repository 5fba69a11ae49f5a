"""`streamd export`: trained weights -> ONNX with the annealed-mean decoding inside the graph.

The graph takes L (N, 1, H, W; 0..100; H and W multiples of 16) and returns ab (N, 2, H/4, W/4), so the
runtime needs neither torch nor Python-side post-processing. The temperature is an initializer named
`temperature`: baked at export, overridable when a session is created (streamd.infer.onnx_runtime does this). The prior
correction (how much of the class-rebalancing weights is divided back out before decoding) is baked.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import onnx
import torch

from streamd.infer.onnx_runtime import int8_copy
from streamd.colour.lab import rgb_to_lab
from streamd.infer.onnx_runtime import REFERENCE_INPUT
from streamd.model.network import AnnealedMean, ReferenceDecoder
from streamd.model.train import build_decoder, load_weights

log = logging.getLogger(__name__)
OPSET = 17


def reference_images() -> list[np.ndarray]:
    """Real photos that ship with scikit-image, for checking the export against PyTorch."""
    from skimage import data

    return [data.astronaut(), data.coffee(), data.chelsea()]


def export(weights_path: Path, out: Path, temperature: float = 0.38, input_size: tuple[int, int] = (192, 320),
           model_id: str | None = None, prior_correction: float = 0.0, shrink: float = 0.0,
           cast_correction: float = 0.0) -> dict:
    weights = load_weights(weights_path)
    decoder = build_decoder(weights, temperature, prior_correction, shrink, cast_correction).eval()
    sides = {0: "batch", 2: "height", 3: "width"}
    if weights.get("reference"):  # L and the day reference in, ab at the input's resolution out
        decoder = ReferenceDecoder(decoder).eval()
        dummy = (torch.zeros(1, 1, *input_size), torch.zeros(1, 4, *input_size))
        names, axes = ["L", REFERENCE_INPUT], {"L": sides, REFERENCE_INPUT: sides,
                                                "ab": sides}
    else:
        dummy = (torch.zeros(1, 1, *input_size),)
        names, axes = ["L"], {"L": sides, "ab": {0: "batch", 2: "height_4", 3: "width_4"}}
    torch.onnx.export(decoder, dummy, str(out), input_names=names, output_names=["ab"], opset_version=OPSET,
                      dynamic_axes=axes, dynamo=False)
    digest = hashlib.sha256(out.read_bytes()).hexdigest()[:12]
    model_id = model_id or f"{out.stem}-{digest}"
    meta = {"model_id": model_id, "temperature": temperature, "prior_correction": prior_correction,
            "shrink": shrink, "cast_correction": cast_correction, "input_height": input_size[0],
            "input_width": input_size[1], "steps": int(weights["steps"]), "widths": list(weights["widths"]),
            "bins": len(weights["bins"])}
    model = store_weights_fp16(onnx.load(str(out)))
    onnx.helper.set_model_props(model, {k: json.dumps(v) for k, v in meta.items()})
    onnx.save(model, str(out))
    meta["max_ab_difference"] = check_against_torch(decoder, out)
    network = decoder.decoder.net if isinstance(decoder, ReferenceDecoder) else decoder.net
    write_card(out.with_suffix(".md"), meta, weights, sum(p.numel() for p in network.parameters()))
    stale = int8_copy(out)
    if stale.exists():  # an int8 copy of the weights this export replaced: the daemon would prefer it
        stale.unlink()
        log.warning("removed %s, an int8 copy of the previous model (streamd quantize makes a new one)", stale)
    log.info("exported %s (%s): max |ab| difference to PyTorch %.4f", out, model_id, meta["max_ab_difference"])
    return meta


CARD_FACTS_BEGIN, CARD_FACTS_END = "<!-- facts written by streamd export -->", "<!-- end of export facts -->"


def write_card(path: Path, meta: dict, weights: dict, n_params: int) -> None:
    """The facts export knows, as a table between two markers in the model card: a card that exists keeps
    everything around them (evaluation, data sources, licences), a new card starts with them."""
    cfg = weights.get("config", {})
    hours = weights.get("train_seconds", 0) / 3600
    folders = ", ".join(Path(folder).name for folder in cfg.get("data", [])) or "images given by the caller"
    if cfg.get("scenes"):  # a reference network's fixed-camera sequences
        folders += "; fixed-camera scenes: " + ", ".join(Path(folder).name for folder in cfg["scenes"])
    facts = f"""{CARD_FACTS_BEGIN}
| | |
| --- | --- |
| model id | {meta['model_id']} |
| architecture | streamd ColorNet: VGG-style conv + ReLU + BatchNorm blocks, no pooling, strided-conv downsampling to 1/16, dilated context, transposed-conv upsampling to 1/4 with encoder skips{'; a global-context branch (the frame mean of the 1/16 features, through a two-layer MLP, added back everywhere)' if weights.get('context') else ''}{'; the day reference (L, a, b, confidence) as four more input planes, and a per-position trust (from the features at 1/4 and the local correlation and difference of the night' + "'" + 's L with the reference' + "'" + 's, and its confidence) that blends the reference colour with its own at the input resolution' if weights.get('reference') else ''}; widths {meta['widths']}; {n_params / 1e6:.2f}M parameters |
| output | distribution over {meta['bins']} in-gamut ab bins (10-unit grid), decoded inside the graph by the annealed mean, T = {meta['temperature']} (overridable at run time), after dividing the class-rebalancing weights out to the power {meta['prior_correction']}{f"; colour the distribution does not single out shrunk towards gray (k = {meta['shrink']})" if meta['shrink'] else ''}{f"; {meta['cast_correction']:g} of each frame's mean colour removed" if meta['cast_correction'] else ''} |
| input | L (0..100), N x 1 x H x W, H and W multiples of 16{'; reference, N x 4 x H x W (a camera' + "'" + 's day reference: L, a, b, confidence 0..1)' if weights.get('reference') else ''}; streamd feeds {meta['input_width']}x{meta['input_height']} |
| loss | cross-entropy on soft-encoded targets (5 nearest bins, sigma 5), weighted by class rebalancing ({f"on, lambda {cfg.get('class_mix', 0.5)}" if cfg.get('rebalance', True) else 'off'}) x gradient prior ({f"on, lambda {cfg.get('gradient_mix', 0.5)}" if cfg.get('gradient_prior', True) else 'off'}){'; the trust: the blended colour' + "'" + 's L1 error and a cross-entropy towards where the reference is nearer the truth than its own colour' if weights.get('reference') else ''} |
| training | {meta['steps']} steps, {weights.get('samples', 0)} samples ({cfg.get('crop', '?')} px crops, batch {cfg.get('batch', '?')}), {hours:.2f} h of compute; data folders: {folders} |
| export check | max abs ab difference between ONNX Runtime and PyTorch on scikit-image photos: {meta['max_ab_difference']:.4f} (weights stored as fp16) |
{CARD_FACTS_END}"""
    card = path.read_text() if path.exists() else f"# Model card: {path.stem}\n\n{CARD_FACTS_BEGIN}{CARD_FACTS_END}\n"
    if CARD_FACTS_BEGIN in card and CARD_FACTS_END in card:
        before, rest = card.split(CARD_FACTS_BEGIN, 1)
        card = before + facts + rest.split(CARD_FACTS_END, 1)[1]
    else:  # a hand-written card without the markers: the facts go on top, nothing is lost
        card = facts + "\n\n" + card
    path.write_text(card)


def store_weights_fp16(model: onnx.ModelProto, min_size: int = 1024) -> onnx.ModelProto:
    """Halve the file: large fp32 weights are stored as fp16 behind a Cast to fp32. ONNX Runtime folds the
    casts when it loads the model, so inference still runs in fp32 at the same speed."""
    from onnx import numpy_helper

    graph = model.graph
    casts = []
    for init in graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT or np.prod(init.dims) < min_size or init.name.endswith("_sums"):
            continue  # the decoding's sums over the bins (AnnealedMean) stay exact
        name = init.name
        half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), f"{name}_fp16")
        init.CopyFrom(half)
        casts.append(onnx.helper.make_node("Cast", [f"{name}_fp16"], [name], to=onnx.TensorProto.FLOAT))
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)  # casts first: the graph stays topologically sorted
    onnx.checker.check_model(model)
    return model


def check_against_torch(decoder: AnnealedMean | ReferenceDecoder, onnx_path: Path) -> float:
    """Largest ab difference between ONNX Runtime and PyTorch on real photos, batched, at two sizes (a
    reference model with each photo's own colours, half trusted, as its reference)."""
    import cv2
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for size in [(192, 320), (256, 256)]:
        labs = np.stack([rgb_to_lab(cv2.resize(img, size[::-1], interpolation=cv2.INTER_AREA))
                         for img in reference_images()]).transpose(0, 3, 1, 2).astype(np.float32)
        feed = {"L": labs[:, :1]}
        if isinstance(decoder, ReferenceDecoder):
            feed[REFERENCE_INPUT] = np.concatenate([labs, np.full_like(labs[:, :1], 0.5)], axis=1)
        with torch.no_grad():
            expected = decoder(*(torch.from_numpy(x) for x in feed.values())).numpy()
        got = session.run(["ab"], feed)[0]
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst
