"""PPA (Plug & Play Attacks) and the stylegan2 prior: the attack contract (on a latent prior and on a style-space
prior), the Prior style-space defaults, the Poincare loss against an independent float64 formula, PPA's Adam
step against torch's, the random transformations, query accounting, quality on the tiny digits scenario, and
the stylegan2 prior's training, weights-file round trip and refusals."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from torch import Tensor

from invertkit.core import losses
from invertkit.core.errors import CheckpointError, ConfigError, DataNotFoundError, UsageError
from invertkit.core.interfaces import TorchTarget
from invertkit.core.interfaces.prior import Prior
from invertkit.core.optim import optimise
from invertkit.core.testing.contracts import AttackContract, TinyPrior, torch_threads
from invertkit.core.testing.strategies import make_tiny_target
from invertkit.core.augment import random_resized_crop
from invertkit.plugins.attacks.ppa import PPA
from invertkit.plugins.attacks.random_prior import RandomPrior
from invertkit.plugins.priors.stylegan2 import (StyleGAN2Builder, StyleGAN2Prior, Upsample, load_generator,
                                                save_generator)

TINY_SG = {"style_dim": 16, "n_mlp": 2, "channel_max": 16, "batch_size": 8}
FAST = {"candidates": 3, "search_space": 12, "iterations": 3, "final_iterations": 2}




def tiny_stylegan(image_shape=(1, 8, 8), **over: Any) -> StyleGAN2Prior:  # noqa: ANN001
    torch.manual_seed(0)
    builder = StyleGAN2Builder({**TINY_SG, **over})
    return builder.wrap(builder.networks(image_shape))  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------- contracts
class TestPPAContract(AttackContract):
    attack_cls = PPA
    config: ClassVar[dict[str, Any]] = FAST


class TestPPAOnStyleGAN2Contract(AttackContract):
    attack_cls = PPA
    config: ClassVar[dict[str, Any]] = {**FAST, "single_w": False}

    def make_prior(self) -> Prior:
        return tiny_stylegan(self.input_shape)


class ConditionalTinyPrior(TinyPrior):
    """The tiny linear decoder of ``z + shift[label]``; refuses to decode without labels."""

    name = "conditional-tiny-prior"
    conditional = True

    def __init__(self, classes: int = 4) -> None:
        super().__init__(latent_dim=8)
        self.shift = torch.randn((classes, 8), generator=torch.Generator().manual_seed(1))

    def decode(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        if labels is None:
            raise UsageError("a conditional prior needs labels")
        return super().decode(z + self.shift[labels.long()])


class TestPPAOnAConditionalPriorContract(AttackContract):
    attack_cls = PPA
    config: ClassVar[dict[str, Any]] = FAST

    def make_prior(self) -> Prior:
        return ConditionalTinyPrior(self.num_classes)


def test_a_conditional_prior_is_searched_once_per_identity() -> None:
    target = make_tiny_target(0, num_classes=4, input_shape=(1, 8, 8))
    result = PPA(FAST)(target, torch.tensor([0, 2]), prior=ConditionalTinyPrior(), seed=0)
    assert result.queries == 2 * 12 * 2 + 6 * 3 + 6 * 2  # 2 identities x 12 searched x 2 views, 6 rows
    # each identity's images come from its own conditional decoding
    w = result.latents
    assert torch.allclose(result.images, ConditionalTinyPrior().decode(w, result.labels), atol=1e-6)


# ----------------------------------------------------------------------------------------------- style space
def test_a_latent_prior_is_its_own_style_space() -> None:
    prior = TinyPrior(latent_dim=8)
    z = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    assert prior.style_shape == (8,) and prior.num_styles == 1 and not prior.has_style_space
    assert torch.equal(prior.to_style(z), z) and prior.style_mean() is None
    assert torch.equal(prior.truncate_style(z, 0.5), z)  # no mean style: truncation is the identity
    assert torch.equal(prior.decode_style(z), prior.decode(z))
    assert torch.equal(prior.decode_style(z.unsqueeze(1)), prior.decode(z))  # the per-layer form, one layer
    assert torch.equal(prior.project_style(z), prior.project(z))


def test_stylegan2_style_space_broadcasts_and_truncates() -> None:
    prior = tiny_stylegan()
    z = prior.sample_latent(4, torch.Generator().manual_seed(1))
    w = prior.to_style(z)
    assert prior.has_style_space and w.shape == (4, 16) and prior.num_styles == 4  # 2 log2(8) - 2
    # one style broadcast to every layer == the same style given per layer; decode is synthesis(mapping(z))
    assert torch.allclose(prior.decode_style(w), prior.decode_style(w.unsqueeze(1).expand(-1, 4, -1)), atol=1e-6)
    assert torch.allclose(prior.decode(z), prior.decode_style(w), atol=1e-6)
    # different styles per layer give a different image
    mixed = w.unsqueeze(1).repeat(1, 4, 1)
    mixed[:, 2:] = w.roll(1, 0).unsqueeze(1)
    assert not torch.allclose(prior.decode_style(mixed), prior.decode_style(w), atol=1e-4)
    # truncation moves towards the mean style by psi; psi 1 is the identity
    mean = prior.style_mean()
    assert torch.allclose(prior.truncate_style(w, 0.5), mean + 0.5 * (w - mean), atol=1e-6)
    assert torch.equal(prior.truncate_style(w, 1.0), w)
    x = prior.decode(z)
    assert x.shape == (4, 1, 8, 8) and float(x.min()) >= 0 and float(x.max()) <= 1
    ws = w.clone().requires_grad_(True)
    prior.decode_style(ws).sum().backward()
    assert ws.grad is not None and float(ws.grad.abs().sum()) > 0


def test_stylegan2_resizes_crops_and_converts_channels() -> None:
    prior = tiny_stylegan((3, 28, 28), crop=0.75)  # generated at 32 px, cropped to 24, resized to 28
    assert prior.generator.size == 32
    x = prior.sample(2, torch.Generator().manual_seed(0))
    assert x.shape == (2, 3, 28, 28)
    grey = tiny_stylegan((1, 8, 8))
    grey.image_shape = (3, 8, 8)  # a grey generator decoded for an RGB target repeats its channel
    y = grey.sample(2, torch.Generator().manual_seed(0))
    assert y.shape == (2, 3, 8, 8) and torch.equal(y[:, 0], y[:, 2])


def test_upsample_filter_keeps_a_constant_image_constant() -> None:
    # the [1, 3, 3, 1] filter after zero insertion (gain 4) must preserve a constant away from the border
    out = Upsample()(torch.full((1, 2, 6, 6), 3.0))
    assert out.shape == (1, 2, 12, 12)
    assert torch.allclose(out[..., 2:-2, 2:-2], torch.full_like(out[..., 2:-2, 2:-2], 3.0), atol=1e-5)


# ----------------------------------------------------------------------------------------------- the loss
def poincare_reference(logits: np.ndarray, labels: np.ndarray, xi: float) -> np.ndarray:
    """PPA's Poincare loss in float64, written from the paper's formula: u = l / ||l||_1, v = one-hot - xi
    clipped to [0, 1], d = arccosh(1 + 2 ||u - v||^2 / ((1 - ||u||^2)(1 - ||v||^2)))."""
    out = []
    for row, y in zip(logits, labels):
        u = row / np.sum(np.abs(row))
        v = np.clip(np.eye(len(row))[y] - xi, 0.0, 1.0)
        delta = 2 * np.sum((u - v) ** 2) / ((1 - np.sum(u**2)) * (1 - np.sum(v**2)))
        out.append(np.arccosh(1 + delta))
    return np.array(out)


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 7), st.integers(1, 5), st.integers(0, 2**31 - 1), st.sampled_from([1e-4, 1e-5, 0.05]))
def test_poincare_loss_matches_a_float64_reference(k: int, n: int, seed: int, xi: float) -> None:
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (n, k))
    labels = rng.integers(0, k, n)
    got = losses.poincare(torch.from_numpy(logits), torch.from_numpy(labels), eps=xi).numpy()
    assert np.allclose(got, poincare_reference(logits, labels, xi), rtol=1e-9, atol=1e-9)
    # PPA's float32 path agrees to float32 precision
    got32 = losses.poincare(torch.from_numpy(logits).float(), torch.from_numpy(labels), eps=xi).numpy()
    assert np.allclose(got32, poincare_reference(logits, labels, xi), rtol=1e-3, atol=1e-4)


def test_poincare_loss_rewards_the_attacked_logit() -> None:
    logits = torch.tensor([[1.0, 0.5, -0.5], [1.0, 0.5, -0.5]])
    y = torch.tensor([0, 2])
    base = losses.poincare(logits, y, eps=1e-4)
    up = logits.clone()
    up[0, 0], up[1, 2] = 3.0, 3.0
    assert bool((losses.poincare(up, y, eps=1e-4) < base).all())


# ----------------------------------------------------------------------------------------------- optimiser
def test_adam_step_through_optimise_is_torch_adam_with_ppa_betas() -> None:
    g = torch.Generator().manual_seed(0)
    a, b, x0 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)

    def f(x: Tensor) -> Tensor:
        return (a * (x - b) ** 2).abs().sum(1) + x.sin().sum(1)

    ours = optimise(x0, iterations=20, lr=0.05, optimizer="adam", betas=(0.1, 0.1), objective=lambda x, idx: f(x)).params
    ref = x0.clone().requires_grad_(True)
    opt = torch.optim.Adam([ref], lr=0.05, betas=(0.1, 0.1))
    for _ in range(20):
        opt.zero_grad()
        f(ref).sum().backward()
        opt.step()
    assert torch.allclose(ours, ref.detach(), atol=1e-5)
    # and it is not torch's default betas
    ref2 = x0.clone().requires_grad_(True)
    opt2 = torch.optim.Adam([ref2], lr=0.05)
    for _ in range(20):
        opt2.zero_grad()
        f(ref2).sum().backward()
        opt2.step()
    assert not torch.allclose(ours, ref2.detach(), atol=1e-3)


def test_random_resized_crop() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand((6, 1, 8, 8), requires_grad=True)
    same = random_resized_crop(x.detach(), g, (1.0, 1.0), (1.0, 1.0), 0.0)
    assert torch.allclose(same, x.detach(), atol=1e-5)
    assert torch.allclose(random_resized_crop(x.detach(), g, (1.0, 1.0), (1.0, 1.0), 1.0), x.detach().flip(-1), atol=1e-5)
    out = random_resized_crop(x, g, (0.5, 0.9), (0.8, 1.2), 0.5)
    assert out.shape == x.shape and not torch.allclose(out.detach(), x.detach(), atol=1e-3)
    assert float(out.detach().min()) >= 0 and float(out.detach().max()) <= 1
    out.sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    # each image draws its own crop
    y = random_resized_crop(x.detach()[:1].expand(4, -1, -1, -1), g, (0.5, 0.6), (1.0, 1.0), 0.0)
    assert not torch.allclose(y[0], y[1], atol=1e-4)


# ----------------------------------------------------------------------------------------------- the attack
def test_queries_and_selection_follow_the_pipeline() -> None:
    target = make_tiny_target(0, num_classes=4, input_shape=(1, 8, 8))
    labels = torch.tensor([0, 1, 1, 3])
    result = PPA({**FAST, "candidates": 3, "search_space": 10, "iterations": 4, "final_iterations": 5})(
        target, labels, prior=TinyPrior(), seed=0)
    rows = 3 * 3  # 3 identities x 3 candidates
    assert result.queries == target.queries == 10 * 2 + rows * 4 + rows * 5
    assert torch.equal(result.labels, labels) and result.extras["candidates_per_identity"] == 3
    assert result.latents is not None and result.latents.shape == (4, 8)
    # identity 1 asked twice: two different candidates, best score first
    assert not torch.equal(result.images[1], result.images[2]) and float(result.scores[1]) >= float(result.scores[2])
    # candidates are raised to the samples asked for; the search space must hold them
    many = PPA({**FAST, "candidates": 1, "search_space": 10, "final_iterations": 0})(
        make_tiny_target(0, num_classes=4, input_shape=(1, 8, 8)), torch.tensor([2, 2, 2]), prior=TinyPrior(), seed=0)
    assert many.extras["candidates_per_identity"] == 3 and len(many) == 3
    with pytest.raises(ConfigError, match="search_space"):
        PPA({**FAST, "candidates": 20, "search_space": 10})(target, labels, prior=TinyPrior(), seed=0)
    with pytest.raises(ConfigError, match="crop_scale"):
        PPA({"crop_scale": (0.9, 1.5)})


def test_defaults_are_the_papers() -> None:
    cfg = PPA.Config()
    assert (cfg.candidates, cfg.search_space, cfg.iterations, cfg.lr, cfg.betas) == (200, 2000, 50, 0.005, (0.1, 0.1))
    assert (cfg.truncation, cfg.xi, cfg.crop_scale, cfg.crop_ratio, cfg.final_iterations) == (0.5, 1e-4, (0.9, 1.0),
                                                                                             (1.0, 1.0), 100)
    assert (cfg.final_scale, cfg.final_ratio, cfg.final_flip, cfg.single_w, cfg.discriminator_weight) == (
        (0.5, 0.9), (0.8, 1.2), 0.5, True, 0.0)


# Measured on the tiny scenario (5 identities x 2, wgan-gp prior, `python /tmp/ppa_measure.py` in the report),
# candidates 8, search 200, final 10 transformations, seeds 0-3. Target confidence for the identity /
# eval-model acc@1:
#   random-prior                  0.200 0.199 0.199 0.202  /  0.20 0.40 0.20 0.40
#   ppa, 1 step (selection only)  0.204 0.204 0.201 0.206  /  0.40 0.40 0.40 0.30
#   ppa, 50 steps lr 0.005 (paper's lr; a 16-d N(0, I) latent barely moves)   ~0.20
#   ppa, 50 steps lr 0.05         0.409 0.415 0.404 0.342  /  0.40 0.50 0.60 0.40
#   ppa, 50 steps lr 0.1 (used)   0.628 0.718 0.610 0.618  /  0.50 0.40 0.50 0.60
# The paper's lr suits StyleGAN's w; the tiny prior's latent is N(0, I), hence the CPU-sized lr here. With the
# stylegan2 prior trained on the same public digits (600 steps, defaults otherwise, 155 s; `python
# /tmp/sg_measure.py 600`), PPA at the paper's lr 0.005 in w reaches conf 0.795 0.896 0.866 / acc 0.60 0.80 0.70
# (seeds 0-2) against the random prior's 0.128 0.202 0.206 / 0.10 0.20 0.10 (too slow to train in this file).
QUALITY = {"candidates": 8, "search_space": 200, "iterations": 50, "lr": 0.1, "final_iterations": 10}


def test_ppa_beats_the_random_prior_on_the_tiny_scenario(scenario) -> None:  # noqa: ANN001
    from invertkit.core.bench.runner import metric_context
    from invertkit.plugins.metrics.attack_acc import AttackAccuracy

    labels = torch.arange(5).repeat_interleave(2)

    def target() -> TorchTarget:
        return TorchTarget(scenario.target_net, num_classes=5, input_shape=(1, 8, 8), name="tiny-cnn")

    def measured(result) -> tuple[float, float]:  # noqa: ANN001
        with torch.no_grad():
            conf = scenario.target_net(result.images).softmax(1).gather(1, result.labels.view(-1, 1)).mean()
        metric = AttackAccuracy(metric_context(scenario))
        metric.update(result.images, result.labels)
        return float(conf), metric.compute()["acc@1"]

    ppa = PPA(QUALITY)(target(), labels, prior=scenario.prior, seed=0)
    again = PPA(QUALITY)(target(), labels, prior=scenario.prior, seed=0)
    other = PPA(QUALITY)(target(), labels, prior=scenario.prior, seed=1)
    assert torch.equal(ppa.images, again.images) and not torch.equal(ppa.images, other.images)
    base = RandomPrior()(target(), labels, prior=scenario.prior, seed=0)
    (c_ppa, a_ppa), (c_rand, a_rand) = measured(ppa), measured(base)
    assert c_ppa > c_rand + 0.3, (c_ppa, c_rand)  # measured 0.628 vs 0.200
    assert a_ppa > a_rand, (a_ppa, a_rand)  # measured 0.50 vs 0.20
    assert ppa.extras["final_confidence"] > ppa.extras["initial_confidence"]


# ----------------------------------------------------------------------------------------------- stylegan2
ROSINALITY_KEYS_8PX = {
    *(f"style.{i}.{p}" for i in (1, 2) for p in ("weight", "bias")), "input.input",
    *(f"{m}.{p}" for m in ("conv1", "convs.0", "convs.1") for p in ("conv.weight", "conv.modulation.weight",
                                                                  "conv.modulation.bias", "noise.weight", "activate.bias")),
    "convs.0.conv.blur.kernel",
    *(f"{m}.{p}" for m in ("to_rgb1", "to_rgbs.0") for p in ("conv.weight", "conv.modulation.weight",
                                                            "conv.modulation.bias", "bias")),
    "to_rgbs.0.upsample.kernel", "noises.noise_0", "noises.noise_1", "noises.noise_2",
}


def test_stylegan2_trains_and_round_trips_through_a_weights_file(scenario, tmp_path: Path) -> None:
    public = scenario.split.public[0][:128]
    builder = StyleGAN2Builder({**TINY_SG, "steps": 3, "d_reg_every": 2, "ema_half_life": 16})
    torch.manual_seed(0)
    nets = builder.networks((1, 8, 8))
    assert set(nets["g_ema"].state_dict()) == ROSINALITY_KEYS_8PX
    before = {k: v.clone() for k, v in nets["g_ema"].state_dict().items()}
    facts = builder.train(nets, public, seed=0)
    assert facts["trained"] and all(math.isfinite(facts[k]) for k in ("d_loss", "g_loss", "r1"))
    after = nets["g_ema"].state_dict()
    assert not torch.allclose(after["conv1.conv.weight"], before["conv1.conv.weight"])
    assert torch.equal(after["noises.noise_0"], before["noises.noise_0"])  # the constant noise is kept
    prior = builder.wrap(nets)
    assert prior.has_discriminator and prior.realism(public[:4]).shape == (4,)

    path = tmp_path / "g_ema.safetensors"
    save_generator(path, nets["g_ema"])  # type: ignore[arg-type]
    loaded = StyleGAN2Builder({"weights": str(path)})  # architecture read from the file, not the config
    lnets = loaded.networks((1, 8, 8))
    assert set(lnets) == {"g_ema"}
    assert loaded.train(lnets, public, seed=0)["trained"] is False
    lprior = loaded.wrap(lnets)
    z = prior.sample_latent(5, torch.Generator().manual_seed(3))
    assert torch.equal(lprior.decode(z), prior.decode(z)) and not lprior.has_discriminator
    assert torch.equal(load_generator(path).synthesis(prior.to_style(z)), nets["g_ema"].synthesis(prior.to_style(z)))


def test_stylegan2_refuses_bad_weights_files(tmp_path: Path) -> None:
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(DataNotFoundError, match="nope.safetensors"):
        StyleGAN2Builder({"weights": str(missing)}).networks((1, 8, 8))
    wrong = tmp_path / "wrong.safetensors"
    save_file({"generator.fc.weight": torch.zeros(2, 2)}, str(wrong))
    with pytest.raises(CheckpointError, match="rosinality") as err:
        StyleGAN2Builder({"weights": str(wrong)}).networks((1, 8, 8))
    assert "\n" not in str(err.value)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match="junk.safetensors"):
        StyleGAN2Builder({"weights": str(junk)}).networks((1, 8, 8))
    # the right keys with one tensor of the wrong shape
    torch.manual_seed(0)
    gen = StyleGAN2Builder(TINY_SG).networks((1, 8, 8))["g_ema"]
    state = {k: v.contiguous() for k, v in gen.state_dict().items()}
    state["to_rgb1.bias"] = torch.zeros(1, 1, 1, 2)
    bad = tmp_path / "bad-shape.safetensors"
    save_file(state, str(bad))
    builder = StyleGAN2Builder({"weights": str(bad)})
    with pytest.raises(CheckpointError, match="to_rgb1.bias"):
        builder.train(builder.networks((1, 8, 8)), torch.zeros(1, 1, 8, 8), seed=0)
