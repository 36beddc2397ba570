"""The EDM diffusion prior (plugins/priors/edm.py; Karras et al., NeurIPS 2022, arXiv 2206.00364).

The formulas (preconditioning, loss weight, the ρ schedule) against the paper's, written out here; the sampler's
evaluation count (2N − 1 Heun, N Euler) counted on the network; churn only with S_churn > 0; guidance w = 1 is
the conditional denoiser; the x0 hook steers the sampler; the denoiser pads small images and reads each kind of
condition; a tiny EDM trained on the public digits produces samples closer to them (Fréchet distance in a
small digit classifier's features) than the untrained network; the Prior contract; ``train prior`` through
the CLI caches and re-loads.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from invertkit.core.errors import ConfigError, ShapeError, UsageError
from invertkit.core.interfaces.capability import PriorFeature
from invertkit.plugins.priors.edm import (
    SIGMA_DATA, EDMBuilder, EDMPrior, SampleFacts, build_denoiser, edm_loss, edm_sample, guided_denoise,
    karras_sigmas, loss_weight, noisy_denoise, precondition, sample_training_sigma, train_denoiser,
)

TINY = Path(__file__).parent / "data" / "registry-tiny.toml"
HYP = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    from invertkit.core.testing.contracts import torch_threads

    with torch_threads(1):
        yield


def small(shape=(1, 8, 8), seed: int = 0, **kw):  # noqa: ANN001, ANN003, ANN201
    torch.manual_seed(seed)
    return build_denoiser(shape, width=8, channel_mult=(1, 2), **kw).eval()


# ------------------------------------------------------------------------------------------- formulas
@HYP
@given(sigma=st.floats(1e-3, 200.0), sd=st.floats(0.1, 2.0))
def test_preconditioning_and_loss_weight_are_the_papers(sigma: float, sd: float) -> None:
    c_skip, c_out, c_in, c_noise = (float(c) for c in precondition(torch.tensor(sigma, dtype=torch.float64), sd))
    assert c_skip == pytest.approx(sd**2 / (sigma**2 + sd**2), rel=1e-9)
    assert c_out == pytest.approx(sigma * sd / math.sqrt(sigma**2 + sd**2), rel=1e-9)
    assert c_in == pytest.approx(1 / math.sqrt(sigma**2 + sd**2), rel=1e-9)
    assert c_noise == pytest.approx(math.log(sigma) / 4, rel=1e-9, abs=1e-12)
    w = float(loss_weight(torch.tensor(sigma, dtype=torch.float64), sd))
    assert w == pytest.approx((sigma**2 + sd**2) / (sigma * sd) ** 2, rel=1e-9)
    assert w == pytest.approx(1 / c_out**2, rel=1e-9)  # λ = 1/c_out²: the effective training target has unit weight


def test_training_sigmas_are_log_normal_with_the_papers_moments() -> None:
    s = sample_training_sigma(20000, generator=torch.Generator().manual_seed(0))
    assert abs(float(s.log().mean()) + 1.2) < 0.05 and abs(float(s.log().std()) - 1.2) < 0.05
    assert SIGMA_DATA == 0.5


@HYP
@given(steps=st.integers(2, 60), rho=st.floats(1.0, 10.0), lo=st.floats(1e-3, 0.5), hi=st.floats(1.0, 100.0))
def test_karras_schedule_endpoints_monotone_and_rho_formula(steps: int, rho: float, lo: float, hi: float) -> None:
    t = karras_sigmas(steps, sigma_min=lo, sigma_max=hi, rho=rho)
    assert len(t) == steps + 1 and float(t[-1]) == 0.0
    assert float(t[0]) == pytest.approx(hi, rel=1e-12) and float(t[-2]) == pytest.approx(lo, rel=1e-9)
    assert bool((t[1:] < t[:-1]).all())
    for i in (0, steps // 2, steps - 1):
        want = (hi ** (1 / rho) + i / (steps - 1) * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
        assert float(t[i]) == pytest.approx(want, rel=1e-9)


def test_karras_schedule_agrees_with_diffusers_edm_scheduler() -> None:
    """diffusers' EDMEulerScheduler (float32) computes the same schedule; ours is float64 as the official code."""
    from diffusers import EDMEulerScheduler

    sched = EDMEulerScheduler(sigma_min=0.002, sigma_max=80.0, sigma_data=0.5, sigma_schedule="karras", rho=7.0)
    sched.set_timesteps(18)
    ours = karras_sigmas(18)
    assert len(sched.sigmas) == len(ours)
    assert torch.allclose(sched.sigmas.double(), ours, rtol=1e-6, atol=1e-9)
    assert not torch.equal(sched.sigmas.double(), ours)  # float32 vs float64: why the module keeps its own


