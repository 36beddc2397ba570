"""The differentiable side of :mod:`invertkit.core.preprocess`: a target's input preprocessing as a module
(resize, scale, mean/std, channel order), and the wrappers that put it in front of a brought network."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from invertkit.core.preprocess import Preprocess


class PreprocessModule(nn.Module):
    """``Preprocess`` as a differentiable module (no parameters; buffers for mean and std)."""

    def __init__(self, spec: Preprocess, channels: int) -> None:
        super().__init__()
        spec.check_channels(channels, "target")
        self.spec = spec
        c = channels
        mean = torch.tensor(spec.mean if spec.mean is not None else (0.0,), dtype=torch.float32)
        std = torch.tensor(spec.std if spec.std is not None else (1.0,), dtype=torch.float32)
        self.register_buffer("mean", mean.expand(c).clone().view(1, c, 1, 1) if len(mean) == 1 else mean.view(1, c, 1, 1))
        self.register_buffer("std", std.expand(c).clone().view(1, c, 1, 1) if len(std) == 1 else std.view(1, c, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        s = self.spec
        if s.size is not None and tuple(x.shape[-2:]) != tuple(s.size):
            kw: dict[str, Any] = {}
            if s.interpolation in ("bilinear", "bicubic"):
                kw = {"align_corners": False, "antialias": bool(s.size[0] < x.shape[-2] or s.size[1] < x.shape[-1])}
            x = F.interpolate(x, size=tuple(s.size), mode=s.interpolation, **kw)
        if s.scale != 1.0:
            x = x * s.scale
        if s.mean is not None:
            x = x - self.mean.to(x.device, x.dtype)
        if s.std is not None:
            x = x / self.std.to(x.device, x.dtype)
        if s.channel_order == "bgr":
            x = x.flip(1)
        return x


class Preprocessed(nn.Module):
    """``net(pre(x))``."""

    def __init__(self, net: nn.Module, pre: PreprocessModule) -> None:
        super().__init__()
        self.pre, self.net = pre, net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.pre(x))


class PreprocessedSplit(Preprocessed):
    """``net(pre(x))`` for a ``net`` with the ``features(x)``/``head(f)`` split (invertkit's zoo, timm): the
    split is kept, so a brought classifier still offers the ``features`` capability through its preprocessing."""

    def __init__(self, net: nn.Module, pre: PreprocessModule, split: tuple[Any, Any]) -> None:
        super().__init__(net, pre)
        self._split = split

    def features(self, x: Tensor) -> Tensor:
        return self._split[0](self.pre(x))

    def head(self, f: Tensor) -> Tensor:
        return self._split[1](f)


def wrap(net: nn.Module, spec: Preprocess | None, image_shape: Sequence[int]) -> nn.Module:
    """``net`` behind ``spec`` for images of ``image_shape`` (``net`` itself when nothing is to be done)."""
    if spec is None or spec.is_identity(image_shape[-2:]):
        return net
    from invertkit.core.interfaces.target import split_classifier

    pre = PreprocessModule(spec, int(image_shape[0]))
    split = split_classifier(net)
    return PreprocessedSplit(net, pre, split) if split is not None else Preprocessed(net, pre)


__all__ = ["PreprocessModule", "Preprocessed", "PreprocessedSplit", "wrap"]
