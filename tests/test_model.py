"""The model's training side: bins, soft targets, the weighted loss, and train -> export -> eval."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from skimage import data

from streamd.cli import main
from streamd.infer.onnx_runtime import Colorizer, read_info
from streamd.infer.pytorch import load_torch_colorizer
from streamd.colour.lab import ab_bins, rgb_to_lab
from streamd.model.loss import BinGrid, Priors, WeightedCrossEntropy, gradient_magnitude
from streamd.model.network import ECCV16, AnnealedMean, ColorNet
from streamd.model.train import build_decoder, load_weights


@pytest.fixture(scope="module")
def bins() -> torch.Tensor:
    return torch.from_numpy(ab_bins())


def test_bin_grid_finds_the_true_nearest_bins(bins):
    rgb = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)  # sRGB colours, as in training
    ab = torch.from_numpy(rgb_to_lab(rgb)[..., 1:]).permute(2, 0, 1)[None].contiguous()
    idx, dist = BinGrid(bins).nearest(ab, 5)
    flat = ab.permute(0, 2, 3, 1).reshape(-1, 2)
    brute = ((flat[:, None, :] - bins[None]) ** 2).sum(-1).sqrt()
    expected_d, _ = brute.topk(5, dim=1, largest=False)
    assert torch.allclose(dist, expected_d, atol=1e-4)
    assert torch.allclose(brute.gather(1, idx), expected_d, atol=1e-4)
    far = torch.full((1, 2, 1, 1), -127.0)  # no bin within the window: no crash, finite loss
    priors = Priors(np.full(len(bins), 1 / len(bins)), np.full(64, 1 / 64))
    assert torch.isfinite(WeightedCrossEntropy(bins, priors)(torch.zeros(1, len(bins), 1, 1), far))


def test_priors_and_weights(bins):
    rng = torch.Generator().manual_seed(0)
    common = torch.zeros(1, 2, 32, 32)  # mostly neutral pixels...
    rare = torch.zeros(1, 2, 32, 32)
    rare[:, 0, :4] = 60.0  # ...and a red band, rarer
    priors = Priors.measure([common, common, rare], bins)
    assert priors.bin_prior.sum() == pytest.approx(1.0) and priors.gradient_prior.sum() == pytest.approx(1.0)
    w = priors.class_weights(bins.numpy())
    assert (priors.bin_prior * w).sum() == pytest.approx(1.0, rel=1e-4)  # normalised: E_prior[w] = 1
    grid = BinGrid(bins)
    neutral, red = grid.nearest(torch.zeros(1, 2, 1, 1), 1)[0].item(), grid.nearest(torch.tensor([60.0, 0]).reshape(1, 2, 1, 1), 1)[0].item()
    assert w[red] > w[neutral]  # rare colours weigh more
    stronger = priors.class_weights(bins.numpy(), 0.25)
    assert stronger[red] / stronger[neutral] > w[red] / w[neutral]  # a smaller lambda weighs them more still
    assert np.isfinite(w).all()  # bins no training pixel came near get weight 0, not infinity
    gw = priors.gradient_weights()
    assert gw[-1] >= gw[0]  # rare (high) gradients weigh at least as much as flat areas
    del rng


def test_loss_prefers_the_right_colour_and_switches_work(bins):
    priors = Priors(np.full(len(bins), 1 / len(bins)), np.full(64, 1 / 64))
    ab = torch.zeros(1, 2, 4, 4)
    ab[:, 0] = 40.0
    target_bin = BinGrid(bins).nearest(ab, 1)[0][0]
    good = torch.full((1, len(bins), 4, 4), -5.0)
    good[:, target_bin] = 5.0
    bad = torch.zeros(1, len(bins), 4, 4)
    for rebalance in (True, False):
        for gradient in (True, False):
            loss = WeightedCrossEntropy(bins, priors, rebalance, gradient)
            assert loss(good, ab) < loss(bad, ab)


def test_gradient_magnitude_is_high_at_colour_edges():
    ab = torch.zeros(1, 2, 8, 8)
    ab[:, 1, :, 4:] = 50.0
    g = gradient_magnitude(ab)[0, 0]
    assert g[:, 3].min() == 50.0 and g[:, :3].max() == 0.0


def test_network_shapes_and_annealed_mean(bins):
    net = ColorNet(len(bins), (8, 16, 32, 64)).eval()
    with torch.no_grad():
        net.classify.bias[7] += 8.0  # a clear mode
    lightness = torch.rand(2, 1, 64, 96) * 100
    logits = net(lightness)
    assert logits.shape == (2, len(bins), 16, 24)
    sharp = AnnealedMean(net, bins, 0.01)(lightness)
    mode = bins[logits.argmax(1)].permute(0, 3, 1, 2)
    assert (logits.argmax(1) == 7).all() and torch.allclose(sharp, mode, atol=0.5)  # T -> 0 gives the mode
    mean = AnnealedMean(net, bins, 1.0)(lightness)
    expected = torch.einsum("nqhw,qc->nchw", torch.softmax(logits, 1), bins)
    assert torch.allclose(mean, expected, atol=1e-4)  # T = 1 gives the mean
    big = sum(p.numel() for p in ECCV16(len(bins)).parameters())
    assert big > 30e6 > 10 * sum(p.numel() for p in ColorNet(len(bins)).parameters())


def test_train_export_eval_from_the_command_line(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        cv2.imwrite(str(images / f"{name}.png"), cv2.cvtColor(getattr(data, name)(), cv2.COLOR_RGB2BGR))
    ckpt = tmp_path / "ckpt"
    args = ["train", str(images), "-o", str(ckpt), "--batch", "4", "--crop", "64", "--widths", "8", "16", "32", "64",
            "--checkpoint-every", "3", "--weight-decay", "0.05"]
    assert main([*args, "--steps", "3"]) == 0
    first = load_weights(ckpt / "last.ckpt")
    assert first["step"] == 3
    assert {g["weight_decay"] for g in first["optimizer"]["param_groups"]} == {0.05}
    assert main([*args, "--steps", "6"]) == 0  # resumes at step 3
    weights = load_weights(ckpt / "weights.pt")
    assert weights["steps"] == 6 and weights["samples"] == 24
    assert all(v.dtype == torch.float16 for v in weights["model"].values() if v.is_floating_point())

    model = tmp_path / "tiny.onnx"
    assert main(["export", str(ckpt / "weights.pt"), "-o", str(model), "--width", "96", "--height", "64",
                 "--triton", str(tmp_path / "triton")]) == 0
    card = model.with_suffix(".md").read_text()
    assert "6 steps" in card and "max abs ab difference" in card
    served = tmp_path / "triton" / "streamd"  # the new model, packaged for Triton with its own id and input size
    assert (served / "1" / "model.onnx").read_bytes() == model.read_bytes()
    assert f'"{read_info(model).model_id}"' in (served / "config.pbtxt").read_text()
    assert 'key: "streamd.input_width" value { string_value: "96" }' in (served / "config.pbtxt").read_text()
    report = tmp_path / "eval.json"
    assert main(["eval", str(images), "--model", str(model), "--json", str(report),
                 "--sheets", str(tmp_path / "sheets")]) == 0
    scores = json.loads(report.read_text())
    assert scores["subsets"]["images"]["count"] == 4 and "gray" in scores["subsets"]["images"]["rows"]
    assert (tmp_path / "sheets" / "images.jpg").exists()


def test_training_is_reproducible(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.png"), cv2.cvtColor(data.coffee(), cv2.COLOR_RGB2BGR))
    runs = []
    for run in ("a", "b"):
        out = tmp_path / run
        main(["train", str(images), "-o", str(out), "--batch", "2", "--crop", "64", "--steps", "2",
              "--widths", "8", "16", "32", "64", "--seed", "7"])
        runs.append(load_weights(out / "weights.pt")["model"])
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_training_only_the_head_leaves_the_rest_exactly_as_it_was(tmp_path):
    """What per-camera heads on a shared trunk need: adapting the last stage changes nothing else, not even
    BatchNorm statistics."""
    from streamd.model.train import TrainConfig, load_weights, train

    generic = train(TrainConfig(data=[], out=str(tmp_path / "generic"), steps=2, batch=2, crop=64,
                                widths=(8, 16, 32, 64)), images=[data.coffee()])
    adapted = train(TrainConfig(data=[], out=str(tmp_path / "adapted"), steps=3, batch=2, crop=64,
                                widths=(8, 16, 32, 64), init=str(generic), train_only=("up_quarter", "classify")),
                    images=[data.astronaut()])
    before, after = load_weights(generic)["model"], load_weights(adapted)["model"]
    head = [k for k in before if k.startswith(("up_quarter.", "classify."))]
    assert head and all(torch.equal(before[k], after[k]) for k in before if k not in head)
    assert any(not torch.equal(before[k], after[k]) for k in head if before[k].is_floating_point())


def test_training_sees_the_lightness_the_daemon_feeds():
    """Training's L is that of the gray frame streamd makes of the same picture (L of a neutral gray at its
    luma), not the colour pixels' own L*, which is off by up to 20 units on saturated colours."""
    from streamd.colour.lightness import lightness_table
    from streamd.frame import Frame
    from streamd.model.data import CropSampler

    rgb = np.ascontiguousarray(data.astronaut()[:128, :128])
    sampler = CropSampler([rgb], 128, np.random.default_rng(0))
    sampler.crop_one = lambda image: image  # the whole picture, unscaled and unflipped
    lightness, _ = sampler.batch(1)
    gray = Frame.from_bgr("t", 0, np.ascontiguousarray(rgb[..., ::-1]), matrix="bt601", full_range=True)
    assert np.abs(lightness[0, 0] - lightness_table(True)[gray.y]).max() < 1.0  # Y' rounding apart
    assert np.abs(lightness[0, 0] - rgb_to_lab(rgb)[..., 0]).max() > 5.0  # and it is not the colour L*


