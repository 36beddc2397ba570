"""A standalone target's scenario: what a model the user brings comes with, from its own registry entry.

invertkit trains no target and no evaluation model for it. The scenario holds:

* the model's facts — ``input_shape`` (the entry's, or the ONNX graph's), the output width, ``num_classes``,
  and the preprocessing (the entry's over the file's; :mod:`invertkit.core.preprocess`) — in ``facts["model"]``,
  which the backend reads to load the target;
* the attacker's ``public`` images, decoded at the attack-side image size (``image_size``, default the model's
  input side) and channel count;
* the user's ``private`` images when given (labels are the target's class indices): then KNN distance, FID and
  the defended natural accuracy apply; both private splits are the whole set (it is the user's reference, not a
  training set of invertkit's);
* the user's evaluation model (``eval``) when given, behind its own preprocessing: then acc@1 applies;
* the prior (``prior``), trained on the public images and cached like a preset's.

Cache keys cover the model file's bytes (SHA-256) and the entry, so a changed file is a new target.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from invertkit.core.cache import cache_dir, content_key, file_digest
from invertkit.core.catalog import DataSpec, ModelFile, TargetSpec
from invertkit.core.data import Split
from invertkit.core.errors import CheckpointError, UsageError
from invertkit.core.plugins import Plugins
from invertkit.core.zoo.model_cache import fingerprint
from invertkit.core.zoo.preset_models import trained_prior
from invertkit.core.zoo.scenario import Scenario, prior_needs_target

_MEMO: dict[str, Scenario] = {}


def model_facts(name: str, spec: TargetSpec, plugins: Plugins) -> dict[str, Any]:
    """``input_shape``, ``outputs``, ``num_classes``, ``image_shape`` and ``preprocess`` of a brought model: the
    entry's values where it gives them, else what the model file says; a conflict or a missing fact is one line."""
    backend = plugins.get("backend", spec.backend)()
    said = backend.inspect(spec, plugins)
    shape = spec.input_shape or said.get("input_shape")
    if shape is None:
        raise CheckpointError(f"target '{name}': the model does not say its input size: give input_shape = [C, H, W]")
    if spec.input_shape and said.get("input_shape") and tuple(said["input_shape"]) != tuple(spec.input_shape):
        raise CheckpointError(f"target '{name}': input_shape = {list(spec.input_shape)} but the model file says "
                              f"{list(said['input_shape'])}")
    outputs = said.get("outputs")
    if spec.kind == "classifier":
        if spec.num_classes and outputs and outputs != spec.num_classes:
            raise CheckpointError(f"target '{name}': num_classes = {spec.num_classes} but the model outputs {outputs} "
                                  "scores")
        num_classes = spec.num_classes or outputs
        if not num_classes:
            raise CheckpointError(f"target '{name}': the model does not say how many classes it has: give num_classes")
    else:  # an embedder releases templates; its "classes" are the identities of the user's private data, if any
        num_classes = spec.num_classes or 1
    c, h, w = (int(v) for v in shape)
    image_shape = (c, spec.image_size, spec.image_size) if spec.image_size else (c, h, w)
    pre = spec.preprocess.merged(said.get("preprocess"))
    try:
        pre.check_channels(c, f"target '{name}'")
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return {"input_shape": [c, h, w], "outputs": outputs, "num_classes": int(num_classes),
            "image_shape": list(image_shape), "preprocess": pre.model_dump(mode="json")}


def load_images(plugins: Plugins, data: DataSpec, image_shape: tuple[int, int, int], what: str) -> tuple[Tensor, Tensor]:
    """A data entry's images at ``image_shape``: ``size`` and ``channels`` are passed to adapters that take them
    (the folder adapters) unless the entry sets them; any other adapter must already give that shape."""
    adapter = plugins.get("dataset", data.dataset)()
    fields = getattr(type(adapter).Config, "model_fields", {})
    options = dict(data.options)
    if "size" in fields and "size" not in options:
        if image_shape[1] != image_shape[2]:
            raise UsageError(f"{what}: '{data.dataset}' makes square images, the target's are {image_shape[1:]}; "
                             "set image_size")
        options["size"] = image_shape[1]
    if "channels" in fields and "channels" not in options:
        options["channels"] = image_shape[0]
    x, y = adapter.load(data.root, **options)
    if tuple(x.shape[1:]) != tuple(image_shape):
        raise UsageError(f"{what}: dataset '{data.dataset}' gives images of shape {tuple(x.shape[1:])}, the target's "
                         f"images are {tuple(image_shape)} (set the dataset's size/channels options or image_size)")
    if data.classes is not None:
        keep = torch.isin(y, torch.tensor(data.classes))
        x, y = x[keep], y[keep]
    if len(x) == 0:
        raise UsageError(f"{what}: dataset '{data.dataset}' gave no images")
    return x, y


