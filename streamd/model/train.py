"""`streamd train`: fit the colorization network on folders of images and videos.

bf16 autocast on CPU (AMX) and CUDA; DistributedDataParallel when started by torchrun; checkpoints hold
optimizer state and resume exactly; the weights file that ships holds only what inference and further
training need (fp16 weights, bins, priors, hyper-parameters).
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from streamd.colour.lab import ab_bins
from streamd.model.data import CropSampler, load_folder
from streamd.model.loss import Priors, WeightedCrossEntropy
from streamd.model.narrow import narrowed
from streamd.model.network import WIDTHS, AnnealedMean, ColorNet, ReferenceColorNet, blend_with_reference

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    data: list[str]
    out: str = "checkpoints"
    steps: int = 20000
    batch: int = 32
    crop: int = 176
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup: int = 300
    widths: tuple[int, int, int, int] | None = None  # None: those of `init`, else WIDTHS; narrower
    # than `init`'s: the network starts as `init` narrowed to them (streamd.model.narrow)
    context: bool = False  # the global-context branch; added (at zero) to `init` weights that lack it
    rebalance: bool = True
    gradient_prior: bool = True
    gradient_mix: float = 0.5  # lambda of the gradient prior's mix with uniform: higher is flatter
    class_mix: float = 0.5  # lambda of the class prior's mix with uniform: lower weighs rare colours more
    seed: int = 0
    device: str = "auto"
    init: str | None = None  # weights to start from (a shipped .pt); ignored when a checkpoint resumes
    teacher: str | None = None  # weights whose distribution over the bins the network also learns to match
    teacher_weight: float = 1.0  # the weight of that match (a cross-entropy) beside the loss on the truth
    checkpoint_every: int = 500
    video_every: int = 8
    max_seconds: float | None = None  # a time budget: training ends, and its schedule is laid out, by it
    augment: bool = False  # random gamma, contrast and noise on L (night frames differ from day ones)
    luma_mix: float = 0.0  # share of crops whose L is a random mix of R, G and B (near-infrared luma differs)
    nir_like: float = 0.0  # share of crops whose L imitates a near-infrared camera's (data.near_infrared_like)
    folder_weights: dict[str, float] = field(default_factory=dict)  # a data folder's images drawn this many
    # times as often as the others' (camera scenes are a minority of most photo collections)
    reference: bool = False  # train a reference network (ReferenceColorNet) instead of a generic one
    scenes: list[str] = field(default_factory=list)  # folders of fixed-camera frame sequences, for references
    trust_weight: float = 1.0  # the weight of the blended colour's error (ab units / 10) beside the cross-entropy
    train_only: tuple[str, ...] = ()  # names of the network's children to train; () = all. The rest stays as
    # initialised, BatchNorm statistics included, so models adapted this way share it exactly
    extra: dict = field(default_factory=dict)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def save_weights(path: Path, net: ColorNet, priors: Priors, cfg: TrainConfig, step: int, seconds: float,
                 samples: int) -> None:
    """The shippable weights: fp16 (half the size; training upcasts), with everything export needs."""
    state = {k: v.half() if v.is_floating_point() else v for k, v in net.state_dict().items()}
    torch.save({"model": state, "widths": list(net.widths), "reference": isinstance(net, ReferenceColorNet),
                "context": net.context is not None, "bins": ab_bins(), "bin_prior": priors.bin_prior,
                "gradient_prior": priors.gradient_prior, "steps": step, "train_seconds": seconds,
                "samples": samples, "config": asdict(cfg)}, path)


# What weights and checkpoints hold besides tensors and plain containers: the priors and bins are numpy arrays.
SAFE_GLOBALS = [np._core.multiarray._reconstruct, np.ndarray, np.dtype, np.dtypes.Float32DType,
                np.dtypes.Float64DType]


def load_weights(path: str | Path) -> dict:
    """Weights or a checkpoint, unpickling nothing but tensors, numpy arrays and plain containers: a file
    beside a model or in the state directory can never run code."""
    with torch.serialization.safe_globals(SAFE_GLOBALS):
        return torch.load(path, map_location="cpu", weights_only=True)


def load_training_data(cfg: TrainConfig) -> tuple[list[np.ndarray], list[float]]:
    """The images of cfg.data's folders, and how often each is drawn (cfg.folder_weights)."""
    unknown = set(cfg.folder_weights) - set(cfg.data)
    if unknown:
        raise ValueError(f"folder weights for folders not trained on: {', '.join(sorted(unknown))}")
    images, weights = [], []
    for folder in cfg.data:
        found = load_folder(Path(folder), video_every=cfg.video_every)
        images += found
        weights += [cfg.folder_weights.get(folder, 1.0)] * len(found)
    return images, weights


