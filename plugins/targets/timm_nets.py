"""EfficientNet-B0/B1/B2 and ResNet-18/50/152 from timm, never pretrained (nothing is downloaded).

EfficientNet: Tan & Le, ICML 2019, https://arxiv.org/abs/1905.11946. ResNet: He et al., CVPR 2016,
https://arxiv.org/abs/1512.03385. The model-inversion literature uses them as targets and as LOMMA's
augmented models; ``timm.create_model(name, pretrained=False, num_classes=..., in_chans=...)`` builds them, so
the state-dict keys are timm's own (``conv_stem``/``blocks``/``classifier``, ``conv1``/``layer1..4``/``fc``) and a
timm-trained checkpoint loads unchanged. (LOMMA's released augmented models use *torchvision*'s EfficientNet
layout instead: those are ``lomma-efficientnet-b*`` in :mod:`invertkit.plugins.targets.mi_nets`.)

timm models split as ``forward_features`` -> ``forward_head(pre_logits=True)`` -> ``get_classifier()``; the
module's class is swapped for a subclass that adds invertkit's ``features(x)`` (the pooled embedding) and
``head(f)`` (the classifier) on top of that split, without adding, renaming or wrapping any parameter. Any input
size works (global pooling); ImageNet sizes are 224 (B0, ResNets), 240 (B1), 256 (B2) in timm's configs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import Field
from torch import Tensor, nn

from invertkit.core.errors import ConfigError
from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.config import ComponentConfig
from invertkit.plugins.targets.mi_nets import architecture, check_shape


class _Split:
    """``features``/``head`` over timm's own split (eval mode: ``head(features(x)) == forward(x)``)."""

    def features(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x), pre_logits=True)  # type: ignore[attr-defined]

    def head(self, f: Tensor) -> Tensor:
        return self.get_classifier()(f)  # type: ignore[attr-defined]


def _split_classes() -> dict[type, type]:
    """The subclasses, made on first use (importing timm takes seconds) under importable names, so pickle works."""
    if not _SPLIT:
        from timm.models.efficientnet import EfficientNet
        from timm.models.resnet import ResNet

        for base in (EfficientNet, ResNet):
            name = f"Split{base.__name__}"
            cls = type(name, (_Split, base), {"__module__": __name__, "__qualname__": name})
            globals()[name] = cls
            _SPLIT[base] = cls
    return _SPLIT


_SPLIT: dict[type, type] = {}


def __getattr__(name: str) -> Any:  # PEP 562: ``SplitEfficientNet``/``SplitResNet`` for unpickling in a new process
    if name in ("SplitEfficientNet", "SplitResNet"):
        _split_classes()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def with_split(model: nn.Module) -> nn.Module:
    """Give a timm EfficientNet/ResNet invertkit's ``features``/``head`` methods (same object, same parameters)."""
    classes = _split_classes()
    if type(model) not in classes:
        raise ConfigError(f"with_split takes a timm EfficientNet or ResNet, got {type(model).__name__}")
    model.__class__ = classes[type(model)]
    return model


class TimmConfig(ComponentConfig):
    drop_rate: float = Field(0.0, ge=0, lt=1, description="dropout before the classifier (training only)")
    drop_path_rate: float = Field(0.0, ge=0, lt=1, description="stochastic depth rate (training only)")


#: invertkit name -> (timm name, paper)
MODELS: dict[str, tuple[str, str]] = {
    "efficientnet-b0": ("efficientnet_b0", "https://arxiv.org/abs/1905.11946"),
    "efficientnet-b1": ("efficientnet_b1", "https://arxiv.org/abs/1905.11946"),
    "efficientnet-b2": ("efficientnet_b2", "https://arxiv.org/abs/1905.11946"),
    "resnet18": ("resnet18", "https://arxiv.org/abs/1512.03385"),
    "resnet50": ("resnet50", "https://arxiv.org/abs/1512.03385"),
    "resnet152": ("resnet152", "https://arxiv.org/abs/1512.03385"),
}


def _builder(name: str, timm_name: str) -> Callable[[int, tuple[int, int, int], TimmConfig], nn.Module]:
    def build(num_classes: int, in_shape: tuple[int, int, int], cfg: TimmConfig) -> nn.Module:
        import timm

        c, _, _ = check_shape(name, in_shape, 1, minimum=8)
        model = timm.create_model(timm_name, pretrained=False, num_classes=num_classes, in_chans=c,
                                  drop_rate=cfg.drop_rate, drop_path_rate=cfg.drop_path_rate)
        return with_split(model)

    return build


ARCHITECTURES = [
    architecture(name, f"timm {timm_name} (no pretrained weights), features = pooled embedding", paper,
                 TimmConfig, _builder(name, timm_name))
    for name, (timm_name, paper) in MODELS.items()
]


@hookimpl
def invertkit_register_architectures(register) -> None:  # noqa: ANN001
    for arch in ARCHITECTURES:
        register(arch)


__all__ = ["ARCHITECTURES", "MODELS", "with_split"]
