"""Face-recognition embedders: insightface's IResNet-18/34/50/100 with an ArcFace or CosFace head.

Backbone: ``recognition/arcface_torch/backbones/iresnet.py`` of deepinsight/insightface (@ d9cb10e): a 3x3
stem (``conv1``, ``bn1``, ``prelu``), four stages ``layer1..4`` of ``IBasicBlock`` (``bn1, conv1, bn2, prelu,
conv2, bn3`` and a ``downsample`` conv+BN on the first block of each stage; stage units [2,2,2,2] / [3,4,6,3] /
[3,4,14,3] / [3,13,30,3]), then ``bn2``, ``dropout``, ``fc`` (512*7*7 -> 512 at 112x112) and the 512-d
BatchNorm1d the released files call ``features`` (its scale fixed at 1). The state-dict keys are exactly those
of insightface's released ``backbone.pth`` (a plain ``torch.save(backbone.state_dict())``; recorded in
``tests/data/checkpoint_layouts/iresnet50.json``), plus the head's ``margin.weight``.

Because invertkit's classifiers expose a ``features(x)`` *method* (the embedding, i.e. the face template), the
``features`` BatchNorm1d lives in the module as ``embedding_bn`` and is renamed to ``features.*`` by state-dict
hooks, both when saving and when loading: files interchange with insightface's unchanged.

Heads (``nn.Module`` with ``weight``: num_classes x 512, one unit-norm class centre per identity):
ArcFace (Deng et al., CVPR 2019, https://arxiv.org/abs/1801.07698; s = 64, m = 0.5: the target logit becomes
``s cos(theta + m)``, with insightface's ``cos(theta) - m sin(m)`` fallback once ``theta + m > pi``) and CosFace
(Wang et al., CVPR 2018, https://arxiv.org/abs/1801.09414; s = 64, m = 0.35: ``s (cos(theta) - m)``). The margin
is a training device: it applies only when labels are passed (``forward(x, labels)``); the logits an attacker
or an evaluator sees are ``s cos(theta)`` for every class.

Input size: 112x112 as released; any size that is a multiple of 16 works (``fc`` is sized to it: 64x64 gives a
512*4*4 ``fc``, which no released 112x112 file fits). A released backbone has no head: load it with
:func:`load_backbone`, then :func:`enroll` the identities (class centre = mean unit template), which is how a
recognition model becomes a closed-set classifier.

For the CPU-sized scenarios (8x8 digits, 28x28 MNIST) the same heads sit on a small convolutional trunk
(``small-arcface``, ``small-cosface``: the ``small-cnn`` body, its last ReLU replaced by the template's
BatchNorm1d as IResNet ends). Both kinds set ``trains_with_labels``: the preset trainer passes the labels to
``forward`` so the margin applies during training, as in insightface's training loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from invertkit.core.errors import CheckpointError, ConfigError
from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.config import ComponentConfig
from invertkit.plugins.targets.mi_nets import architecture, check_shape

IRESNET_LAYERS: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 14, 3),
    100: (3, 13, 30, 3),
}
SAVED_NAME = "features"  # what insightface's files call the embedding BatchNorm1d
INNER_NAME = "embedding_bn"  # what it is called here (``features`` is the method)


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """Pre-activation basic block: BN, conv3x3, BN, PReLU, conv3x3 (stride), BN; plus the (downsampled) input."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


def _rename(state: dict[str, Any], old: str, new: str) -> None:
    """Rename the keys under ``old`` to ``new`` in place, keeping their order (and the metadata entry)."""
    if not any(k.startswith(old + ".") for k in state):
        return
    items = list(state.items())
    state.clear()
    for k, v in items:
        state[new + k[len(old):] if k.startswith(old + ".") else k] = v
    meta = getattr(state, "_metadata", None)
    if isinstance(meta, dict) and old in meta:
        meta[new] = meta.pop(old)


