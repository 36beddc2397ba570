"""Diff-MI (plugins/attacks/diff_mi.py): the attack contract, the official defaults, the top-k margin and p_reg
losses against hand-computed cases and the official formulas, the DDPM-timestep-to-EDM-sigma mapping and the two
samplers against the official VP-space updates, exact query accounting, the cached diffusion models paid for
again, and quality on the tiny digits preset."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from invertkit.core.interfaces import TorchTarget
from invertkit.core.interfaces.attack import Attack, AttackContext
from invertkit.core.testing.contracts import AttackContract
from invertkit.plugins.attacks import diff_mi as dm
from invertkit.plugins.attacks.diff_mi import DiffMI
from invertkit.plugins.attacks.random_prior import RandomPrior

from conftest import attack_acc  # noqa: E402

#: everything at toy size (the contract's 4 classes, 1x8x8 images)
FAST: dict[str, Any] = {
    "top_n": 3, "width": 8, "channel_mult": [1, 2], "layers_per_block": 1, "attention": [4], "pretrain_steps": 2,
    "pretrain_batch_size": 8, "ema_halflife_images": 50, "finetune_epochs": 1, "finetune_steps": 3, "steps": 2,
    "ddim_steps": 20, "aug_times": 2, "batch_size": 3, "pgd_iterations": 2, "blur_kernel": 3, "blur_sigma": 1.0,
}


def public(n: int = 24, shape: tuple[int, ...] = (1, 8, 8)) -> torch.Tensor:
    return torch.rand((n, *shape), generator=torch.Generator().manual_seed(0))


class TestDiffMIContract(AttackContract):
    attack_cls = DiffMI
    config: ClassVar[dict[str, Any]] = FAST

    def make_attack(self) -> Attack:
        return self.attack_cls(dict(self.config), context=AttackContext(public_images=public()))


def test_defaults_are_the_official_code_s() -> None:
    cfg = DiffMI.Config()
    assert cfg.top_n == 30  # README: reclassified_public_data/.../VGG16_top30
    # script_util.py / attack.py load_models: 128 channels, (1, 2, 3, 4), 3 blocks, attention at 16 and 8
    assert (cfg.width, cfg.channel_mult, cfg.layers_per_block, cfg.attention, cfg.dropout) == (128, [1, 2, 3, 4], 3, [16, 8], 0.0)
    # free_train.py + README: batch 150, lr 1e-4, 50k iterations, EMA 0.9999 per step, p_uncond 0.1, flips
    assert (cfg.pretrain_steps, cfg.pretrain_batch_size, cfg.pretrain_lr, cfg.cond_drop, cfg.flip) == (50000, 150, 1e-4, 0.1, True)
    assert cfg.ema_halflife_images == pytest.approx(150 * math.log(0.5) / math.log(0.9999), rel=1e-3)
    # fintune_train.py / run_cls_only
    assert (cfg.finetune_epochs, cfg.threshold, cfg.finetune_batch_size, cfg.finetune_lr) == (100, 0.99, 4, 2e-4)
    assert (cfg.finetune_steps, cfg.finetune_guidance, cfg.finetune_aug_times, cfg.train_seed) == (10, 3.0, 2, 42)
    # attack.py
    assert (cfg.steps, cfg.guidance, cfg.renoise_t, cfg.ddim_steps, cfg.aug_times, cfg.k, cfg.alpha) == (30, 3.0, 100, 100, 4, 20, 1.0)
    assert (cfg.lr, cfg.t_jitter, cfg.clip, cfg.blur_kernel, cfg.blur_sigma, cfg.batch_size) == (1.0, 50, 1.25, 7, 3.0, 64)
    assert (cfg.pgd_eps, cfg.pgd_step, cfg.pgd_iterations) == (0.5, 0.1, 10)
    assert not DiffMI.needs_prior and {c.value for c in DiffMI.requires} == {"grad", "logits", "features"}


# ------------------------------------------------------------------------------------------------ losses
def official_topk_loss(out: torch.Tensor, iden: torch.Tensor, k: int) -> torch.Tensor:
    """attack.py's ``topk_loss``, transcribed."""
    iden = iden.unsqueeze(1)
    real = out.gather(1, iden).squeeze(1)
    if k == 0:
        return -1 * real.mean()
    tmp = torch.scatter(out, dim=1, index=iden, src=-torch.ones_like(iden) * 1000.0)
    return -1 * real.mean() + torch.topk(tmp, k=k)[0].mean()


