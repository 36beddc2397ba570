"""Architectures: the one builder of a classifier from its name, and the body/head shape the bundled small
networks share.

An architecture name is a registry name (``small-cnn``, ``efficientnet-b0``, a plugin's ...) or
``timm:<name>``, any timm model, built without pretrained weights (nothing is downloaded).
:func:`build_architecture` is what the torch target backend, the preset models and MA's students build with.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from invertkit.core.errors import CapabilityError, ConfigError

#: the prefix of a timm model name (``timm:resnet18``)
TIMM_PREFIX = "timm:"

__all__ = ["TIMM_PREFIX", "BodyHead", "build_architecture", "is_timm", "last_layer"]


def is_timm(arch: str) -> bool:
    """Whether ``arch`` names a timm model (``timm:<name>``) rather than a registry architecture."""
    return arch.startswith(TIMM_PREFIX)


def build_architecture(plugins, arch: str, num_classes: int, in_shape: tuple[int, int, int],  # noqa: ANN001
                       options: dict[str, Any] | None = None) -> nn.Module:
    """A fresh ``arch`` (a registry architecture, or ``timm:<name>`` from timm with no pretrained download) for
    ``num_classes`` classes and inputs of ``in_shape`` ``(C, H, W)``, with the architecture's ``options``."""
    options = dict(options or {})
    if not is_timm(arch):
        return plugins.get("architecture", arch)(num_classes, in_shape, **options)
    import timm

    from invertkit.core.registry import unknown

    name = arch[len(TIMM_PREFIX):]
    if name not in timm.list_models():
        raise unknown("timm architecture", name, timm.list_models())
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_shape[0], **options)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"timm architecture '{name}' cannot be built with {options}: {exc}") from None


class BodyHead(nn.Module):
    """A classifier split as ``features(x) = body(x)`` (the penultimate embedding) and ``head(f) = fc(f)``,
    ``forward = head(features(x))``: subclasses set ``body`` and ``fc`` (and may widen :meth:`head`)."""

    body: nn.Module
    fc: nn.Module

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def head(self, f: Tensor) -> Tensor:
        return self.fc(f)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def last_layer(module: nn.Module, num_classes: int) -> tuple[Tensor, Tensor | None]:
    """The layer of a classifier that maps its penultimate features (``features(x)``) to the ``num_classes``
    logits: its weight ``(num_classes, feature_dim)``, one row per class, and its bias (``None`` without one),
    detached copies. White-box knowledge: an attack reads it from ``target.module`` (the ``weights``
    capability). The head of :func:`~invertkit.core.interfaces.target.split_classifier` when it is a layer
    with such a weight (``nn.Linear``, timm's classifier, a cosine/margin head whose rows are the class
    centres); else (a ``head`` method, e.g. dropout then a linear layer) the last registered sub-module whose
    weight has ``num_classes`` rows. :class:`CapabilityError` when there is none."""
    from invertkit.core.interfaces.target import split_classifier

    def rows(m: object) -> Tensor | None:
        w = getattr(m, "weight", None)
        return w if isinstance(w, Tensor) and w.dim() == 2 and w.shape[0] == num_classes else None

    split = split_classifier(module)
    layer = split[1] if split is not None and rows(split[1]) is not None else None
    if layer is None:
        layer = next((m for m in reversed(list(module.modules())) if rows(m) is not None), None)
    if split is None or layer is None:
        raise CapabilityError(f"{type(module).__name__} has no features()/head() split with a last layer of "
                              f"{num_classes} rows")
    bias = getattr(layer, "bias", None)
    return rows(layer).detach().clone(), bias.detach().clone() if isinstance(bias, Tensor) else None
