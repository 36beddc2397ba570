"""VMI: Variational Model Inversion Attacks (Wang, Fu, Li, Khisti, Zemel, Makhzani, NeurIPS 2021),
https://arxiv.org/abs/2201.10787 (official code: https://github.com/wangkua1/vmi).

White-box, GAN prior with a standard-normal latent ``p(z) = N(0, I)``. For each identity ``y`` VMI learns a
variational distribution ``q_y(z)`` over the prior's latent space -- a normalising flow -- by minimising

    L(q_y) = lambda * E_{z ~ q_y}[ CE(T(G(z)), y) ] + beta * KL(q_y || p(z))

where the KL is estimated by Monte Carlo, ``mean_s [log q_y(z_s) - log N(z_s; 0, I)]``, with the flow's exact
log-density (change of variables). The reconstructions are samples of the learned ``q_y`` (one per row of
``labels``); they cost no query.

Defaults (the official ``run_scripts/neurips2021-celeba-stylegan-flow.sh`` with ``attack_dcgan.py`` /
``attack_stylegan.py``, method ``flow``):

* flow: Glow (``--flow_glow 1``) on the latent vector seen as a ``d x 1 x 1`` image: ``L = 3`` levels of
  ``K = 10`` steps, each step actnorm (data-dependent initialisation on 100 standard-normal draws) -> a fixed
  random channel *shuffle* -> an *additive* coupling whose network is conv(3x3, on a 1x1 map: a linear map)
  + actnorm -> ELU -> conv(1x1) + actnorm -> ELU -> zero-initialised conv scaled by ``exp(3 * logs)``, 100 hidden
  channels; between levels Glow's ``Split2d`` factors out half of the channels under a learned conditional
  Gaussian ``N(mean(z1), exp(logs(z1)))`` (zero-initialised), the rest goes on; the top is ``N(0, I)``. At
  initialisation the flow is (up to the actnorm data-init) the identity, i.e. ``q_y = p``.
* optimiser: SGD with momentum 0.9, lr 1e-4, no weight decay; 64 samples per step; ``beta`` (``--lambda_kl``)
  1e-3, ``lambda`` (``--lambda_attack``) 1, no label smoothing; 31 epochs of ``range(0, 10000, 64)``, i.e.
  31 x 157 = 4,867 steps.
* no prior realism term (``--lambda_prior 0 --prior_model 0``): ``prior_weight`` adds ``-D(G(z))`` if asked.

Batching. The official code trains one identity per process (each from the same seeded initial flow). Here all
identities are trained together: ``U`` *independent* flows of one architecture, whose parameters are one flat
row per identity (``(U, P)``), evaluated with batched matrix products (:class:`GlowFlows`). Not a
class-conditional flow: the official flow is unconditional per identity, and independent rows keep every
identity's optimisation exactly the per-identity one. Because the parameters are independent rows of one
tensor and the loss is a sum of per-identity losses, VMI runs on the shared loop
:func:`invertkit.core.optim.optimise` (its per-row parameter model, momentum SGD, non-finite checks) with the
shared CE identity term (:func:`invertkit.plugins.attacks.identity_terms.identity_term`). All rows start from the
same initial flow (as the official per-identity runs do: same seed); the permutations are shared.

Differences from the official code, each with the same expected gradient: the KL estimate reuses the step's
samples (the official draws a second batch of 64), and ``log q(z)`` is accumulated along the sampling path
(``log N(eps) - log|det dz/deps|``) instead of a second, encoding pass; the two are the same function of the
parameters. The official StyleGAN runs use a *layered* flow (one flow per w+ layer 0-9, a nuisance ``z`` for
the others); invertkit's priors have one flat latent, so this is the official ``flow`` method (their DCGAN
setting). A latent of dimension ``d`` supports ``floor(log2 d)`` levels at most; fewer are used when needed
(``extras['levels']``). VMI assumes ``p(z) = N(0, I)``; a prior whose ``sample_latent`` draws another
distribution (the autoencoder prior) gets the KL to ``N(0, I)`` all the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from invertkit.core.errors import ShapeError
from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.attack import Attack, AttackConfig
from invertkit.core.interfaces.capability import Capability as C
from invertkit.core.interfaces.results import AttackResult
from invertkit.core.optim import batched, optimise
from invertkit.plugins.attacks.identity_terms import identity_term

LOG_2PI = math.log(2 * math.pi)
#: Glow's ``Conv2dZeros`` / ``LinearZeros`` multiply their output by ``exp(logscale_factor * logs)``
LOGSCALE_FACTOR = 3.0


def standard_normal_logp(z: Tensor) -> Tensor:
    """``log N(z; 0, I)`` summed over the last dimension."""
    return -0.5 * (z.pow(2).sum(-1) + z.shape[-1] * LOG_2PI)


def _gaussian_logp(mean: Tensor, logs: Tensor, x: Tensor) -> Tensor:
    return (-0.5 * (2 * logs + (x - mean).pow(2) * torch.exp(-2 * logs) + LOG_2PI)).sum(-1)


@dataclass(frozen=True)
class _Slot:
    offset: int
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return math.prod(self.shape)


class GlowFlows:
    """``U`` independent Glow flows on ``R^dim`` (the official VMI flow: actnorm, fixed permutation, additive
    or affine coupling, multi-scale split), one flat parameter row per flow: ``theta`` is ``(U, size)``.

    Directions: :meth:`sample` maps base noise ``eps`` ``(U, S, dim)`` to latents ``z`` and returns
    ``log q(z)``; :meth:`encode` is its exact inverse (``z -> eps``) with the same ``log q(z)``;
    :meth:`log_prob` is the density alone. ``eps`` is the concatenation of the Gaussian noise of every split
    (level 0 first) and of the top level.
    """

    def __init__(self, dim: int, *, steps: int = 10, levels: int = 3, hidden: int = 100,
                 coupling: Literal["additive", "affine"] = "additive",
                 permutation: Literal["shuffle", "reverse"] = "shuffle", actnorm: bool = True,
                 generator: torch.Generator | None = None) -> None:
        if dim < 2:
            raise ShapeError(f"VMI's flow needs a latent of at least 2 dimensions, got {dim}")
        self.dim, self.steps, self.hidden = int(dim), int(steps), int(hidden)
        self.coupling, self.actnorm = coupling, bool(actnorm)
        # level l works on dims[l] channels; a level needs >= 2 of them (a coupling splits them in two)
        dims = [self.dim]
        while len(dims) < levels and dims[-1] // 2 >= 2:
            dims.append(dims[-1] // 2)
        self.dims = dims
        self.levels = len(dims)
        self._slots: dict[str, _Slot] = {}
        self._size = 0
        self.perms: dict[tuple[int, int], tuple[Tensor, Tensor]] = {}
        self._perm_cache: dict[tuple[int, int, str], tuple[Tensor, Tensor]] = {}
        for lvl, c in enumerate(dims):
            c1, c2 = c // 2, c - c // 2
            for k in range(self.steps):
                p = f"{lvl}.{k}."
                if self.actnorm:
                    self._add(p + "an_b", (c,))
                    self._add(p + "an_logs", (c,))
                if permutation == "shuffle":
                    perm = torch.randperm(c, generator=generator)
                else:
                    perm = torch.arange(c - 1, -1, -1)
                self.perms[(lvl, k)] = (perm, torch.argsort(perm))
                out = c2 if coupling == "additive" else 2 * c2
                self._add(p + "w1", (c1, hidden))
                self._add(p + "a1_b", (hidden,))
                self._add(p + "a1_logs", (hidden,))
                self._add(p + "w2", (hidden, hidden))
                self._add(p + "a2_b", (hidden,))
                self._add(p + "a2_logs", (hidden,))
                self._add(p + "w3", (hidden, out))
                self._add(p + "b3", (out,))
                self._add(p + "s3", (out,))
            if lvl < self.levels - 1:
                self._add(f"{lvl}.split.w", (c1, 2 * c2))
                self._add(f"{lvl}.split.b", (2 * c2,))
                self._add(f"{lvl}.split.s", (2 * c2,))

    # ------------------------------------------------------------------------------- parameter layout
    def _add(self, name: str, shape: tuple[int, ...]) -> None:
        slot = _Slot(self._size, shape)
        self._slots[name] = slot
        self._size += slot.size

    @property
    def size(self) -> int:
        """Parameters per flow."""
        return self._size

    def unpack(self, theta: Tensor) -> dict[str, Tensor]:
        """Views ``(U, *shape)`` of every parameter of the flat rows ``theta`` ``(U, size)``: one ``split``
        (whose backward is one concatenation, where a slice per parameter would each allocate a full-size
        gradient)."""
        if theta.dim() != 2 or theta.shape[1] != self.size:
            raise ShapeError(f"flow parameters must be (U, {self.size}), got {tuple(theta.shape)}")
        chunks = theta.split([s.size for s in self._slots.values()], dim=1)
        return {name: c.view(theta.shape[0], *s.shape) for (name, s), c in zip(self._slots.items(), chunks)}

    def initial(self, n: int, *, generator: torch.Generator | None = None, data_init: bool = True,
                init_samples: int = 100, weight_std: float = 0.05, dtype: torch.dtype = torch.float32,
                device: torch.device | str = "cpu") -> Tensor:
        """``(n, size)`` parameters: ``n`` copies of one Glow initialisation (hidden weights ``N(0, 0.05^2)``,
        zero output and split layers, actnorms zero, then -- ``data_init`` -- set from ``init_samples``
        standard-normal latents pushed through the encoding direction, as Glow's data-dependent init)."""
        theta = torch.zeros((1, self.size), dtype=torch.float64)
        params = self.unpack(theta)
        for name, slot in self._slots.items():
            if name.endswith(("w1", "w2")):
                params[name].copy_(torch.randn((1, *slot.shape), generator=generator, dtype=torch.float64) * weight_std)
        theta = theta.to(device=device, dtype=dtype)
        if data_init:
            x = torch.randn((1, init_samples, self.dim), generator=generator, dtype=torch.float64)
            with torch.no_grad():
                self._encode(theta, x.to(device=device, dtype=dtype), init=True)
        return theta.expand(n, -1).clone()

    def _perm(self, lvl: int, k: int, device: torch.device, inverse: bool = False) -> Tensor:
        """The fixed permutation of step ``k`` of level ``lvl`` (or its inverse), cached per device."""
        key = (lvl, k, str(device))
        if key not in self._perm_cache:
            perm, inv = self.perms[(lvl, k)]
            self._perm_cache[key] = (perm.to(device), inv.to(device))
        return self._perm_cache[key][1 if inverse else 0]

    # ------------------------------------------------------------------------------- building blocks
    @staticmethod
    def _actnorm(bias: Tensor, logs: Tensor, h: Tensor, init: bool) -> Tensor:
        """``(h + b) * exp(logs)``, per flow; with ``init`` the parameters are first set so that the output
        of ``h`` has zero mean and unit variance per channel (Glow's data-dependent initialisation)."""
        if init:
            b = -h.mean(1)
            var = (h + b.unsqueeze(1)).pow(2).mean(1)
            bias.copy_(b)
            logs.copy_(torch.log(1.0 / (var.sqrt() + 1e-6)))
        return (h + bias.unsqueeze(1)) * torch.exp(logs).unsqueeze(1)

    def _net(self, P: dict[str, Tensor], p: str, x1: Tensor, init: bool = False) -> Tensor:
        h = torch.bmm(x1, P[p + "w1"])
        h = F.elu(self._actnorm(P[p + "a1_b"], P[p + "a1_logs"], h, init))
        h = torch.bmm(h, P[p + "w2"])
        h = F.elu(self._actnorm(P[p + "a2_b"], P[p + "a2_logs"], h, init))
        out = torch.bmm(h, P[p + "w3"]) + P[p + "b3"].unsqueeze(1)
        return out * torch.exp(LOGSCALE_FACTOR * P[p + "s3"]).unsqueeze(1)

    def _split_prior(self, P: dict[str, Tensor], lvl: int, z1: Tensor) -> tuple[Tensor, Tensor]:
        h = torch.bmm(z1, P[f"{lvl}.split.w"]) + P[f"{lvl}.split.b"].unsqueeze(1)
        h = h * torch.exp(LOGSCALE_FACTOR * P[f"{lvl}.split.s"]).unsqueeze(1)
        return h[..., 0::2], h[..., 1::2]  # Glow's "cross" split: mean, log-std

    # ------------------------------------------------------------------------------- directions
    def _encode(self, theta: Tensor, z: Tensor, init: bool = False) -> tuple[Tensor, Tensor]:
        if z.dim() != 3 or z.shape[-1] != self.dim or z.shape[0] != theta.shape[0]:
            raise ShapeError(f"flow latents must be (U={theta.shape[0]}, S, {self.dim}), got {tuple(z.shape)}")
        P = self.unpack(theta)
        logq = torch.zeros(z.shape[:2], dtype=z.dtype, device=z.device)
        parts = []
        for lvl, c in enumerate(self.dims):
            c1 = c // 2
            for k in range(self.steps):
                p = f"{lvl}.{k}."
                if self.actnorm:
                    logs = P[p + "an_logs"]
                    z = self._actnorm(P[p + "an_b"], logs, z, init)
                    logq = logq + logs.sum(-1, keepdim=True)
                z = z[..., self._perm(lvl, k, z.device)]
                z1, z2 = z[..., :c1], z[..., c1:]
                h = self._net(P, p, z1, init)
                if self.coupling == "additive":
                    z2 = z2 + h
                else:
                    scale = torch.sigmoid(h[..., 1::2] + 2.0)
                    z2 = (z2 + h[..., 0::2]) * scale
                    logq = logq + torch.log(scale).sum(-1)
                z = torch.cat([z1, z2], -1)
            if lvl < self.levels - 1:
                z1, z2 = z[..., :c1], z[..., c1:]
                mean, logs = self._split_prior(P, lvl, z1)
                logq = logq + _gaussian_logp(mean, logs, z2)
                parts.append((z2 - mean) * torch.exp(-logs))
                z = z1
        logq = logq + standard_normal_logp(z)
        parts.append(z)
        return torch.cat(parts, -1), logq

    def encode(self, theta: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        """``z`` ``(U, S, dim)`` -> (base noise ``eps``, ``log q(z)`` ``(U, S)``)."""
        return self._encode(theta, z)

    def log_prob(self, theta: Tensor, z: Tensor) -> Tensor:
        """``log q_u(z_us)`` ``(U, S)`` for latents ``z`` ``(U, S, dim)`` (the encoding direction)."""
        return self._encode(theta, z)[1]

    def sample(self, theta: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        """Base noise ``eps`` ``(U, S, dim)`` -> (latents ``z``, ``log q(z)``), differentiable in ``theta``;
        ``log q(z) = log N(eps; 0, I) - log |det dz / deps|`` accumulated along the way."""
        if eps.shape[-1] != self.dim or eps.dim() != 3 or eps.shape[0] != theta.shape[0]:
            raise ShapeError(f"flow noise must be (U={theta.shape[0]}, S, {self.dim}), got {tuple(eps.shape)}")
        P = self.unpack(theta)
        logq = standard_normal_logp(eps)
        # eps = [split noise of level 0, level 1, ..., top]
        offsets, at = [], 0
        for lvl in range(self.levels - 1):
            width = self.dims[lvl] - self.dims[lvl] // 2
            offsets.append((at, at + width))
            at += width
        z = eps[..., at:]
        for lvl in reversed(range(self.levels)):
            c1 = self.dims[lvl] // 2
            if lvl < self.levels - 1:
                lo, hi = offsets[lvl]
                mean, logs = self._split_prior(P, lvl, z)
                z = torch.cat([z, mean + torch.exp(logs) * eps[..., lo:hi]], -1)
                logq = logq - logs.sum(-1)
            for k in reversed(range(self.steps)):
                p = f"{lvl}.{k}."
                z1, z2 = z[..., :c1], z[..., c1:]
                h = self._net(P, p, z1)
                if self.coupling == "additive":
                    z2 = z2 - h
                else:
                    scale = torch.sigmoid(h[..., 1::2] + 2.0)
                    z2 = z2 / scale - h[..., 0::2]
                    logq = logq + torch.log(scale).sum(-1)
                z = torch.cat([z1, z2], -1)[..., self._perm(lvl, k, z.device, inverse=True)]
                if self.actnorm:
                    logs = P[p + "an_logs"]
                    z = z * torch.exp(-logs).unsqueeze(1) - P[p + "an_b"].unsqueeze(1)
                    logq = logq + logs.sum(-1, keepdim=True)
        return z, logq


class VMI(Attack):
    name = "vmi"
    paper = "https://arxiv.org/abs/2201.10787"
    summary = "Variational inversion: a Glow flow per identity over the GAN latent, CE + beta*KL(q||p), momentum SGD."
    requires = frozenset({C.GRAD, C.PROBS})

    class Config(AttackConfig):
        """VMI's published defaults (https://arxiv.org/abs/2201.10787; official run script and argparse)."""

        iterations: int = Field(4867, ge=1, description="SGD steps per identity (official: 31 epochs x 157 steps)")
        lr: float = Field(1e-4, gt=0, description="learning rate (official run script: 1e-4)")
        momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (official: 0.9)")
        optimizer: Literal["sgd", "nesterov", "adam"] = Field("sgd", description="update rule (official: sgd)")
        beta: float = Field(1e-3, ge=0, description="weight of KL(q_y || N(0, I)) (official --lambda_kl: 1e-3)")
        lam: float = Field(1.0, ge=0, description="weight of the CE identity term (official --lambda_attack: 1)")
        prior_weight: float = Field(0.0, ge=0, description="weight of -D(G(z)) if the prior has a critic "
                                                          "(official --lambda_prior: 0)")
        samples_per_step: int = Field(64, ge=1, le=4096, description="samples of q_y per identity per step "
                                                                     "(official batchSize: 64)")
        flow_steps: int = Field(10, ge=1, le=64, description="Glow steps per level K (official --flow_K: 10)")
        flow_levels: int = Field(3, ge=1, le=8, description="Glow levels L (official --flow_L: 3); fewer for "
                                                          "latents under 2^L dimensions")
        hidden: int = Field(100, ge=1, description="hidden channels of a coupling network (official: 100)")
        coupling: Literal["additive", "affine"] = Field("additive", description="coupling (official: additive)")
        permutation: Literal["shuffle", "reverse"] = Field("shuffle", description="channel permutation per step "
                                                                                "(official: shuffle)")
        actnorm: bool = Field(True, description="actnorm in every step (official --flow_use_actnorm: 1)")
        data_init: bool = Field(True, description="actnorm data-dependent initialisation (Glow; official: yes)")
        init_samples: int = Field(100, ge=2, description="standard-normal latents for the data init (official: 100)")
        batch_size: int | None = Field(None, ge=1, description="identities trained together (None: all at once)")

    def run(self, target, labels, *, prior, seed, generator) -> AttackResult:  # noqa: ANN001
        cfg = self.config
        latent = tuple(prior.latent_shape)
        dim = math.prod(latent)
        flows = GlowFlows(dim, steps=cfg.flow_steps, levels=cfg.flow_levels, hidden=cfg.hidden,
                          coupling=cfg.coupling, permutation=cfg.permutation, actnorm=cfg.actnorm,
                          generator=generator)
        ids, inverse = torch.unique(labels, return_inverse=True)
        u, s = len(ids), cfg.samples_per_step
        device = prior.device
        y_ids = ids.to(device)
        init = flows.initial(u, generator=generator, data_init=cfg.data_init, init_samples=cfg.init_samples,
                             device=device)
        noise = torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
        identity = identity_term(target, kind="ce")
        last: dict[int, tuple[Tensor, Tensor]] = {}

        def objective(theta: Tensor, idx: Tensor, offset: int) -> Tensor:
            n = len(idx)
            eps = torch.randn((n, s, dim), generator=noise).to(device=device, dtype=theta.dtype)
            z, logq = flows.sample(theta, eps)
            kl = (logq - standard_normal_logp(z)).mean(1)
            yy = y_ids[idx + offset].repeat_interleave(s)
            x = prior.decode(z.reshape(n * s, *latent), yy)
            per = cfg.lam * identity(x, yy)
            if cfg.prior_weight > 0 and prior.has_discriminator:
                per = per - cfg.prior_weight * prior.realism(x)
            ce = per.view(n, s).mean(1)
            last[offset] = (ce.detach(), kl.detach())
            return ce + cfg.beta * kl

        thetas, losses_ = [], []
        for sl in batched(u, cfg.batch_size):
            out = optimise(init[sl], iterations=cfg.iterations, lr=cfg.lr, momentum=cfg.momentum,
                           optimizer=cfg.optimizer, objective=lambda t, idx, o=sl.start: objective(t, idx, o))
            thetas.append(out.params)
            losses_.append(out.loss)
        theta = torch.cat(thetas)
        # one sample of q_y per row of labels: rows of one identity are independent draws of its flow
        eps = torch.randn((len(labels), dim), generator=noise).to(device=device, dtype=theta.dtype)
        inv = inverse.to(device)
        with torch.no_grad():
            z, _ = flows.sample(theta[inv], eps.unsqueeze(1))
            z = z.squeeze(1).reshape(len(labels), *latent)
            images = prior.decode(z, labels.to(device))
        scores = -torch.cat(losses_).cpu()[inverse]
        # a budget refused before a batch's first evaluation leaves it at its initial flow, with no loss recorded
        ce = torch.cat([last[k][0] for k in sorted(last)]).cpu() if last else torch.full((1,), float("nan"))
        kl = torch.cat([last[k][1] for k in sorted(last)]).cpu() if last else torch.full((1,), float("nan"))
        info = {"identities": u, "levels": flows.levels, "flow_parameters": flows.size,
                "identity_loss": float(ce.mean()), "kl": float(kl.mean()),
                "exhausted": bool(getattr(target, "exhausted", False))}
        return AttackResult(self.name, images, labels, scores, 0, 0.0, seed, {}, latents=z, extras=info)


@hookimpl
def invertkit_register_attacks(register) -> None:  # noqa: ANN001
    register(VMI)
