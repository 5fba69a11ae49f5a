"""The colorization network: L in, a distribution over quantized ab out, annealed-mean decoding.

VGG-style blocks of conv + ReLU + BatchNorm with no pooling (the seed's design): resolution goes down by
strided convolutions to 1/8, dilated blocks widen the receptive field there, and a transposed convolution
brings it back to 1/4 of the input, where a skip from the 1/4 encoder block restores the edges that
colour would otherwise bleed across. Optionally, a global-context branch adds what the whole frame looks like
to every position of the deepest features.
"""
from __future__ import annotations

import torch
from torch import nn


WIDTHS = (24, 48, 96, 192)  # the shipped networks' widths, from the 1/2 to the 1/16 resolution


def conv_block(c_in: int, c_out: int, n_convs: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    """n_convs 3x3 convolutions with ReLU; the first one strides; BatchNorm closes the block."""
    layers: list[nn.Module] = []
    for i in range(n_convs):
        layers += [nn.Conv2d(c_in if i == 0 else c_out, c_out, 3, stride if i == 0 else 1,
                             padding=dilation, dilation=dilation),
                   nn.ReLU(inplace=True)]
    layers.append(nn.BatchNorm2d(c_out))
    return nn.Sequential(*layers)


class UpMerge(nn.Module):
    """Upsample x2 by a transposed convolution, then merge the encoder's features of that scale."""

    def __init__(self, c_deep: int, c_skip: int) -> None:
        super().__init__()
        self.up = nn.Sequential(nn.ConvTranspose2d(c_deep, c_skip, 4, stride=2, padding=1), nn.ReLU(inplace=True))
        self.merge = conv_block(2 * c_skip, c_skip, 1)

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.merge(torch.cat([self.up(deep), skip], dim=1))


class GlobalContext(nn.Module):
    """Adds the frame's mean deep features, through a two-layer MLP, to every position (Iizuka et al. 2016's
    global features, in miniature): a position's colour depends on the scene (indoors, dusk, a beach), which
    a 3x3 stack sees only in part. The last layer starts at zero, so a network that gains the branch first
    computes exactly what it did without it."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, width))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def forward(self, deep: torch.Tensor) -> torch.Tensor:
        return deep + self.mlp(deep.mean(dim=(2, 3)))[:, :, None, None]


class ColorNet(nn.Module):
    """Logits over `n_bins` ab bins at 1/4 of the input resolution; input is L in 0..100.

    Input sides must be multiples of 16.
    """

    def __init__(self, n_bins: int, widths: tuple[int, int, int, int] = WIDTHS,
                 context: bool = False, in_channels: int = 1) -> None:
        super().__init__()
        w1, w2, w3, w4 = widths
        self.widths = widths
        self.enc_half = conv_block(in_channels, w1, 2, stride=2)
        self.enc_quarter = conv_block(w1, w2, 2, stride=2)
        self.enc_eighth = conv_block(w2, w3, 3, stride=2)
        self.enc_sixteenth = nn.Sequential(  # the dilated blocks see most of a 224-pixel frame
            conv_block(w3, w4, 2, stride=2),
            conv_block(w4, w4, 2, dilation=2),
            conv_block(w4, w4, 2),
        )
        self.context = GlobalContext(w4) if context else None
        self.up_eighth = UpMerge(w4, w3)
        self.up_quarter = UpMerge(w3, w2)
        self.classify = nn.Conv2d(w2, n_bins, 1)

    def features(self, inputs: torch.Tensor) -> torch.Tensor:
        """The normalised input planes -> the features at 1/4 that the classifier reads."""
        quarter = self.enc_quarter(self.enc_half(inputs))
        eighth = self.enc_eighth(quarter)
        deep = self.enc_sixteenth(eighth)
        if self.context is not None:
            deep = self.context(deep)
        return self.up_quarter(self.up_eighth(deep, eighth), quarter)

    def forward(self, lightness: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features((lightness - 50.0) / 100.0))


REFERENCE_PLANES = 4  # a day reference's planes at the input size: L, a, b and confidence (streamd.colour.reference)


class ReferenceColorNet(ColorNet):
    """ColorNet that also sees the camera's day reference beside the night's L, and says per position how far
    to trust it: logits over the ab bins (its own colour, for what the reference does not show) and a trust
    logit, both at 1/4. The reference enters as input planes at the network's own resolution: a fixed
    camera's correspondence to its own day is the identity, so no matching subnet is needed (unlike exemplar
    methods for arbitrary references, He et al. 2018)."""

    TRUST_WIDTH = 16

    def __init__(self, n_bins: int, widths: tuple[int, int, int, int] = WIDTHS,
                 context: bool = False) -> None:
        super().__init__(n_bins, widths, context, in_channels=1 + REFERENCE_PLANES)
        # the trust reads the network's features beside explicit evidence of a match (local_match)
        self.trust = nn.Sequential(nn.Conv2d(widths[1] + MATCH_PLANES, self.TRUST_WIDTH, 3, padding=1),
                                   nn.ReLU(inplace=True), nn.Conv2d(self.TRUST_WIDTH, 1, 1))

    @staticmethod
    def inputs(lightness: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """L (N, 1, H, W) and the reference (N, 4, H, W) -> the network's input planes, each about -1..1."""
        return torch.cat([(lightness - 50.0) / 100.0, (reference[:, :1] - 50.0) / 100.0,
                          reference[:, 1:3] / 50.0, reference[:, 3:]], dim=1)

    def forward(self, lightness: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(self.inputs(lightness, reference))
        evidence = torch.cat([features, local_match(lightness, reference).to(features.dtype)], dim=1)
        return self.classify(features), self.trust(evidence)

    def take_generic(self, generic: ColorNet) -> None:
        """Start from a generic network's weights: the reference planes' first-layer weights and the trust start
        at zero, so the network first predicts exactly what the generic one did, trusting the reference everywhere alike."""
        state = generic.state_dict()
        first = "enc_half.0.weight"
        widened = torch.zeros_like(self.state_dict()[first])
        widened[:, :1] = state[first]
        state[first] = widened
        missing, unexpected = self.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith("trust.") for k in missing):
            raise ValueError(f"generic weights do not fit: missing {missing}, unexpected {unexpected}")
        nn.init.zeros_(self.trust[2].weight)
        nn.init.constant_(self.trust[2].bias, 1.0)  # a camera's reference is mostly right: start trusting it 73 %


