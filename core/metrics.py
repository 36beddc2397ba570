"""Helpers shared by several metric plugins (``plugins/metrics``): batched feature extraction, Gaussian
feature statistics and the Fréchet distance, the unbiased polynomial-kernel MMD of KID, the reference set
of the set metrics (the private images of the attacked identities), nearest same-identity private images,
per-sample side inputs aligned with the ``update`` stream, and the look-up/loading of the local pretrained
files that FID/KID (Inception) and LPIPS (AlexNet/VGG) need.

Nothing here downloads: a pretrained file that is not on disk is a :class:`DataNotFoundError` naming the
file, the folders searched, where to put it and where it is published.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from invertkit.core.cache import cache_dir
from invertkit.core.errors import CheckpointError, DataNotFoundError, InvertkitError, ShapeError, UsageError
from invertkit.core.interfaces.metric import MetricContext

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


def fid_inception_for(given: str | None, device: torch.device) -> nn.Module:
    """Resolve (never download) and load the FID Inception for a metric whose ``weights`` option is ``given``."""
    path = find_weights(FID_WEIGHTS_FILE, given, what="FID Inception", url=FID_WEIGHTS_URL, option="weights")
    return load_fid_inception(path, device)


def reference_features(net: nn.Module, images: Tensor, device: torch.device, batch_size: int) -> Tensor:
    """``net``'s features of the reference images (:func:`reference_images`), kept on the network object
    (with the :class:`GaussianStats` of them, see :func:`reference_stats`) so that the fid, kid and prdc
    metrics of every bench cell share one pass over the reference set."""
    store, key = _reference_store(net, images)
    if key not in store:
        store[key] = {"features": features(net, images, device, batch_size)}
    return store[key]["features"]


def reference_stats(net: nn.Module, images: Tensor, device: torch.device, batch_size: int) -> "GaussianStats":
    feats = reference_features(net, images, device, batch_size)
    store, key = _reference_store(net, images)
    if "stats" not in store[key]:
        store[key]["stats"] = GaussianStats.from_features(feats)
    return store[key]["stats"]


def _reference_store(net: nn.Module, images: Tensor) -> tuple[dict[str, dict[str, Any]], str]:
    from invertkit.core.zoo.scenario import fingerprint

    store: dict[str, dict[str, Any]] = net.__dict__.setdefault("_invertkit_reference", {})
    key = f"{fingerprint(images)}-{len(images)}"
    if key not in store and len(store) >= 4:
        store.pop(next(iter(store)))
    return store, key


# ------------------------------------------------------------------ features
def to_rgb(images: Tensor) -> Tensor:
    """Grey ``(N, 1, H, W)`` repeated to three channels (as PIL's ``convert('RGB')`` does); others unchanged."""
    if images.dim() != 4:
        raise ShapeError(f"expected images of shape (N, C, H, W), got {tuple(images.shape)}")
    if images.shape[1] == 1:
        return images.expand(-1, 3, -1, -1)
    if images.shape[1] != 3:
        raise ShapeError(f"expected 1 or 3 channels, got {images.shape[1]}")
    return images


def features(fn: Callable[[Tensor], Tensor], images: Tensor, device: torch.device, batch_size: int = 512) -> Tensor:
    """``fn`` over ``images`` in batches, without gradients: ``(N, D)`` float64 on the CPU."""
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            f = fn(images[i : i + batch_size].to(device))
            out.append(f.reshape(len(f), -1).detach().cpu().double())
    if not out:
        return torch.zeros(0, 0, dtype=torch.float64)
    return torch.cat(out)


def attacked_mask(ctx: MetricContext) -> Tensor:
    """Which private images belong to an attacked identity: a boolean mask over ``ctx.private_labels``
    (every image when ``ctx.attacked`` is ``None``)."""
    labels = ctx.private_labels.detach().cpu().long()
    if ctx.attacked is None:
        return torch.ones(len(labels), dtype=torch.bool)
    attacked = torch.as_tensor(ctx.attacked).detach().cpu().long().flatten()
    return torch.isin(labels, attacked)


def reference_images(ctx: MetricContext) -> Tensor:
    """The reference set of the set metrics (FID, KID, PRDC, fid-eval): the private images of the identities
    attacked in the cell (``ctx.attacked``; all private images when ``None``), as in the official
    KEDMI-lineage evaluation (Re-thinking_MI), which compares the reconstructions of the attacked identities
    with those identities' private images only."""
    if ctx.attacked is None:
        return ctx.private_images
    return ctx.private_images[attacked_mask(ctx).to(ctx.private_images.device)]


def reference_eval_features(ctx: MetricContext, batch_size: int = 512) -> Tensor:
    """Evaluation-model features of :func:`reference_images`: the rows of :func:`private_features` (computed
    once per context) of the attacked identities."""
    feats = private_features(ctx, batch_size)
    return feats if ctx.attacked is None else feats[attacked_mask(ctx)]


def private_features(ctx: MetricContext, batch_size: int = 512) -> Tensor:
    """Evaluation-model features of the private images, computed once per :class:`MetricContext` (the
    runner builds one context per cell and every metric of the cell shares it)."""
    store: dict[str, Tensor] = ctx.__dict__.setdefault("_invertkit_cache", {})
    if "private_eval_features" not in store:
        store["private_eval_features"] = features(ctx.eval_features, ctx.private_images, ctx.device, batch_size)
    return store["private_eval_features"]


def check_labels(labels: Tensor, num_classes: int) -> Tensor:
    """``labels`` as a CPU long tensor, each in ``[0, num_classes)`` (else one clear error)."""
    labels = labels.cpu().long()
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise UsageError(f"labels must lie in [0, {num_classes}), "
                         f"got values in [{int(labels.min())}, {int(labels.max())}]")
    return labels


def class_centroids(feats: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """``(num_classes, D)`` per-class means of ``feats`` and a mask of the classes that have any sample."""
    labels = check_labels(labels, num_classes)
    sums = torch.zeros(num_classes, feats.shape[1], dtype=torch.float64).index_add_(0, labels, feats.double())
    counts = torch.bincount(labels, minlength=num_classes)
    present = counts > 0
    cent = sums / counts.clamp(min=1)[:, None].double()
    return cent, present


# ------------------------------------------------------------------ Gaussian statistics, Fréchet distance
@dataclass
class GaussianStats:
    """Mean, a factor ``L`` of the (unbiased) covariance ``S = L Lᵀ`` and ``tr S`` of a feature set.

    ``L`` is the centred data ``Xcᵀ / sqrt(n-1)`` (``d x n``) when ``n <= d`` and the symmetric square
    root of ``S`` (``d x d``) otherwise: both exact, the first cheap for few samples in 2048 dimensions.
    """

    mean: Tensor
    factor: Tensor
    trace: float
    n: int

    @classmethod
    def from_features(cls, feats: Tensor) -> "GaussianStats":
        x = feats.double()
        n, d = x.shape
        if n < 2:
            raise UsageError(f"a covariance needs at least 2 samples, got {n}")
        mean = x.mean(0)
        xc = x - mean
        if n <= d:
            factor = xc.T / math.sqrt(n - 1)
        else:
            cov = xc.T @ xc / (n - 1)
            evals, evecs = torch.linalg.eigh((cov + cov.T) / 2)
            factor = (evecs * evals.clamp(min=0).sqrt()) @ evecs.T
        return cls(mean, factor, float((factor * factor).sum()), n)


def frechet_distance(a: GaussianStats, b: GaussianStats) -> float:
    """``||mu_a - mu_b||² + tr S_a + tr S_b - 2 tr sqrt(S_a S_b)`` (Heusel et al. 2017, FID).

    ``tr sqrt(S_a S_b)`` is the nuclear norm of ``L_aᵀ L_b`` for any factors ``S = L Lᵀ``: the eigenvalues
    of ``S_a S_b`` are the squared singular values of ``L_aᵀ L_b``. Exact for singular covariances (no
    ``eps`` on the diagonal, no complex parts to drop, unlike ``scipy.linalg.sqrtm``)."""
    if a.mean.shape != b.mean.shape:
        raise ShapeError(f"feature dimensions differ: {a.mean.shape[0]} vs {b.mean.shape[0]}")
    tr_sqrt = float(torch.linalg.svdvals(a.factor.T @ b.factor).sum())
    diff = a.mean - b.mean
    return float(diff @ diff) + a.trace + b.trace - 2.0 * tr_sqrt


# ------------------------------------------------------------------ KID
def polynomial_mmd_unbiased(x: Tensor, y: Tensor) -> float:
    """Unbiased MMD² with the cubic polynomial kernel ``k(a, b) = (aᵀb / d + 1)³`` (Binkowski et al. 2018)."""
    m, n = len(x), len(y)
    d = x.shape[1]
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    off_x = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    off_y = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return float(off_x + off_y - 2 * kxy.mean())


def kid(x: Tensor, y: Tensor, subsets: int, subset_size: int, seed: int) -> tuple[float, float]:
    """Mean and standard deviation of :func:`polynomial_mmd_unbiased` over ``subsets`` random subsets of
    ``min(subset_size, len(x), len(y))`` samples of each set, drawn without replacement (seeded)."""
    m = min(subset_size, len(x), len(y))
    if m < 2:
        return float("nan"), float("nan")
    g = torch.Generator().manual_seed(seed)
    vals = []
    for _ in range(subsets):
        ix = torch.randperm(len(x), generator=g)[:m]
        iy = torch.randperm(len(y), generator=g)[:m]
        vals.append(polynomial_mmd_unbiased(x[ix].double(), y[iy].double()))
    v = torch.tensor(vals, dtype=torch.float64)
    return float(v.mean()), float(v.std(unbiased=False))


# ------------------------------------------------------------------ pixel-space pairing
def nearest_same_identity(images: Tensor, labels: Tensor, ref_images: Tensor, ref_labels: Tensor) -> Tensor:
    """For each image, the index into ``ref_images`` of the nearest (pixel L2) reference image with the same
    label; ``-1`` where that label has no reference image."""
    if tuple(images.shape[1:]) != tuple(ref_images.shape[1:]):
        raise ShapeError(f"reconstructions {tuple(images.shape[1:])} and private images "
                         f"{tuple(ref_images.shape[1:])} differ in shape")
    labels, ref_labels = labels.cpu(), ref_labels.cpu()
    out = torch.full((len(images),), -1, dtype=torch.long)
    flat = images.detach().cpu().reshape(len(images), -1).double()
    ref_flat = ref_images.detach().cpu().reshape(len(ref_images), -1).double()
    for y in labels.unique():
        rows = (labels == y).nonzero().flatten()
        cand = (ref_labels == y).nonzero().flatten()
        if len(cand) == 0:
            continue
        d = torch.cdist(flat[rows], ref_flat[cand])
        out[rows] = cand[d.argmin(dim=1)]
    return out


class AlignedExtra:
    """A per-sample side input ``ctx.extras[key]`` (e.g. leaked templates, paired reference images) aligned
    with the *concatenation of all* ``update`` calls in order: each call takes the next ``len(images)``
    rows, so the value does not depend on how the reconstructions were split into batches. (The runner
    calls ``update`` once with all reconstructions, where this is simply "aligned with the images".)"""

    def __init__(self, ctx: MetricContext, key: str) -> None:
        value = ctx.extras.get(key)
        if value is not None and not isinstance(value, Tensor):
            raise UsageError(f"ctx.extras['{key}'] must be a tensor aligned with the reconstructions, "
                             f"got {type(value).__name__}")
        self.key = key
        self.value: Tensor | None = value
        self.offset = 0

    @property
    def present(self) -> bool:
        return self.value is not None

    def reset(self) -> None:
        self.offset = 0

    def take(self, n: int) -> Tensor:
        if self.value is None:
            raise UsageError(f"ctx.extras['{self.key}'] is not set")
        if self.offset + n > len(self.value):
            raise ShapeError(f"ctx.extras['{self.key}'] has {len(self.value)} rows, but {self.offset + n} "
                             "reconstructions were given")
        out = self.value[self.offset : self.offset + n]
        self.offset += n
        return out