def eval_model(name: str, spec: TargetSpec, plugins: Plugins, num_classes: int, image_shape: tuple[int, int, int]):  # noqa: ANN201
    """The user's evaluation model (a torch network with a features/head split, behind its preprocessing)."""
    from invertkit.core.interfaces.target import split_classifier
    from invertkit.core.preprocess_module import wrap
    from invertkit.plugins.targets.torch_backend import brought_module

    ev = spec.eval
    if ev.backend != "torch":
        raise UsageError(f"target '{name}': eval.backend = '{ev.backend}': an evaluation model must be a torch "
                         "network (its features give KNN distances)")
    shape = tuple(spec.input_shape or image_shape)
    net = brought_module(ev, plugins, num_classes, shape)
    pre = ev.preprocess
    if pre.size is None and shape[1:] != tuple(image_shape[1:]):
        pre = pre.model_copy(update={"size": shape[1:]})
    net = wrap(net, pre, image_shape).eval()
    if split_classifier(net) is None:
        raise UsageError(f"target '{name}': the evaluation model has no features/head split (give it features(x) "
                         "and head(f) methods, or use a timm model)")
    return net


def standalone_data(name: str, spec: TargetSpec, plugins: Plugins, *, private: bool = True) -> tuple[dict[str, Any], Split]:
    """The model's facts (:func:`model_facts`) and the data split: the public images, and the user's private
    images when the entry has them (and ``private``)."""
    facts = model_facts(name, spec, plugins)
    image_shape = tuple(facts["image_shape"])
    public = load_images(plugins, spec.public, image_shape, f"target '{name}' public data")
    if private and spec.private is not None:
        mine = load_images(plugins, spec.private, image_shape, f"target '{name}' private data")
        if int(mine[1].min()) < 0 or int(mine[1].max()) >= facts["num_classes"]:
            raise UsageError(f"target '{name}': private labels must be the target's class indices 0..{facts['num_classes'] - 1} "
                             f"(got {int(mine[1].min())}..{int(mine[1].max())}); keep a subset with classes = [...]")
    else:
        mine = (torch.empty((0, *image_shape)), torch.empty((0,), dtype=torch.long))
    split = Split(private_train=mine, private_test=mine, public=public,
                  private_classes=tuple(range(facts["num_classes"])), public_classes=())
    return facts, split


def probe_scenario(name: str, spec: TargetSpec, plugins: Plugins) -> Scenario:
    """Enough of a standalone target's scenario to load the target (facts, public images), without training
    or loading a prior or an evaluation model: what ``validate`` inspects."""
    facts, split = standalone_data(name, spec, plugins, private=False)
    return Scenario(name=name, preset=None, split=split, target_net=None, eval_net=None, prior=None,
                    facts={"model": facts, "standalone": True})


def _model_key(model: ModelFile) -> str:
    """A brought model's cache key: its entry (less the summary) and the bytes of its files."""
    weights = file_digest(Path(model.weights).expanduser()) if model.weights not in ("preset", "") else ""
    module_file = model.module.rpartition(":")[0] if model.module and ".py:" in model.module else model.module
    module = file_digest(Path(module_file).expanduser()) if module_file else ""
    return content_key({"entry": model.model_dump(mode="json", exclude={"summary"}), "weights": weights, "module": module})


def build_standalone(name: str, spec: TargetSpec, plugins: Plugins) -> Scenario:
    """The scenario of standalone target ``name`` (memoised per entry, model file and cache folder)."""
    memo_key = content_key({"name": name, "model": _model_key(spec), "cache": str(cache_dir()),
                            "eval": _model_key(spec.eval) if spec.eval else ""})
    if memo_key in _MEMO:
        return _MEMO[memo_key]
    t0 = time.perf_counter()
    facts, split = standalone_data(name, spec, plugins)
    target_key = _model_key(spec)
    data_key = fingerprint(*split.public, *split.private_train)
    image_shape = tuple(facts["image_shape"])
    eval_net = eval_model(name, spec, plugins, facts["num_classes"], image_shape) if spec.eval is not None else None
    prior, p_facts, p_key = None, {}, ""
    if spec.prior is not None:
        if prior_needs_target(plugins, spec.prior):
            p_facts, p_key = {"fitted": "per (target, defense), through the attacker's view"}, "per-cell"
        else:
            prior, p_facts, p_key = trained_prior(plugins, spec.prior, split, name)
    sc = Scenario(name=name, preset=None, split=split, target_net=None, eval_net=eval_net, prior=prior,
                  prior_recipe=spec.prior,
                  facts={"model": facts, "prior": p_facts, "load_seconds": time.perf_counter() - t0,
                         "standalone": True},
                  keys={"target": target_key, "prior": p_key, "data": data_key,
                        **({"eval": _model_key(spec.eval)} if spec.eval else {})})
    _MEMO[memo_key] = sc
    return sc


__all__ = ["build_standalone", "probe_scenario", "standalone_data", "model_facts", "load_images"]
