"""The torch target backend: an architecture (invertkit's zoo or timm) plus self-describing safetensors weights.

``weights = "preset"`` takes the scenario's trained target. A ``.safetensors`` file is loaded into
``arch`` (or, if the entry names none, the architecture recorded in the file's invertkit metadata). Pickled
checkpoints (``.pt``/``.pth``/``.ckpt``) are refused unless ``INVERTKIT_ALLOW_PICKLE=1`` is set: unpickling
runs code from the file.
"""

from __future__ import annotations

from pathlib import Path

import torch

from invertkit.core.cache import PICKLE_SUFFIXES, read_meta  # noqa: F401 - re-exported
from invertkit.core.cache import load_checkpoint as load_weights
from invertkit.core.errors import CheckpointError
from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.capability import ACCESS_LEVELS
from invertkit.core.interfaces.target import TargetBackend, TargetModel, TorchTarget
from invertkit.core.zoo.arch import build_architecture



#: an architecture from the registry, or ``timm:<name>`` from timm (no pretrained download)
build_module = build_architecture


class TorchBackend(TargetBackend):
    name = "torch"
    summary = "nn.Module architecture + safetensors weights (white-box capable)"

    def load(self, spec, scenario, plugins) -> TargetModel:  # noqa: ANN001
        caps = ACCESS_LEVELS[spec.access]
        if spec.weights == "preset":
            net = scenario.target_net
        else:
            meta = read_meta(spec.weights) if Path(spec.weights).suffix == ".safetensors" else {}
            arch = spec.arch or meta.get("arch")
            if not arch:
                raise CheckpointError(f"{spec.weights}: no 'arch' given and none recorded in the file")
            net = build_module(plugins, arch, scenario.num_classes, scenario.image_shape, meta.get("arch_options"))
            load_weights(net, spec.weights)
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
