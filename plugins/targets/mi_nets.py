"""The CelebA 64x64 classifiers of the model-inversion literature, in the released checkpoints' layout.

GMI (Zhang et al., CVPR 2020, https://arxiv.org/abs/1911.07135), KED-MI (Chen et al., ICCV 2021,
https://arxiv.org/abs/2010.04092), PLG-MI and LOMMA / "Re-thinking MI" (Nguyen et al., CVPR 2023,
https://arxiv.org/abs/2304.01669) all attack the same three targets trained on 1,000 CelebA identities at
64x64, and score attacks with the same evaluation model (FaceNet, an IR-50 at 112x112). Their released
checkpoints are ``torch.save({"state_dict": nn.DataParallel(net).state_dict()})``: keys carry a ``module.``
prefix, which invertkit's torch backend strips. The modules below have the *same* module and parameter
names as those classes (``models/classify.py`` + ``models/evolve.py`` of
sutd-visual-computing-group/Re-thinking_MI @ ed4b6b8, identical to SCccc21/Knowledge-Enriched-DMI @ 1ec92f4),
so those files load with ``load_state_dict(strict=True)``; ``tests/data/checkpoint_layouts/*.json`` records
the expected keys and shapes.

- ``vgg16-64``: torchvision's VGG16-BN convolution trunk (``feature``), then ``bn`` (BatchNorm1d over the
  flattened 512x2x2 map, its shift frozen at zero as in the original) and ``fc_layer``.
- ``ir152-64`` / ``facenet64``: face.evoLVe's IR-152 / IR-50 trunk (``feature.input_layer``, ``feature.body``)
  without its output layer, then ``output_layer`` (BN2d, Dropout(0.5), flatten, Linear(512*4*4, 512), BN1d)
  and ``fc_layer``.
- ``facenet``: the evaluation model, an IR-50 at 112x112 with its output layer inside ``feature``
  (Linear(512*7*7, 512)); smaller inputs are resized to 112x112 first, as GMI's ``low2high`` does.
- ``lomma-efficientnet-b0/b1/b2``: LOMMA's "augmented models" (torchvision EfficientNet: ``feature`` =
  ``features`` + ``avgpool``, then ``fc_layer``), so the released augmented checkpoints load too.

Input sizes: the released files are for 64x64 (112x112 for ``facenet``). Other sizes build, with the
flattened layers sized to them (so they no longer fit those files): ``vgg16-64`` takes any side >= 32
(512 x (H//32) x (W//32) features: 4,608 at 112x112), ``ir152-64``/``facenet64`` any multiple of 16 (a
Linear(512 x H/16 x W/16, 512) output layer), ``facenet`` and ``lomma-efficientnet-*`` any size.

Differences from the originals, none of which touches a parameter: ``forward`` returns the logits only (the
originals return ``(feature, logits)``); ``features(x)`` returns what they call ``feature`` (the penultimate
embedding the KNN-distance metric and the LOMMA feature regulariser use) and ``head(f)`` the logits.
Inputs are images in [0, 1] without normalisation, as those repositories train them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from invertkit.core.errors import ConfigError
from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.config import ComponentConfig, build_config

# -------------------------------------------------------------------------------------------- helpers


def check_shape(arch: str, in_shape: tuple[int, ...], multiple: int, channels: int | None = None,
                minimum: int | None = None) -> tuple[int, int, int]:
    """``in_shape`` as ``(C, H, W)``; one ConfigError line when an architecture cannot take it."""
    if len(tuple(in_shape)) != 3:
        raise ConfigError(f"architecture '{arch}' needs an image shape (C, H, W), got {tuple(in_shape)}")
    c, h, w = (int(s) for s in in_shape)
    if channels is not None and c != channels:
        raise ConfigError(f"architecture '{arch}' takes {channels}-channel images, got {c} channels")
    low = minimum or multiple
    if h < low or w < low or h % multiple or w % multiple:
        need = f"multiples of {multiple} (at least {low})" if multiple > 1 else f"at least {low}"
        raise ConfigError(f"architecture '{arch}' needs height and width {need}, got {h}x{w}")
    return c, h, w


def architecture(name: str, summary: str, paper: str, config: type[ComponentConfig],
                 build: Callable[[int, tuple[int, int, int], Any], nn.Module]) -> Callable[..., nn.Module]:
    """A registry callable ``(num_classes, in_shape, **options) -> nn.Module`` with validated options."""

    def factory(num_classes: int, in_shape: tuple[int, int, int], **options: Any) -> nn.Module:
        cfg = build_config(config, options, what=f"architecture '{name}'")
        if int(num_classes) < 1:
            raise ConfigError(f"architecture '{name}' needs num_classes >= 1, got {num_classes}")
        return build(int(num_classes), tuple(int(s) for s in in_shape), cfg)

    factory.name = name  # type: ignore[attr-defined]
    factory.summary = summary  # type: ignore[attr-defined]
    factory.paper = paper  # type: ignore[attr-defined]
    factory.Config = config  # type: ignore[attr-defined]
    factory.__name__ = factory.__qualname__ = name.replace("-", "_")
    factory.__doc__ = summary
    return factory


class Flatten(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1)


def embedding_layer(spatial: tuple[int, int], dropout: float, channels: int = 512, dim: int = 512) -> nn.Sequential:
    """face.evoLVe's output layer: BN2d, Dropout, flatten, Linear(C*H*W, dim), BN1d (indices 0, 3, 4 hold weights)."""
    h, w = spatial
    return nn.Sequential(
        nn.BatchNorm2d(channels),
        nn.Dropout(dropout),
        Flatten(),
        nn.Linear(channels * h * w, dim),
        nn.BatchNorm1d(dim),
    )


