"""FGMIA: feature-guided model inversion with a diffusion model conditioned on the target's features.

Lu et al., "Feature-Guided Model Inversion Attacks Against Face Recognition Models", IEEE TIFS 2025,
https://doi.org/10.1109/TIFS.2025.3592542; official code https://github.com/MMCTTT/FGMIA_codes (released
without its training code, TransF or ScaleFT: only ``src/t55_FGDM_new/attack.py``, ``AttackConfig.py`` and
``pipeline_PDM.py``, the sampling side, are public).

**The attack.** (1) *Feature-guided diffusion model*: a diffusion model is trained on public images ``x``,
each conditioned on the target's feature encoding ``phi(x)`` of that image, one conditioning token in the
target's penultimate (embedding) space (the official ``PDMTargetToImagePipeline`` feeds the 512-d feature as
the single cross-attention token of a ``UNet2DConditionModel``: ``encoder_hidden_states`` of shape
``(B, 1, 512)``). Every public image's features are a query, counted; the trained model is cached per
(target, defense) through ``AttackContext.cache`` and its queries are charged again on every re-use.
(2) *Attack*: condition the model on each identity's representative feature and sample ``N`` images per
identity directly, 50 sampling steps, no guidance (``AttackConfig00x``: ``MIA_steps = 50``,
``MIA_batch = 32`` images per identity, ``guidance_scale = 1.0``); no optimisation and no query at attack
time. Optionally (``candidates > 1``) keep, for each requested image, the best of ``candidates`` draws by the
target's confidence in the identity (one ``probs`` query per draw; not in the official code).

**The identity's representative feature.** For a face embedder (IResNet with an ArcFace/CosFace head) the
official attack conditions on each identity's feature centre (``features.pth``, one 512-d vector per
identity). In invertkit such a target is a closed-set classifier whose margin head's weight rows *are* the
enrolled, unit-norm identity centres (:func:`invertkit.plugins.targets.face_embed.enroll`), so the same
two steps below serve both kinds of target:

* **TransF** (my reading of the paper, whose text I could not obtain here; the issue's description is
  followed): the classifier's last-layer weight row ``W_y`` (:func:`invertkit.core.zoo.arch.last_layer`,
  read from ``target.module``: white-box knowledge, no query) is taken as identity ``y``'s direction in the
  feature space: the direction along which a feature raises ``y``'s logit fastest (for a cosine head, the
  class centre itself). :func:`transf` returns the rows unchanged (their direction is the weight row's).
* **ScaleFT**: a weight row does not live at the scale of real features (a linear layer's weights are
  ~1/sqrt(d), features are ReLU outputs with per-dimension offsets), so the diffusion model, trained on real
  features only, has never seen anything like it. ScaleFT maps the direction back to the statistics of real
  features: with ``mu`` and ``sigma`` the per-dimension mean and standard deviation of the target's features
  of the public images (the ones the model was trained on),

      z_y = sqrt(D') * (sigma * W_y) / ||sigma * W_y||,      c_y = mu + sigma * z_y

  (``D'`` the number of dimensions with ``sigma > 0``; ``scaleft_norm`` multiplies ``z_y``). In standardised
  coordinates ``(f - mu) / sigma`` a real feature has squared norm ``D'`` on average, exactly that of
  ``c_y``; dimensions that never vary stay at their mean; and among all points at that standardised norm,
  ``c_y`` is the one with the largest logit ``W_y . c``, since ``W_y . c = W_y . mu + (sigma * W_y) . z``.
  So ``c_y`` is "a typical real feature, moved from the mean as far as real features go, in the direction of
  identity ``y``". :func:`scaleft` implements it.

**Ablations** (the paper's, as options; also registered as ``fgmia-nofg``, ``fgmia-notransf``,
``fgmia-noscaleft`` so a bench table can name them):

* no-FG, ``condition = "one-hot"`` (or ``"logits"``): the model is conditioned on the target's predicted
  label of each public image as a one-hot vector (one ``label`` query per image), attacked with ``onehot(y)``;
  or on the target's logits (one ``logits`` query per image), attacked with the mean logit vector of the
  ``centre_top_n`` public images the target is most confident are ``y`` (PLG-MI's top-n selection).
* no-TransF, ``transf = false``: no weights; identity ``y``'s condition is the mean feature of the
  ``centre_top_n`` public images the target is most confident are ``y`` (one ``probs`` query per public
  image, one ``features`` query per selected image), a real feature already, so ScaleFT is not applied.
* no-ScaleFT, ``scaleft = false``: the raw weight row ``W_y`` is the condition.

**Deliberate differences from the official code.** The diffusion model is invertkit's EDM
(:mod:`invertkit.plugins.priors.edm`: Karras et al., NeurIPS 2022, a diffusers UNet with EDM's
preconditioning, loss and sampler) instead of the official DDPM-type ``UNet2DConditionModel`` with a
diffusers scheduler: the official training code (schedule, epochs, learning rate) is not public, so the
training defaults are EDM's (:class:`~invertkit.plugins.priors.edm.EDMBuilder`'s). 50 sampling steps of EDM's
Euler solver are 50 network evaluations, like the official 50-step scheduler (Euler on EDM's ODE is DDIM,
Karras et al. Sec. 3). The conditioning vector is standardised (minus the public conditions' mean, divided by
their root-mean-square standard deviation) before it enters the network; the official code feeds the raw
feature. The official attack evaluates every one of its 32 samples; ``candidates`` (off by default) adds the
selection the issue asks for as an option.

On a GPU, training and sampling run under bfloat16 autocast with channels-last weights (:func:`amp`; the EDM
module itself has no mixed precision, and its sampler keeps its state in float64); identities x samples are
generated together, in batches of ``batch_size``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from invertkit.core import progress
from invertkit.core.errors import CapabilityError, ConfigError, ShapeError
from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.attack import Attack, AttackConfig
from invertkit.core.interfaces.capability import Capabilities, Capability as C, describe
from invertkit.core.interfaces.results import AttackResult
from invertkit.core.zoo.arch import last_layer
from invertkit.plugins.attacks.identity_terms import public_images
from invertkit.plugins.priors import edm
from invertkit.plugins.priors.plg_cgan import top_n_selection

PAPER = "https://doi.org/10.1109/TIFS.2025.3592542"
Condition = Literal["features", "logits", "one-hot"]
_EDM = edm.EDMBuilder.Config.model_fields  # the EDM defaults FGMIA's training takes (its own are not public)


# ------------------------------------------------------------------------------------------ TransF, ScaleFT
def transf(weight: Tensor) -> Tensor:
    """TransF: the classifier's last-layer weight rows ``(K, D)`` as the identities' directions in the feature
    space, one row per class (returned as they are: the direction of identity ``y`` is ``W_y``)."""
    if weight.dim() != 2:
        raise ShapeError(f"TransF needs a (classes, feature_dim) weight matrix, got shape {tuple(weight.shape)}")
    return weight.detach().float().clone()


def scaleft(directions: Tensor, mean: Tensor, std: Tensor, norm: float = 1.0) -> Tensor:
    """ScaleFT: map directions ``(K, D)`` in the feature space to features at the statistics of real ones, given
    the real features' per-dimension ``mean`` and ``std`` (``D`` each): ``mean + std * z`` with ``z`` the
    direction ``std * d`` rescaled to the standardised norm ``norm * sqrt(D')`` of a real feature (``D'`` the
    dimensions with ``std > 0``). See the module docstring."""
    d = directions.float()
    if d.dim() != 2 or mean.shape != (d.shape[1],) or std.shape != (d.shape[1],):
        raise ShapeError(f"ScaleFT: directions {tuple(d.shape)}, mean {tuple(mean.shape)} and std "
                         f"{tuple(std.shape)} do not fit")
    std = std.float().clamp_min(0)
    live = int((std > 0).sum())
    z = std * d
    z = z / z.norm(dim=1, keepdim=True).clamp_min(1e-12) * (norm * math.sqrt(live))
    return mean.float() + std * z


def class_centres(values: Tensor, probs: Tensor, top_n: int) -> Tensor:
    """``(K, D)``: for each class, the mean of ``values`` over the ``top_n`` rows with the largest ``probs`` of
    that class (PLG-MI's top-n selection)."""
    n = min(top_n, len(values))
    idx, _ = top_n_selection(probs, n)
    return values[idx].view(probs.shape[1], n, -1).mean(1)


# ------------------------------------------------------------------------------------------ the model
class FeatureConditionedEDM(nn.Module):
    """The cached artifact: an EDM denoiser with a vector condition, and what the attack needs of its training
    conditions: their per-dimension mean and standard deviation, the scalar that standardises them, and
    (``logits`` condition) the per-class centres of the public logits."""

    def __init__(self, denoiser: nn.Module, cond_dim: int, num_classes: int) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.register_buffer("cond_mean", torch.zeros(cond_dim))
        self.register_buffer("cond_std", torch.zeros(cond_dim))
        self.register_buffer("cond_scale", torch.ones(()))
        self.register_buffer("anchors", torch.zeros(num_classes, cond_dim))

    def fit_statistics(self, conds: Tensor) -> None:
        c = conds.float()
        std = c.std(0, unbiased=False) if len(c) > 1 else torch.zeros_like(c[0])
        self.cond_mean.copy_(c.mean(0))
        self.cond_std.copy_(std)
        self.cond_scale.copy_(std.pow(2).mean().sqrt().clamp_min(1e-6))

    def standardise(self, conds: Tensor) -> Tensor:
        """The network's input: ``(c - mean) / scale``."""
        return (conds.float().to(self.cond_mean.device) - self.cond_mean) / self.cond_scale


# ------------------------------------------------------------------------------------------ the attack
def needs(condition: str, use_transf: bool, candidates: int) -> Capabilities:
    """The capabilities an FGMIA configuration uses of the target."""
    caps = {"features": {C.FEATURES}, "logits": {C.LOGITS}, "one-hot": {C.LABEL}}[condition]
    if condition == "features":
        caps.add(C.WEIGHTS if use_transf else C.PROBS)
    if candidates > 1:
        caps.add(C.PROBS)
    return frozenset(caps)


class FGMIAConfig(AttackConfig):
    """FGMIA's options: the official sampling defaults, EDM's training defaults (the official training code is
    not public)."""

    condition: Condition = Field("features", description="what the diffusion model is conditioned on: the "
                                 "target's 'features' (FGMIA), or its 'logits' / predicted label as 'one-hot' "
                                 "(the no-FG ablations)")
    transf: bool = Field(True, description="TransF: the last-layer weight row as the identity's direction "
                         "(false: the mean feature of the public images the target is most confident about)")
    scaleft: bool = Field(True, description="ScaleFT: map the TransF direction to the scale and statistics of "
                          "real features (false: condition on the raw weight row)")
    scaleft_norm: float = Field(1.0, gt=0, description="ScaleFT's standardised norm, in units of a real feature's")
    centre_top_n: int = Field(30, ge=1, description="public images per class whose mean is the class centre "
                              "(no-TransF, logits; PLG-MI's top-n: 30)")
    steps: int = Field(50, ge=1, description="sampling steps (official MIA_steps: 50)")
    solver: Literal["euler", "heun"] = Field("euler", description="EDM sampler: 'euler' (one network evaluation "
                                            "a step, as the official 50-step scheduler) or 'heun'")
    guidance: float = Field(1.0, ge=0, description="classifier-free guidance weight (official: 1.0, none)")
    candidates: int = Field(1, ge=1, le=256, description="draws per requested image, the best by the target's "
                            "confidence kept (official: 1, no selection)")
    batch_size: int = Field(256, ge=1, description="images sampled at once (identities x samples)")
    train_steps: int = Field(_EDM["steps"].default, ge=1, description="EDM training steps (EDM's default)")
    train_batch_size: int = Field(_EDM["batch_size"].default, ge=1, description="EDM training batch (EDM's: 512)")
    lr: float = Field(_EDM["lr"].default, gt=0, description="Adam learning rate (EDM's: 1e-3)")
    lr_rampup_images: float = Field(_EDM["lr_rampup_images"].default, ge=0,
                                    description="images over which the learning rate ramps up (EDM's: 10 M)")
    ema_halflife_images: float = Field(_EDM["ema_halflife_images"].default, ge=0,
                                       description="EMA half-life in images (EDM's: 500 k)")
    width: int = Field(_EDM["width"].default, ge=1, description="UNet base channels (EDM's DDPM++: 128)")
    channel_mult: list[int] = Field(list(_EDM["channel_mult"].default), min_length=1,
                                    description="UNet channel multiplier per level (EDM's: 2, 2, 2)")
    layers_per_block: int = Field(_EDM["layers_per_block"].default, ge=1, description="residual blocks per level "
                                  "(EDM's: 4)")
    attention: list[int] = Field(list(_EDM["attention"].default), description="resolutions with self-attention "
                                 "(EDM's: 16; the cross-attention blocks attend to the condition at every level)")
    dropout: float = Field(_EDM["dropout"].default, ge=0, lt=1, description="dropout in the residual blocks (EDM's)")
    tokens: int = Field(1, ge=1, description="conditioning tokens the condition is projected to (official: one)")
    cond_mode: Literal["add", "cross-attention", "both"] = Field(
        "cross-attention", description="how the condition enters the UNet (official: one cross-attention token)")
    cond_drop: float = Field(0.0, ge=0, lt=1, description="condition dropout while training (for guidance > 1)")
    train_seed: int = Field(0, ge=0, description="seed of the diffusion model's training (shared across attack "
                            "seeds, so the cached model is re-used)")

    @model_validator(mode="after")
    def _ablations_apply_to_features(self) -> "FGMIAConfig":
        if self.condition != "features" and not (self.transf and self.scaleft):
            raise ValueError(f"transf/scaleft apply to the 'features' condition only, not '{self.condition}'")
        return self


class FGMIA(Attack):
    """Feature-guided model inversion (see the module docstring)."""

    name = "fgmia"
    paper = PAPER
    summary = ("Feature-guided diffusion: an EDM trained on public images conditioned on the target's features, "
               "sampled from each identity's TransF+ScaleFT feature; no optimisation.")
    requires = needs("features", True, 1)
    needs_prior = False
    Config: ClassVar[type[AttackConfig]] = FGMIAConfig

    def run(self, target, labels, *, prior, seed, generator) -> AttackResult:  # noqa: ANN001
        cfg = self.config
        lack = needs(cfg.condition, cfg.transf, cfg.candidates) - target.capabilities
        if lack:
            raise CapabilityError(f"attack '{self.name}' with these options needs {describe(lack)} of target "
                                  f"'{target.name}', which exposes {describe(target.capabilities)}")
        images = public_images(self)
        if tuple(images.shape[1:]) != tuple(target.input_shape):
            raise ShapeError(f"public images of shape {tuple(images.shape[1:])} do not fit the target's input "
                             f"{tuple(target.input_shape)}")
        q0 = target.queries
        model = self.diffusion_model(target, images)
        trained = target.queries - q0
        conds = self.identity_conditions(target, model, images)
        rows = labels.long().repeat_interleave(cfg.candidates)
        out = generate(model, conds[rows.to(conds.device)], target.input_shape, cfg, generator, target.device)
        scores = torch.zeros(len(labels))
        if cfg.candidates > 1:
            out, scores = select_best(target, out, labels, cfg.candidates, cfg.batch_size)
        extras = {"condition": cfg.condition, "transf": cfg.transf, "scaleft": cfg.scaleft,
                  "model_queries": trained, "evaluations_per_image": evaluations(cfg) * cfg.candidates}
        return AttackResult(self.name, out, labels, scores, 0, 0.0, seed, {}, extras=extras)

    # ------------------------------------------------------------------ the feature-guided diffusion model
    def diffusion_model(self, target, images: Tensor) -> FeatureConditionedEDM:  # noqa: ANN001
        """The EDM conditioned on what ``cfg.condition`` names, trained on the public ``images`` (cached per
        target x defense through the context's cache, its queries charged again on re-use)."""
        cfg = self.config
        k = target.num_classes
        dim = feature_dim(target, images) if cfg.condition == "features" else k

        def build() -> FeatureConditionedEDM:
            torch.manual_seed(cfg.train_seed)
            net = edm.build_denoiser(tuple(target.input_shape), cond_kind="vector", cond_dim=dim,
                                     cond_mode=cfg.cond_mode, width=cfg.width, channel_mult=cfg.channel_mult,
                                     layers_per_block=cfg.layers_per_block, attention=cfg.attention,
                                     dropout=cfg.dropout, tokens=cfg.tokens)
            model = FeatureConditionedEDM(net, dim, k).to(target.device)
            return model.to(memory_format=torch.channels_last) if target.device.type == "cuda" else model

        def train() -> FeatureConditionedEDM:
            conds, anchors = training_conditions(target, images, cfg)
            model = build()
            model.fit_statistics(conds)
            model.anchors.copy_(anchors)
            with amp(target.device), progress.task(f"FGMIA: training the {cfg.condition}-conditioned EDM",
                                                   total=cfg.train_steps) as bar:
                done = [0]

                def tick(step: int, steps: int, loss: float) -> None:
                    bar.advance(step - done[0], info=f"loss {loss:.4f}")
                    done[0] = step

                ema, facts = edm.train_denoiser(model.denoiser, images, model.standardise(conds),
                                                 steps=cfg.train_steps, batch_size=cfg.train_batch_size, lr=cfg.lr,
                                                 lr_rampup_images=cfg.lr_rampup_images,
                                                 ema_halflife_images=cfg.ema_halflife_images,
                                                 cond_drop=cfg.cond_drop, seed=cfg.train_seed, progress=tick)
                tick(cfg.train_steps, cfg.train_steps, float(facts["loss"]))
            model.denoiser = ema
            return model.eval()

        ctx = self.context
        cache = getattr(ctx, "cache", None)
        if cache is None:
            return train().requires_grad_(False)
        from invertkit.core.zoo.scenario import fingerprint

        key = {"what": "fgmia-edm", "condition": cfg.condition, "data": fingerprint(images), "shape": list(images.shape),
               "top_n": cfg.centre_top_n if cfg.condition == "logits" else None,
               **{f: getattr(cfg, f) for f in TRAINING}}
        return cache(key, train, build, label=f"fgmia-edm-{cfg.condition}").requires_grad_(False)

    # ------------------------------------------------------------------ the identities' conditions
    def identity_conditions(self, target, model: FeatureConditionedEDM, images: Tensor) -> Tensor:  # noqa: ANN001
        """``(K, cond_dim)``: the condition each class is attacked with (see the module docstring)."""
        cfg = self.config
        k = target.num_classes
        if cfg.condition == "one-hot":
            return torch.eye(k, device=model.cond_mean.device)
        if cfg.condition == "logits":
            return model.anchors
        if not cfg.transf:  # no-TransF: the centre of the public features the target is most confident about
            dev = target.device
            probs = batched_query(lambda x: target.probs(x.to(dev)), images, cfg.batch_size)
            n = min(cfg.centre_top_n, len(images))
            idx, _ = top_n_selection(probs, n)
            feats = batched_query(lambda x: target.features(x.to(dev)), images[idx], cfg.batch_size)
            return feats.view(k, n, -1).mean(1).to(model.cond_mean.device)
        weight, _bias = last_layer(target.module, k)
        if weight.shape[1] != model.cond_mean.numel():
            raise ShapeError(f"the target's last layer takes {weight.shape[1]} features, its features() gives "
                             f"{model.cond_mean.numel()}")
        directions = transf(weight).to(model.cond_mean.device)
        if not cfg.scaleft:
            return directions
        return scaleft(directions, model.cond_mean, model.cond_std, cfg.scaleft_norm)


class FGMIANoFG(FGMIA):
    """FGMIA without feature guidance: the diffusion model conditioned on the target's predicted label (one-hot)."""

    name = "fgmia-nofg"
    summary = "FGMIA ablation no-FG: the diffusion model conditioned on the target's one-hot label, not its features."
    requires = needs("one-hot", True, 1)

    class Config(FGMIAConfig):
        condition: Condition = Field("one-hot", description="the no-FG ablation: 'one-hot' (or 'logits')")


class FGMIANoTransF(FGMIA):
    """FGMIA without TransF: each identity's condition is the mean feature of the public images the target is
    most confident about, not its weight row."""

    name = "fgmia-notransf"
    summary = "FGMIA ablation no-TransF: condition on the centre of the public features most confidently of y."
    requires = needs("features", False, 1)

    class Config(FGMIAConfig):
        transf: bool = Field(False, description="the no-TransF ablation")


class FGMIANoScaleFT(FGMIA):
    """FGMIA without ScaleFT: each identity's condition is its raw last-layer weight row."""

    name = "fgmia-noscaleft"
    summary = "FGMIA ablation no-ScaleFT: condition on the raw last-layer weight row."
    requires = needs("features", True, 1)

    class Config(FGMIAConfig):
        scaleft: bool = Field(False, description="the no-ScaleFT ablation")


# ------------------------------------------------------------------------------------------ helpers
#: the options that make the diffusion model (its cache key)
TRAINING = ("train_steps", "train_batch_size", "lr", "lr_rampup_images", "ema_halflife_images", "width",
            "channel_mult", "layers_per_block", "attention", "dropout", "tokens", "cond_mode", "cond_drop",
            "train_seed")


def amp(device: torch.device) -> Any:
    """bfloat16 autocast on a GPU (the EDM module has no mixed precision of its own), nothing on the CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=torch.device(device).type == "cuda")


@torch.no_grad()
def batched_query(ask, images: Tensor, batch_size: int) -> Tensor:  # noqa: ANN001
    """``ask`` (a target's query method) over ``images`` in batches, flattened, float, detached, on the CPU."""
    return torch.cat([ask(images[i : i + batch_size]).detach().flatten(1).float().cpu()
                      for i in range(0, len(images), batch_size)])


def feature_dim(target, images: Tensor) -> int:  # noqa: ANN001
    """The width of the target's features: from its last layer (no query), or without the weights from the
    features of one public image (one query)."""
    if target.has(C.WEIGHTS):
        return int(last_layer(target.module, target.num_classes)[0].shape[1])
    return int(target.features(images[:1].to(target.device)).flatten(1).shape[1])


def training_conditions(target, images: Tensor, cfg: FGMIAConfig) -> tuple[Tensor, Tensor]:  # noqa: ANN001
    """The condition of every public image (one query each) and, for ``logits``, the per-class anchors."""
    k = target.num_classes
    dev = target.device
    if cfg.condition == "features":
        conds = batched_query(lambda x: target.features(x.to(dev)), images, cfg.batch_size)
        return conds, torch.zeros(k, conds.shape[1])
    if cfg.condition == "one-hot":
        lab = batched_query(lambda x: target.label(x.to(dev)).view(-1, 1), images, cfg.batch_size).long().view(-1)
        return F.one_hot(lab, k).float(), torch.zeros(k, k)
    logits = batched_query(lambda x: target.logits(x.to(dev)), images, cfg.batch_size)
    return logits, class_centres(logits, logits.softmax(1), cfg.centre_top_n)


def evaluations(cfg: FGMIAConfig) -> int:
    """Network evaluations per image of the sampler (Heun: two a step but the last)."""
    return cfg.steps if cfg.solver == "euler" else 2 * cfg.steps - 1


@torch.no_grad()
def generate(model: FeatureConditionedEDM, conds: Tensor, shape: tuple[int, ...], cfg: FGMIAConfig,
             generator: torch.Generator, device: torch.device) -> Tensor:
    """One image per row of ``conds`` (raw conditions), in batches of ``cfg.batch_size``, in ``[0, 1]``."""
    out = []
    noise = torch.randn((len(conds), *shape), generator=generator)
    for i in range(0, len(conds), cfg.batch_size):
        c = model.standardise(conds[i : i + cfg.batch_size])
        with amp(device):
            x = edm.edm_sample(model.denoiser, noise[i : i + cfg.batch_size].to(device), c.to(device),
                               steps=cfg.steps, solver=cfg.solver, guidance=cfg.guidance)
        out.append(x.float().clamp(0, 1).cpu())
    return torch.cat(out) if out else torch.zeros((0, *shape))


@torch.no_grad()
def select_best(target, images: Tensor, labels: Tensor, candidates: int, batch_size: int) -> tuple[Tensor, Tensor]:  # noqa: ANN001
    """For each label, the one of its ``candidates`` consecutive images the target is most confident about
    (one ``probs`` query per image), and that confidence."""
    probs = batched_query(lambda x: target.probs(x.to(target.device)), images, batch_size)
    rows = labels.long().repeat_interleave(candidates)
    conf = probs.gather(1, rows.view(-1, 1)).view(len(labels), candidates)
    best = conf.argmax(1)
    pick = torch.arange(len(labels)) * candidates + best
    return images[pick], conf.max(1).values


@hookimpl
def invertkit_register_attacks(register) -> None:  # noqa: ANN001
    register(FGMIA)
    register(FGMIANoFG)
    register(FGMIANoTransF)
    register(FGMIANoScaleFT)