def test_global_context_branch_starts_as_the_network_it_joins_and_exports(tmp_path):
    """--context on weights without the branch: the network first computes exactly what they did, training
    then moves the branch, and the exported ONNX model (dynamic batch and size) agrees with PyTorch."""
    from streamd.model.train import TrainConfig, build_net, train

    plain = train(TrainConfig(data=[], out=str(tmp_path / "plain"), steps=2, batch=2, crop=64,
                              widths=(8, 16, 32, 64)), images=[data.coffee()])
    weights = load_weights(plain)
    lightness = torch.rand(2, 1, 64, 96) * 100
    with torch.no_grad():
        assert torch.equal(build_net(weights).eval()(lightness), build_net(weights, context=True).eval()(lightness))
    grown = train(TrainConfig(data=[], out=str(tmp_path / "grown"), steps=3, batch=2, crop=64,
                              widths=(8, 16, 32, 64), init=str(plain), context=True), images=[data.astronaut()])
    with_context = load_weights(grown)
    assert with_context["context"] and with_context["model"]["context.mlp.2.weight"].abs().max() > 0
    resumed = load_weights(train(TrainConfig(data=[], out=str(tmp_path / "grown"), steps=4, batch=2, crop=64),
                                 images=[data.astronaut()]))  # resumes the network it trained, branch and all
    assert resumed["steps"] == 4 and resumed["context"] and resumed["widths"] == [8, 16, 32, 64]
    with pytest.raises(ValueError, match="do not fit"):
        build_net({**with_context, "context": False})

    model = tmp_path / "context.onnx"
    assert main(["export", str(grown), "-o", str(model), "--width", "96", "--height", "64"]) == 0
    colorizer = Colorizer(model, provider="cpu")
    for shape in ((1, 1, 64, 96), (3, 1, 128, 160)):
        lightness = np.random.default_rng(0).uniform(0, 100, shape).astype(np.float32)
        with torch.no_grad():
            decoder = build_decoder(with_context, colorizer.info.temperature).eval()
            expected = decoder(torch.from_numpy(lightness)).numpy()
        assert np.abs(colorizer(lightness) - expected).max() < 0.5  # fp16-stored weights, as the export check