def build_net(weights: dict, context: bool | None = None) -> ColorNet:
    """The network of shipped weights; `context=True` gives weights without the global-context branch a
    new one that starts at zero (so the network still computes what the weights did)."""
    has_context = weights.get("context", False)
    kind = ReferenceColorNet if weights.get("reference") else ColorNet
    net = kind(len(weights["bins"]), tuple(weights["widths"]), has_context if context is None else context)
    state = {k: v.float() if v.is_floating_point() else v for k, v in weights["model"].items()}
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if has_context or not k.startswith("context.")]  # a new branch: left at zero
    if missing or unexpected:
        raise ValueError(f"weights do not fit the network: missing {missing}, unexpected {unexpected}")
    return net


def build_decoder(weights: dict, temperature: float, prior_correction: float = 0.0,
                  shrink: float = 0.0, cast_correction: float = 0.0) -> AnnealedMean:
    """The network behind the annealed mean, with the class-rebalancing weights it was trained with divided
    out of its distribution to the power `prior_correction` (0: the seed's decoding, 1: all of them);
    `shrink` and `cast_correction` as AnnealedMean's."""
    bins, cfg = np.asarray(weights["bins"]), weights.get("config", {})
    correction = None
    if cfg.get("rebalance", True):
        priors = Priors(weights["bin_prior"], weights["gradient_prior"])
        correction = log_correction(priors, bins, cfg.get("class_mix", 0.5), prior_correction)
    return AnnealedMean(build_net(weights), torch.from_numpy(bins), temperature, correction, shrink, cast_correction)


def log_correction(priors: Priors, bins: np.ndarray, class_mix: float, prior_correction: float) -> torch.Tensor | None:
    """Minus `prior_correction` times the log class-rebalancing weights (AnnealedMean's log_correction)."""
    if not prior_correction:
        return None
    class_w = priors.class_weights(bins, class_mix)
    # A bin no training pixel came near has weight 0 and is never predicted: leave its logit alone.
    return torch.from_numpy(-prior_correction * np.log(np.where(class_w > 0, class_w, 1.0)))


TRUST_SCALE = 2.0  # ab units: a reference this much nearer the truth than the network's own colour: trust 0.73
TRUST_LR_SCALE = 10.0  # the trust head is new: Adam moves a weight about lr per step, and it has far to go


def parameter_groups(net: ColorNet) -> list[dict]:
    """The trainable parameters, each group with its `lr_scale`: a reference network's trust head learns
    TRUST_LR_SCALE times faster than the rest, which starts from trained weights."""
    trust = [p for p in net.trust.parameters() if p.requires_grad] if isinstance(net, ReferenceColorNet) else []
    rest = [p for p in net.parameters() if p.requires_grad and all(p is not t for t in trust)]
    return [{"params": rest, "lr_scale": 1.0}] + ([{"params": trust, "lr_scale": TRUST_LR_SCALE}] if trust else [])


# The decoding a reference network's own colour is blended with while it trains: the shipped models' (T 2,
# half the rebalancing divided out), so that its trust is learnt against the colour it will be blended with.
REFERENCE_TRAINING_DECODE = (2.0, 0.5)


def progress(step: int, seconds: float, cfg: TrainConfig) -> float:
    """How far training is, 0..1: by steps, or by time when a time budget ends it sooner."""
    done = step / cfg.steps
    return max(done, seconds / cfg.max_seconds) if cfg.max_seconds else done


def lr_at(step: int, seconds: float, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 2% of the peak."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = min(1.0, progress(step, seconds, cfg))
    return cfg.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t)))