def test_bad_schedules_and_solvers_are_one_clear_error() -> None:
    with pytest.raises(ConfigError, match="at least 1 step"):
        karras_sigmas(0)
    with pytest.raises(ConfigError, match="sigma_min"):
        karras_sigmas(5, sigma_min=2.0, sigma_max=1.0)
    d = small()
    with pytest.raises(ConfigError, match="solver"):
        edm_sample(d, torch.randn(1, 1, 8, 8), solver="rk4")  # type: ignore[arg-type]
    with pytest.raises(ShapeError):
        edm_sample(d, torch.randn(1, 1, 7, 8))
    with pytest.raises(ShapeError):
        d(torch.randn(2, 1, 8, 8), torch.ones(3))


# ------------------------------------------------------------------------------------------- sampler
@settings(max_examples=6, deadline=None)
@given(steps=st.integers(1, 7), solver=st.sampled_from(["heun", "euler"]))
def test_sampler_evaluation_count(steps: int, solver: str) -> None:
    d = small()
    calls = []
    handle = d.register_forward_hook(lambda *_: calls.append(1))
    facts = SampleFacts()
    edm_sample(d, torch.randn(2, 1, 8, 8), steps=steps, solver=solver, facts=facts)  # type: ignore[arg-type]
    handle.remove()
    want = 2 * steps - 1 if solver == "heun" else steps
    assert len(calls) == facts.evaluations == want
    assert edm_sample.last_facts.evaluations == want  # type: ignore[attr-defined]


def test_churn_changes_samples_only_when_s_churn_is_positive() -> None:
    d = small()
    noise = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))

    def run(seed: int, **kw):  # noqa: ANN003, ANN202
        return edm_sample(d, noise, steps=6, generator=torch.Generator().manual_seed(seed), **kw)

    assert torch.equal(run(1), run(2))  # deterministic: the generator is never read
    assert torch.equal(run(1, s_churn=0.0, s_noise=1.007), run(2, s_churn=0.0, s_noise=1.007))
    assert not torch.equal(run(1, s_churn=10.0), run(2, s_churn=10.0))
    assert torch.equal(run(1, s_churn=10.0), run(1, s_churn=10.0))  # seeded
    # churn restricted to a σ range the schedule never visits does nothing
    assert torch.equal(run(1, s_churn=10.0, s_min=100.0, s_max=200.0), run(2))


def test_classifier_free_guidance_weight_one_is_the_conditional_denoiser() -> None:
    d = small(cond_kind="class", num_classes=3)
    with torch.no_grad():  # make the class embedding matter at initialisation
        d.unet.class_embedding.weight.normal_(0, 3.0)
    x, sigma, y = torch.randn(4, 1, 8, 8), torch.full((4,), 1.5), torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        d_cond, d_null = d(x, sigma, y), d(x, sigma, d.null_condition(4))
        assert torch.allclose(guided_denoise(d, x, sigma, y, 1.0), d_cond)
        assert torch.allclose(guided_denoise(d, x, sigma, y, 0.0), d_null, atol=1e-5)
        assert torch.allclose(guided_denoise(d, x, sigma, y, 2.5), d_null + 2.5 * (d_cond - d_null), atol=1e-5)
        assert not torch.allclose(d_cond, d_null, atol=1e-4)
    noise = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    plain, guided = edm_sample(d, noise, y, steps=4), edm_sample(d, noise, y, steps=4, guidance=3.0)
    assert torch.equal(edm_sample(d, noise, y, steps=4, guidance=1.0), plain)
    assert not torch.equal(plain, guided)
    assert edm_sample.last_facts.evaluations == 7  # type: ignore[attr-defined]  # one guided D per evaluation