def test_prior_correction_divides_the_rebalancing_weights_back_out(tmp_path):
    """On the shipped (rebalanced) model: the corrected decoding is softmax((logits - alpha log w) / T) @ bins,
    it is less colourful than the seed's, and export bakes it into ONNX so that both runtimes agree."""
    shipped = Path(__file__).parents[1] / "models" / "streamd-base.pt"
    weights = load_weights(shipped)
    rgb = cv2.resize(data.astronaut(), (320, 192), interpolation=cv2.INTER_AREA)
    lightness = torch.from_numpy(rgb_to_lab(rgb)[None, None, ..., 0].astype(np.float32))
    plain, corrected = build_decoder(weights, 2.0).eval(), build_decoder(weights, 2.0, 0.5).eval()
    bins = torch.from_numpy(np.asarray(weights["bins"])).float()
    w = Priors(weights["bin_prior"], weights["gradient_prior"]).class_weights(bins.numpy())
    with torch.no_grad():
        logits = plain.net(lightness)
        expected = torch.einsum("nqhw,qc->nchw", torch.softmax((logits - 0.5 * torch.from_numpy(
            np.log(np.where(w > 0, w, 1.0)))[:, None, None]) / 2.0, 1), bins)
        ab_plain, ab_corrected = plain(lightness), corrected(lightness)
    assert torch.allclose(ab_corrected, expected, atol=1e-3)
    chroma = lambda ab: float(ab.norm(dim=1).mean())  # noqa: E731
    assert chroma(ab_corrected) < 0.95 * chroma(ab_plain)

    model = tmp_path / "corrected.onnx"
    assert main(["export", str(shipped), "-o", str(model), "--temperature", "2", "--prior-correction", "0.5"]) == 0
    colorizer = Colorizer(model)
    assert colorizer.info.prior_correction == 0.5 and colorizer.info.temperature == 2.0
    assert np.abs(colorizer(lightness.numpy()) - ab_corrected.numpy()).max() < 0.05
    shutil.copy(shipped, model.with_suffix(".pt"))  # the Torch runtime reads the weights beside the model
    torch_runtime = load_torch_colorizer(model, device="cpu")
    assert np.abs(torch_runtime(lightness.numpy()) - ab_corrected.numpy()).max() < 0.05


