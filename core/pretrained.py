"""Local pretrained files and the networks built from them: the look-up (never a download) and loading of
the files that FID/KID (Inception) and LPIPS (AlexNet/VGG) need, an in-process cache of loaded networks, and
the FID Inception itself. Metric plugins import these from :mod:`invertkit.core.metrics`.

A pretrained file that is not on disk is a :class:`~invertkit.core.errors.DataNotFoundError` naming the
file, the folders searched, where to put it and where it is published.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from invertkit.core.cache import cache_dir
from invertkit.core.errors import CheckpointError, DataNotFoundError, InvertkitError, ShapeError

#: pytorch-fid's port of the TensorFlow FID Inception (the network every FID in the literature uses)
FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{FID_WEIGHTS_FILE}"
FID_FEATURE_DIM = 2048


# ------------------------------------------------------------------ local pretrained files
def weights_search_dirs() -> list[Path]:
    """Where a pretrained file is looked for when no explicit path is given, in order:
    ``$INVERTKIT_CACHE/weights/`` and the torch hub checkpoints folder (``$TORCH_HOME/hub/checkpoints``)."""
    return [cache_dir() / "weights", Path(torch.hub.get_dir()) / "checkpoints"]


def find_weights(filename: str, given: str | None, *, what: str, url: str, option: str) -> Path:
    """The local path of pretrained file ``filename``.

    ``given`` (a metric's config option ``option``) is either the file itself or a folder holding
    ``filename``; without it the :func:`weights_search_dirs` are searched. Never downloads.
    """
    if given:
        p = Path(given).expanduser()
        candidates = [p / filename] if p.is_dir() else [p]
    else:
        candidates = [d / filename for d in weights_search_dirs()]
    for c in candidates:
        if c.is_file():
            return c
    where = ", ".join(str(c) for c in candidates)
    if not given or Path(given).expanduser().is_dir():
        put = f"put it in {candidates[0].parent}"
    else:
        put = f"save it as {candidates[0]}"
    raise DataNotFoundError(
        f"{what} weights file '{filename}' not found (looked for {where}); invertkit never downloads at run time: "
        f"download it from {url} and {put}, or pass the metric option {option}=PATH"
    )


def load_state_file(path: str | Path) -> dict[str, Tensor]:
    """A state dict from ``.safetensors`` or from a torch ``.pth`` read with ``torch.load(weights_only=True)``:
    PyTorch's restricted unpickler, which accepts only tensors and plain containers and cannot run code
    from the file (the published FID/LPIPS backbone files are plain state dicts)."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one clear error
        why = str(exc).splitlines()[0] if str(exc) else repr(exc)
        raise CheckpointError(f"{path}: cannot be read as a state dict: {why}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")
    return {k.removeprefix("module."): v for k, v in state.items()}


_NETS: OrderedDict[tuple[Any, ...], nn.Module] = OrderedDict()
_MAX_NETS = 4


def cached_net(key: tuple[Any, ...], build: Callable[[], nn.Module]) -> nn.Module:
    """An in-process cache of loaded pretrained networks (a bench builds a metric per cell)."""
    if key in _NETS:
        _NETS.move_to_end(key)
        return _NETS[key]
    net = build()
    _NETS[key] = net
    while len(_NETS) > _MAX_NETS:
        _NETS.popitem(last=False)
    return net


def file_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return (str(path.resolve()), st.st_mtime_ns, st.st_size)


# ------------------------------------------------------------------ the FID Inception
class FIDInceptionFeatures(nn.Module):
    """pytorch-fid's ``InceptionV3(output_blocks=[3])``: images in ``[0, 1]`` (grey repeated to three
    channels) resized bilinearly to 299x299, scaled to ``[-1, 1]``, through the FID Inception up to the
    final average pool: ``(N, 2048)`` features. Built from pytorch-fid's patched Inception blocks and a
    local weights file instead of its download."""

    def __init__(self, state: dict[str, Tensor], source: str = "<state>") -> None:
        super().__init__()
        try:
            from pytorch_fid.inception import FIDInceptionA, FIDInceptionC, FIDInceptionE_1, FIDInceptionE_2
        except ImportError:
            raise InvertkitError("the fid/kid metrics need pytorch-fid: pip install 'invertkit[metrics]'") from None
        from torchvision.models import inception_v3

        net = inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)
        net.Mixed_5b = FIDInceptionA(192, pool_features=32)
        net.Mixed_5c = FIDInceptionA(256, pool_features=64)
        net.Mixed_5d = FIDInceptionA(288, pool_features=64)
        net.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
        net.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
        net.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
        net.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
        net.Mixed_7b = FIDInceptionE_1(1280)
        net.Mixed_7c = FIDInceptionE_2(2048)
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            raise CheckpointError(f"{source} does not fit the FID Inception: {str(exc).splitlines()[0]}") from None
        self.blocks = nn.Sequential(
            net.Conv2d_1a_3x3, net.Conv2d_2a_3x3, net.Conv2d_2b_3x3, nn.MaxPool2d(kernel_size=3, stride=2),
            net.Conv2d_3b_1x1, net.Conv2d_4a_3x3, nn.MaxPool2d(kernel_size=3, stride=2),
            net.Mixed_5b, net.Mixed_5c, net.Mixed_5d, net.Mixed_6a, net.Mixed_6b, net.Mixed_6c, net.Mixed_6d,
            net.Mixed_6e,
            net.Mixed_7a, net.Mixed_7b, net.Mixed_7c, nn.AdaptiveAvgPool2d((1, 1)),
        )
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        x = to_rgb(x)
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return self.blocks(2 * x - 1).flatten(1)


def build_fid_inception(path: str | Path) -> nn.Module:
    path = Path(path)
    return FIDInceptionFeatures(load_state_file(path), source=str(path))


def load_fid_inception(path: Path, device: torch.device) -> nn.Module:
    """The FID Inception from local file ``path`` on ``device`` (cached in-process)."""
    return cached_net(("fid-inception", *file_key(path), str(device)), lambda: build_fid_inception(path).to(device))


def to_rgb(images: Tensor) -> Tensor:
    """Grey ``(N, 1, H, W)`` repeated to three channels (as PIL's ``convert('RGB')`` does); others unchanged."""
    if images.dim() != 4:
        raise ShapeError(f"expected images of shape (N, C, H, W), got {tuple(images.shape)}")
    if images.shape[1] == 1:
        return images.expand(-1, 3, -1, -1)
    if images.shape[1] != 3:
        raise ShapeError(f"expected 1 or 3 channels, got {images.shape[1]}")
    return images
