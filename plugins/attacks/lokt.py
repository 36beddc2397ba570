"""LOKT: Label-Only Model Inversion Attacks via Knowledge Transfer (Nguyen et al., NeurIPS 2023).

Ngoc-Bao Nguyen, Keshigeyan Chandrasegaran, Milad Abdollahzadeh, Ngai-Man Cheung, "Label-Only Model Inversion
Attacks via Knowledge Transfer", NeurIPS 2023, https://arxiv.org/abs/2310.19342. Official code:
https://github.com/ngoc-nguyen-0/LOKT (stored here as ``ngoc-nguyen-0/LOKT_neurips2023``, commit b751417); this
module follows ``train_tacgan.py``, ``create_dataset.py``, ``train_surrogate_model.py`` and ``plg_tacgan.py``
with the README's commands. The code is our own.

The target releases labels only. LOKT transfers its knowledge into white-box surrogates and attacks those:

1. **T-ACGAN** (``train_tacgan.py``, ``--cGAN``: ``loader.load_cgan``). A conditional generator ``G(z, y)`` and a
   discriminator ``D(x) = (s(x), c(x))`` with a real/fake head ``s`` (sigmoid, binary cross-entropy) and an
   auxiliary classifier head ``c`` over the *target's* classes, trained on the attacker's **unlabelled** public
   images. For the first ``uncond_steps`` iterations (n_uncond: 1,000 for CelebA; FaceScrub 3,000, FFHQ 2,000,
   PubFig 6,000) it is a plain GAN; after that the target labels every fake the discriminator is trained on,
   ``y_hat = T(G(z, y))`` (one label query per fake), and

       L_D = BCE(s(x_real), 1) + BCE(s(G(z, y)), 0) + alpha * CE(c(G(z, y)), y_hat)
       L_G = BCE(s(G(z, y)), 1) + alpha * CE(c(G(z, y)), y)

   ``alpha = 1.5`` (the README's ``--alpha=1.5``; the argparse default is 0.2), Adam(lr 2e-4, betas (0, 0.9)),
   batch 128, ``n_dis = 5`` discriminator steps per generator step (each on fresh fakes), z ~ N(0, I) of 128
   dimensions, fake classes uniform; ``--max_iteration 19000`` conditional iterations after the warm-up (the
   script adds n_uncond: 20,000 in all), seed 46. Label queries: ``steps * n_dis * batch_size`` (12,160,000 at
   the defaults). The public images' own labels are never used and the public images are never sent to the
   target (the official code queries fakes only).
2. **Surrogates** (``create_dataset.py``, ``train_surrogate_model.py``). ``G`` draws ``2 x 250 = 500`` latents per
   target class ``i`` as ``G(z, i)``; the target labels each (``K * 500`` label queries) and the surrogates learn
   those labels: images are regenerated from the stored ``(z, i)`` every batch, each batch also augmented
   (random resized crop scale 0.8-1 ratio 1, brightness/contrast jitter 0.2 with p 0.5, horizontal flip,
   rotation up to 5 degrees p 0.5), loss ``0.5 * CE(S(x), y_hat) + 0.5 * CE(S(aug(x)), y_hat)``, SGD(lr 0.1,
   momentum 0.9, weight decay 5e-4), cosine annealing over 200 "epochs" of ``30000 // 256 = 117`` batches of 256.
   The README trains the three DenseNets it provides (``--surrogate_model_id`` 0, 1, 2: DenseNet-121, -161,
   -169) and attacks their ensemble (``--classid='0,1,2'``); the discriminator's head ``c`` is the optional
   fourth model (``classid`` 3, ``include_discriminator``), not in the README's attack.
3. **Attack** (``plg_tacgan.py``: PLG-MI's search, not KEDMI's): for identity ``y`` and a random ``z``, minimise
   with Adam (lr 0.1, 600 iterations, no clipping) the surrogates' mean of ``L(S(A_1(G(z, y))), y) +
   L(S(A_2(G(z, y))), y)``, ``L`` the max-margin loss (``--inv_loss_type=margin``), ``A_1, A_2`` PLG-MI's kornia
   augmentations drawn anew per surrogate and step. One image per requested sample (the official runs five
   seeds per identity). The target is not queried, nor differentiated, at attack time.

Every query is made through the attacker's view (``target.label``), and what LOKT derives (the T-ACGAN, then
the surrogates with their labelled data set) is cached through ``self.context.cache`` in two entries, each
charging its queries again whenever it is re-used.

**needs_prior = False.** LOKT's prior is its own T-ACGAN, trained from label queries to the target *as
defended*: a bench prior is trained without the target (or, for ``plg-cgan``/``kedmi-gan``, from its scores)
and would not be the generator whose classes the surrogates were taught on. So the attack ignores the bench's
prior (``prior`` may be ``None``) and needs none from the plan. (A ``PriorBuilder`` for the T-ACGAN would make it
reusable by other attacks but would also make the bench pay for it as ``prior_queries`` in cells whose attack
does not need it, and its ``target_requires`` would be ``{label}`` only; kept inside the attack instead.)

Deliberate differences (all for small images and CPUs):

* **Networks.** The generator is invertkit's DCGAN sized to the image with class-conditional BatchNorm (the
  ``plg-cgan`` prior's, :class:`~invertkit.plugins.priors.plg_cgan.ConditionalBatchNorm2d`), the discriminator
  the spectrally normalised DCGAN trunk (``conv_trunk``) with the official two plain linear heads, instead of
  PLG-MI's 64x64 ResNets; ``width`` is their ``gen/dis_num_features`` (64). The BCE is taken on logits
  (``BCEWithLogits``: the official sigmoid + ``BCELoss``, numerically stable).
* **Surrogates.** The official ones are torchvision DenseNets *pretrained on ImageNet*; nothing is downloaded
  here, so :class:`DenseNet` builds DenseNet-BC-121/161/169 (torchvision's growth rates, block sizes, stem
  widths, bottleneck 4, compression 0.5; the official head: the final BatchNorm's map flattened, no pooling, one
  linear layer) from scratch, scaled to the image: the stem downsamples by 4 (torchvision's 7x7/2 + max-pool,
  exactly the official at 64 px: a 2x2 final map), 2 or 1 (a 3x3 convolution) so that three transitions
  leave a map of at least 2x2 where the image allows, and a transition pools only while its map is at least
  4 pixels wide. ``surrogate_width`` scales growth rate and stem width (1.0: the official). Any registry
  architecture or ``timm:<name>`` may be named instead (``surrogates``).
* **Augmentations** are :func:`invertkit.core.augment.plg_augment` (deterministic for a seeded generator); for
  the surrogates' jitter with p 0.5, each image takes the jittered or the un-jittered version of one draw.
* The surrogates' images are drawn with the generator in eval mode and its training's random streams are
  seeded from ``train_seed`` (official 46), so the derived models do not depend on the run's seed and one cache
  entry serves every seed.
* ``flip``: horizontal flips in both augmentations (official: on); turn off for digits if wanted.
* **Planning within a query budget** (our addition; the paper has no budget). Every label query of LOKT is
  spent on training (the T-ACGAN's ``steps * n_dis * batch_size``, the surrogates' ``K * samples_per_class``),
  none at attack time. When the target has a budget (``target.budget``, public like any API quota) smaller than
  that, both are shrunk by the same factor before anything is trained
  (:func:`~invertkit.core.interfaces.access.affordable`, the whole of what is left: ``share = 1``): the
  T-ACGAN gets as many whole conditional iterations as its part of the budget pays for, the surrogates' data
  set as many samples per class as what remains pays for. The cache keys of the T-ACGAN and of the surrogates
  carry the planned sizes (so a cached model is re-used, and charged, only by a run that planned the same).
  Every identity is then searched as usual. Where the plan leaves no sample per class to label (a budget below
  ``K`` queries after the T-ACGAN) no surrogate is trained and the discriminator's classifier head, taught the
  target's labels during the conditional iterations, is the one model attacked; without conditional iterations
  either, the images are the generator's draws ``G(z, y)`` unsearched. A cut plan says ``extras["exhausted"]``,
  with ``planned_tacgan_steps``, ``planned_samples_per_class`` and ``planned_queries``. A query the target still
  refuses (a budget it could not see, e.g. of a wrapped target) ends that training with what it has (a
  partially trained T-ACGAN, kept out of the cache; no surrogate from a partly labelled data set), never the
  attack. Without a budget nothing changes (same queries, same images).

Cost: at the defaults the T-ACGAN makes 20,000 x 6 generator/discriminator passes of 128 images and 12.16 M
label queries; each surrogate sees 200 x 117 x 256 = 6 M generated images twice (plain and augmented). That is
GPU-days territory for DenseNets at 64 px and far beyond a CPU: scale ``steps``, ``uncond_steps``,
``surrogate_epochs``, ``epoch_samples``, ``surrogates``/``surrogate_width`` and ``iterations`` down for CPU runs
(the tests do).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from invertkit.core import losses, progress
from invertkit.core.augment import plg_augment
from invertkit.core.errors import ConfigError, QueryBudgetExceeded, UsageError
from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.access import affordable, budget_left
from invertkit.core.interfaces.attack import Attack, AttackConfig
from invertkit.core.interfaces.capability import Capability as C
from invertkit.core.interfaces.results import AttackResult
from invertkit.plugins.attacks.gan_search import search_latents
from invertkit.plugins.priors.plg_cgan import ConditionalBatchNorm2d
from invertkit.plugins.priors.wgan_gp import Generator, GeneratorPrior, conv_trunk, freeze

__all__ = ["DENSENETS", "DenseNet", "LOKT", "SurrogateSet", "TACGAN", "TACGANPrior", "TACDiscriminator",
           "label_fakes", "train_surrogate", "train_tacgan"]

LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"margin": losses.max_margin, "ce": losses.cross_entropy,
                                                          "poincare": losses.poincare}


# ------------------------------------------------------------------------------------------- T-ACGAN
class TACDiscriminator(nn.Module):
    """The T-ACGAN discriminator (official ``SNResNetConditionalDiscriminator``'s heads): a spectrally normalised
    convolutional trunk ``phi``, a real/fake logit ``l6(phi(x))`` and class logits ``l_y(phi(x))`` over the
    target's classes (plain linear heads, Xavier-uniform weights, as the official)."""

    def __init__(self, image_shape: tuple[int, int, int], width: int, num_classes: int) -> None:
        super().__init__()
        body, flat = conv_trunk(image_shape, width, spectral=True)
        self.body = body
        self.l6 = nn.Linear(flat, 1)
        self.l_y = nn.Linear(flat, num_classes)
        nn.init.xavier_uniform_(self.l6.weight)
        nn.init.xavier_uniform_(self.l_y.weight)
        self.num_classes = num_classes

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.body(x)
        return self.l6(h).squeeze(1), self.l_y(h)


class DiscriminatorClassifier(nn.Module):
    """The discriminator's auxiliary classifier as a classifier: ``x -> c(x)`` (the official ``classid`` 3, "D")."""

    def __init__(self, discriminator: TACDiscriminator) -> None:
        super().__init__()
        self.discriminator = discriminator

    def forward(self, x: Tensor) -> Tensor:
        return self.discriminator(x)[1]


class TACGAN(nn.Module):
    """The T-ACGAN's two networks, cached together."""

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int, latent_dim: int, width: int) -> None:
        super().__init__()
        self.latent_dim, self.num_classes = int(latent_dim), int(num_classes)
        self.generator = Generator(image_shape, latent_dim, width, norm=lambda ch: ConditionalBatchNorm2d(num_classes, ch))
        self.discriminator = TACDiscriminator(image_shape, width, num_classes)