def test_weights_load_without_running_pickled_code(tmp_path):
    """A weights file is data: one whose pickle would call a function (here os.system) is refused, while the
    shipped weights and a training checkpoint load."""
    import os
    import pickle

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'ran'}",)

    evil = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": Payload()}, evil)
    with pytest.raises(pickle.UnpicklingError):
        load_weights(evil)
    assert not (tmp_path / "ran").exists()
    assert "bin_prior" in load_weights(Path(__file__).parents[1] / "models" / "streamd-base.pt")


def test_folder_weights_and_luma_mix_shape_what_training_draws(tmp_path):
    """--weight draws a folder's images as often as asked (0: never); --luma-mix gives a share of the crops
    an L that is not the BT.601 luma's, while the colour targets stay those of the picture."""
    from streamd.model.data import CropSampler
    from streamd.model.train import TrainConfig, load_training_data

    red, blue = np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64, 3), np.uint8)
    red[..., 0], blue[..., 2] = 200, 200
    for name, image in (("red", red), ("blue", blue)):
        (tmp_path / name).mkdir()
        cv2.imwrite(str(tmp_path / name / "a.png"), image[..., ::-1])
    folders = [str(tmp_path / "red"), str(tmp_path / "blue")]
    images, weights = load_training_data(TrainConfig(data=folders, folder_weights={folders[0]: 0.0}))
    _, ab = CropSampler(images, 64, np.random.default_rng(0), weights=weights).batch(16)
    assert (ab[:, 1] < -50).all()  # every crop is the blue one (b* far below 0)
    with pytest.raises(ValueError, match="not trained on"):
        load_training_data(TrainConfig(data=folders[:1], folder_weights={folders[1]: 2.0}))
    assert main(["train", folders[0], "--weight", f"{folders[1]}=2", "-o", str(tmp_path / "x")]) == 2

    luma = cv2.cvtColor(red, cv2.COLOR_RGB2GRAY)[0, 0]
    mixed = CropSampler([red], 64, np.random.default_rng(0), luma_mix=0.5)
    lightness = [mixed.batch(1)[0][0, 0, 0, 0] for _ in range(40)]
    from streamd.colour.lightness import lightness_table
    plain = lightness_table(True)[luma]
    share = np.mean([abs(value - plain) > 1.0 for value in lightness])
    assert 0.25 < share < 0.75
    assert main(["train", folders[0], "--luma-mix", "0.6", "--nir-like", "0.6", "-o", str(tmp_path / "x")]) == 2


