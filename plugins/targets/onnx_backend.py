"""The ONNX target backend (onnxruntime): a model you can only query.

The CUDA execution provider is used when onnxruntime offers it (``pip install invertkit[gpu]``), else the
CPU one. An ONNX model gives no gradients and no weights, so a classifier's capabilities are at most
``{logits, probs, topk, label}`` and an embedder's (``kind = "embedder"``) ``{features}``, further restricted by
the entry's ``access``. The model must take one float input ``(N, C, H, W)`` and return logits ``(N, K)`` (or a
template ``(N, D)``) as its first output. A brought model's input size, output width and preprocessing are read
from the graph where it says (:func:`~invertkit.core.preprocess.from_onnx`); the entry's own values win.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from invertkit.core.errors import CheckpointError
from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.capability import ACCESS_LEVELS, Capability
from invertkit.core.interfaces.target import TargetBackend, TargetModel
from invertkit.core.preprocess import Preprocess, from_onnx
from invertkit.core.preprocess_module import PreprocessModule

C = Capability
ONNX_CAPS = frozenset({C.LOGITS, C.PROBS, C.TOPK, C.LABEL})
#: an ONNX embedder's first output is the template
EMBED_CAPS = frozenset({C.FEATURES})


def providers() -> list[str]:
    import onnxruntime as ort

    avail = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in avail] or avail


def open_session(path: str | Path):  # noqa: ANN201
    """An onnxruntime session over ``path``; one :class:`CheckpointError` line when it is missing or malformed."""
    import onnxruntime as ort

    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"ONNX model not found: {path}")
    try:
        return ort.InferenceSession(str(path), providers=providers())
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several types for a bad file
        raise CheckpointError(f"{path} is not a valid ONNX model: {str(exc).splitlines()[0][:200]}") from None


class OnnxTarget(TargetModel):
    """An ONNX model behind the access policy. ``input_shape`` is the images attacks make (``[0, 1]``);
    ``model_shape`` the model's own input, which ``preprocess`` (resize, scale, mean/std, channel order) maps
    them to. ``kind = "embedder"``: the first output is a template, released as ``features``."""

    def __init__(self, path: str | Path, *, num_classes: int, input_shape: tuple[int, int, int],
                 capabilities=None, budget: int | None = None, name: str = "target",  # noqa: ANN001
                 model_shape: tuple[int, int, int] | None = None, preprocess: Preprocess | None = None,
                 kind: str = "classifier") -> None:
        self.session = open_session(path)
        path = Path(path).expanduser()
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise CheckpointError(f"{path}: expected one input, the model has {len(inputs)}")
        model_shape = tuple(model_shape or input_shape)
        declared = inputs[0].shape
        if len(declared) != 4 or any(isinstance(d, int) and d != e for d, e in zip(declared[1:], model_shape)):
            raise CheckpointError(f"{path}: input shape {declared} does not fit images of shape {model_shape}")
        self.input_name = inputs[0].name
        self.kind = kind
        offered = EMBED_CAPS if kind == "embedder" else ONNX_CAPS
        caps = offered if capabilities is None else frozenset(capabilities) & offered
        super().__init__(num_classes=num_classes, input_shape=input_shape, capabilities=caps, budget=budget, name=name)
        spec = preprocess or Preprocess()
        if spec.size is None and tuple(model_shape[1:]) != tuple(input_shape[1:]):
            spec = spec.model_copy(update={"size": tuple(model_shape[1:])})
        self.pre = PreprocessModule(spec, int(input_shape[0])) if not spec.is_identity(input_shape[1:]) else None
        try:
            out = self._run(torch.zeros(1, *input_shape))
        except Exception as exc:  # noqa: BLE001 - a symbolic-shape model can still reject the size at run time
            raise CheckpointError(
                f"{path}: the model does not run on images of shape {model_shape}: {str(exc).splitlines()[0][:200]}"
            ) from None
        if out.dim() != 2 or (kind == "classifier" and out.shape[1] != num_classes):
            want = f"(N, {num_classes})" if kind == "classifier" else "(N, D)"
            raise CheckpointError(f"{path}: first output has shape {tuple(out.shape)}, expected {want}")

    def _run(self, x: Tensor) -> Tensor:
        if self.pre is not None:
            x = self.pre(x)
        arr = x.detach().cpu().float().numpy()
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(arr)})[0]
        return torch.from_numpy(np.asarray(out, dtype=np.float32))

    def _logits(self, x: Tensor) -> Tensor:
        return self._run(x)

    def _features(self, x: Tensor) -> Tensor:
        return self._run(x)


def export_onnx(module: nn.Module, path: str | Path, input_shape: tuple[int, int, int]) -> Path:
    """Export a torch classifier to ONNX with a dynamic batch axis (legacy TorchScript exporter)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    dummy = torch.zeros(2, *input_shape)
    tmp = path.with_suffix(".onnx.tmp")
    torch.onnx.export(
        module, (dummy,), str(tmp), input_names=["images"], output_names=["logits"],
        dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False,
    )
    tmp.replace(path)
    return path


class OnnxBackend(TargetBackend):
    name = "onnx"
    summary = "ONNX model via onnxruntime (CUDA provider when present, else CPU); query access only"
    capabilities = ONNX_CAPS | EMBED_CAPS

    @staticmethod
    def offers(spec) -> frozenset:  # noqa: ANN001
        """What an entry's model can give at most: a classifier's scores, or an embedder's template."""
        return EMBED_CAPS if getattr(spec, "kind", "classifier") == "embedder" else ONNX_CAPS

    def inspect(self, model, plugins) -> dict:  # noqa: ANN001
        """What the ONNX graph says about itself: ``input_shape``, ``outputs``, ``preprocess`` (see
        :func:`~invertkit.core.preprocess.from_onnx`)."""
        return from_onnx(open_session(model.weights))

    def load(self, spec, scenario, plugins) -> TargetModel:  # noqa: ANN001
        if getattr(spec, "standalone", False):
            return OnnxTarget(spec.weights, num_classes=scenario.num_classes, input_shape=scenario.image_shape,
                              capabilities=ACCESS_LEVELS[spec.access], budget=spec.budget,
                              model_shape=scenario.facts["model"]["input_shape"],
                              preprocess=Preprocess.model_validate(scenario.facts["model"]["preprocess"]), kind=spec.kind)
        if spec.weights == "preset":
            from invertkit.core.cache import cache_dir

            path = cache_dir() / "onnx" / f"{scenario.name}-{scenario.keys['target']}.onnx"
            if not path.is_file():
                export_onnx(scenario.target_net, path, scenario.image_shape)
        else:
            path = Path(spec.weights)
        return OnnxTarget(path, num_classes=scenario.num_classes, input_shape=scenario.image_shape,
                          capabilities=ACCESS_LEVELS[spec.access], budget=spec.budget, preprocess=spec.preprocess)


@hookimpl
def invertkit_register_target_backends(register) -> None:
    register(OnnxBackend)