def test_topk_margin_loss_by_hand() -> None:
    logits = torch.tensor([[3.0, 1.0, 2.0, -1.0], [0.0, 5.0, 4.0, 1.0]])
    y = torch.tensor([0, 2])
    # row 0: -3 + mean(top-2 of [1, 2, -1]) = -3 + 1.5; row 1: -4 + mean(5, 1) = -1
    assert dm.topk_margin_loss(logits, y, 2).tolist() == pytest.approx([-1.5, -1.0])
    assert dm.topk_margin_loss(logits, y, 0).tolist() == pytest.approx([-3.0, -4.0])
    # k = 1 is PLG-MI's max-margin; k beyond K - 1 is capped
    assert dm.topk_margin_loss(logits, y, 1).tolist() == pytest.approx([-1.0, 1.0])
    assert dm.topk_margin_loss(logits, y, 20).tolist() == pytest.approx(dm.topk_margin_loss(logits, y, 3).tolist())


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 6), classes=st.integers(2, 9), k=st.integers(0, 8), seed=st.integers(0, 10_000))
def test_topk_margin_loss_batch_mean_is_the_official(n: int, classes: int, k: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    logits = 10 * torch.randn(n, classes, generator=g)  # float32, as the official's scatter source
    y = torch.randint(0, classes, (n,), generator=g)
    k = min(k, classes - 1)
    ours = dm.topk_margin_loss(logits, y, k)
    assert ours.shape == (n,)
    assert float(ours.mean()) == pytest.approx(float(official_topk_loss(logits, y, k)), rel=1e-5, abs=1e-4)


def test_p_reg_loss_by_hand_and_as_the_official_mse() -> None:
    p_reg = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    feats = torch.tensor([[1.0, 1.0], [1.0, 0.0], [3.0, 2.0]])
    y = torch.tensor([0, 1, 1])
    per = dm.p_reg_loss(feats, y, p_reg)
    assert per.tolist() == pytest.approx([1.0, 2.0, 2.0])  # mean over the 2 dimensions of the squared gap
    assert float(per.mean()) == pytest.approx(float(F.mse_loss(feats, p_reg[y])))


def test_p_reg_is_the_class_wise_mean_of_the_target_s_features() -> None:
    from invertkit.core.testing.strategies import make_tiny_target

    target = make_tiny_target(0, num_classes=4, input_shape=(1, 8, 8))
    x, y = public(6), torch.tensor([0, 0, 1, 3, 3, 3])
    p = dm.class_feature_means(target, x, y, 4)
    feats = target.features(x).flatten(1)
    assert torch.allclose(p[0], feats[:2].mean(0), atol=1e-6) and torch.allclose(p[3], feats[3:].mean(0), atol=1e-6)
    assert torch.equal(p[2], torch.zeros_like(p[2]))  # a class nobody was labelled with
    assert target.queries == 6 + 6


# ------------------------------------------------------------------------------------ DDPM -> EDM sigma
def official_alphabar() -> np.ndarray:
    """``utils/diffusion.py``: linear betas 1e-4..2e-2 over 1000 steps (float32 betas, as the official)."""
    beta = np.linspace(1e-4, 2e-2, 1000).astype(np.float32)
    return np.cumprod(1 - beta.astype(np.float64))


@settings(max_examples=40, deadline=None)
@given(t=st.integers(1, 1000))
def test_ddpm_sigma_is_the_noise_to_signal_ratio_of_the_official_schedule(t: int) -> None:
    ab = official_alphabar()[t - 1]  # GaussianDiffusion.sample: alphabar[t - 1]
    sigma = float(dm.ddpm_sigma(t))
    assert sigma == pytest.approx(math.sqrt((1 - ab) / ab), rel=1e-5)
    # x_t = sqrt(abar) x0 + sqrt(1 - abar) eps is sqrt(abar) (x0 + sigma eps): the EDM state scaled
    assert math.sqrt(ab) * sigma == pytest.approx(math.sqrt(1 - ab), rel=1e-5)
    # DPM-Solver's continuous time t / 1000 lands on the same level
    assert float(dm.vp_sigma(t / 1000)) == pytest.approx(sigma, rel=1e-9)


def test_the_mapped_levels_and_schedules() -> None:
    assert float(dm.ddpm_sigma(100)) == pytest.approx(0.3388, abs=1e-3)
    assert float(dm.ddpm_sigma(1000)) == pytest.approx(157.4, abs=0.1)
    sig = dm.ddpm_sigma(torch.arange(1, 1001))
    assert bool((sig[1:] > sig[:-1]).all())
    # the reconstruction's timesteps fall from 1000 to just above 200 (no jitter)
    ts = [dm.reconstruction_t(i, 30, 0) for i in range(30)]
    assert ts[0] == 1000 and all(a > b for a, b in zip(ts, ts[1:])) and 200 < ts[-1] < 220
    assert dm.reconstruction_t(0, 30, 50) == 1000 and dm.reconstruction_t(29, 30, -50) == 159
    # the final sampling: from t = 100 down the official DDIM grid (alphas_cumprod[81], [71], ..., [1], [0])
    levels = dm.reconstruction_levels(100, 100)
    ab = official_alphabar()
    expect = [math.sqrt((1 - a) / a) for a in [ab[99], *[ab[i] for i in range(81, 0, -10)], ab[0]]]
    assert levels.tolist() == pytest.approx(expect, rel=1e-5)
    # the fine-tuning sampler: time-uniform from t = 1 to t = 1/1000
    s = dm.dpm_solver_sigmas(10)
    assert len(s) == 11 and float(s[0]) == pytest.approx(float(dm.ddpm_sigma(1000))) and float(s[-1]) == pytest.approx(0.01, rel=1e-3)
    with pytest.raises(Exception):
        dm.ddpm_sigma(0)


def linear_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """A stand-in D(x; sigma) (any function will do for comparing update rules)."""
    return torch.tanh(x) / (1 + float(sigma))


def test_ancestral_step_is_the_official_ddim_eta_1_update() -> None:
    g = torch.Generator().manual_seed(0)
    x_ve = torch.randn(3, 1, 4, 4, generator=g, dtype=torch.float64)
    levels = dm.reconstruction_levels(100, 100)[:2]
    s, s_next = float(levels[0]), float(levels[1])
    ab, ab_prev = 1 / (1 + s**2), 1 / (1 + s_next**2)
    ours = dm.ancestral_sample(linear_denoiser, x_ve, levels, torch.Generator().manual_seed(5))
    z = torch.randn(x_ve.shape, generator=torch.Generator().manual_seed(5)).to(x_ve)
    # utils/diffusion.py inverse_ddim in VP space: x = sqrt(abar) x_ve, eps from D, eta = 1
    x = math.sqrt(ab) * x_ve
    d = linear_denoiser(x_ve, levels[0])
    e_t = (x_ve - d) / s
    pred_x0 = (x - math.sqrt(1 - ab) * e_t) / math.sqrt(ab)
    sigma_t = math.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev))
    x_prev = math.sqrt(ab_prev) * pred_x0 + math.sqrt(1 - ab_prev - sigma_t**2) * e_t + sigma_t * z
    assert torch.allclose(ours, x_prev / math.sqrt(ab_prev), atol=1e-10)