def test_near_infrared_like_luma_brightens_foliage_and_red_and_darkens_a_blue_sky():
    """What a near-infrared camera shows that the day luma does not: against BT.601 luma, foliage green and a
    red dye come out brighter, a blue sky darker; a neutral gray keeps its level."""
    from streamd.model.data import CropSampler, near_infrared_like

    patches = {"foliage": (60, 120, 40), "red": (200, 30, 30), "sky": (90, 150, 230), "gray": (128, 128, 128)}
    rgb = np.array([[patches[name] for name in patches]], np.uint8)
    day = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[0].astype(int)
    night = near_infrared_like(rgb, foliage_gain=2.0)[0].astype(int)
    foliage, red, sky, gray = range(4)
    assert night[foliage] > day[foliage] + 30 and night[red] > day[red] + 30 and night[sky] < day[sky] - 20
    assert abs(night[gray] - day[gray]) <= 1
    sampler = CropSampler([np.repeat(np.repeat(rgb, 64, 0), 16, 1)], 64, np.random.default_rng(0), nir_like=1.0)
    lightness = sampler.batch(1)[0]
    assert lightness.shape == (1, 1, 64, 64) and lightness.std() > 5  # the patches stay apart in L


def test_shrink_keeps_colour_the_distribution_is_sure_of_and_grays_the_rest():
    """Hand-checkable: a distribution peaked on one bin keeps its colour; one split 60/40 between (50, 0)
    and (-50, 0) has mean (10, 0) and spread 2,400, so shrink k = 1 scales it by 100 / 2,500."""
    bins = torch.tensor([[50.0, 0.0], [-50.0, 0.0], [0.0, 50.0]])

    class Fixed(torch.nn.Module):
        def __init__(self, probs):
            super().__init__()
            self.logits = torch.log(torch.tensor(probs).clamp_min(1e-9))[None, :, None, None]

        def forward(self, lightness):
            return self.logits.expand(lightness.shape[0], -1, 1, 1)

    lightness = torch.zeros(1, 1, 1, 1)
    sure = AnnealedMean(Fixed([1.0, 0.0, 0.0]), bins, 1.0, shrink=1.0)(lightness)
    assert torch.allclose(sure[0, :, 0, 0], torch.tensor([50.0, 0.0]), atol=0.01)
    split = AnnealedMean(Fixed([0.6, 0.4, 0.0]), bins, 1.0, shrink=1.0)(lightness)
    assert torch.allclose(split[0, :, 0, 0], torch.tensor([10.0 * 100 / 2500, 0.0]), atol=0.01)
    plain = AnnealedMean(Fixed([0.6, 0.4, 0.0]), bins, 1.0)(lightness)
    assert torch.allclose(plain[0, :, 0, 0], torch.tensor([10.0, 0.0]), atol=0.01)