MATCH_PLANES = 3
MATCH_EPS = 1e-4  # (L / 100)^2: below this local variance a window is flat, and its correlation says nothing


def local_match(lightness: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Evidence, at 1/4, of whether each place shows the reference's scene: the local correlation of the
    night's L with the reference's (5x5 windows: structure, which a near-infrared night or another exposure
    keeps where gray levels change), their mean absolute difference, and the reference's confidence. Cheap
    and explicit, so that the trust need not learn to compute them."""
    night = nn.functional.avg_pool2d(lightness, 4) / 100.0
    day = nn.functional.avg_pool2d(reference[:, :1], 4) / 100.0

    def box(x: torch.Tensor) -> torch.Tensor:
        return nn.functional.avg_pool2d(x, 5, stride=1, padding=2, count_include_pad=False)

    mean_n, mean_d = box(night), box(day)
    var_n = (box(night * night) - mean_n * mean_n).clamp_min(0.0)
    var_d = (box(day * day) - mean_d * mean_d).clamp_min(0.0)
    correlation = (box(night * day) - mean_n * mean_d) / torch.sqrt((var_n + MATCH_EPS) * (var_d + MATCH_EPS))
    difference = box((night - day).abs()) * 4.0  # about 0..1 for the differences that matter
    return torch.cat([correlation, difference, nn.functional.avg_pool2d(reference[:, 3:], 4)], dim=1)


def blend_with_reference(own: torch.Tensor, trust_logit: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """The colour of a reference network: per position, the reference's ab where trusted and the network's own
    (decoded) ab where not, at the input's resolution: the reference's colour is known finer than the
    network's own 1/4 grid, and a wall's edge should not blur into the road."""
    size = reference.shape[2:]
    own = nn.functional.interpolate(own, size=size, mode="bilinear", align_corners=False)
    trust = torch.sigmoid(nn.functional.interpolate(trust_logit.float(), size=size, mode="bilinear",
                                                    align_corners=False))
    return trust * reference[:, 1:3] + (1.0 - trust) * own


POWER_SCALE = 1024.0  # |ab|^2 reaches 18,500: summed over the bins in fp16 it would overflow unscaled


class AnnealedMean(nn.Module):
    """Seed eq. 2: ab = sum_q softmax(log p / T)_q * centre_q, which equals softmax(logits / T) @ centres.

    `log_correction` (Q,) is added to the logits first. Zero is the seed's decoding. Minus alpha times the
    log class-rebalancing weights divides the weights the loss multiplied in back out of the distribution
    (a rebalanced cross-entropy's optimum is w(q) p(q|x), renormalised), by the power alpha.

    `shrink` k > 0 keeps colour where the network is sure of it and leaves the rest neutral: the mean m of
    the (corrected) distribution at T = 1 and its spread V = E|ab - m|^2 give each pixel the gain
    |m|^2 / (|m|^2 + k V), a Wiener-style shrinkage towards gray of colours the distribution does not single
    out. Zero leaves the annealed mean as it is.

    `cast_correction` beta > 0 removes that share of each frame's mean ab: a frame-wide colour. The network
    paints a scene it does not know with one tint as confidently as one it does (a neutral shop front came
    out sepia, as warm as a corridor whose warmth is real), and the per-pixel spread cannot tell the two
    apart, so half a gray-world correction takes half of any frame-wide tint and leaves the colours that
    differ within the frame. Zero leaves the frame's mean colour as it is.
    """

    def __init__(self, net: nn.Module, bins: torch.Tensor, temperature: float,
                 log_correction: torch.Tensor | None = None, shrink: float = 0.0,
                 cast_correction: float = 0.0) -> None:
        super().__init__()
        self.net = net
        self.shrink, self.cast_correction = shrink, cast_correction
        self.register_buffer("bins", bins.float())  # (Q, 2)
        self.register_buffer("temperature", torch.tensor([temperature], dtype=torch.float32))
        correction = torch.zeros(len(bins)) if log_correction is None else log_correction.float()
        self.register_buffer("log_correction", correction[:, None, None])  # (Q, 1, 1): broadcasts over pixels
        # What the decoding sums over the bins, as the weights of a 1x1 convolution: (a, b, 1) for the annealed
        # mean, (a, b, |ab|^2 / POWER_SCALE, 1) for the shrinkage's moments: scaled so that the sums stay in
        # fp16's range where a runtime computes the convolution in fp16 (TensorRT)
        ones, power = torch.ones(1, len(bins)), (self.bins ** 2).sum(1)[None] / POWER_SCALE
        self.register_buffer("mean_sums", torch.cat([self.bins.t(), ones])[:, :, None, None])  # (3, Q, 1, 1)
        self.register_buffer("moment_sums", torch.cat([self.bins.t(), power, ones])[:, :, None, None])  # (4, Q, 1, 1)

    def forward(self, lightness: torch.Tensor) -> torch.Tensor:
        return self.decode(self.net(lightness))

    @staticmethod
    def expectations(scaled_logits: torch.Tensor, sums: torch.Tensor) -> torch.Tensor:
        """The expectations under softmax(scaled_logits) over the bins (N, Q, h, w) of what `sums` (K + 1, Q,
        1, 1) weighs the bins by, the last being ones -> (N, K, h, w). Written as exp, a 1x1 convolution and
        one division rather than Softmax and Einsum: ONNX Runtime's Softmax over the channel axis and its
        Einsum took 12.5 of the network's 24 ms a frame on a CPU (18 of 28 ms in the int8 copy), this 1.5."""
        totals = nn.functional.conv2d(torch.exp(scaled_logits - scaled_logits.amax(dim=1, keepdim=True)), sums)
        return totals[:, :-1] / totals[:, -1:]

    def decode(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits (N, Q, h, w) -> ab (N, 2, h, w), as described above. In fp32 under any autocast: the sums
        over the bins are not normalised until the division."""
        with torch.autocast(logits.device.type, enabled=False):
            return self._decode(logits.float())

    def _decode(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits + self.log_correction
        ab = self.expectations(logits / self.temperature, self.mean_sums)
        if self.shrink:
            moments = self.expectations(logits, self.moment_sums)
            mean = moments[:, :2]
            power = (mean ** 2).sum(1, keepdim=True)
            spread = moments[:, 2:] * POWER_SCALE - power
            ab = ab * power / (power + self.shrink * spread.clamp_min(0.0) + 1e-6)
        if self.cast_correction:
            ab = ab - self.cast_correction * ab.mean(dim=(2, 3), keepdim=True)
        return ab


class ReferenceDecoder(nn.Module):
    """A reference network and its decoding: L (N, 1, H, W) and the day reference (N, 4, H, W) in, ab
    (N, 2, H, W) out. `decoder` is an AnnealedMean around the ReferenceColorNet: its own colour is
    decoded exactly as a generic model's."""

    def __init__(self, decoder: AnnealedMean) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, lightness: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        logits, trust = self.decoder.net(lightness, reference)
        return blend_with_reference(self.decoder.decode(logits), trust, reference)


class ECCV16(nn.Module):
    """Zhang et al. 2016's architecture (32M parameters), rebuilt only as the speed baseline."""

    def __init__(self, n_bins: int = 313) -> None:
        super().__init__()
        cfg = [(1, 64, 2, 2, 1), (64, 128, 2, 2, 1), (128, 256, 3, 2, 1), (256, 512, 3, 1, 1),
               (512, 512, 3, 1, 2), (512, 512, 3, 1, 2), (512, 512, 3, 1, 1)]
        self.body = nn.Sequential(*[conv_block(*c) for c in cfg])  # FLOPs match; stride placement aside
        self.up = nn.Sequential(nn.ConvTranspose2d(512, 256, 4, stride=2, padding=1), nn.ReLU(inplace=True),
                                nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True),
                                nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True))
        self.classify = nn.Conv2d(256, n_bins, 1)

    def forward(self, lightness: torch.Tensor) -> torch.Tensor:
        return self.classify(self.up(self.body((lightness - 50.0) / 100.0)))