def test_dpm_solver_pp_2m_is_the_official_multistep_update() -> None:
    g = torch.Generator().manual_seed(1)
    sig = dm.dpm_solver_sigmas(4)
    x_ve = torch.randn(2, 1, 4, 4, generator=g, dtype=torch.float64) * math.sqrt(1 + float(sig[0]) ** 2)
    ours = dm.dpm_solver_pp_2m(linear_denoiser, x_ve, sig, collect_from=3)
    # dpm_solver_pytorch.py (dpmsolver++, multistep, order 2) in VP space: alpha = 1/sqrt(1+s^2), sigma_vp = s alpha
    alpha = [1 / math.sqrt(1 + float(v) ** 2) for v in sig]
    svp = [float(v) * a for v, a in zip(sig, alpha)]
    lam = [math.log(a / s) for a, s in zip(alpha, svp)]
    x = alpha[0] * x_ve
    model = [linear_denoiser(x / alpha[0], sig[0])]
    h = lam[1] - lam[0]
    x = (svp[1] / svp[0]) * x - alpha[1] * math.expm1(-h) * model[0]  # first order
    model.append(linear_denoiser(x / alpha[1], sig[1]))
    preds = []
    for step in range(2, 5):
        h0, h = lam[step - 1] - lam[step - 2], lam[step] - lam[step - 1]
        d1 = (h / h0) * (model[-1] - model[-2])
        phi = math.expm1(-h)
        x = (svp[step] / svp[step - 1]) * x - alpha[step] * phi * model[-1] - 0.5 * alpha[step] * phi * d1
        if step < 4:
            model.append(linear_denoiser(x / alpha[step], sig[step]))
            if step > 2:
                preds.append(model[-1])
    preds.append(x / alpha[4])
    assert len(ours) == len(preds) == 2  # the prediction after step 3 and the final sample
    for a, b in zip(ours, preds):
        assert torch.allclose(a, b, atol=1e-9)


def test_finetuned_parameters_are_the_official_layers() -> None:
    from invertkit.plugins.priors.edm import build_denoiser

    net = build_denoiser((1, 8, 8), cond_kind="class", num_classes=3, width=8, channel_mult=(1, 2), attention=(4,))
    chosen = {id(p) for p in dm.finetune_parameters(net)}
    names = sorted(n for n, p in net.named_parameters() if id(p) in chosen)
    assert names == sorted(["unet.class_embedding.weight",
                            *[f"unet.mid_block.resnets.{i}.{c}.{w}" for i in (0, 1) for c in ("conv1", "conv2") for w in ("weight", "bias")],
                            "unet.mid_block.attentions.0.to_out.0.weight", "unet.mid_block.attentions.0.to_out.0.bias"])


