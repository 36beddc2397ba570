"""Helpers shared by several metric plugins (``plugins/metrics``): batched feature extraction, the reference
set of the set metrics (the private images of the attacked identities) and its features and statistics,
per-class centroids, nearest same-identity private images, and per-sample side inputs aligned with the
``update`` stream. Gaussian feature statistics, the Fréchet distance and the MMD of KID are
:mod:`invertkit.core.stats`; the look-up and loading of local pretrained files (FID/KID Inception, LPIPS
AlexNet/VGG) are :mod:`invertkit.core.pretrained`; plugins import all of them from here.

Nothing here downloads: a pretrained file that is not on disk is a :class:`DataNotFoundError` naming the
file, the folders searched, where to put it and where it is published.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from invertkit.core.errors import ShapeError, UsageError
from invertkit.core.interfaces.metric import MetricContext
from invertkit.core.pretrained import (
    FID_FEATURE_DIM,
    FID_WEIGHTS_FILE,
    FID_WEIGHTS_URL,
    FIDInceptionFeatures,
    build_fid_inception,
    cached_net,
    file_key,
    find_weights,
    load_fid_inception,
    load_state_file,
    to_rgb,
    weights_search_dirs,
)
from invertkit.core.stats import GaussianStats, frechet_distance, kid, polynomial_mmd_unbiased

__all__ = [
    "FID_FEATURE_DIM",
    "FID_WEIGHTS_FILE",
    "FID_WEIGHTS_URL",
    "AlignedExtra",
    "FIDInceptionFeatures",
    "GaussianStats",
    "attacked_mask",
    "build_fid_inception",
    "cached_net",
    "check_labels",
    "class_centroids",
    "features",
    "fid_inception_for",
    "file_key",
    "find_weights",
    "frechet_distance",
    "kid",
    "load_fid_inception",
    "load_state_file",
    "nearest_same_identity",
    "polynomial_mmd_unbiased",
    "private_features",
    "reference_eval_features",
    "reference_features",
    "reference_images",
    "reference_stats",
    "to_rgb",
    "weights_search_dirs",
]


# ------------------------------------------------------------------ the FID Inception of a metric
def fid_inception_for(given: str | None, device: torch.device) -> nn.Module:
    """Resolve (never download) and load the FID Inception for a metric whose ``weights`` option is ``given``.

    It lives here, not in :mod:`~invertkit.core.pretrained`, and calls this module's ``load_fid_inception``:
    patching ``invertkit.core.metrics.load_fid_inception`` gives every Inception metric a stand-in network."""
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
