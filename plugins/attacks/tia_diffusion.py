"""``tia-diffusion``: template inversion with a template-conditioned EDM diffusion model, trained in two stages.

The threat model of template inversion (Mai et al., "On the Reconstruction of Face Images from Deep Face
Templates", TPAMI 2019, https://arxiv.org/abs/1703.00832): a recognition system stores templates ``t = F(x)``
and accepts a probe whose similarity to a stored template exceeds its threshold; the attacker holds leaked
templates (``context.extras["templates"]``, set by the bench: never the images) and rebuilds faces that unlock
them. Stage 1 is the identity-conditioned diffusion of Kansy et al., "Controllable Inversion of Black-Box Face
Recognition Models via Diffusion" (ID3PM, ICCV-W 2023, https://arxiv.org/abs/2303.13006): a denoiser
conditioned on the template, trained with the plain conditional diffusion loss (no identity loss) on public
images and the templates the black-box model gives them. Stage 2 (the identity loss on key layers), the
feature-gap guidance of each sampling step and the best-of-``n`` selection are this module's additions, as
issue 14 specifies them; they are options (``stage2``, ``guidance``, ``n``). The denoiser, its
preconditioning, training loop and sampler are EDM's (Karras et al., NeurIPS 2022, https://arxiv.org/abs/2206.00364;
:mod:`invertkit.plugins.priors.edm`, which follows https://github.com/NVlabs/edm).

* **Stage 1** (pixel loss): ``f_θ(x0 + σε, y, σ)`` the EDM denoiser with a vector condition ``y = F(x0)``
  (standardised with the public templates' mean and spread, which travel with the model), trained with EDM's
  loss ``E[λ(σ) ||f_θ − x0||²]`` on the public images; their templates come from querying the target view
  (``features``; one query per public image, counted). Condition dropout ``cond_drop`` keeps a null condition.
* **Stage 2** (``stage2 = true``): most of the backbone frozen; only the key layers train (``stage2_layers``:
  ``"key"`` = the condition projection and null vector, the UNet's last up-block's last residual block and the
  output head; ``"all"`` = everything), with the identity loss added:
  ``L = E[λ(σ)||f_θ − x0||²] + λ_id ||F(f_θ(x0 + σε, y, σ)) − F(x0)||²`` (the mean over template entries).
  ``F``'s gradient comes from the target view where it grants ``grad`` (white-box), else from a zeroth-order
  NES estimate with ``nes_pairs`` antithetic pairs per image (:func:`invertkit.core.optim.nes_gradient`; 2 x
  pairs queries per image per step, counted) — the identity term then back-propagates through ``f_θ`` only.
* **Sampling**: EDM's stochastic sampler (Algorithm 2; the paper's ImageNet churn settings S_churn = 40,
  S_min = 0.05, S_max = 50, S_noise = 1.003) from σ_max = 80, ``n`` candidates per template. With
  ``guidance = true`` each denoiser output ``x̂0`` is moved against the gradient of the feature gap
  ``1 − cos(F(x̂0), t)`` (rescaled to ``guidance_scale`` RMS per pixel) — the exact gradient in white-box, a
  NES estimate (counted) in black-box. The candidate most similar to ``t`` (one query each) is kept.

Everything trained from the target (both stages) is cached through ``context.cache`` per target x defense, and
its queries are charged again on re-use. The templates the model learns to invert are whatever the defended
target releases (BioHash bits, noisy templates), so a protected system is attacked as deployed. A query budget
is a stopping rule: guidance stops at the refusal and selection falls back to the first candidate; the public
templates are what the budget allowed (at least ``2 x batch_size`` of them, else the refusal propagates); a
refused selection keeps the first candidate with score 0.

Deliberate differences (no code we could read implements this two-stage recipe; the choices are ours, and
options): the template enters through a learned projection added to the time embedding (the EDM module's
``cond_mode = "add"``); the CPU-sized UNet (``width`` 32, multipliers (1, 2), one block per level); step counts
sized for CPUs (``stage1_steps`` 1500, ``stage2_steps`` 300, batch 64, lr 1e-3 without ramp-up, EMA half-life
5,000 images); ``λ_id`` = 1 on the per-entry mean; guidance is a normalised-gradient step on ``x̂0``; 18
sampling steps and ``n`` = 4 by default. The BioHash stolen-key projection is not used: the attack learns
whatever the system releases.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from invertkit.core import progress
from invertkit.core.errors import QueryBudgetExceeded, ShapeError, UsageError
from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.attack import Attack, AttackConfig
from invertkit.core.interfaces.capability import Capability as C
from invertkit.core.interfaces.results import AttackResult
from invertkit.core.optim import nes_gradient
from invertkit.plugins.priors.edm import EDMDenoiser, build_denoiser, edm_sample, train_denoiser


def leaked_templates(attack: Attack, labels: Tensor) -> Tensor:
    """The leaked templates a template attack inverts, ``(len(labels), D)`` on the CPU: ``context.extras
    ["templates"]``, one per label (the bench's :func:`~invertkit.core.bench.targets.leaked_templates`)."""
    leaked = None if attack.context is None else attack.context.extras.get("templates")
    if leaked is None:
        raise UsageError(f"attack '{attack.name}' inverts leaked templates: context.extras['templates'] must hold "
                         "one template per label (the bench sets it on an embedder target whose templates leak)")
    leaked = torch.as_tensor(leaked).detach().float().cpu().reshape(len(leaked), -1)
    if len(leaked) != len(labels):
        raise ShapeError(f"attack '{attack.name}': {len(labels)} labels but {len(leaked)} leaked templates")
    return leaked


class TemplateGenerator(nn.Module):
    """The template-conditioned denoiser with the standardisation of its condition (``mean``, ``scale``: the
    public templates' statistics, saved with the weights)."""

    def __init__(self, denoiser: EDMDenoiser, dim: int) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))

    def condition(self, templates: Tensor) -> Tensor:
        t = templates.reshape(len(templates), -1).to(self.mean.device, self.mean.dtype)
        if t.shape[1] != self.mean.shape[0]:
            raise ShapeError(f"tia-diffusion: templates have {t.shape[1]} entries, the generator was trained on "
                             f"{self.mean.shape[0]}")
        return (t - self.mean) / self.scale


