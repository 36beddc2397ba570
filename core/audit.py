"""What ``invertkit validate`` finds wrong with a brought target, beyond its file parsing: capabilities the
declared access promises but the backend cannot give, and an input scaling the model does not respond to.

Capability loss. ``access = "white-box"`` on an ONNX file cannot give gradients or weights, and
``access = "embedding"`` on a model whose output is not a template gives nothing at all; the target would
load with fewer capabilities than declared and every attack needing them would be skipped. Each loss is one
warning line naming what is lost and why.

Scaling. A model fed inputs in a range it was not trained on answers almost the same for every input (a face
embedder trained on 0..255 pixels maps every [0, 1] face to nearly one template). :func:`response` measures
how much a target's outputs vary across probe images, relative to their size; :func:`scaling_warning`
compares the declared preprocessing with the same preprocessing at 255 times and 1/255 times the scale, and
warns when the declared one barely responds while another responds many times more.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from invertkit.core.errors import InvertkitError
from invertkit.core.interfaces.capability import ACCESS_LEVELS, MODEL, Capability, describe
from invertkit.core.interfaces.target import TargetModel
from invertkit.core.preprocess import Preprocess

#: below this relative spread the outputs "barely respond" to their inputs
FLAT = 0.05
#: an alternative scaling must respond this many times more than the declared one to be suggested
BETTER = 5.0


def capability_warnings(name: str, access: str, backend: str, target: TargetModel) -> list[str]:
    """One line per capability the declared ``access`` promises that the loaded ``target`` lacks."""
    # what the access promises of a model: a training update ("update") is served by a federated view, never
    # by a model file, so a white-box access does not promise it here
    declared = ACCESS_LEVELS[access] & MODEL
    lost = declared - target.capabilities
    if not lost:
        return []
    if not target.capabilities:
        return [f"target '{name}': access '{access}' on backend '{backend}' leaves it with no capabilities at all "
                f"(it would expose {describe(declared)}; the model's output is not one of them): every attack on it "
                "is skipped"]
    why = {Capability.GRAD: "no gradients", Capability.WEIGHTS: "no weights",
           Capability.FEATURES: "no penultimate features"}
    reasons = sorted({why[c] for c in lost if c in why})
    return [f"target '{name}': access '{access}' promises {describe(declared)} but backend '{backend}' gives only "
            f"{describe(target.capabilities)}: {describe(lost)} lost" + (f" ({', '.join(reasons)})" if reasons else "")]


def outputs(target: TargetModel, x: Tensor) -> Tensor:
    """The richest numeric answer ``target`` gives for ``x``: logits, features, probabilities, top-k scores, or
    (label only) a one-hot of the labels."""
    with torch.no_grad():
        for cap, fn in ((Capability.LOGITS, target.logits), (Capability.FEATURES, target.features),
                        (Capability.PROBS, target.probs)):
            if target.has(cap):
                return fn(x).flatten(1).float()
        if target.has(Capability.TOPK):
            return target.topk(x, 5)[0].float()
        labels = target.label(x)
        return torch.nn.functional.one_hot(labels, target.num_classes).float()


def response(target: TargetModel, x: Tensor) -> float:
    """How much the outputs vary across the rows of ``x``: the mean over output dimensions of their standard
    deviation across inputs, over the outputs' root mean square (0: the same answer for every input)."""
    out = outputs(target, x)
    if len(out) < 2:
        return float("nan")
    spread = out.std(0).mean()
    size = out.pow(2).mean().sqrt()
    return float(spread / (size + 1e-12))


def scaling_warning(name: str, load: Callable[[Preprocess], TargetModel], declared: Preprocess, probe: Tensor) -> str | None:
    """A warning line when the target barely responds to ``probe`` (images in [0, 1]) under ``declared`` but
    clearly does at another scale; ``load(preprocess)`` builds the target with a given preprocessing."""
    base = response(load(declared), probe)
    if not base == base or base >= FLAT:  # NaN or responsive: nothing to say
        return None
    best: tuple[float, float] | None = None
    for factor in (255.0, 1.0 / 255.0):
        alt = declared.model_copy(update={"scale": declared.scale * factor})
        try:
            r = response(load(alt), probe)
        except InvertkitError:  # e.g. the alternative overflows into non-finite outputs
            continue
        if r == r and (best is None or r > best[0]):
            best = (r, alt.scale)
    if best is None or best[0] < BETTER * max(base, 1e-12) or best[0] < FLAT:
        return None
    return (f"target '{name}': its outputs barely respond to inputs at the declared scaling (preprocess.scale = "
            f"{declared.scale:g}: relative spread {base:.3g}); at preprocess.scale = {best[1]:g} they respond "
            f"{best[0] / max(base, 1e-12):.0f}x more ({best[0]:.3g}). Check what range the model expects "
            "(0..1 or 0..255) and set [targets." + name + ".preprocess] accordingly")




def audit_target(name: str, spec, plugins, probe_count: int = 64) -> tuple[TargetModel, list[str]]:  # noqa: ANN001
    """Load standalone target ``name`` as declared (no prior, no evaluation model) and return it with
    ``validate``'s warnings: capabilities lost to the backend, and a scaling the model barely responds to
    (probed on up to ``probe_count`` of its public images)."""
    from dataclasses import replace

    from invertkit.core.zoo.standalone import probe_scenario

    scenario = probe_scenario(name, spec, plugins)
    backend = plugins.get("backend", spec.backend)()
    target = backend.load(spec, scenario, plugins)
    warnings = capability_warnings(name, spec.access, spec.backend, target)
    full = spec.model_copy(update={"access": "embedding" if spec.kind == "embedder" else "white-box", "budget": None})
    declared = Preprocess.model_validate(scenario.facts["model"]["preprocess"])

    def load(pre: Preprocess) -> TargetModel:
        facts = {**scenario.facts, "model": {**scenario.facts["model"], "preprocess": pre.model_dump(mode="json")}}
        return backend.load(full, replace(scenario, facts=facts), plugins)

    probe = scenario.split.public[0][:probe_count]
    try:
        msg = scaling_warning(name, load, declared, probe)
    except InvertkitError as exc:  # e.g. the declared scaling already gives non-finite outputs
        msg = f"target '{name}': probing its outputs failed: {exc}"
    if msg:
        warnings.append(msg)
    return target, warnings


__all__ = ["capability_warnings", "response", "scaling_warning", "outputs", "audit_target"]
