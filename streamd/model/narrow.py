"""A trained ColorNet narrowed to smaller widths: each layer keeps its strongest channels (structured pruning,
Li et al. 2017), so that a cheaper network for CPUs starts from what the wider one learned instead of from
scratch, and training it against the wider one (`streamd train --teacher`) has little left to recover.
"""
from __future__ import annotations

import torch

from streamd.model.network import ColorNet

# Every convolution of ColorNet (its parameter prefix), with where its input comes from: None is the
# network's input, a tuple a concatenation (an upsampled path beside an encoder's skip). A block's BatchNorm
# takes the channels of the convolution before it.
CONVOLUTIONS: list[tuple[str, str | tuple[str, str] | None]] = [
    ("enc_half.0", None), ("enc_half.2", "enc_half.0"),
    ("enc_quarter.0", "enc_half.2"), ("enc_quarter.2", "enc_quarter.0"),
    ("enc_eighth.0", "enc_quarter.2"), ("enc_eighth.2", "enc_eighth.0"), ("enc_eighth.4", "enc_eighth.2"),
    ("enc_sixteenth.0.0", "enc_eighth.4"), ("enc_sixteenth.0.2", "enc_sixteenth.0.0"),
    ("enc_sixteenth.1.0", "enc_sixteenth.0.2"), ("enc_sixteenth.1.2", "enc_sixteenth.1.0"),
    ("enc_sixteenth.2.0", "enc_sixteenth.1.2"), ("enc_sixteenth.2.2", "enc_sixteenth.2.0"),
    ("up_eighth.up.0", "enc_sixteenth.2.2"), ("up_eighth.merge.0", ("up_eighth.up.0", "enc_eighth.4")),
    ("up_quarter.up.0", "up_eighth.merge.0"), ("up_quarter.merge.0", ("up_quarter.up.0", "enc_quarter.2")),
    ("classify", "up_quarter.merge.0"),
]
TRANSPOSED = {"up_eighth.up.0", "up_quarter.up.0"}  # weights (in, out, k, k) instead of (out, in, k, k)
# the BatchNorm that closes the block of each block's last convolution
BATCH_NORMS = {"enc_half.2": "enc_half.4", "enc_quarter.2": "enc_quarter.4", "enc_eighth.4": "enc_eighth.6",
               "enc_sixteenth.0.2": "enc_sixteenth.0.4", "enc_sixteenth.1.2": "enc_sixteenth.1.4",
               "enc_sixteenth.2.2": "enc_sixteenth.2.4", "up_eighth.merge.0": "up_eighth.merge.2",
               "up_quarter.merge.0": "up_quarter.merge.2"}


def narrowed(net: ColorNet, widths: tuple[int, int, int, int]) -> ColorNet:
    """A ColorNet of `widths` (each at most `net`'s) whose every layer holds the channels of `net`'s with the
    largest filters (L1 norm, scaled by the block's BatchNorm where one follows). `net` itself is unchanged."""
    if type(net) is not ColorNet or net.context is not None:
        raise ValueError("only a generic network without a global-context branch can be narrowed")
    if any(new > old for new, old in zip(widths, net.widths)):
        raise ValueError(f"widths {list(widths)} are not all at most the network's {list(net.widths)}")
    source = net.state_dict()
    small = ColorNet(net.classify.out_channels, widths)
    target = small.state_dict()
    kept: dict[str, torch.Tensor] = {}  # each convolution's output channels that stay, in their order
    for name, source_of_input in CONVOLUTIONS:
        weight = source[f"{name}.weight"]
        out_dim = 1 if name in TRANSPOSED else 0
        strength = weight.abs().sum(dim=[d for d in range(weight.dim()) if d != out_dim])
        if name in BATCH_NORMS:
            bn = BATCH_NORMS[name]
            strength = strength * (source[f"{bn}.weight"].abs() / torch.sqrt(source[f"{bn}.running_var"] + 1e-5))
        n_out = target[f"{name}.weight"].shape[out_dim]
        kept[name] = torch.sort(torch.topk(strength, n_out).indices).values
        inputs = input_channels(source_of_input, kept, source)
        weight = weight.index_select(out_dim, kept[name])
        target[f"{name}.weight"] = weight if inputs is None else weight.index_select(1 - out_dim, inputs)
        target[f"{name}.bias"] = source[f"{name}.bias"][kept[name]]
        if name in BATCH_NORMS:
            bn = BATCH_NORMS[name]
            for part in ("weight", "bias", "running_mean", "running_var"):
                target[f"{bn}.{part}"] = source[f"{bn}.{part}"][kept[name]]
    small.load_state_dict(target)
    return small


def input_channels(source_of_input: str | tuple[str, str] | None, kept: dict[str, torch.Tensor],
                   source: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """The input channels of the wider network that a convolution keeps: its producer's kept outputs, or
    for a concatenation each part's, the second shifted past the first's full width."""
    if source_of_input is None:
        return None
    if isinstance(source_of_input, str):
        return kept[source_of_input]
    first, second = source_of_input
    first_width = source[f"{first}.bias"].numel()
    return torch.cat([kept[first], kept[second] + first_width])