def key_parameters(denoiser: EDMDenoiser) -> list[nn.Parameter]:
    """Stage 2's trainable layers: the condition projection (and null vector), the last residual block of the
    UNet's last up-block, and its output head (norm + conv)."""
    unet = denoiser.unet
    mods: list[nn.Module] = [unet.up_blocks[-1].resnets[-1], unet.conv_norm_out, unet.conv_out]
    for name in ("to_embedding", "to_tokens"):
        if getattr(denoiser, name, None) is not None:
            mods.append(getattr(denoiser, name))
    params = [p for m in mods for p in m.parameters()]
    if getattr(denoiser, "null_vector", None) is not None:
        params.append(denoiser.null_vector)
    return params


def cosine_gap(feats: Tensor, templates: Tensor) -> Tensor:
    """``1 − cos`` per row between released templates and the targets."""
    f = feats.reshape(len(feats), -1).double()
    t = templates.reshape(len(templates), -1).to(f.device).double()
    return 1.0 - nn.functional.cosine_similarity(f, t, dim=1, eps=1e-12)


class TIADiffusion(Attack):
    name = "tia-diffusion"
    paper = "https://arxiv.org/abs/2303.13006"
    summary = ("Template inversion: a template-conditioned EDM denoiser (stage 1 pixel loss on public images' "
               "queried templates, stage 2 key layers with the identity loss), sampled with feature-gap "
               "guidance (exact or NES), best of n.")
    requires = frozenset({C.FEATURES})
    needs_prior = False
    needs_templates = True

    class Config(AttackConfig):
        # the generator
        width: int = Field(32, ge=4, le=512, description="UNet base channels (CPU-sized)")
        channel_mult: tuple[int, ...] = Field((1, 2), min_length=1, description="UNet channel multiplier per level")
        layers_per_block: int = Field(1, ge=1, le=8, description="residual blocks per UNet level")
        cond_drop: float = Field(0.1, ge=0.0, lt=1.0, description="condition dropout (null condition) in training")
        max_public: int | None = Field(None, ge=1, description="public images whose templates are queried (None: all)")
        # stage 1
        stage1_steps: int = Field(1500, ge=1, description="stage-1 optimiser steps (pixel loss)")
        batch_size: int = Field(64, ge=2, le=4096, description="training batch size")
        lr: float = Field(1e-3, gt=0, description="Adam learning rate (EDM's)")
        ema_halflife_images: float = Field(5000, ge=0, description="EMA half-life in images")
        # stage 2
        stage2: bool = Field(True, description="fine-tune key layers with the identity loss (stage 2)")
        stage2_steps: int = Field(300, ge=1, description="stage-2 optimiser steps")
        stage2_layers: Literal["key", "all"] = Field("key", description="what stage 2 trains: the key layers or all")
        id_weight: float = Field(1.0, ge=0.0, description="λ_id: weight of ||F(f_θ) − F(x0)||² (per-entry mean)")
        # sampling
        n: int = Field(4, ge=1, le=256, description="candidates sampled per template (best of n by similarity)")
        steps: int = Field(18, ge=1, le=1000, description="EDM sampler steps N (2N − 1 evaluations)")
        s_churn: float = Field(40.0, ge=0, description="EDM stochastic churn S_churn (paper, ImageNet: 40)")
        s_min: float = Field(0.05, ge=0, description="S_min (paper: 0.05)")
        s_max: float = Field(50.0, ge=0, description="S_max (paper: 50)")
        s_noise: float = Field(1.003, ge=0, description="S_noise (paper: 1.003)")
        guidance: bool = Field(True, description="steer each step by the feature gap's gradient")
        guidance_scale: float = Field(0.05, ge=0.0, description="RMS per-pixel size of each guidance step ([-1, 1] scale)")
        gradient: Literal["auto", "exact", "nes"] = Field(
            "auto", description="F's gradient: exact (needs grad), nes (queries), auto (exact where granted)")
        nes_pairs: int = Field(4, ge=1, le=256, description="antithetic NES pairs per image (2 x pairs queries)")
        nes_sigma: float = Field(0.02, gt=0, description="NES probe scale in [0, 1] pixels")
        query_batch: int = Field(512, ge=1, description="images per target query")

    # ------------------------------------------------------------------------------------ what F says
    def _exact(self, target: Any) -> bool:
        mode = self.config.gradient
        if mode == "exact" and not target.has(C.GRAD):
            raise UsageError(f"attack '{self.name}': gradient = 'exact' needs grad, and target '{target.name}' "
                             "does not grant it (use 'nes' or 'auto')")
        return mode == "exact" or (mode == "auto" and target.has(C.GRAD))

    def _features(self, target: Any, x01: Tensor) -> Tensor:
        bs = self.config.query_batch
        return torch.cat([target.features(x01[i:i + bs].to(target.device)).float().cpu()
                          for i in range(0, len(x01), bs)])

    def _gap_grad(self, target: Any, x01: Tensor, templates: Tensor, loss: Callable[[Tensor, Tensor], Tensor],
                  generator: torch.Generator) -> Tensor:
        """``∇_x loss(F(x), templates)`` per row: autograd through the view (white-box) or NES (queries)."""
        if self._exact(target):
            with torch.enable_grad():
                x = x01.detach().float().to(target.device).requires_grad_(True)
                value = loss(target.features(x), templates.to(target.device)).sum()
                (g,) = torch.autograd.grad(value, x)
            return g.detach().cpu()
        cfg = self.config
        shape = x01.shape[1:]
        rows = torch.arange(len(x01)).repeat_interleave(2 * cfg.nes_pairs)

        def f(probes: Tensor) -> Tensor:
            feats = self._features(target, probes.reshape(-1, *shape).clamp(0, 1))
            return loss(feats, templates[rows]).float()

        _, g = nes_gradient(f, x01.detach().float().cpu(), sigma=cfg.nes_sigma, pairs=cfg.nes_pairs,
                            generator=generator)
        return g

    # ------------------------------------------------------------------------------------ training
    def _public(self) -> Tensor:
        ctx = self.context
        if ctx is None or ctx.public_images is None:
            raise UsageError(f"attack '{self.name}' trains its generator on public images: set attack.context = "
                             "AttackContext(public_images=..., extras={'templates': ...}) (the bench does)")
        x = ctx.public_images
        return x if self.config.max_public is None else x[: self.config.max_public]

    def _public_templates(self, target: Any, public: Tensor) -> tuple[Tensor, Tensor]:
        """The public images' templates as the target releases them, as far as the budget allows."""
        bs, out = self.config.query_batch, []
        for i in range(0, len(public), bs):
            try:
                out.append(self._features(target, public[i:i + bs]))
            except QueryBudgetExceeded:
                if sum(len(o) for o in out) < 2 * self.config.batch_size:
                    raise
                break
        feats = torch.cat(out)
        return public[: len(feats)], feats

    def _build(self, image_shape: tuple[int, int, int], dim: int) -> TemplateGenerator:
        cfg = self.config
        den = build_denoiser(image_shape, cond_kind="vector", cond_dim=dim, cond_mode="add", width=cfg.width,
                             channel_mult=cfg.channel_mult, layers_per_block=cfg.layers_per_block)
        return TemplateGenerator(den, dim)

    def _stage1(self, images: Tensor, feats: Tensor, image_shape: tuple[int, int, int], dim: int,
                seed: int) -> TemplateGenerator:
        cfg = self.config
        gen = self._build(image_shape, dim)
        gen.mean.copy_(feats.mean(0))
        gen.scale.copy_(feats.std(0).clamp(min=1e-6) if len(feats) > 1 else torch.ones(dim))
        with progress.task(f"{self.name} stage 1 on {len(images)} public images", total=cfg.stage1_steps) as t:
            ema, _ = train_denoiser(gen.denoiser, images, gen.condition(feats), steps=cfg.stage1_steps,
                                    batch_size=cfg.batch_size, lr=cfg.lr, ema_halflife_images=cfg.ema_halflife_images,
                                    cond_drop=cfg.cond_drop, seed=seed, lr_rampup_images=0,
                                    progress=progress.callback(t))
        gen.denoiser.load_state_dict(ema.state_dict())
        return gen.eval()

    def _stage2(self, target: Any, images: Tensor, feats: Tensor, base: TemplateGenerator,
                seed: int) -> TemplateGenerator:
        cfg = self.config
        # stage 2's own draws (its NES directions): the attack's generator is left to sampling, so that a cell
        # whose stage 2 comes from the cache samples exactly as the cell that trained it
        generator = torch.Generator().manual_seed(seed + 2)
        gen = self._build(base.denoiser.image_shape, base.mean.shape[0])
        gen.load_state_dict(base.state_dict())
        den = gen.denoiser
        for p in den.parameters():
            p.requires_grad_(False)
        params = key_parameters(den) if cfg.stage2_layers == "key" else list(den.parameters())
        cond = gen.condition(feats)

        def identity_loss(denoised: Tensor, x0: Tensor, c: Tensor | None, sigma: Tensor) -> Tensor:
            # the condition is the standardised template: undo it to compare with F's raw output
            y = c * gen.scale + gen.mean
            x01 = ((denoised + 1) / 2).clamp(0, 1)
            if self._exact(target):
                f = target.features(x01)
                return cfg.id_weight * ((f.float() - y.float()) ** 2).mean()
            g = self._gap_grad(target, x01.detach(), y.detach(),
                               lambda a, b: ((a.float() - b.float()) ** 2).mean(1), generator)
            # a surrogate whose gradient w.r.t. the denoiser output is the NES estimate
            return cfg.id_weight * (x01 * g.to(x01.device, x01.dtype)).sum() / len(x01)

        with progress.task(f"{self.name} stage 2 ({cfg.stage2_layers} layers, identity loss)",
                           total=cfg.stage2_steps) as t:
            ema, _ = train_denoiser(den, images, cond, steps=cfg.stage2_steps, batch_size=cfg.batch_size, lr=cfg.lr,
                                    ema_halflife_images=cfg.ema_halflife_images, cond_drop=cfg.cond_drop,
                                    seed=seed + 1, extra_loss=identity_loss, params=params, lr_rampup_images=0,
                                    progress=progress.callback(t))
        den.load_state_dict(ema.state_dict())
        for p in den.parameters():
            p.requires_grad_(False)
        return gen.eval()

    def _generator(self, target: Any, image_shape: tuple[int, int, int], dim: int, seed: int) -> TemplateGenerator:
        from invertkit.core.zoo.scenario import fingerprint

        cfg = self.config
        cache = getattr(self.context, "cache", None)
        stage1_cfg = cfg.model_dump(mode="json", include={"width", "channel_mult", "layers_per_block", "cond_drop",
                                                          "max_public", "stage1_steps", "batch_size", "lr",
                                                          "ema_halflife_images", "query_batch"})
        key = {"what": self.name, "data": fingerprint(self._public()), "shape": list(image_shape), "dim": dim,
               "seed": seed, "config": stage1_cfg}

        def build() -> TemplateGenerator:
            return self._build(image_shape, dim)

        queried: dict[str, Tensor] = {}

        def public() -> tuple[Tensor, Tensor]:  # queried once, by whichever stage trains first
            if not queried:
                queried["images"], queried["feats"] = self._public_templates(target, self._public())
            return queried["images"], queried["feats"]

        def stage1() -> TemplateGenerator:
            return self._stage1(*public(), image_shape, dim, seed)

        gen = stage1() if cache is None else cache({**key, "stage": 1}, stage1, build, label=f"{self.name}-stage1")
        if not cfg.stage2:
            return gen
        stage2_cfg = cfg.model_dump(mode="json", include={"stage2_steps", "stage2_layers", "id_weight", "gradient",
                                                          "nes_pairs", "nes_sigma"})
        stage2_cfg["exact"] = self._exact(target)

        def stage2() -> TemplateGenerator:
            return self._stage2(target, *public(), gen, seed)

        if cache is None:
            return stage2()
        return cache({**key, "stage": 2, "stage2": stage2_cfg}, stage2, build, label=f"{self.name}-stage2")

    # ------------------------------------------------------------------------------------ sampling
    def _sample(self, target: Any, gen: TemplateGenerator, templates: Tensor, generator: torch.Generator) -> Tensor:
        cfg = self.config
        den = gen.denoiser
        n = len(templates)
        cond = gen.condition(templates).to(den.device)
        noise = torch.randn((n, *den.image_shape), generator=generator).to(den.device)
        state = {"guiding": cfg.guidance and cfg.guidance_scale > 0}

        def hook(denoised: Tensor, sigma: Tensor, step: int) -> Tensor:
            if not state["guiding"]:
                return denoised
            x01 = ((denoised.float() + 1) / 2).clamp(0, 1).cpu()
            try:
                g = self._gap_grad(target, x01, templates, cosine_gap, generator)
            except QueryBudgetExceeded:
                state["guiding"] = False  # a budget is a stopping rule: sample on without guidance
                return denoised
            rms = g.flatten(1).pow(2).mean(1).sqrt().clamp(min=1e-12).view(-1, 1, 1, 1)
            step_ = (cfg.guidance_scale * g / rms).to(denoised.device, denoised.dtype)
            return (denoised - step_).clamp(-1, 1)

        return edm_sample(den, noise, cond, steps=cfg.steps, s_churn=cfg.s_churn, s_min=cfg.s_min, s_max=cfg.s_max,
                          s_noise=cfg.s_noise, generator=generator, x0_hook=hook).cpu()

    def run(self, target, labels, *, prior, seed, generator) -> AttackResult:  # noqa: ANN001
        leaked = leaked_templates(self, labels)
        image_shape = tuple(int(s) for s in target.input_shape)
        gen = self._generator(target, image_shape, leaked.shape[1], seed)
        cfg = self.config
        reps = leaked.repeat_interleave(cfg.n, dim=0)
        cands = torch.cat([self._sample(target, gen, reps[i:i + cfg.query_batch], generator)
                           for i in range(0, len(reps), cfg.query_batch)])
        cands = cands.view(len(leaked), cfg.n, *image_shape)
        try:
            sims = 1.0 - cosine_gap(self._features(target, cands.flatten(0, 1)), reps).view(len(leaked), cfg.n)
            best = sims.argmax(1)
            score = sims.gather(1, best[:, None]).squeeze(1).float()
        except QueryBudgetExceeded:  # no query left to select with: the first candidate, unscored
            best = torch.zeros(len(leaked), dtype=torch.long)
            score = torch.zeros(len(leaked))
        images = cands[torch.arange(len(leaked)), best]
        return AttackResult(self.name, images, labels, score, 0, 0.0, seed, {}, extras={"candidates": cfg.n})


@hookimpl
def invertkit_register_attacks(register) -> None:
    register(TIADiffusion)