def test_x0_hook_steers_every_evaluation_and_sampling_is_differentiable() -> None:
    d = small(cond_kind="vector", cond_dim=5)
    target = torch.linspace(-0.8, 0.8, 64).view(1, 1, 8, 8)
    seen: list[int] = []

    def hook(denoised, sigma, step):  # noqa: ANN001, ANN202
        seen.append(step)
        return target.expand_as(denoised).to(denoised)

    # a hook pinning D to a fixed image makes the ODE land on it exactly (the last Euler step goes to σ = 0)
    out = edm_sample(d, torch.randn(2, 1, 8, 8), torch.randn(2, 5), steps=5, x0_hook=hook)
    assert torch.allclose(out, ((target + 1) / 2).expand_as(out), atol=1e-5)
    assert seen == [0, 0, 1, 1, 2, 2, 3, 3, 4]
    z = torch.randn(2, 1, 8, 8, requires_grad=True)
    c = torch.randn(2, 5, requires_grad=True)
    assert not edm_sample(d, z, c, steps=3).requires_grad
    edm_sample(d, z, c, steps=3, differentiable=True).sum().backward()
    assert z.grad is not None and float(z.grad.abs().sum()) > 0
    assert c.grad is not None and float(c.grad.abs().sum()) > 0


# ------------------------------------------------------------------------------------------- network
@pytest.mark.parametrize("shape,levels,padded", [((1, 8, 8), 3, (8, 8)), ((1, 28, 28), 4, (32, 32)),
                                                  ((3, 7, 9), 2, (8, 10))])
def test_small_images_are_padded_for_the_unet_and_cropped_back(shape, levels, padded) -> None:  # noqa: ANN001
    d = build_denoiser(shape, width=8, levels=levels)
    assert d.padded_shape == padded and d.image_shape == shape
    x = torch.randn(2, *shape)
    with torch.no_grad():
        y = d(x, 0.7)
        assert y.shape == x.shape and torch.isfinite(y).all()
        # σ → 0: c_skip → 1, c_out → 0, so D is (nearly) the identity
        assert torch.allclose(d(x, 1e-4), x, atol=1e-3)


@pytest.mark.parametrize("mode", ["add", "cross-attention", "both"])
def test_vector_conditions_reach_the_output_in_every_mode(mode: str) -> None:
    d = small(cond_kind="vector", cond_dim=6, cond_mode=mode)
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        a, b = d(x, 2.0, torch.randn(3, 6)), d(x, 2.0, torch.randn(3, 6))
        assert a.shape == x.shape and not torch.allclose(a, b)
        assert torch.equal(d(x, 2.0, None), d(x, 2.0, d.null_condition(3)))
    with pytest.raises(ShapeError):
        d(x, 2.0, torch.randn(3, 5))


def test_class_labels_are_checked_and_dropped_to_the_null_class() -> None:
    d = small(cond_kind="class", num_classes=4)
    x0 = torch.rand(6, 1, 8, 8) * 2 - 1
    with pytest.raises(UsageError, match="null class"):
        d(x0, 1.0, torch.tensor([0, 1, 2, 3, 4, 5]))
    assert int(d.null_condition(2)[0]) == 4
    keep = torch.tensor([True, False, True, False, True, False])
    assert d.drop_condition(torch.arange(6) % 4, keep).tolist() == [0, 4, 2, 4, 0, 4]
    denoised, sigma, weight = noisy_denoise(d, x0, torch.arange(6) % 4, generator=torch.Generator().manual_seed(0),
                                            cond_drop=0.5)
    assert denoised.shape == x0.shape and torch.allclose(weight, loss_weight(sigma))
    assert float(edm_loss(d, x0, torch.arange(6) % 4, generator=torch.Generator().manual_seed(0)).detach()) > 0


