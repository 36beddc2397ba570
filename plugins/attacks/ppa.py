"""PPA: Plug & Play Attacks (Struppek et al., ICML 2022), https://arxiv.org/abs/2201.12179.

White-box, any image prior; made for a pre-trained StyleGAN2 whose style space ``w`` it searches (here: any
:class:`~invertkit.core.interfaces.prior.Prior`; a prior without a style space of its own is searched in its
latent space). Following the official code (github.com/LukasStruppek/Plug-and-Play-Attacks, configs
``FaceScrub_FFHQ.yaml`` / ``CelebA_FFHQ.yaml``, ``attacks/initial_selection.py``, ``optimize.py``,
``final_selection.py``), for each attacked identity ``y``:

1. **Initial selection.** Draw ``search_space`` latents (FaceScrub: 2,000; CelebA: 5,000), map them to styles
   with truncation ``psi = 0.5`` (towards the mean style), decode, and score each by the target's softmax
   confidence for ``y`` averaged over the image and its horizontal flip. The ``candidates`` best (200) start
   the optimisation. The search is done once for all identities.
2. **Optimisation.** One style vector per candidate, broadcast to every synthesis layer (``single_w``), is
   optimised for ``iterations`` steps (FaceScrub 50, CelebA 70) with Adam (lr 0.005, betas (0.1, 0.1), no weight
   decay) to minimise the Poincare loss of the target's logits on a randomly transformed image: a random
   resized crop of 90-100 % of the area at aspect ratio 1 (resized back to the image size). The Poincare loss
   is ``arccosh(1 + 2 ||u - v||^2 / ((1 - ||u||^2)(1 - ||v||^2)))`` with ``u`` the L1-normalised logits and ``v``
   the one-hot label with its one lowered to ``1 - xi`` (``xi = 1e-4``). The discriminator term is off (weight 0).
3. **Final selection.** Each optimised candidate is scored by the target's mean confidence for ``y`` over 100
   random transformations (random resized crop of 50-90 % of the area, aspect ratio 0.8-1.2, horizontal flip
   with probability 0.5); the best are kept (the paper keeps 50 of 200).

The transformations are :func:`invertkit.core.augment.random_resized_crop` (torchvision's ``RandomResizedCrop``
and ``RandomHorizontalFlip`` on kornia, drawn from a generator seeded by the attack's).

The number of images returned for ``y`` is the number of times ``y`` occurs in ``labels`` (the bench's
samples per identity); ``candidates`` is raised to it if smaller. All identities x candidates are optimised
as one batch (``batch_size`` splits it) in the shared loop :func:`invertkit.core.optim.optimise`. Each random
transformation is drawn per image (the official code draws one per batch). The transformations act at the
prior's image scale, so they suit 8x8 digits as well as 224x224 faces.

Optimiser: ``torch.optim.Adam`` with PPA's betas (0.1, 0.1) through the shared loop. Not used: the default
config's MultiStepLR (the per-dataset configs the paper reports have none).

Queries: ``search_space`` (x2 with the flip) for the initial selection (once per identity for a conditional
prior, which decodes each identity's candidates with its label), one per candidate per step, and
``final_iterations`` per candidate for the final selection.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor

from invertkit.core import losses
from invertkit.core.augment import random_resized_crop
from invertkit.core.errors import ConfigError
from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.attack import Attack, AttackConfig
from invertkit.core.interfaces.capability import Capability as C
from invertkit.core.interfaces.results import AttackResult
from invertkit.core.optim import batched, optimise, selection_confidences


class PPA(Attack):
    name = "ppa"
    paper = "https://arxiv.org/abs/2201.12179"
    summary = ("Plug & Play Attacks: style-space search of a (pre-trained) GAN with the Poincare loss on randomly "
               "transformed images; initial and final selection by the target's confidence.")
    requires = frozenset({C.GRAD, C.LOGITS})

    class Config(AttackConfig):
        """PPA's published defaults (the FaceScrub configuration; CelebA: search_space 5000, iterations 70)."""

        candidates: int = Field(200, ge=1, description="optimised candidates per identity (PPA: 200)")
        search_space: int = Field(2000, ge=1, description="latents scored for the initial selection "
                                  "(PPA FaceScrub: 2000, CelebA: 5000)")
        truncation: float = Field(0.5, gt=0, le=1, description="truncation psi of the sampled styles (PPA: 0.5; "
                                  "only for priors with a mean style, e.g. stylegan2)")
        initial_flip: bool = Field(True, description="initial selection averages the confidence over the image "
                                   "and its horizontal flip (PPA: true)")
        iterations: int = Field(50, ge=1, description="optimisation steps (PPA FaceScrub: 50, CelebA: 70)")
        lr: float = Field(0.005, gt=0, description="Adam learning rate (PPA: 0.005)")
        betas: tuple[float, float] = Field((0.1, 0.1), description="Adam betas (PPA: 0.1, 0.1)")
        xi: float = Field(1e-4, gt=0, lt=1, description="Poincare loss: the one-hot target is lowered to 1 - xi "
                          "(PPA: 1e-4)")
        crop_scale: tuple[float, float] = Field((0.9, 1.0), description="optimisation: random resized crop "
                                                "area fraction (PPA: 0.9-1.0)")
        crop_ratio: tuple[float, float] = Field((1.0, 1.0), description="optimisation: crop aspect ratio range "
                                                "(PPA: 1.0)")
        flip: float = Field(0.0, ge=0, le=1, description="optimisation: horizontal flip probability (PPA: 0)")
        single_w: bool = Field(True, description="optimise one style vector broadcast to all layers (PPA: true); "
                               "false: one per synthesis layer")
        discriminator_weight: float = Field(0.0, ge=0, description="weight of softplus(-D(x)) when the prior has "
                                            "a discriminator (PPA: 0)")
        final_iterations: int = Field(100, ge=0, description="final selection: random transformations per "
                                      "candidate (PPA: 100); 0: rank by the last Poincare loss instead")
        final_scale: tuple[float, float] = Field((0.5, 0.9), description="final selection: crop area fraction "
                                                 "(PPA: 0.5-0.9)")
        final_ratio: tuple[float, float] = Field((0.8, 1.2), description="final selection: crop aspect ratio "
                                                 "(PPA: 0.8-1.2)")
        final_flip: float = Field(0.5, ge=0, le=1, description="final selection: flip probability (PPA: 0.5)")
        batch_size: int | None = Field(None, ge=1, description="candidates optimised together (None: all "
                                       "identities x candidates at once; PPA: 25 per GPU)")
        eval_batch: int = Field(500, ge=1, description="images decoded/scored at once in the selections")

        @model_validator(mode="after")
        def _ranges(self) -> "PPA.Config":
            for name in ("crop_scale", "crop_ratio", "final_scale", "final_ratio"):
                lo, hi = getattr(self, name)
                if not 0 < lo <= hi or (name.endswith("scale") and hi > 1):
                    raise ValueError(f"{name} must be 0 < low <= high{' <= 1' if name.endswith('scale') else ''}, "
                                     f"got ({lo}, {hi})")
            if not all(0 <= b < 1 for b in self.betas):
                raise ValueError(f"betas must lie in [0, 1), got {self.betas}")
            return self

    # ------------------------------------------------------------------------------------------ pieces
    def _styles(self, prior, n: int, generator: torch.Generator) -> Tensor:  # noqa: ANN001
        cfg = self.config
        z = prior.sample_latent(n, generator)
        with torch.no_grad():
            return torch.cat([prior.truncate_style(prior.to_style(z[sl]), cfg.truncation)
                              for sl in batched(n, cfg.eval_batch)])

    def _confidence(self, target, x: Tensor, y: Tensor) -> Tensor:  # noqa: ANN001
        """The target's softmax confidence for class ``y`` (a class per row, or all classes when ``y`` is None)."""
        probs = target.logits(x).softmax(1)
        return probs if y is None else probs.gather(1, y.view(-1, 1)).squeeze(1)

    # ------------------------------------------------------------------------------------------ run
    def run(self, target, labels, *, prior, seed, generator) -> AttackResult:  # noqa: ANN001
        cfg = self.config
        dev = prior.device
        ids, counts = torch.unique(labels, return_counts=True)
        per_id = max(cfg.candidates, int(counts.max()))
        if per_id > cfg.search_space:
            raise ConfigError(f"attack 'ppa': search_space ({cfg.search_space}) must be at least the candidates per "
                              f"identity ({per_id}: max of candidates={cfg.candidates} and the samples asked per identity)")
        noise = torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=generator)))

        # 1. initial selection: one search for all identities
        w_all = self._styles(prior, cfg.search_space, generator)
        # a conditional prior decodes each identity's candidates with its label: one search per identity
        conf_all = selection_confidences(target, prior.decode_style, w_all,
                                         [int(y) for y in ids] if prior.conditional else None,
                                         flip=cfg.initial_flip, batch_size=cfg.eval_batch)
        init_idx = torch.stack([conf_all[:, int(y)].topk(per_id).indices for y in ids])  # (U, per_id), best first
        w0 = w_all[init_idx.reshape(-1).to(w_all.device)]
        if not cfg.single_w and prior.num_styles > 1:
            w0 = w0.unsqueeze(1).expand(-1, prior.num_styles, *w0.shape[1:]).clone()
        y_rows = ids.repeat_interleave(per_id).to(dev)

        # 2. optimisation of the style vectors, Poincare loss on randomly transformed images
        def objective(w: Tensor, idx: Tensor) -> Tensor:
            y = y_rows[idx]
            x = prior.decode_style(w, y)
            loss = torch.zeros(len(idx), device=x.device, dtype=x.dtype)
            if cfg.discriminator_weight > 0 and prior.has_discriminator:
                loss = loss + cfg.discriminator_weight * F.softplus(-prior.realism(x))
            x = random_resized_crop(x, noise, cfg.crop_scale, cfg.crop_ratio, cfg.flip)
            logits = target.logits(x)
            return loss + losses.poincare(logits, y.to(logits.device), eps=cfg.xi).to(loss.device)

        ws, last = [], []
        for sl in batched(len(w0), cfg.batch_size):
            out = optimise(w0[sl], iterations=cfg.iterations, lr=cfg.lr, optimizer="adam", betas=cfg.betas,
                           project=prior.project_style,
                           objective=lambda w, idx, o=sl.start: objective(w, idx + o))
            ws.append(out.params)
            last.append(out.loss.cpu())
        w_opt = torch.cat(ws)

        # 3. final selection by the mean confidence under random transformations
        with torch.no_grad():
            images = torch.cat([prior.decode_style(w_opt[sl], y_rows[sl]) for sl in batched(len(w_opt), cfg.eval_batch)])
            if cfg.final_iterations > 0:
                score = torch.zeros(len(images))
                for sl in batched(len(images), cfg.eval_batch):
                    for _ in range(cfg.final_iterations):
                        x = random_resized_crop(images[sl], noise, cfg.final_scale, cfg.final_ratio, cfg.final_flip)
                        score[sl] += self._confidence(target, x, y_rows[sl].to(x.device)).cpu()
                score /= cfg.final_iterations
            else:
                score = -torch.cat(last)
        score_u = score.view(len(ids), per_id)
        order = torch.empty(len(labels), dtype=torch.long)
        for u, y in enumerate(ids):
            rows = (labels == y).nonzero().flatten()
            best = score_u[u].topk(len(rows)).indices + u * per_id
            order[rows] = best
        keep = order.to(images.device)
        info = {"candidates_per_identity": per_id, "identities": len(ids),
                "initial_confidence": float(conf_all[init_idx.reshape(-1), y_rows.cpu()].mean()),
                "final_confidence": float(score[order].mean()) if cfg.final_iterations > 0 else None}
        return AttackResult(self.name, images[keep], labels, score[order], 0, 0.0, seed, {},
                            latents=w_opt[keep.to(w_opt.device)], extras=info)


@hookimpl
def invertkit_register_attacks(register) -> None:
    register(PPA)