def test_cast_correction_removes_its_share_of_the_frames_mean_colour_and_keeps_the_differences():
    """Hand-checkable: one pixel sure of (50, 0), the other of (0, 50): the frame's mean is (25, 25); a
    correction of 0.5 moves both by (-12.5, -12.5), so the two still differ by (50, -50). Frames of a batch are
    corrected each by its own mean."""
    bins = torch.tensor([[50.0, 0.0], [0.0, 50.0], [-50.0, 0.0]])

    class TwoPixels(torch.nn.Module):
        def forward(self, lightness):
            logits = torch.full((lightness.shape[0], 3, 1, 2), -30.0)
            logits[:, 0, 0, 0] = logits[:, 1, 0, 1] = 0.0
            logits[1:, :, :, 1] = torch.tensor([-30.0, -30.0, 0.0])[:, None]  # the second frame: (50,0), (-50,0)
            return logits

    ab = AnnealedMean(TwoPixels(), bins, 1.0, cast_correction=0.5)(torch.zeros(2, 1, 1, 2))
    assert torch.allclose(ab[0, :, 0, 0], torch.tensor([37.5, -12.5]), atol=0.01)
    assert torch.allclose(ab[0, :, 0, 1], torch.tensor([-12.5, 37.5]), atol=0.01)
    assert torch.allclose(ab[1, :, 0, :], torch.tensor([[50.0, -50.0], [0.0, 0.0]]), atol=0.01)  # mean 0: as is


def test_export_bakes_the_shrink_and_keeps_the_hand_written_card(tmp_path):
    """streamd export --shrink --cast-correction: ONNX Runtime and both Python runtimes read them back; the
    card's facts block is rewritten in place, everything a person wrote around it stays."""
    shipped = Path(__file__).parents[1] / "models" / "streamd-base.pt"
    model = tmp_path / "m.onnx"
    model.with_suffix(".md").write_text("# Card\n\nintro\n\n<!-- facts written by streamd export -->STALE-FACTS"
                                        "<!-- end of export facts -->\n\n## Scores\nkept\n")
    assert main(["export", str(shipped), "-o", str(model), "--cast-correction", "1.5"]) == 2  # 0 to 1
    assert main(["export", str(shipped), "-o", str(model), "--temperature", "2", "--prior-correction", "1",
                 "--shrink", "1", "--cast-correction", "0.5"]) == 0
    card = model.with_suffix(".md").read_text()
    assert card.startswith("# Card\n\nintro") and card.endswith("## Scores\nkept\n") and "STALE-FACTS" not in card
    assert "k = 1" in card and "0.5 of each frame's mean colour removed" in card and "../" not in card
    colorizer = Colorizer(model)
    assert colorizer.info.shrink == 1.0 and colorizer.info.cast_correction == 0.5
    weights = load_weights(shipped)
    rgb = cv2.resize(data.coffee(), (320, 192), interpolation=cv2.INTER_AREA)
    lightness = rgb_to_lab(rgb)[None, None, ..., 0].astype(np.float32)
    with torch.no_grad():
        shrunk = build_decoder(weights, 2.0, 1.0, 1.0, 0.5).eval()(torch.from_numpy(lightness)).numpy()
        plain = build_decoder(weights, 2.0, 1.0).eval()(torch.from_numpy(lightness)).numpy()
        uncorrected = build_decoder(weights, 2.0, 1.0, 1.0).eval()(torch.from_numpy(lightness)).numpy()
    assert np.abs(colorizer(lightness) - shrunk).max() < 0.05
    # the cast correction is in the graph, not only in its metadata: half of the frame's mean colour is gone
    frame_mean = uncorrected.mean(axis=(2, 3))
    assert np.abs(frame_mean).max() > 0.5
    assert np.allclose(colorizer(lightness).mean(axis=(2, 3)), 0.5 * frame_mean, atol=0.05)
    assert np.linalg.norm(uncorrected, axis=1).mean() < 0.9 * np.linalg.norm(plain, axis=1).mean()
    shutil.copy(shipped, model.with_suffix(".pt"))
    assert np.abs(load_torch_colorizer(model, device="cpu")(lightness) - shrunk).max() < 0.05


