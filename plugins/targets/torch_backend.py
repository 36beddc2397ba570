"""The torch target backend: an architecture (invertkit's zoo or timm) plus self-describing safetensors weights.

``weights = "preset"`` takes the scenario's trained target. A ``.safetensors`` file is loaded into
``arch`` (or, if the entry names none, the architecture recorded in the file's invertkit metadata). Pickled
checkpoints (``.pt``/``.pth``/``.ckpt``) are refused unless ``INVERTKIT_ALLOW_PICKLE=1`` is set: unpickling
runs code from the file.

A standalone target (no preset: a model the user brings) is built from ``module`` (``file.py:build``, a
TorchScript or ``torch.export`` archive; :mod:`invertkit.core.usermodel`) or ``arch``, its ``weights`` loaded
through ``key_map``, and put behind its ``preprocess`` (:mod:`invertkit.core.preprocess_module`), which keeps
gradients flowing for white-box attacks.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from invertkit.core.cache import PICKLE_SUFFIXES, read_meta  # noqa: F401 - re-exported
from invertkit.core.cache import load_checkpoint as load_weights
from invertkit.core.errors import CheckpointError
from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.capability import ACCESS_LEVELS
from invertkit.core.interfaces.target import TargetBackend, TargetModel, TorchTarget
from invertkit.core.preprocess import Preprocess
from invertkit.core.preprocess_module import wrap
from invertkit.core.usermodel import load_user_module
from invertkit.core.zoo.arch import build_architecture


#: an architecture from the registry, or ``timm:<name>`` from timm (no pretrained download)
build_module = build_architecture


class Embedder(nn.Module):
    """A brought embedder (its output is the template) with the ``features``/``head`` split a target offers
    ``features`` through; ``head`` is the identity, and never released (``access = "embedding"``)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def head(self, f: torch.Tensor) -> torch.Tensor:
        return f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def brought_module(model, plugins, num_classes: int | None, model_shape: tuple[int, int, int]) -> nn.Module:  # noqa: ANN001
    """A user's network (a :class:`~invertkit.core.catalog.ModelFile`): ``module`` (``file.py:build``, TorchScript,
    ``torch.export``) or ``arch``, with ``weights`` loaded through ``key_map`` when a weights file is named."""
    has_file = model.weights not in ("preset", "", None)
    if model.module is not None:
        net = load_user_module(model.module, model.module_options)
    else:
        meta = read_meta(model.weights) if has_file and Path(model.weights).suffix == ".safetensors" else {}
        arch = model.arch or meta.get("arch")
        if not arch:
            raise CheckpointError(f"{model.weights}: no 'arch' or 'module' given and no architecture recorded in the file")
        if num_classes is None:
            raise CheckpointError(f"architecture '{arch}' is built for a number of classes: give num_classes")
        net = build_module(plugins, arch, num_classes, model_shape, model.arch_options or meta.get("arch_options"))
    if has_file:
        load_weights(net, Path(model.weights).expanduser(), model.key_map)
    return net.eval()


def output_width(net: nn.Module, model_shape: tuple[int, int, int]) -> int:
    """The width of ``net``'s output on one blank image (one clear line when it does not run on it)."""
    try:
        with torch.no_grad():
            out = net(torch.zeros(1, *model_shape))
    except Exception as exc:  # noqa: BLE001 - the user's network: report what it raised
        raise CheckpointError(f"the network does not run on inputs of shape {tuple(model_shape)}: "
                              f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise CheckpointError(f"the network's output is {got}, expected (N, classes) or (N, template size)")
    return int(out.shape[1])


class TorchBackend(TargetBackend):
    name = "torch"
    summary = "nn.Module architecture + safetensors weights (white-box capable), or a user's file.py:build / TorchScript"

    def inspect(self, model, plugins) -> dict:  # noqa: ANN001
        """A brought network's facts: ``input_shape`` as declared (a torch module does not say), ``outputs`` by
        running it once."""
        shape = getattr(model, "input_shape", None)
        if shape is None:
            raise CheckpointError("a torch target without a preset needs input_shape = [C, H, W] (the network's input)")
        net = brought_module(model, plugins, getattr(model, "num_classes", None), tuple(shape))
        return {"input_shape": tuple(shape), "outputs": output_width(net, tuple(shape))}

    def load(self, spec, scenario, plugins) -> TargetModel:  # noqa: ANN001
        caps = ACCESS_LEVELS[spec.access]
        if getattr(spec, "standalone", False):
            facts = scenario.facts["model"]
            model_shape = tuple(facts["input_shape"])
            net = brought_module(spec, plugins, scenario.num_classes, model_shape)
            if spec.kind == "embedder":
                net = Embedder(net)
            pre = Preprocess.model_validate(facts["preprocess"])
            if pre.size is None and model_shape[1:] != tuple(scenario.image_shape[1:]):
                pre = pre.model_copy(update={"size": model_shape[1:]})
            net = wrap(net, pre, scenario.image_shape)
        elif spec.weights == "preset":
            net = scenario.target_net
        else:
            meta = read_meta(spec.weights) if Path(spec.weights).suffix == ".safetensors" else {}
            arch = spec.arch or meta.get("arch")
            if not arch:
                raise CheckpointError(f"{spec.weights}: no 'arch' given and none recorded in the file")
            net = build_module(plugins, arch, scenario.num_classes, scenario.image_shape, meta.get("arch_options"))
            load_weights(net, spec.weights, spec.key_map)
            net = wrap(net, spec.preprocess, scenario.image_shape)
        return TorchTarget(
            net,
            num_classes=scenario.num_classes,
            input_shape=scenario.image_shape,
            capabilities=caps,
            budget=spec.budget,
            name="target",
        )


@hookimpl
def invertkit_register_target_backends(register) -> None:
    register(TorchBackend)