def test_training_hooks_extra_loss_and_params() -> None:
    d = small()
    images = torch.rand(32, 1, 8, 8)
    frozen = {n: p.detach().clone() for n, p in d.named_parameters() if not n.startswith("unet.conv_out")}
    calls = []

    def extra(denoised, x0, cond, sigma):  # noqa: ANN001, ANN202
        calls.append(float(x0.min()))
        return denoised.mean() * 0

    ema, facts = train_denoiser(d, images, steps=3, batch_size=8, lr=1e-2, ema_halflife_images=100, extra_loss=extra,
                                params=d.unet.conv_out.parameters(), lr_rampup_images=0)
    assert len(calls) == 3 and min(calls) < 0  # x0 is in [-1, 1]
    assert facts["images"] == 24 and facts["steps"] == 3
    for n, p in d.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    assert all(not p.requires_grad for p in ema.parameters())


# ------------------------------------------------------------------------------------- trained quality
@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32)[:, None] / 16
    return x, torch.tensor(data.target)


@pytest.fixture(scope="module")
def feature_net(digits):  # noqa: ANN001, ANN201
    """A small digit classifier (an MLP on every digit); its hidden layer is the Fréchet feature space."""
    x, y = digits
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(200):
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float((net(x).argmax(1) == y).float().mean()) > 0.95
    return lambda imgs: net[:3](imgs).detach()


def frechet(feat, a, b) -> float:  # noqa: ANN001
    from invertkit.core.stats import GaussianStats, frechet_distance

    return frechet_distance(GaussianStats.from_features(feat(a)), GaussianStats.from_features(feat(b)))


