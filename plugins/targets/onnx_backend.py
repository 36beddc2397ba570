"""The ONNX target backend (onnxruntime): a model you can only query.

The CUDA execution provider is used when onnxruntime offers it (``pip install invertkit[gpu]``), else the
CPU one. An ONNX model gives no gradients and no weights, so its capabilities are at most
``{logits, probs, topk, label}``, further restricted by the entry's ``access``. The model must take one
float input ``(N, C, H, W)`` and return logits ``(N, K)`` as its first output.
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

C = Capability
ONNX_CAPS = frozenset({C.LOGITS, C.PROBS, C.TOPK, C.LABEL})


def providers() -> list[str]:
    import onnxruntime as ort

    avail = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in avail] or avail


class OnnxTarget(TargetModel):
    def __init__(self, path: str | Path, *, num_classes: int, input_shape: tuple[int, int, int],
                 capabilities=None, budget: int | None = None, name: str = "target") -> None:  # noqa: ANN001
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"ONNX model not found: {path}")
        try:
            self.session = ort.InferenceSession(str(path), providers=providers())
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises several types for a bad file
            raise CheckpointError(f"{path} is not a valid ONNX model: {str(exc).splitlines()[0][:200]}") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise CheckpointError(f"{path}: expected one input, the model has {len(inputs)}")
        declared = inputs[0].shape
        if len(declared) != 4 or any(
            isinstance(d, int) and d != e for d, e in zip(declared[1:], input_shape)
        ):
            raise CheckpointError(f"{path}: input shape {declared} does not fit images of shape {tuple(input_shape)}")
        self.input_name = inputs[0].name
        caps = ONNX_CAPS if capabilities is None else frozenset(capabilities) & ONNX_CAPS
        super().__init__(num_classes=num_classes, input_shape=input_shape, capabilities=caps, budget=budget, name=name)
        try:
            out = self._logits(torch.zeros(1, *input_shape))
        except Exception as exc:  # noqa: BLE001 - a symbolic-shape model can still reject the size at run time
            raise CheckpointError(
                f"{path}: the model does not run on images of shape {tuple(input_shape)}: {str(exc).splitlines()[0][:200]}"
            ) from None
        if out.shape != (1, num_classes):
            raise CheckpointError(f"{path}: first output has shape {tuple(out.shape)}, expected (N, {num_classes})")

    def _logits(self, x: Tensor) -> Tensor:
        arr = x.detach().cpu().float().numpy()
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(arr)})[0]
        return torch.from_numpy(np.asarray(out, dtype=np.float32))


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
    capabilities = ONNX_CAPS

    def load(self, spec, scenario, plugins) -> TargetModel:  # noqa: ANN001
        if spec.weights == "preset":
            from invertkit.core.cache import cache_dir

            path = cache_dir() / "onnx" / f"{scenario.name}-{scenario.keys['target']}.onnx"
            if not path.is_file():
                export_onnx(scenario.target_net, path, scenario.image_shape)
        else:
            path = Path(spec.weights)
        return OnnxTarget(path, num_classes=scenario.num_classes, input_shape=scenario.image_shape,
                          capabilities=ACCESS_LEVELS[spec.access], budget=spec.budget)


@hookimpl
def invertkit_register_target_backends(register) -> None:
    register(OnnxBackend)