# ----------------------------------------------------------------------------------------------- queries
def expected_queries(cfg: dict[str, Any], n_public: int, classes: int, n_images: int) -> int:
    """Pseudo-labels (one per public image), p_reg (one per selected image), fine-tuning (logits and features of
    every augmented prediction), reconstruction (logits and features of every augmented copy) and PGD."""
    c = DiffMI.Config(**cfg)
    preds = max(0, c.finetune_steps - 3) + 1
    batches = -(-classes // c.finetune_batch_size)
    assert c.finetune_epochs == 1 and batches == 1
    finetune = 2 * preds * c.finetune_aug_times * classes
    attack = n_images * (2 * c.steps * c.aug_times + c.pgd_iterations + 1)
    return n_public + classes * c.top_n + finetune + attack


def test_queries_are_counted_exactly() -> None:
    from invertkit.core.testing.strategies import make_tiny_target

    cfg = {**FAST, "finetune_steps": 5, "finetune_batch_size": 4, "threshold": 1.0}
    target = make_tiny_target(0, num_classes=4, input_shape=(1, 8, 8))
    result = DiffMI(cfg, context=AttackContext(public_images=public(15)))(target, torch.tensor([0, 1, 2, 3, 3]), seed=1)
    assert result.queries == target.queries == expected_queries(cfg, 15, 4, 5)
    assert result.extras["pseudo_label_queries"] == 15 + 4 * 3
    assert result.extras["attack_queries"] == 5 * (2 * 2 * 2 + 3)
    assert result.images.shape == (5, 1, 8, 8)


def test_the_cached_diffusion_models_are_reused_and_paid_for_again(scenario) -> None:  # noqa: ANN001
    from invertkit.core.zoo.model_cache import derived_cache

    images = scenario.split.public[0][:40]
    cfg = {**FAST, "top_n": 4, "flip": False}

    def run() -> tuple[Any, Any]:
        target = TorchTarget(scenario.target_net, num_classes=5, input_shape=(1, 8, 8), name="t")
        ctx = AttackContext(public_images=images, cache=derived_cache(scenario, target, "diff-mi-test"))
        return DiffMI(cfg, context=ctx)(target, torch.arange(5), seed=0), target

    (first, t1), (second, t2) = run(), run()
    assert first.queries == t1.queries == second.queries == t2.queries
    assert second.extras["finetune_queries"] == first.extras["finetune_queries"] > 0
    assert "finetune_acc" in first.extras and "finetune_acc" not in second.extras  # the second run trained nothing
    assert torch.equal(first.images, second.images)


# -------------------------------------------------------------------------------- quality (digits)
SAMPLES = 5  # reconstructions per identity

#: a CPU-sized diffusion model (16 channels, two levels), 200 pre-training steps, 3 fine-tuning epochs of 5
#: DPM-Solver steps, 15 reconstruction steps and a 20-step DDIM grid; everything else official
QUALITY: dict[str, Any] = {
    "top_n": 100, "width": 16, "channel_mult": [1, 2], "layers_per_block": 1, "attention": [4], "pretrain_steps": 200,
    "pretrain_batch_size": 64, "pretrain_lr": 2e-3, "ema_halflife_images": 2000, "ema_rampup_ratio": 0.05,
    "flip": False, "finetune_epochs": 3, "finetune_steps": 5, "steps": 15, "ddim_steps": 20, "blur_kernel": 3,
    "blur_sigma": 1.0,
}


def test_diff_mi_beats_the_random_prior(scenario) -> None:  # noqa: ANN001
    # measured on the tiny digits preset (this config, 5 per identity): diff-mi acc@1 0.92 (seed 0) and 0.96
    # (seed 1); random-prior 0.216 (mean over seeds 0-4); 4,851 queries; about 15 s of CPU
    labels = torch.arange(5).repeat_interleave(SAMPLES)

    def target() -> TorchTarget:
        return TorchTarget(scenario.target_net, num_classes=5, input_shape=(1, 8, 8), name="t")

    baseline = sum(attack_acc(scenario, RandomPrior()(target(), labels, prior=scenario.prior, seed=s)) for s in range(5)) / 5
    t = target()
    result = DiffMI(QUALITY, context=AttackContext(public_images=scenario.split.public[0]))(t, labels, seed=0)
    acc = attack_acc(scenario, result)
    assert result.queries == t.queries > 0
    assert acc >= baseline + 0.3, (acc, baseline)