class TACGANPrior(GeneratorPrior):
    """The trained T-ACGAN generator as a conditional prior: ``decode(z, labels)`` draws target classes."""

    name = "lokt-tacgan"
    conditional = True
    has_discriminator = False

    def __init__(self, gan: TACGAN) -> None:
        super().__init__(gan.generator, gan.discriminator, gan.latent_dim)
        self.num_classes = gan.num_classes

    def decode(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        if labels is None:
            labels = torch.arange(len(z), device=self.device) % self.num_classes
        return self.generator(self.check_latent(z), labels.to(self.device).long())

    def _block_labels(self, n: int, labels: Tensor | None) -> Tensor | None:
        return labels


def _index_stream(n: int, batch: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Batches of indices into ``range(n)``: successive random permutations, as the official infinite sampler."""
    order, pos = torch.randperm(n, generator=generator), 0
    while True:
        out = []
        need = batch
        while need:
            if pos >= n:
                order, pos = torch.randperm(n, generator=generator), 0
            take = min(need, n - pos)
            out.append(order[pos : pos + take])
            pos, need = pos + take, need - take
        yield torch.cat(out)


def train_tacgan(gan: TACGAN, target: Any, public: Tensor, *, steps: int, uncond_steps: int, n_dis: int,
                 batch_size: int, lr: float, beta1: float, beta2: float, alpha: float, seed: int) -> dict[str, float]:
    """Train ``gan`` in place as the official ``train_tacgan.py`` (module docstring, step 1); ``target`` (the
    attacker's view) labels every fake the discriminator sees after the warm-up (``steps * n_dis * batch_size``
    label queries). Returns facts of the last iteration."""
    from invertkit.core.zoo.train import seed_everything

    G, D = gan.generator, gan.discriminator
    dev = next(G.parameters()).device
    g = seed_everything(seed)
    G.train()
    D.train()
    opt_g = torch.optim.Adam(G.parameters(), lr=lr, betas=(beta1, beta2))
    opt_d = torch.optim.Adam(D.parameters(), lr=lr, betas=(beta1, beta2))
    k, zdim = gan.num_classes, gan.latent_dim
    reals = _index_stream(len(public), batch_size, g)
    ones, zeros = torch.ones(batch_size, device=dev), torch.zeros(batch_size, device=dev)
    total = uncond_steps + steps
    facts = {"loss_generator": float("nan"), "loss_discriminator": float("nan"), "fake_target_agreement": float("nan"),
             "aux_target_agreement": float("nan")}

    def draw() -> tuple[Tensor, Tensor]:
        z = torch.randn(batch_size, zdim, generator=g).to(dev)
        y = torch.randint(0, k, (batch_size,), generator=g).to(dev)
        return z, y

    with progress.task("LOKT: training the T-ACGAN on label queries", total=total, unit="iteration") as task:
        for n_iter in range(1, total + 1):
            cond = n_iter > uncond_steps
            # ---- the generator: fool s, and (conditional phase) make c read the class it was asked for
            D.requires_grad_(False)
            z, y = draw()
            s, c = D(G(z, y))
            lg = F.binary_cross_entropy_with_logits(s, ones)
            if cond:
                lg = lg + alpha * F.cross_entropy(c, y)
            opt_g.zero_grad(set_to_none=True)
            lg.backward()
            opt_g.step()
            D.requires_grad_(True)
            hits = agree = seen = 0
            # ---- n_dis discriminator steps, each on fresh fakes the target labels
            for _ in range(n_dis):
                real = public[next(reals)].to(dev)
                z, y = draw()
                with torch.no_grad():
                    fake = G(z, y)
                    y_hat = target.label(fake).long().to(dev) if cond else None
                s_f, c_f = D(fake)
                s_r, _ = D(real)
                ld = F.binary_cross_entropy_with_logits(s_f, zeros) + F.binary_cross_entropy_with_logits(s_r, ones)
                if cond:
                    ld = ld + alpha * F.cross_entropy(c_f, y_hat)
                    hits += int((y_hat == y).sum())
                    agree += int((c_f.argmax(1) == y_hat).sum())
                    seen += batch_size
                opt_d.zero_grad(set_to_none=True)
                ld.backward()
                opt_d.step()
            facts["loss_generator"], facts["loss_discriminator"] = float(lg.detach()), float(ld.detach())
            if seen:
                facts["fake_target_agreement"] = hits / seen  # T(G(z, y)) == y
                facts["aux_target_agreement"] = agree / seen  # c(G(z, y)) == T(G(z, y))
            if n_iter % 50 == 0 or n_iter == total:
                task.advance(50 if n_iter % 50 == 0 else n_iter % 50,
                             info=f"T(G(z,y))=y {facts['fake_target_agreement']:.2f}")
    for p in [*G.parameters(), *D.parameters()]:
        p.grad = None
    G.eval()
    D.eval()
    return facts


# ----------------------------------------------------------------------------------------- surrogates
#: torchvision's DenseNet-BC variants (growth rate, block sizes, stem width): the official surrogates
DENSENETS: dict[str, tuple[int, tuple[int, ...], int]] = {
    "densenet121": (32, (6, 12, 24, 16), 64),
    "densenet161": (48, (6, 12, 36, 24), 96),
    "densenet169": (32, (6, 12, 32, 32), 64),
}


class _DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int, bn_size: int) -> None:
        super().__init__()
        mid = bn_size * growth
        self.net = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.Conv2d(cin, mid, 1, bias=False),
                                 nn.BatchNorm2d(mid), nn.ReLU(inplace=True), nn.Conv2d(mid, growth, 3, 1, 1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x, self.net(x)], 1)


class DenseNet(nn.Module):
    """DenseNet-BC (Huang et al. 2017; torchvision's layout) scaled to ``in_shape`` as the module docstring
    says, with the official surrogates' head: the last BatchNorm's feature map flattened into one linear layer."""

    def __init__(self, num_classes: int, in_shape: tuple[int, int, int], growth: int, blocks: tuple[int, ...],
                 stem: int, *, bn_size: int = 4, compression: float = 0.5) -> None:
        super().__init__()
        c, h, w = (int(v) for v in in_shape)
        side = min(h, w)
        down = next((s for s in (4, 2, 1) if side >= 16 * s), 1)
        if down == 4:
            layers: list[nn.Module] = [nn.Conv2d(c, stem, 7, 2, 3, bias=False), nn.BatchNorm2d(stem), nn.ReLU(inplace=True),
                                       nn.MaxPool2d(3, 2, 1)]
        elif down == 2:
            layers = [nn.Conv2d(c, stem, 7, 2, 3, bias=False), nn.BatchNorm2d(stem), nn.ReLU(inplace=True)]
        else:
            layers = [nn.Conv2d(c, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU(inplace=True)]
        ch = stem
        for i, n in enumerate(blocks):
            for _ in range(n):
                layers.append(_DenseLayer(ch, growth, bn_size))
                ch += growth
            if i < len(blocks) - 1:
                out = max(1, int(ch * compression))
                layers += [nn.BatchNorm2d(ch), nn.ReLU(inplace=True), nn.Conv2d(ch, out, 1, bias=False)]
                ch = out
                with torch.no_grad():
                    size = nn.Sequential(*layers).eval()(torch.zeros(1, c, h, w)).shape[-1]
                if size >= 4:
                    layers.append(nn.AvgPool2d(2, 2))
        layers.append(nn.BatchNorm2d(ch))
        self.features = nn.Sequential(*layers)
        with torch.no_grad():
            flat = self.features.eval()(torch.zeros(1, c, h, w)).numel()
        self.features.train()
        self.fc = nn.Linear(flat, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x).flatten(1))


def build_surrogate(plugins: Any, arch: str, num_classes: int, in_shape: tuple[int, int, int], width: float) -> nn.Module:
    """A fresh surrogate: one of :data:`DENSENETS` (scaled by ``width``), or any registry / ``timm:`` architecture."""
    if arch in DENSENETS:
        growth, blocks, stem = DENSENETS[arch]
        return DenseNet(num_classes, in_shape, max(1, round(growth * width)), blocks, max(1, round(stem * width)))
    from invertkit.core.zoo.arch import build_architecture

    if plugins is None:
        from invertkit.core.plugins import get_plugins

        plugins = get_plugins()
    return build_architecture(plugins, arch, num_classes, in_shape)


class SurrogateSet(nn.Module):
    """The trained surrogates (``nets``) with the labelled latent data set they learned (buffers ``z``, ``pseudo``,
    ``labels``), cached together."""

    def __init__(self, nets: list[nn.Module], n: int, latent_dim: int) -> None:
        super().__init__()
        self.nets = nn.ModuleList(nets)
        self.register_buffer("z", torch.zeros(n, latent_dim))
        self.register_buffer("pseudo", torch.zeros(n, dtype=torch.long))
        self.register_buffer("labels", torch.zeros(n, dtype=torch.long))


@torch.no_grad()
def label_fakes(generator: nn.Module, target: Any, num_classes: int, per_class: int, latent_dim: int, *,
                seed: int, batch_size: int = 250) -> tuple[Tensor, Tensor, Tensor]:
    """``create_dataset.py``: ``per_class`` latents per class ``i`` drawn as ``G(z, i)`` (generator in eval mode)
    and labelled by ``target`` (one label query each). Returns ``(z, pseudo, labels)``."""
    g = torch.Generator().manual_seed(seed)
    dev = next(generator.parameters()).device
    zs, pseudo, labels = [], [], []
    for i in range(num_classes):
        for start in range(0, per_class, batch_size):
            n = min(batch_size, per_class - start)
            z = torch.randn(n, latent_dim, generator=g)
            y = torch.full((n,), i, dtype=torch.long)
            labels.append(target.label(generator(z.to(dev), y.to(dev))).long().cpu())
            zs.append(z)
            pseudo.append(y)
    return torch.cat(zs), torch.cat(pseudo), torch.cat(labels)


def _surrogate_augment(x: Tensor, g: torch.Generator, flip: bool, jitter_p: float = 0.5) -> Tensor:
    """The surrogates' training augmentation: PLG-MI's pipeline with the colour jitter applied with
    probability ``jitter_p`` per image (the same geometric draw either way)."""
    state = g.get_state()
    jittered = plg_augment(x, g, flip=0.5 if flip else 0.0)
    after = g.get_state()
    g.set_state(state)
    plain = plg_augment(x, g, brightness=0.0, contrast=0.0, flip=0.5 if flip else 0.0)
    g.set_state(after)
    on = (torch.rand(len(x), generator=g) < jitter_p).to(x.device).view(-1, 1, 1, 1)
    return torch.where(on, jittered, plain)


def train_surrogate(net: nn.Module, generator: nn.Module, z: Tensor, pseudo: Tensor, labels: Tensor, *, epochs: int,
                    epoch_samples: int, batch_size: int, lr: float, momentum: float, weight_decay: float, flip: bool,
                    seed: int) -> dict[str, float]:
    """``train_surrogate_model.py``: ``epochs`` of ``epoch_samples // batch_size`` batches drawn from the labelled
    latents, each regenerated by ``generator`` and augmented; ``0.5 CE(S(x)) + 0.5 CE(S(aug(x)))``, SGD with
    momentum and weight decay, cosine annealing per epoch. No query."""
    dev = next(net.parameters()).device
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    batches = max(1, epoch_samples // batch_size)
    stream = _index_stream(len(z), min(batch_size, len(z)), g)
    generator.eval()
    net.train()
    loss = torch.tensor(float("nan"))
    for _ in range(epochs):
        for _ in range(batches):
            idx = next(stream)
            with torch.no_grad():
                x = generator(z[idx].to(dev), pseudo[idx].to(dev))
                x_da = _surrogate_augment(x, g, flip)
            y = labels[idx].to(dev)
            loss = 0.5 * F.cross_entropy(net(x), y) + 0.5 * F.cross_entropy(net(x_da), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
    if not bool(torch.isfinite(loss)):
        raise UsageError(f"a LOKT surrogate diverged (loss {float(loss)}); lower surrogate_lr (now {lr})")
    net.eval()
    with torch.no_grad():
        agree = sum(int((net(generator(z[i : i + 512].to(dev), pseudo[i : i + 512].to(dev))).argmax(1).cpu()
                         == labels[i : i + 512]).sum()) for i in range(0, len(z), 512))
    return {"final_loss": float(loss.detach()), "agreement": agree / max(1, len(z))}


# --------------------------------------------------------------------------------------------- attack
class _Unfinished(Exception):  # noqa: N818 - a control-flow signal, not an error
    """A refused query ended a derived model's training: carries what was trained past the cache (which must not
    store it under a key that promises the planned training)."""

    def __init__(self, model: nn.Module | None) -> None:
        super().__init__("training ended by a refused query")
        self.model = model


class LOKT(Attack):
    name = "lokt"
    paper = "https://arxiv.org/abs/2310.19342"
    summary = ("Label-only: a target-assisted ACGAN and surrogates trained on its target-labelled samples, then "
               "PLG-MI's white-box search on the surrogate ensemble.")
    requires = frozenset({C.LABEL})
    needs_prior = False

    class Config(AttackConfig):
        # ---- T-ACGAN (train_tacgan.py; README: --alpha=1.5 --cGAN)
        latent_dim: int = Field(128, ge=2, description="z size (official gen_dim_z: 128)")
        width: int = Field(64, ge=4, description="generator/discriminator width (official gen/dis_num_features: 64)")
        steps: int = Field(19000, ge=1, description="conditional T-ACGAN iterations after the warm-up, each with "
                                                    "n_dis * batch_size label queries (official --max_iteration 19000)")
        uncond_steps: int = Field(1000, ge=0, description="unconditional warm-up iterations, no query (official "
                                                          "n_uncond: 1000 for CelebA)")
        n_dis: int = Field(5, ge=1, description="discriminator steps per generator step (official: 5)")
        batch_size: int = Field(128, ge=2, description="T-ACGAN batch size (official: 128)")
        lr: float = Field(2e-4, gt=0, description="Adam learning rate of G and D (official: 2e-4)")
        beta1: float = Field(0.0, ge=0, lt=1, description="Adam beta1 (official: 0.0)")
        beta2: float = Field(0.9, ge=0, lt=1, description="Adam beta2 (official: 0.9)")
        alpha: float = Field(1.5, ge=0, description="weight of the auxiliary classification losses (README: 1.5)")
        train_seed: int = Field(46, ge=0, description="seed of everything LOKT derives (official train_tacgan --seed 46)")
        # ---- surrogates (create_dataset.py, train_surrogate_model.py)
        samples_per_class: int = Field(500, ge=1, description="generated samples per class labelled by the target "
                                                              "(official max_iter 2 x batch 250)")
        surrogates: list[str] = Field(["densenet121", "densenet161", "densenet169"], min_length=0,
                                      description="surrogate architectures (README: the three DenseNets); a DENSENETS "
                                                  "name, a registry architecture or timm:<name>")
        surrogate_width: float = Field(1.0, gt=0, description="scale of the DenseNets' growth rate and stem width "
                                                               "(1.0: torchvision's)")
        include_discriminator: bool = Field(False, description="add the T-ACGAN discriminator's classifier head to the "
                                                               "ensemble (official classid 3; not in the README's attack)")
        surrogate_epochs: int = Field(200, ge=1, description="surrogate epochs (official --max_epochs 200)")
        epoch_samples: int = Field(30000, ge=1, description="generated images per surrogate epoch (official: 30000)")
        surrogate_batch_size: int = Field(256, ge=1, description="surrogate batch size (official: 256)")
        surrogate_lr: float = Field(0.1, gt=0, description="SGD learning rate, cosine-annealed (official: 0.1)")
        surrogate_momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (official: 0.9)")
        surrogate_weight_decay: float = Field(5e-4, ge=0, description="SGD weight decay (official: 5e-4)")
        # ---- attack (plg_tacgan.py)
        iterations: int = Field(600, ge=1, description="Adam steps per latent (official --iter_times 600)")
        attack_lr: float = Field(0.1, gt=0, description="Adam learning rate of the search (official --lr 0.1)")
        loss: Literal["margin", "ce", "poincare"] = Field("margin", description="identity loss (README: margin)")
        views: int = Field(2, ge=1, le=32, description="augmented views per surrogate per step (official: 2)")
        augment: bool = Field(True, description="augment the images the surrogates score (official: yes)")
        flip: bool = Field(True, description="horizontal flips in the augmentations (official: yes)")
        attack_batch_size: int | None = Field(None, ge=1, description="latents optimised together (None: all at once)")

    # ------------------------------------------------------------------------------------ derived models
    def _public(self) -> Tensor:
        images = getattr(self.context, "public_images", None)
        if images is None or len(images) == 0:
            raise UsageError("attack 'lokt' trains its T-ACGAN on the attacker's public images: set attack.context = "
                             "AttackContext(public_images=...) (the bench does) before running it")
        return images

    def _cached(self, key: dict[str, Any], train: Callable[[], nn.Module], build: Callable[[], nn.Module],
                label: str) -> nn.Module:
        cache = getattr(self.context, "cache", None)
        if cache is None:
            return train().eval()
        return cache(key, train, build, label=label)

    def plan(self, target: Any) -> tuple[int, int]:
        """``(steps, samples_per_class)``: the configured ones when the target's budget affords them (or it has
        none), else both shrunk by the same factor to what is left of it (module docstring)."""
        cfg, k = self.config, int(target.num_classes)
        each = cfg.n_dis * cfg.batch_size
        samples = cfg.samples_per_class if cfg.surrogates else 0
        tacgan_q, total = cfg.steps * each, cfg.steps * each + k * samples
        if affordable(target, 1, each=total) == 1:
            return cfg.steps, cfg.samples_per_class
        steps = affordable(target, cfg.steps, each=each, share=tacgan_q / total)
        left = budget_left(target) - steps * each
        return steps, min(samples, left // k)

    def tacgan(self, target: Any, steps: int | None = None) -> tuple[TACGAN, dict[str, Any], bool]:
        """The T-ACGAN for ``target`` with ``steps`` conditional iterations (default: the config's), trained
        through its view or loaded from the cache and paid for again. Returns it, facts (its cache ``key``
        among them) and whether a refused query ended its training (it is then not cached)."""
        from invertkit.core.zoo.scenario import fingerprint

        cfg, public = self.config, self._public()
        steps = cfg.steps if steps is None else int(steps)
        shape, k = tuple(int(s) for s in target.input_shape), int(target.num_classes)
        if tuple(public.shape[1:]) != shape:
            raise UsageError(f"attack 'lokt': public images of shape {tuple(public.shape[1:])} but the target takes {shape}")
        fields = ("latent_dim", "width", "steps", "uncond_steps", "n_dis", "batch_size", "lr", "beta1", "beta2", "alpha",
                  "train_seed")
        key = {"what": "lokt-tacgan", "data": fingerprint(public), "shape": list(shape), "classes": k,
               "cfg": {**{f: getattr(cfg, f) for f in fields}, "steps": steps}}  # the planned steps
        facts: dict[str, Any] = {}

        def build() -> TACGAN:
            torch.manual_seed(cfg.train_seed)
            return TACGAN(shape, k, cfg.latent_dim, cfg.width).to(target.device)

        def train() -> TACGAN:
            gan = build()
            try:
                facts.update(train_tacgan(gan, target, public, steps=steps, uncond_steps=cfg.uncond_steps,
                                          n_dis=cfg.n_dis, batch_size=cfg.batch_size, lr=cfg.lr, beta1=cfg.beta1,
                                          beta2=cfg.beta2, alpha=cfg.alpha, seed=cfg.train_seed))
            except QueryBudgetExceeded as e:  # with what it has: the iterations done, kept out of the cache
                raise _Unfinished(gan) from e
            return gan

        try:
            gan = self._cached(key, train, build, "lokt-tacgan")
            return gan, {"key": key, **facts}, False  # type: ignore[return-value]
        except _Unfinished as u:
            gan = u.model
        except QueryBudgetExceeded:  # a cached T-ACGAN whose cost the target refused: nothing trained to use
            gan = build()
        for p in gan.parameters():
            p.grad = None
        return gan.eval(), {"key": key, **facts}, True  # type: ignore[return-value]

    def surrogate_set(self, target: Any, gan: TACGAN, gan_key: dict[str, Any],
                      samples_per_class: int | None = None) -> tuple[SurrogateSet | None, dict[str, Any]]:
        """The labelled samples (``samples_per_class`` per class, default the config's) and the surrogates
        trained on them (or the cached ones, paid for again); ``None`` when a refused query ended the labelling
        (no surrogate is trained on a partly labelled data set)."""
        cfg = self.config
        per_class = cfg.samples_per_class if samples_per_class is None else int(samples_per_class)
        shape, k = tuple(int(s) for s in target.input_shape), int(target.num_classes)
        plugins = getattr(self.context, "plugins", None)
        fields = ("samples_per_class", "surrogates", "surrogate_width", "surrogate_epochs", "epoch_samples",
                  "surrogate_batch_size", "surrogate_lr", "surrogate_momentum", "surrogate_weight_decay", "flip",
                  "train_seed")
        key = {"what": "lokt-surrogates", "tacgan": gan_key,
               "cfg": {**{f: getattr(cfg, f) for f in fields}, "samples_per_class": per_class}}  # the planned size
        facts: dict[str, Any] = {}

        def build() -> SurrogateSet:
            nets = []
            for i, arch in enumerate(cfg.surrogates):
                torch.manual_seed(cfg.train_seed + 1 + i)
                nets.append(build_surrogate(plugins, arch, k, shape, cfg.surrogate_width))
            return SurrogateSet(nets, k * per_class, cfg.latent_dim).to(target.device)

        def train() -> SurrogateSet:
            out = build()
            try:
                z, pseudo, labels = label_fakes(gan.generator, target, k, per_class, cfg.latent_dim,
                                                seed=cfg.train_seed)
            except QueryBudgetExceeded as e:
                raise _Unfinished(None) from e
            out.z.copy_(z)
            out.pseudo.copy_(pseudo)
            out.labels.copy_(labels)
            facts["sample_target_agreement"] = float((labels == pseudo).float().mean())
            for i, (arch, net) in enumerate(zip(cfg.surrogates, out.nets)):
                with progress.task(f"LOKT: training surrogate '{arch}' on target-labelled samples", total=1,
                                   unit="model") as t:
                    rep = train_surrogate(net, gan.generator, z, pseudo, labels, epochs=cfg.surrogate_epochs,
                                          epoch_samples=cfg.epoch_samples, batch_size=cfg.surrogate_batch_size,
                                          lr=cfg.surrogate_lr, momentum=cfg.surrogate_momentum,
                                          weight_decay=cfg.surrogate_weight_decay, flip=cfg.flip,
                                          seed=cfg.train_seed + 101 + i)
                    t.advance(1, info=f"agreement {rep['agreement']:.3f}")
                facts[f"surrogate_{i}_{arch}_agreement"] = rep["agreement"]
            return out

        try:
            return self._cached(key, train, build, "lokt-surrogates"), facts  # type: ignore[return-value]
        except (_Unfinished, QueryBudgetExceeded):  # refused while labelling, or the cached set's cost refused
            return None, facts

    # --------------------------------------------------------------------------------------------- run
    def run(self, target, labels, *, prior, seed, generator) -> AttackResult:  # noqa: ANN001
        cfg = self.config
        k = int(target.num_classes)
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= k):
            raise UsageError(f"attack 'lokt': identities must be target classes in [0, {k})")
        if not cfg.surrogates and not cfg.include_discriminator:
            raise ConfigError("attack 'lokt' needs at least one surrogate: give surrogates or include_discriminator")
        q0 = target.queries
        budgeted = getattr(target, "budget", None) is not None
        steps, per_class = self.plan(target)  # within the budget (our addition; module docstring)
        gan, gan_facts, refused = self.tacgan(target, steps)
        q1 = target.queries
        gan_key = gan_facts.pop("key")
        models: list[nn.Module] = []
        s_facts: dict[str, Any] = {}
        # no sample is bought for the discriminator's head alone, nor where the budget labels none
        if cfg.surrogates and per_class > 0 and not refused:
            sset, s_facts = self.surrogate_set(target, gan, gan_key, per_class)
            if sset is None:
                refused = True
            else:
                models += list(sset.nets)
        q2 = target.queries
        # the discriminator's head is in the ensemble when asked for, and alone when the budget bought no
        # surrogate but did buy conditional iterations (its head then learned the target's labels)
        if cfg.include_discriminator or (not models and q1 > q0):
            models.append(DiscriminatorClassifier(gan.discriminator))
        freeze(*models)
        lokt_prior = TACGANPrior(gan)
        loss_fn = LOSSES[cfg.loss]
        dev = lokt_prior.device
        y = labels.to(dev)
        z0 = lokt_prior.sample_latent(len(labels), generator)
        aug_gen = torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=generator)))

        def objective(z: Tensor, idx: Tensor) -> Tensor:
            x = lokt_prior.decode(z, y[idx])
            total = torch.zeros(len(idx), device=x.device, dtype=x.dtype)
            for net in models:
                for _ in range(cfg.views):
                    v = plg_augment(x, aug_gen, flip=0.5 if cfg.flip else 0.0) if cfg.augment else x
                    total = total + loss_fn(net(v), y[idx])
            return total / len(models)

        if models:
            z, images, scores = search_latents(lokt_prior, z0, y, objective, batch_size=cfg.attack_batch_size,
                                               iterations=cfg.iterations, lr=cfg.attack_lr, optimizer="adam")
        else:  # nothing the budget bought to search with: the generator's draws
            with torch.no_grad():
                z, images, scores = z0, lokt_prior.decode(z0, y), torch.zeros(len(labels))
        extras: dict[str, Any] = {"tacgan_queries": q1 - q0, "surrogate_queries": q2 - q1, "surrogates": len(models),
                                  **{f"tacgan_{n}": v for n, v in gan_facts.items()}, **s_facts}
        if budgeted or refused:
            cut = steps < cfg.steps or (bool(cfg.surrogates) and per_class < cfg.samples_per_class)
            extras["exhausted"] = bool(refused or cut)
        if budgeted:
            extras.update(planned_tacgan_steps=steps, planned_samples_per_class=per_class if cfg.surrogates else 0,
                          planned_queries=steps * cfg.n_dis * cfg.batch_size + k * (per_class if cfg.surrogates else 0))
        return AttackResult(self.name, images.cpu(), labels, scores, 0, 0.0, seed, {}, latents=z.cpu(), extras=extras)


@hookimpl
def invertkit_register_attacks(register) -> None:  # noqa: ANN001
    register(LOKT)