def test_trained_edm_samples_are_closer_to_the_public_digits_than_untrained(digits, feature_net) -> None:
    x, y = digits
    public = x[y >= 5]
    torch.manual_seed(0)
    d = build_denoiser((1, 8, 8), width=16, channel_mult=(1, 2))
    noise = torch.randn(300, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    untrained = edm_sample(d, noise, steps=8)
    ema, facts = train_denoiser(d, public, steps=200, batch_size=64, lr=2e-3, ema_halflife_images=500_000,
                                lr_rampup_images=1280, seed=0)
    trained = edm_sample(ema, noise, steps=8)
    fd0, fd1 = frechet(feature_net, untrained, public), frechet(feature_net, trained, public)
    assert fd1 < 0.25 * fd0, (fd0, fd1)
    # and closer to the public digits than the other half of the dataset (the private digits 0-4) is
    assert fd1 < frechet(feature_net, x[y < 5], public)
    # through the Prior: same samples from the same noise
    prior = EDMPrior(ema, steps=8)
    with torch.no_grad():
        assert torch.allclose(prior.decode(noise[:5]), trained[:5], atol=1e-6)


# ------------------------------------------------------------------------------------------- the Prior
def test_prior_contract() -> None:
    d = small()
    prior = EDMPrior(d, steps=3)
    assert prior.name == "edm" and prior.latent_shape == (1, 8, 8) and not prior.conditional
    assert PriorFeature.CONDITIONAL not in prior.features
    assert all(not p.requires_grad for p in d.parameters())
    z = prior.sample_latent(4, torch.Generator().manual_seed(0)).requires_grad_(True)
    x = prior.decode(z)
    assert x.shape == (4, 1, 8, 8) and 0 <= float(x.detach().min()) and float(x.detach().max()) <= 1
    x.square().sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and float(z.grad.abs().sum()) > 0
    assert all(p.grad is None for p in d.parameters())
    a = prior.sample(3, torch.Generator().manual_seed(5))
    assert torch.equal(a, prior.sample(3, torch.Generator().manual_seed(5)))
    assert not torch.equal(a, prior.sample(3, torch.Generator().manual_seed(6)))
    assert torch.equal(prior.decode(z.detach()[:2], torch.tensor([1, 2])), prior.decode(z.detach()[:2]).detach())
    with pytest.raises(ShapeError, match="noise of shape"):
        prior.decode(torch.zeros(2, 64))


def test_class_conditional_prior_is_conditional_and_checks_labels() -> None:
    d = small(cond_kind="class", num_classes=3)
    prior = EDMPrior(d, steps=2)
    assert prior.conditional and PriorFeature.CONDITIONAL in prior.features
    z = prior.sample_latent(3, torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(prior.decode(z), prior.decode(z, torch.tensor([0, 1, 2])))
        with pytest.raises(UsageError, match="labels must be target classes"):
            prior.decode(z, torch.tensor([0, 1, 3]))  # 3 is the null class, not a target class
        with pytest.raises(ShapeError):
            prior.decode(z, torch.tensor([0, 1]))


def test_builder_defaults_are_the_papers() -> None:
    cfg = EDMBuilder.Config()
    assert (cfg.width, cfg.channel_mult, cfg.layers_per_block, cfg.attention, cfg.dropout) == (128, [2, 2, 2], 4, [16], 0.13)
    assert (cfg.batch_size, cfg.lr, cfg.ema_halflife_images, cfg.lr_rampup_images) == (512, 1e-3, 500_000, 10_000_000)
    assert (cfg.p_mean, cfg.p_std, cfg.sample_steps, cfg.solver, cfg.rho) == (-1.2, 1.2, 18, "heun", 7.0)
    assert (cfg.sigma_min, cfg.sigma_max, cfg.s_churn, cfg.s_noise) == (0.002, 80.0, 0.0, 1.0)


def test_train_prior_through_the_cli_caches_and_reloads(plugins, tiny_catalog, monkeypatch) -> None:  # noqa: ANN001
    from click.testing import CliRunner

    from invertkit.cli import cli
    from invertkit.core.zoo.preset_models import trained_prior
    from invertkit.core.zoo.scenario import build_scenario

    first = CliRunner().invoke(cli, ["train", "prior", "--preset", "digits-edm-tiny", "--registry", str(TINY)])
    assert first.exit_code == 0, first.output
    cache = Path(__import__("os").environ["INVERTKIT_CACHE"]) / "models"
    files = sorted(p.name for p in cache.glob("prior-edm-*"))
    assert any(f.endswith("-denoiser.safetensors") for f in files) and any(f.endswith(".json") for f in files)

    def no_training(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("the EDM prior was trained again instead of loaded from the cache")

    sc = build_scenario("digits-edm-tiny", tiny_catalog, plugins)
    monkeypatch.setattr(EDMBuilder, "train", no_training)
    again = CliRunner().invoke(cli, ["train", "prior", "--preset", "digits-edm-tiny", "--registry", str(TINY)])
    assert again.exit_code == 0, again.output
    prior, facts, key = trained_prior(plugins, sc.preset, sc.split, sc.name)
    assert isinstance(prior, EDMPrior) and key == sc.keys["prior"] and facts["steps"] == 20
    assert prior.sampler["steps"] == 4
    z = prior.sample_latent(3, torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(prior.decode(z), sc.prior.decode(z))


def test_a_latent_search_attack_runs_through_the_edm_prior(tmp_path) -> None:  # noqa: ANN001
    """GMI optimises the EDM prior's initial noise through the (differentiable) sampler, end to end."""
    from click.testing import CliRunner

    from invertkit.cli import cli

    from conftest import tiny_registry_with  # noqa: E402

    registry = tiny_registry_with(tmp_path, """
        [targets.tiny-cnn-edm]
        summary = "tiny digits CNN, white-box, with the tiny EDM prior"
        preset = "digits-edm-tiny"
        """)
    out = CliRunner().invoke(cli, ["run", "-a", "gmi", "-t", "tiny-cnn-edm", "--registry", str(registry),
                                   "--samples", "2", "-o", "iterations=5"])
    assert out.exit_code == 0, out.output
    assert "gmi x none x tiny-cnn-edm: acc@1=" in out.stdout