# ------------------------------------------------------------------------------------------ VGG16-BN

#: VGG configuration "D" (16 weight layers); "M" is a 2x2 max-pool.
VGG16_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                                   512, 512, 512, "M", 512, 512, 512, "M")


def vgg16_bn_trunk(in_channels: int = 3) -> nn.Sequential:
    """The convolution part of torchvision's ``vgg16_bn().features`` (same indices: conv, BN, ReLU per layer)."""
    layers: list[nn.Module] = []
    c = in_channels
    for v in VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(c, int(v), kernel_size=3, padding=1), nn.BatchNorm2d(int(v)), nn.ReLU(inplace=True)]
            c = int(v)
    return nn.Sequential(*layers)


class VGG16MI(nn.Module):
    """GMI/KED-MI's ``VGG16``: ``feature`` (VGG16-BN trunk) -> flatten -> ``bn`` -> ``fc_layer``."""

    def __init__(self, num_classes: int, in_shape: tuple[int, int, int] = (3, 64, 64)):
        super().__init__()
        c, h, w = in_shape
        self.feature = vgg16_bn_trunk(c)
        self.feat_dim = 512 * (h // 32) * (w // 32)
        self.bn = nn.BatchNorm1d(self.feat_dim)
        self.bn.bias.requires_grad_(False)  # the original freezes the shift of this BatchNorm at zero
        self.fc_layer = nn.Linear(self.feat_dim, num_classes)
        for m in self.feature.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def features(self, x: Tensor) -> Tensor:
        return self.bn(self.feature(x).flatten(1))

    def head(self, f: Tensor) -> Tensor:
        return self.fc_layer(f)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


# ----------------------------------------------------------------------------------------- IR (evolve)

#: units per stage of face.evoLVe's IR backbones (``get_blocks``)
IR_UNITS: dict[int, tuple[int, int, int, int]] = {50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 152: (3, 8, 36, 3)}
IR_WIDTHS = (64, 128, 256, 512)


class BottleneckIR(nn.Module):
    """face.evoLVe's ``bottleneck_IR``: BN-conv-PReLU-conv(stride)-BN plus a (pooled or projected) shortcut."""

    def __init__(self, in_channel: int, depth: int, stride: int):
        super().__init__()
        if in_channel == depth:
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)  # a strided identity: no weights
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(in_channel, depth, 1, stride, bias=False), nn.BatchNorm2d(depth))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channel),
            nn.Conv2d(in_channel, depth, 3, 1, 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            nn.BatchNorm2d(depth),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class IRBackbone(nn.Module):
    """face.evoLVe's IR-50/100/152 trunk: ``input_layer`` (3x3 conv, BN, PReLU) and ``body`` (four stages, each
    halving the resolution). ``output_size`` adds the ``output_layer`` inside the trunk (the 112x112 variant,
    ``Backbone112``); the 64x64 variant (``Backbone64``) has none and its wrapper owns the output layer."""

    def __init__(self, num_layers: int, in_channels: int = 3, output_size: tuple[int, int] | None = None,
                 dropout: float = 0.5):
        super().__init__()
        if num_layers not in IR_UNITS:
            raise ConfigError(f"IR backbone depth must be one of {sorted(IR_UNITS)}, got {num_layers}")
        self.input_layer = nn.Sequential(nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        units: list[nn.Module] = []
        c = 64
        for n, depth in zip(IR_UNITS[num_layers], IR_WIDTHS):
            units.append(BottleneckIR(c, depth, 2))
            units += [BottleneckIR(depth, depth, 1) for _ in range(n - 1)]
            c = depth
        self.body = nn.Sequential(*units)
        if output_size is not None:
            self.output_layer = embedding_layer(output_size, dropout)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.body(self.input_layer(x))
        out = getattr(self, "output_layer", None)
        return x if out is None else out(x)


class IRClassifier64(nn.Module):
    """KED-MI's ``IR152`` / ``FaceNet64``: ``feature`` (IR trunk) -> ``output_layer`` (512-d) -> ``fc_layer``."""

    def __init__(self, num_layers: int, num_classes: int, in_shape: tuple[int, int, int] = (3, 64, 64),
                 dropout: float = 0.5):
        super().__init__()
        c, h, w = in_shape
        self.feature = IRBackbone(num_layers, c)
        self.feat_dim = 512
        self.output_layer = embedding_layer((h // 16, w // 16), dropout)
        self.fc_layer = nn.Linear(self.feat_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.output_layer(self.feature(x))

    def head(self, f: Tensor) -> Tensor:
        return self.fc_layer(f)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


class FaceNet112(nn.Module):
    """GMI's evaluation model ``FaceNet``: ``feature`` (IR-50 with its 7x7 output layer) -> ``fc_layer``.

    Inputs of another size are resized to ``input_size`` (bilinear) first, as the original evaluation resizes
    the 64x64 reconstructions to 112x112 (``low2high``)."""

    def __init__(self, num_classes: int, in_channels: int = 3, input_size: int = 112, dropout: float = 0.5):
        super().__init__()
        self.input_size = int(input_size)
        self.feature = IRBackbone(50, in_channels, output_size=(input_size // 16, input_size // 16), dropout=dropout)
        self.feat_dim = 512
        self.fc_layer = nn.Linear(self.feat_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        if tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False,
                              antialias=True)
        return self.feature(x)

    def head(self, f: Tensor) -> Tensor:
        return self.fc_layer(f)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


# --------------------------------------------------------------------------- LOMMA's augmented models

#: torchvision constructor and pooled feature width of LOMMA's ``EfficientNet_b{0,1,2}``
LOMMA_EFFICIENTNETS: dict[str, tuple[str, int]] = {
    "b0": ("efficientnet_b0", 1280),
    "b1": ("efficientnet_b1", 1280),
    "b2": ("efficientnet_b2", 1408),
}


class LommaEfficientNet(nn.Module):
    """Re-thinking MI's ``EfficientNet_b*``: ``feature`` = torchvision ``features`` + ``avgpool``, then ``fc_layer``."""

    def __init__(self, variant: str, num_classes: int, in_channels: int = 3):
        super().__init__()
        import torchvision

        ctor, self.feat_dim = LOMMA_EFFICIENTNETS[variant]
        net = getattr(torchvision.models, ctor)(weights=None)
        if in_channels != 3:
            stem = net.features[0][0]
            net.features[0][0] = nn.Conv2d(in_channels, stem.out_channels, stem.kernel_size, stem.stride,
                                           stem.padding, bias=False)
        self.feature = nn.Sequential(net.features, net.avgpool)
        self.fc_layer = nn.Linear(self.feat_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.feature(x).flatten(1)

    def head(self, f: Tensor) -> Tensor:
        return self.fc_layer(f)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


# ------------------------------------------------------------------------------------ registry entries

GMI = "https://arxiv.org/abs/1911.07135"
KEDMI = "https://arxiv.org/abs/2010.04092"
LOMMA = "https://arxiv.org/abs/2304.01669"


class NoOptions(ComponentConfig):
    """This architecture has no options: the released layout fixes everything."""


class IR64Config(ComponentConfig):
    dropout: float = Field(0.5, ge=0.0, lt=1.0, description="dropout of the output layer (training only); 0.5 as released")


class FaceNetConfig(ComponentConfig):
    input_size: int = Field(112, ge=16, le=1024, multiple_of=16,
                            description="side the images are resized to; the released evaluation model uses 112")
    dropout: float = Field(0.5, ge=0.0, lt=1.0, description="dropout of the output layer (training only)")


def _vgg16(num_classes: int, in_shape: tuple[int, int, int], cfg: NoOptions) -> nn.Module:
    check_shape("vgg16-64", in_shape, 1, minimum=32)
    return VGG16MI(num_classes, in_shape)


def _ir(name: str, layers: int) -> Callable[[int, tuple[int, int, int], IR64Config], nn.Module]:
    def build(num_classes: int, in_shape: tuple[int, int, int], cfg: IR64Config) -> nn.Module:
        check_shape(name, in_shape, 16)
        return IRClassifier64(layers, num_classes, in_shape, cfg.dropout)

    return build


def _facenet(num_classes: int, in_shape: tuple[int, int, int], cfg: FaceNetConfig) -> nn.Module:
    c, _, _ = check_shape("facenet", in_shape, 1)
    return FaceNet112(num_classes, c, cfg.input_size, cfg.dropout)


def _lomma(variant: str) -> Callable[[int, tuple[int, int, int], NoOptions], nn.Module]:
    def build(num_classes: int, in_shape: tuple[int, int, int], cfg: NoOptions) -> nn.Module:
        c, _, _ = check_shape(f"lomma-efficientnet-{variant}", in_shape, 1, minimum=32)
        return LommaEfficientNet(variant, num_classes, c)

    return build


vgg16_64 = architecture("vgg16-64", "VGG16-BN on 64x64 faces (GMI / KED-MI / LOMMA CelebA target; 2048-d feature)",
                        GMI, NoOptions, _vgg16)
ir152_64 = architecture("ir152-64", "IR-152 (face.evoLVe) on 64x64 faces (KED-MI / LOMMA CelebA target; 512-d feature)",
                        KEDMI, IR64Config, _ir("ir152-64", 152))
facenet64 = architecture("facenet64", "IR-50 'FaceNet64' on 64x64 faces (KED-MI / LOMMA CelebA target; 512-d feature)",
                         KEDMI, IR64Config, _ir("facenet64", 50))
facenet = architecture("facenet", "IR-50 'FaceNet' at 112x112: the evaluation model of GMI / KED-MI / LOMMA",
                       GMI, FaceNetConfig, _facenet)
lomma_efficientnets = [
    architecture(f"lomma-efficientnet-{v}", f"torchvision EfficientNet-{v.upper()} in LOMMA's augmented-model layout",
                 LOMMA, NoOptions, _lomma(v))
    for v in LOMMA_EFFICIENTNETS
]

ARCHITECTURES = [vgg16_64, ir152_64, facenet64, facenet, *lomma_efficientnets]


@hookimpl
def invertkit_register_architectures(register) -> None:  # noqa: ANN001
    for arch in ARCHITECTURES:
        register(arch)


__all__ = [
    "BottleneckIR",
    "FaceNet112",
    "IRBackbone",
    "IRClassifier64",
    "LommaEfficientNet",
    "VGG16MI",
    "architecture",
    "check_shape",
]