def test_a_narrowed_network_starts_from_the_wider_ones_strongest_channels():
    """streamd.model.narrow on the shipped weights: at the same widths it is the network itself; narrower,
    it predicts far nearer the wide network than a network of those widths that learned nothing; wider
    widths, or a network it cannot walk, are refused."""
    from streamd.model.narrow import narrowed
    from streamd.model.network import ReferenceColorNet
    from streamd.model.train import build_net

    shipped = Path(__file__).resolve().parent.parent / "models" / "streamd-base.pt"
    weights = load_weights(shipped)
    wide = build_net(weights).eval()
    photos = [cv2.resize(image, (160, 96), interpolation=cv2.INTER_AREA)
              for image in (data.astronaut(), data.coffee(), data.chelsea())]
    lightness = torch.from_numpy(np.stack([rgb_to_lab(p)[None, ..., 0] for p in photos]).astype(np.float32))
    decode = build_decoder(weights, 2.0).eval()
    with torch.no_grad():
        assert torch.equal(narrowed(wide, wide.widths).eval()(lightness), wide(lightness))
        expected = decode(lightness)
        small = narrowed(wide, (16, 32, 64, 128)).eval()
        assert small.widths == (16, 32, 64, 128)
        decode.net = small
        error = (decode(lightness) - expected).norm(dim=1).mean()
        decode.net = ColorNet(len(weights["bins"]), (16, 32, 64, 128)).eval()
        untrained = (decode(lightness) - expected).norm(dim=1).mean()
    assert error < 0.9 * untrained, (error, untrained)
    with pytest.raises(ValueError, match="at most"):
        narrowed(wide, (32, 48, 96, 192))
    with pytest.raises(ValueError, match="generic"):
        narrowed(ReferenceColorNet(len(weights["bins"]), wide.widths), (16, 32, 64, 128))


def test_training_a_narrower_network_from_a_teacher(tmp_path):
    """`streamd train --init WIDE --widths ... --teacher WIDE`: the network starts narrowed, learns the
    teacher's distribution beside the truth, and keeps the teacher's priors (its colour is decoded with
    them); the distillation loss is smallest for the teacher's own distribution."""
    from streamd.model.train import distillation_loss

    images = tmp_path / "images"
    images.mkdir()
    for name in ("coffee", "chelsea"):
        cv2.imwrite(str(images / f"{name}.png"), cv2.cvtColor(getattr(data, name)(), cv2.COLOR_RGB2BGR))
    wide = tmp_path / "wide"
    main(["train", str(images), "-o", str(wide), "--batch", "2", "--crop", "64", "--steps", "2",
          "--widths", "8", "16", "32", "64"])
    narrow = tmp_path / "narrow"
    assert main(["train", str(images), "-o", str(narrow), "--batch", "2", "--crop", "64",
                 "--steps", "2", "--init", str(wide / "weights.pt"), "--teacher", str(wide / "weights.pt"),
                 "--widths", "4", "8", "16", "32"]) == 0
    untaught = tmp_path / "untaught"  # the same run without the teacher: the teacher must change what is learned
    assert main(["train", str(images), "-o", str(untaught), "--batch", "2", "--crop", "64", "--steps", "2",
                 "--init", str(wide / "weights.pt"), "--widths", "4", "8", "16", "32"]) == 0
    teacher, student = load_weights(wide / "weights.pt"), load_weights(narrow / "weights.pt")
    alone = load_weights(untaught / "weights.pt")["model"]
    assert any(not torch.equal(student["model"][k], alone[k]) for k in alone if alone[k].is_floating_point())
    assert student["widths"] == [4, 8, 16, 32] and student["config"]["teacher"] == str(wide / "weights.pt")
    assert np.array_equal(student["bin_prior"], teacher["bin_prior"])
    logits = torch.randn(2, 262, 4, 4) * 3
    assert distillation_loss(logits, logits) < distillation_loss(torch.zeros_like(logits), logits)


def test_the_decoding_runs_in_fp32_under_autocast(bins):
    """The annealed mean sums unnormalised weights over the bins (|ab|^2 up to 18,500 for the shrinkage):
    under an autocast (fp16 on a GPU, bf16 here) it must still compute in fp32, or the sums lose their
    precision (bf16) or overflow (fp16) and uncertain pixels turn gray."""
    torch.manual_seed(0)
    logits = torch.randn(2, len(bins), 6, 8) * 0.5
    decoder = AnnealedMean(torch.nn.Identity(), bins, 0.38, shrink=1.0).eval()
    expected = decoder(logits)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = decoder(logits)
    assert got.dtype == torch.float32 and torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()