def _save_as_released(module: nn.Module, state: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    _rename(state, prefix + INNER_NAME, prefix + SAVED_NAME)


def _load_released(module: nn.Module, state: dict[str, Any], prefix: str, *_: Any) -> None:
    _rename(state, prefix + SAVED_NAME, prefix + INNER_NAME)


class IResNet(nn.Module):
    """insightface's IResNet backbone; ``features(x)`` (and ``forward``) give the 512-d template."""

    def __init__(self, depth: int, in_shape: tuple[int, int, int] = (3, 112, 112), embedding_size: int = 512,
                 dropout: float = 0.0):
        super().__init__()
        if depth not in IRESNET_LAYERS:
            raise ConfigError(f"IResNet depth must be one of {sorted(IRESNET_LAYERS)}, got {depth}")
        c, h, w = in_shape
        self.depth = depth
        self.conv1 = nn.Conv2d(c, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = nn.PReLU(64)
        inplanes = 64
        for i, (units, planes) in enumerate(zip(IRESNET_LAYERS[depth], (64, 128, 256, 512)), start=1):
            down = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=2, bias=False), nn.BatchNorm2d(planes, eps=1e-5))
            blocks = [IBasicBlock(inplanes, planes, 2, down)] + [IBasicBlock(planes, planes) for _ in range(units - 1)]
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
            inplanes = planes
        self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(512 * (h // 16) * (w // 16), embedding_size)
        self.embedding_bn = nn.BatchNorm1d(embedding_size, eps=1e-5)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.ones_(self.embedding_bn.weight)
        self.embedding_bn.weight.requires_grad_(False)  # insightface fixes the template's BN scale at 1
        self.register_state_dict_post_hook(_save_as_released)
        self.register_load_state_dict_pre_hook(_load_released)

    def features(self, x: Tensor) -> Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(self.bn2(x).flatten(1))
        return self.embedding_bn(self.fc(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)


# ------------------------------------------------------------------------------------------- heads


def unit(v: Tensor) -> Tensor:
    """Rows scaled to unit L2 norm; rescaled by their largest entry first, so huge rows cannot overflow the norm."""
    return F.normalize(v / v.detach().abs().amax(dim=1, keepdim=True).clamp_min(1e-30), dim=1)


class MarginHead(nn.Module):
    """Cosine classifier (NormFace): logits ``s * cos(theta_j)`` between the unit template and unit class centre ``j``.

    ``forward(f, labels)`` applies the subclass's margin to each row's target logit (a label of -1 leaves the
    row unchanged, as insightface does)."""

    def __init__(self, num_classes: int, embedding_size: int = 512, s: float = 64.0, m: float = 0.0):
        super().__init__()
        self.s = float(s)
        self.m = float(m)
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size))
        nn.init.normal_(self.weight, 0.0, 0.01)  # insightface's PartialFC initialisation

    def cosine(self, f: Tensor) -> Tensor:
        return F.linear(unit(f), unit(self.weight))

    def with_margin(self, cos_target: Tensor) -> Tensor:
        """The target logit's cosine during training; none here (a NormFace head), a margin in subclasses."""
        return cos_target

    def forward(self, f: Tensor, labels: Tensor | None = None) -> Tensor:
        cos = self.cosine(f)
        if labels is not None:
            labels = labels.to(cos.device).long().view(-1)
            valid = labels >= 0
            idx = labels.clamp_min(0).unsqueeze(1)
            target = cos.gather(1, idx)
            changed = torch.where(valid.unsqueeze(1), self.with_margin(target), target)
            cos = cos.scatter(1, idx, changed)
        return self.s * cos

    def extra_repr(self) -> str:
        return f"classes={self.weight.shape[0]}, embedding={self.weight.shape[1]}, s={self.s}, m={self.m}"


class ArcFaceHead(MarginHead):
    """Additive angular margin: ``cos(theta + m)``, and ``cos(theta) - m sin(m)`` where ``theta + m > pi``."""

    def __init__(self, num_classes: int, embedding_size: int = 512, s: float = 64.0, m: float = 0.5):
        super().__init__(num_classes, embedding_size, s, m)

    def with_margin(self, cos_target: Tensor) -> Tensor:
        sin = torch.sqrt((1.0 - cos_target * cos_target).clamp_min(1e-12))
        shifted = cos_target * math.cos(self.m) - sin * math.sin(self.m)
        return torch.where(cos_target > math.cos(math.pi - self.m), shifted,
                           cos_target - math.sin(math.pi - self.m) * self.m)


class CosFaceHead(MarginHead):
    """Additive cosine margin: ``cos(theta) - m``."""

    def __init__(self, num_classes: int, embedding_size: int = 512, s: float = 64.0, m: float = 0.35):
        super().__init__(num_classes, embedding_size, s, m)

    def with_margin(self, cos_target: Tensor) -> Tensor:
        return cos_target - self.m


HEADS: dict[str, type[MarginHead]] = {"arcface": ArcFaceHead, "cosface": CosFaceHead}


class FaceRecognitionNet(IResNet):
    """IResNet + margin head: ``features(x)`` the template, ``head(f)`` the cosine logits, ``forward(x)`` both."""

    #: the trainer passes the labels to ``forward`` (the margin is a training device)
    trains_with_labels = True

    def __init__(self, depth: int, num_classes: int, in_shape: tuple[int, int, int] = (3, 112, 112), *,
                 loss: str = "arcface", s: float = 64.0, m: float | None = None, embedding_size: int = 512,
                 dropout: float = 0.0):
        super().__init__(depth, in_shape, embedding_size, dropout)
        cls = HEADS[loss]
        self.margin = cls(num_classes, embedding_size, s) if m is None else cls(num_classes, embedding_size, s, m)

    def head(self, f: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.margin(f, labels)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:  # type: ignore[override]
        return self.head(self.features(x), labels)


class SmallFaceNet(nn.Module):
    """The CPU-sized embedder: ``small-cnn``'s trunk ending in the template's BatchNorm1d (no ReLU: a template is
    signed, as IResNet's), and a margin head. ``features(x)`` the template, ``head(f)`` the cosine logits."""

    trains_with_labels = True

    def __init__(self, num_classes: int, in_shape: tuple[int, int, int], *, width: int = 32, embedding_size: int = 64,
                 loss: str = "arcface", s: float = 64.0, m: float | None = None):
        super().__init__()
        from invertkit.plugins.targets.small_nets import SmallCNN

        body = SmallCNN(1, in_shape, width=width, feat_dim=embedding_size).body
        body[-1] = nn.BatchNorm1d(embedding_size, eps=1e-5)
        self.body = body
        cls = HEADS[loss]
        self.margin = cls(num_classes, embedding_size, s) if m is None else cls(num_classes, embedding_size, s, m)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def head(self, f: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.margin(f, labels)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.head(self.features(x), labels)


# ------------------------------------------------------------------------------- released backbones


def load_backbone(net: FaceRecognitionNet, state: Mapping[str, Tensor]) -> FaceRecognitionNet:
    """Load a released (head-less) insightface backbone state into ``net``; every backbone key must fit.

    The head keeps its weights: :func:`enroll` the identities next."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = net.state_dict()
    head_keys = {k for k in own if k.startswith("margin.")}
    missing = sorted(set(own) - set(state) - head_keys)
    unexpected = sorted(set(state) - set(own))
    bad = [k for k in set(state) & set(own) if tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or bad:
        raise CheckpointError(
            f"not an IResNet-{net.depth} backbone of this input size: missing {missing[:4]}, unexpected "
            f"{unexpected[:4]}, wrong shapes {sorted(bad)[:4]}"
        )
    net.load_state_dict({**{k: v for k, v in own.items() if k in head_keys}, **state}, strict=True)
    return net


@torch.no_grad()
def enroll(net: FaceRecognitionNet, images: Tensor, labels: Tensor, batch_size: int = 64) -> FaceRecognitionNet:
    """Set each class centre to the normalised mean unit template of that identity's ``images``."""
    num_classes = net.margin.weight.shape[0]
    labels = labels.long().view(-1).cpu()
    if len(labels) != len(images) or len(labels) == 0 or int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise ConfigError(f"enroll needs one label in [0, {num_classes}) per image ({len(images)} images, {len(labels)} labels)")
    absent = sorted(set(range(num_classes)) - set(labels.tolist()))
    if absent:
        raise ConfigError(f"enroll needs an image of every class; none of classes {absent[:8]}{'...' if len(absent) > 8 else ''}")
    was_training = net.training
    net.eval()
    device = net.margin.weight.device
    sums = torch.zeros_like(net.margin.weight)
    for i in range(0, len(images), batch_size):
        f = unit(net.features(images[i : i + batch_size].to(device)))
        sums.index_add_(0, labels[i : i + batch_size].to(device), f)
    net.margin.weight.copy_(unit(sums))
    net.train(was_training)
    return net


# ---------------------------------------------------------------------------------- registry entries

PAPERS = {"arcface": "https://arxiv.org/abs/1801.07698", "cosface": "https://arxiv.org/abs/1801.09414"}
MARGINS = {"arcface": 0.5, "cosface": 0.35}
HEAD_TITLES = {"arcface": "an ArcFace", "cosface": "a CosFace"}


def _config(loss: str) -> type[ComponentConfig]:
    class Config(ComponentConfig):
        s: float = Field(64.0, gt=0, le=1024, description="logit scale s (64 in both papers)")
        m: float = Field(MARGINS[loss], ge=0, lt=1.5, description=f"{loss} training margin (paper: {MARGINS[loss]})")
        embedding_size: int = Field(512, ge=8, le=4096, description="template dimension (512 as released)")
        dropout: float = Field(0.0, ge=0, lt=1, description="dropout before the embedding fc (training only)")

    Config.__name__ = Config.__qualname__ = f"IResNet{loss.capitalize()}Config"
    return Config


def _builder(depth: int, loss: str) -> Callable[[int, tuple[int, int, int], Any], nn.Module]:
    def build(num_classes: int, in_shape: tuple[int, int, int], cfg: Any) -> nn.Module:
        check_shape(f"iresnet{depth}-{loss}", in_shape, 16)
        return FaceRecognitionNet(depth, num_classes, in_shape, loss=loss, s=cfg.s, m=cfg.m,
                                  embedding_size=cfg.embedding_size, dropout=cfg.dropout)

    return build


ARCHITECTURES = [
    architecture(
        f"iresnet{depth}-{loss}",
        f"insightface IResNet-{depth} face embedder (512-d template, 112x112) with {HEAD_TITLES[loss]} cosine head",
        PAPERS[loss],
        _config(loss),
        _builder(depth, loss),
    )
    for loss in ("arcface", "cosface")
    for depth in IRESNET_LAYERS
]


def _small_config(loss: str) -> type[ComponentConfig]:
    class Config(ComponentConfig):
        width: int = Field(32, ge=4, le=512, description="channels of the first convolution (small-cnn's width)")
        embedding_size: int = Field(64, ge=8, le=4096, description="template dimension")
        s: float = Field(64.0, gt=0, le=1024, description="logit scale s (64 in both papers)")
        m: float = Field(MARGINS[loss], ge=0, lt=1.5, description=f"{loss} training margin (paper: {MARGINS[loss]})")

    Config.__name__ = Config.__qualname__ = f"Small{loss.capitalize()}Config"
    return Config


def _small_builder(loss: str) -> Callable[[int, tuple[int, int, int], Any], nn.Module]:
    def build(num_classes: int, in_shape: tuple[int, int, int], cfg: Any) -> nn.Module:
        check_shape(f"small-{loss}", in_shape, 1, minimum=4)
        return SmallFaceNet(num_classes, in_shape, width=cfg.width, embedding_size=cfg.embedding_size, loss=loss,
                            s=cfg.s, m=cfg.m)

    return build


ARCHITECTURES += [
    architecture(
        f"small-{loss}",
        f"CPU-sized face-style embedder (small-cnn trunk, BatchNorm template) with {HEAD_TITLES[loss]} cosine head",
        PAPERS[loss],
        _small_config(loss),
        _small_builder(loss),
    )
    for loss in ("arcface", "cosface")
]


@hookimpl
def invertkit_register_architectures(register) -> None:  # noqa: ANN001
    for arch in ARCHITECTURES:
        register(arch)
