"""LPIPS (Zhang et al., CVPR 2018, https://arxiv.org/abs/1801.03924; https://github.com/richzhang/PerceptualSimilarity)
between each reconstruction and the nearest (pixel L2) private image of the same identity, averaged over
reconstructions. Lower means perceptually closer to a private image. Version 0.1 with the linear layers
calibrated on human judgements (shipped inside the ``lpips`` package) on the AlexNet backbone (``net``:
alex, the paper's recommended forward metric; vgg; squeeze).

The backbone's ImageNet weights are torchvision's, read from a local file and never downloaded: the
torchvision file name (``alexnet-owt-7be5be79.pth``, ``vgg16-397923af.pth``, ``squeezenet1_1-b8a52dc0.pth``)
in the option ``backbone_weights`` (the file or its folder), else in ``$INVERTKIT_CACHE/weights/`` or the
torch hub checkpoints folder (where torchvision caches it); read with ``torch.load(weights_only=True)``.
Only its ``features.*`` tensors are needed. Grey images are repeated to three channels; images smaller
than ``min_size`` are bilinearly upsampled to it (AlexNet's stride-4 stem needs about 32 px; LPIPS was
calibrated on 64x64 patches)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from invertkit.core.errors import CheckpointError, InvertkitError
from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.config import ComponentConfig
from invertkit.core.interfaces.metric import Metric, MetricContext
from invertkit.core.metrics import cached_net, file_key, find_weights, load_state_file, nearest_same_identity, to_rgb

BACKBONES = {"alex": "AlexNet_Weights", "vgg": "VGG16_Weights", "squeeze": "SqueezeNet1_1_Weights"}


def backbone_file(net: str) -> tuple[str, str]:
    """(file name, download URL) of torchvision's ImageNet weights for LPIPS backbone ``net``."""
    import torchvision.models as tvm

    url = getattr(tvm, BACKBONES[net]).IMAGENET1K_V1.url
    return url.rsplit("/", 1)[1], url


def build_lpips(net: str, backbone_path: Path) -> nn.Module:
    """``lpips.LPIPS`` with its packaged linear layers and a randomly initialised backbone (no download),
    then the backbone's ``features.*`` tensors loaded from ``backbone_path``."""
    try:
        import lpips
    except ImportError:
        raise InvertkitError("the lpips metric needs the lpips package: pip install 'invertkit[metrics]'") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torchvision's "pretrained is deprecated" from lpips
        model = lpips.LPIPS(net=net, version="0.1", pretrained=True, pnet_rand=True, verbose=False)
    state = load_state_file(backbone_path)
    own = model.net.state_dict()  # keys "slice<k>.<i>.weight" where <i> indexes torchvision's .features
    new = {}
    for key in own:
        src = "features." + key.split(".", 1)[1]
        if src not in state:
            raise CheckpointError(f"{backbone_path} is not torchvision's {net} weights: tensor '{src}' is missing")
        if tuple(state[src].shape) != tuple(own[key].shape):
            raise CheckpointError(f"{backbone_path}: '{src}' has shape {tuple(state[src].shape)}, "
                                  f"the {net} backbone expects {tuple(own[key].shape)}")
        new[key] = state[src]
    model.net.load_state_dict(new)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class LPIPSDistance(Metric):
    name = "lpips"
    needs = frozenset({"private"})
    paper = "https://arxiv.org/abs/1801.03924"
    keys = ("lpips",)
    higher_is_better = {"lpips": False}
    summary = "LPIPS to the nearest private image of the same identity (local backbone weights)."

    class Config(ComponentConfig):
        net: Literal["alex", "vgg", "squeeze"] = Field("alex", description="LPIPS backbone (paper default: alex)")
        backbone_weights: str | None = Field(
            None, description="torchvision's ImageNet weights of the backbone (file or folder); default: "
            "$INVERTKIT_CACHE/weights/, then the torch hub checkpoints folder")
        min_size: int = Field(64, ge=32, le=1024, description="smaller images are upsampled to this side")
        batch_size: int = Field(64, ge=1, le=4096, description="image pairs per LPIPS forward pass")

    def __init__(self, ctx: MetricContext, config=None) -> None:  # noqa: ANN001
        super().__init__(ctx, config)
        c = self.config
        fname, url = backbone_file(c.net)
        path = find_weights(fname, c.backbone_weights, what=f"LPIPS {c.net} backbone", url=url,
                            option="backbone_weights")
        self.model = cached_net(("lpips", c.net, *file_key(path), str(ctx.device)),
                                lambda: build_lpips(c.net, path).to(ctx.device))

    def reset(self) -> None:
        self.sum = 0.0
        self.count = 0

    def _prep(self, x: Tensor) -> Tensor:
        x = to_rgb(x.to(self.ctx.device).float())
        h, w = x.shape[2:]
        if min(h, w) < self.config.min_size:
            s = self.config.min_size / min(h, w)
            x = F.interpolate(x, size=(round(h * s), round(w * s)), mode="bilinear", align_corners=False)
        return x

    def update(self, images: Tensor, labels: Tensor) -> None:
        if len(images) == 0:
            return
        idx = nearest_same_identity(images, labels, self.ctx.private_images, self.ctx.private_labels)
        keep = (idx >= 0).nonzero().flatten()
        bs = self.config.batch_size
        with torch.no_grad():
            for i in range(0, len(keep), bs):
                rows = keep[i : i + bs]
                a = self._prep(images[rows])
                b = self._prep(self.ctx.private_images[idx[rows]])
                d = self.model(a, b, normalize=True).flatten()
                self.sum += float(d.double().sum())
                self.count += len(rows)

    def compute(self) -> dict[str, float]:
        return {"lpips": self.sum / self.count if self.count else float("nan")}


@hookimpl
def invertkit_register_metrics(register) -> None:
    register(LPIPSDistance)
