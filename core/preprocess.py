"""What a brought model expects of its input, and the differentiable map from invertkit's images to it.

invertkit's images (what priors decode, what attacks optimise, what metrics read) are float ``(N, C, h, w)``
in ``[0, 1]``, RGB (or grey). A user's model often expects something else: 224 px, pixels in ``0..255``,
ImageNet's mean/std, BGR. :class:`Preprocess` (a target's ``preprocess`` table in ``registry.toml``) says so
once, and :class:`PreprocessModule` applies it inside the target, differentiably, so a white-box attack's
gradient flows through it and a query-only attack pays one query per image as before:

    resize to ``size`` → multiply by ``scale`` → subtract ``mean``, divide by ``std`` (per channel, in the
    scaled units) → reorder channels (``bgr``) → the model

Where the ONNX graph says what it expects, :func:`from_onnx` reads it: the input's static ``(C, H, W)``, the
output width (classes or template size), and a ``preprocess`` JSON object (or ``scale``/``mean``/``std``/
``channel_order`` keys) in the model's metadata properties. A value given in ``registry.toml`` wins over one
read from the file.

This module does not import torch (the registry's models use it); the modules are in
:mod:`invertkit.core.preprocess_module`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Preprocess(BaseModel):
    """A target's input convention (every field optional; the defaults are invertkit's own convention)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    size: tuple[int, int] | None = Field(None, description="the model's input (H, W); images are resized to it "
                                                           "when they differ (None: the model's own, or no resize)")
    scale: float = Field(1.0, gt=0, description="pixels are multiplied by this first: 1 for [0, 1] models, 255 for "
                                                "0..255 models")
    mean: tuple[float, ...] | None = Field(None, description="per-channel mean subtracted after scaling "
                                                             "(ImageNet in [0, 1] units: 0.485, 0.456, 0.406)")
    std: tuple[float, ...] | None = Field(None, description="per-channel std divided by after the mean "
                                                            "(ImageNet in [0, 1] units: 0.229, 0.224, 0.225)")
    channel_order: Literal["rgb", "bgr"] = Field("rgb", description="'bgr' reverses the channels (OpenCV/Caffe models)")
    interpolation: Literal["bilinear", "bicubic", "nearest", "area"] = Field(
        "bilinear", description="resize filter (antialiased when shrinking, for bilinear/bicubic)")

    @field_validator("size", mode="before")
    @classmethod
    def _size(cls, v: Any) -> Any:
        if isinstance(v, int):
            return (v, v)
        return v

    @field_validator("std")
    @classmethod
    def _std(cls, v: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if v is not None and any(s <= 0 for s in v):
            raise ValueError("every std must be > 0")
        return v

    def is_identity(self, image_hw: Sequence[int]) -> bool:
        return ((self.size is None or tuple(self.size) == tuple(image_hw)) and self.scale == 1.0
                and self.mean is None and self.std is None and self.channel_order == "rgb")

    def merged(self, fallback: "Preprocess | dict[str, Any] | None") -> "Preprocess":
        """This one, with the fields it leaves unset taken from ``fallback`` (what the ONNX file says)."""
        if not fallback:
            return self
        base = fallback if isinstance(fallback, Preprocess) else Preprocess.model_validate(fallback)
        return Preprocess.model_validate({**base.model_dump(exclude_unset=True), **self.model_dump(exclude_unset=True)})

    def check_channels(self, channels: int, where: str) -> None:
        for key in ("mean", "std"):
            v = getattr(self, key)
            if v is not None and len(v) not in (1, channels):
                raise ValueError(f"{where}: preprocess.{key} has {len(v)} values for {channels} input channels")
        if self.channel_order == "bgr" and channels != 3:
            raise ValueError(f"{where}: preprocess.channel_order = 'bgr' needs 3 channels, the input has {channels}")


# ------------------------------------------------------------------------------------------------ ONNX
def _static(dims: Sequence[Any]) -> tuple[int | None, ...]:
    return tuple(d if isinstance(d, int) and d > 0 else None for d in dims)


def from_onnx(session: Any) -> dict[str, Any]:
    """What an onnxruntime ``InferenceSession`` says about its model: ``input_shape`` ``(C, H, W)`` when all
    three are static, ``outputs`` (the first output's width when static), ``preprocess`` (a dict for
    :class:`Preprocess`, from the metadata properties). Missing facts are left out."""
    out: dict[str, Any] = {}
    ins = session.get_inputs()
    if len(ins) == 1 and len(ins[0].shape) == 4:
        chw = _static(ins[0].shape[1:])
        if all(d is not None for d in chw):
            out["input_shape"] = tuple(int(d) for d in chw)  # type: ignore[arg-type]
    outs = session.get_outputs()
    if outs and len(outs[0].shape) == 2:
        width = _static(outs[0].shape[1:])[0]
        if width is not None:
            out["outputs"] = int(width)
    try:
        props = dict(session.get_modelmeta().custom_metadata_map or {})
    except Exception:  # noqa: BLE001 - metadata is optional; a model without it is fine
        props = {}
    pre: dict[str, Any] = {}
    if "preprocess" in props:
        try:
            val = json.loads(props["preprocess"])
            if isinstance(val, dict):
                pre.update(val)
        except json.JSONDecodeError:
            pass
    for key in ("scale", "mean", "std", "channel_order", "size"):
        if key in props and key not in pre:
            raw = props[key]
            try:
                pre[key] = json.loads(raw)
            except json.JSONDecodeError:
                pre[key] = raw
    if pre:
        out["preprocess"] = {k: v for k, v in pre.items() if k in Preprocess.model_fields}
    return out


__all__ = ["Preprocess", "from_onnx"]