def reference_loss(model: torch.nn.Module, batch: tuple[np.ndarray, ...], criterion: WeightedCrossEntropy,
                   own_colour: AnnealedMean, trust_weight: float, device: torch.device) -> torch.Tensor:
    """A reference network's loss: the cross-entropy of its own distribution (what it predicts where the
    reference is wrong) plus the error of the blended colour, which trains the trust alone (its own colour
    enters detached, decoded as it will be at run time)."""
    lightness, planes, ab_quarter, ab_full = (torch.from_numpy(x) for x in batch)
    planes_in = planes.to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        logits, trust = model(lightness.to(device).contiguous(memory_format=torch.channels_last),
                              planes_in.contiguous(memory_format=torch.channels_last))
    logits, trust = logits.float().cpu(), trust.float().cpu()
    with torch.no_grad():
        own = own_colour.decode(logits)
        # Trust the reference where it is nearer the truth than the network's own colour (on the 1/4 grid,
        # softly over TRUST_SCALE ab units): a direct target, much stronger than the blend's error alone
        # where the two nearly agree. Not "where the reference is near the truth": under other light the
        # reference is off by a few units everywhere, still far better than a guess.
        reference_error = torch.linalg.vector_norm(
            torch.nn.functional.avg_pool2d(planes[:, 1:3], 4) - ab_quarter, dim=1, keepdim=True)
        own_error = torch.linalg.vector_norm(own - ab_quarter, dim=1, keepdim=True)
        trust_target = torch.sigmoid((own_error - reference_error) / TRUST_SCALE)
    blended = blend_with_reference(own, trust, planes)
    return (criterion(logits, ab_quarter) + trust_weight * (blended - ab_full).abs().mean() / 10.0
            + trust_weight * torch.nn.functional.binary_cross_entropy_with_logits(trust, trust_target))


def distillation_loss(logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """The cross-entropy of the network's distribution over the bins against the teacher's, per position,
    averaged: a narrower network learns the wider one's whole distribution (which the annealed mean
    decodes), not only where the truth's colour lies (Hinton et al. 2015)."""
    target = torch.softmax(teacher_logits.float(), dim=1)
    return -(target * torch.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


def train(cfg: TrainConfig, images: list[np.ndarray] | None = None) -> Path:
    """Train (or resume) as `cfg` says, on the folders in cfg.data or on `images` (RGB arrays)."""
    distributed = "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1
    rank = 0
    device = pick_device(cfg.device)
    if distributed:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        rank = dist.get_rank()
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
    torch.manual_seed(cfg.seed + rank)
    rng = np.random.default_rng(cfg.seed + rank)  # each rank draws its own crops

    if cfg.teacher:  # checked before the data loads: distillation is between generic networks
        taught_by = load_weights(cfg.teacher)
        if cfg.reference or taught_by.get("reference"):
            raise ValueError("--teacher: distillation trains a generic network from a generic one; "
                             f"{'a reference network is being trained' if cfg.reference else cfg.teacher + ' is a reference network'}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    weights = None
    if images is None:
        images, weights = load_training_data(cfg)
    if cfg.reference:
        from streamd.model.reference_data import ReferenceSampler, load_scenes

        scenes = [scene for folder in cfg.scenes for scene in load_scenes(Path(folder))]
        sampler = ReferenceSampler(images, scenes, cfg.crop, rng, nir_like=cfg.nir_like, augment=cfg.augment)
        log.info("%d fixed-camera scenes from %s", len(scenes), ", ".join(cfg.scenes) or "nowhere")
        images = images or [frame for scene in scenes for frame in scene]
    else:
        sampler = CropSampler(images, cfg.crop, rng, augment=cfg.augment, weights=weights, luma_mix=cfg.luma_mix,
                              nir_like=cfg.nir_like)
    bins = torch.from_numpy(ab_bins())
    log.info("%d training images from %s; %d ab bins", len(images), ", ".join(cfg.data) or "the caller",
             len(bins))

    resume = out / "last.ckpt"
    init = load_weights(cfg.init) if cfg.init and not resume.exists() else None
    teacher = None
    if cfg.teacher:
        teacher = build_net(taught_by).to(device).to(memory_format=torch.channels_last).eval().requires_grad_(False)
    if resume.exists():
        ckpt = load_weights(resume)
        priors = Priors(ckpt["bin_prior"], ckpt["gradient_prior"])
    elif init is not None:  # keep the priors of the model we start from: the loss stays the same
        priors = Priors(init["bin_prior"], init["gradient_prior"])
    elif teacher is not None:  # the teacher's: its distribution is decoded with them
        priors = Priors(taught_by["bin_prior"], taught_by["gradient_prior"])
    else:
        same_on_every_rank = CropSampler(images, cfg.crop, np.random.default_rng(cfg.seed))
        priors = Priors.measure([torch.from_numpy(same_on_every_rank.batch(64)[1]) for _ in range(16)], bins)

    kind = ReferenceColorNet if cfg.reference else ColorNet
    if resume.exists():  # the network that was trained, whatever cfg or --init says now
        kind = ReferenceColorNet if ckpt.get("reference") else ColorNet
        net = kind(len(bins), tuple(ckpt.get("widths", cfg.widths or WIDTHS)), ckpt.get("context", cfg.context))
    elif init is not None:
        net = build_net(init)
        if cfg.widths and tuple(cfg.widths) != tuple(net.widths):
            net = narrowed(net, tuple(cfg.widths))
            log.info("started from %s narrowed to widths %s", cfg.init, list(net.widths))
        if cfg.context and net.context is None:  # a new branch, at zero: the network computes what it did
            grown = ColorNet(len(bins), net.widths, context=True)
            grown.load_state_dict(net.state_dict(), strict=False)
            net = grown
        if cfg.reference and not isinstance(net, ReferenceColorNet):
            generic = net
            net = ReferenceColorNet(len(bins), generic.widths, generic.context is not None)
            net.take_generic(generic)
    else:
        net = kind(len(bins), tuple(cfg.widths or WIDTHS), cfg.context)
    net = net.to(device).to(memory_format=torch.channels_last)
    frozen = [m for name, m in net.named_children() if cfg.train_only and name not in cfg.train_only]
    for module in frozen:
        module.requires_grad_(False)
    criterion = WeightedCrossEntropy(bins, priors, cfg.rebalance, cfg.gradient_prior, cfg.gradient_mix,
                                     cfg.class_mix)
    temperature, alpha = REFERENCE_TRAINING_DECODE
    own_colour = AnnealedMean(torch.nn.Identity(), bins, temperature,
                              log_correction(priors, bins.numpy(), cfg.class_mix, alpha if cfg.rebalance else 0.0))
    optimizer = torch.optim.AdamW(parameter_groups(net), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, seconds, samples = 0, 0.0, 0
    if resume.exists():
        net.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        step, seconds, samples = ckpt["step"], ckpt["seconds"], ckpt["samples"]
        if rank == 0:  # exactly where it left off
            rng.bit_generator.state = ckpt["rng"]
            torch.set_rng_state(ckpt["torch_rng"])
        else:  # rank 0's state is the one saved: the others draw crops of their own from a fresh seed
            rng = np.random.default_rng([cfg.seed, rank, step])
            sampler.rng = rng
        log.info("resumed from %s at step %d", resume, step)
    model = torch.nn.parallel.DistributedDataParallel(net) if distributed else net

    world = dist.get_world_size() if distributed else 1
    bar = tqdm(total=cfg.steps, initial=step, disable=rank != 0, dynamic_ncols=True, unit="step")
    ema_loss = None
    model.train()
    for module in frozen:
        module.eval()  # frozen BatchNorm keeps its running statistics too
    while progress(step, seconds, cfg) < 1.0:
        t0 = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, seconds, cfg) * group["lr_scale"]
        if isinstance(net, ReferenceColorNet):
            loss = reference_loss(model, sampler.batch(cfg.batch), criterion, own_colour, cfg.trust_weight, device)
        else:
            lightness, ab = (torch.from_numpy(x) for x in sampler.batch(cfg.batch))
            lightness = lightness.to(device).contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                logits = model(lightness)
            loss = criterion(logits.float().cpu() if device.type != "cpu" else logits, ab)
            if teacher is not None:
                with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
                    taught = teacher(lightness)
                loss = loss + cfg.teacher_weight * distillation_loss(logits, taught).to(loss.device)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        samples += cfg.batch * world
        dt = time.perf_counter() - t0
        if distributed and cfg.max_seconds:  # one clock for all ranks: the same lr, and all stop at the same step
            slowest = torch.tensor([dt], device=device)
            dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
            dt = slowest.item()
        seconds += dt
        ema_loss = loss.item() if ema_loss is None else 0.98 * ema_loss + 0.02 * loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{ema_loss:.3f}", img_s=f"{cfg.batch * world / dt:.0f}", lr=f"{lr_at(step, seconds, cfg):.1e}")
        last = progress(step, seconds, cfg) >= 1.0
        if rank == 0 and (step % cfg.checkpoint_every == 0 or last):
            torch.save({"model": net.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                        "reference": isinstance(net, ReferenceColorNet),
                        "seconds": seconds, "samples": samples, "rng": rng.bit_generator.state,
                        "torch_rng": torch.get_rng_state(), "bin_prior": priors.bin_prior,
                        "widths": list(net.widths), "context": net.context is not None,
                        "gradient_prior": priors.gradient_prior}, out / "last.ckpt.tmp")
            os.replace(out / "last.ckpt.tmp", resume)
            save_weights(out / "weights.pt", net, priors, cfg, step, seconds, samples)
            log.info("step %d loss %.4f: checkpoint written to %s", step, ema_loss, out)
    bar.close()
    if distributed:
        dist.destroy_process_group()
    return out / "weights.pt"
