"""The model-and-data entries of ``registry.toml`` (:mod:`invertkit.core.catalog` holds the file's schema): the
recipes of a preset's models and prior, where images come from, and a target's entry — a preset's target, or
a standalone one the user brings (model file, input preprocessing, public/private data, prior, evaluation
model). Validated by pydantic; no plugin code and no torch is imported here."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from invertkit.core.preprocess import Preprocess


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def class_list(v: Any) -> Any:
    """Class/identity lists: a list of ints, or ``"a..b"`` for the inclusive range (``"0..999"`` is the
    KEDMI-lineage protocol's 1,000 private identities)."""
    if isinstance(v, str):
        lo, sep, hi = v.partition("..")
        try:
            a, b = int(lo), int(hi)
        except ValueError:
            a = b = None  # type: ignore[assignment]
        if not sep or a is None or b is None or b < a:
            raise ValueError(f"'{v}' is not a class list: give a list of ints or an inclusive range 'a..b'")
        return tuple(range(a, b + 1))
    return v


class ModelRecipe(Strict):
    """A classifier trained by the preset's recipe (``core.zoo.train``)."""

    arch: str
    arch_options: dict[str, Any] = Field(default_factory=dict)
    epochs: int = Field(30, ge=1)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(64, ge=1)
    weight_decay: float = Field(1e-4, ge=0)
    max_shift: int = Field(1, ge=0)
    seed: int = 0
    #: a released checkpoint to load instead of training (``.safetensors``; ``.pth``/``.tar`` need
    #: INVERTKIT_ALLOW_PICKLE=1); ``~`` and ``$VARS`` are expanded. The recipe's other fields then only
    #: describe how the checkpoint was made.
    weights: str | None = None


class PriorRecipe(Strict):
    plugin: str
    options: dict[str, Any] = Field(default_factory=dict)
    seed: int = 0


class DataSpec(Strict):
    """Images a standalone target's entry brings: any dataset adapter (``image-folder`` for an unlabelled folder,
    ``class-folder`` for a folder per class, or a bundled one), its root and options; ``classes`` keeps only
    those labels (for private data: the target's class indices the folders stand for)."""

    dataset: str
    root: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    classes: tuple[int, ...] | None = None

    _classes = field_validator("classes", mode="before")(classmethod(lambda cls, v: class_list(v)))


class ModelFile(Strict):
    """Where a brought network comes from (the torch backend: ``arch`` + ``weights``, or ``module``; the onnx
    backend: ``weights``, an ``.onnx`` file), and what its input expects (``preprocess``)."""

    backend: str = "torch"
    arch: str | None = None
    arch_options: dict[str, Any] = Field(default_factory=dict)
    weights: str = "preset"
    #: the torch backend: ``"file.py:build"`` (a Python file and a function returning the nn.Module) or a
    #: TorchScript archive, instead of ``arch`` (see :mod:`invertkit.core.usermodel`)
    module: str | None = None
    module_options: dict[str, Any] = Field(default_factory=dict)
    #: rename the weights file's keys to the module's: a table of regex = replacement, or "by-position"
    key_map: dict[str, str] | Literal["by-position"] | None = None
    preprocess: Preprocess = Field(default_factory=Preprocess)


class TargetSpec(ModelFile):
    """A named target. With ``preset``, ``weights = "preset"`` uses the preset's trained target; otherwise a file
    path (``.safetensors`` for the torch backend, ``.onnx`` for the onnx backend).

    Without ``preset`` the target stands alone, a model the user brings: ``weights`` (and ``arch`` or
    ``module``) say what it is, ``num_classes`` and ``input_shape`` what it answers and takes (read from an ONNX
    graph where it says), ``preprocess`` how invertkit's [0, 1] images become its input, ``public`` the
    attacker's images, and optionally ``prior`` (trained on ``public``), ``private`` (the user's images of the
    target's classes: then KNN distance and the like apply) and ``eval`` (the user's evaluation model: then
    acc@1 applies). invertkit trains no target, and no evaluation model, for it."""

    preset: str | None = None
    summary: str = ""
    access: Literal["white-box", "black-box", "top-k", "label-only", "embedding"] = "white-box"
    budget: int | None = Field(None, ge=1)
    top_k: int = Field(1, ge=1, description="with access = 'top-k': how many confidences the API releases")
    #: what the model's output is: class scores, or a template (an embedder, ``access = "embedding"``)
    kind: Literal["classifier", "embedder"] = "classifier"
    num_classes: int | None = Field(None, ge=1)
    input_shape: tuple[int, int, int] | None = None
    #: the side of the images attacks make and metrics read (default: the model's input side); the target's
    #: preprocessing resizes them to the model's input
    image_size: int | None = Field(None, ge=4, le=1024)
    public: DataSpec | None = None
    private: DataSpec | None = None
    prior: PriorRecipe | None = None
    eval: ModelFile | None = None
    #: a view of the preset's scenario that the backend serves (e.g. the ``federated`` backend's
    #: ``server:client-0@round-2``); the backend says what it names, and may withhold it (``withheld(spec)``)
    view: str | None = None
    #: the backend's own options (e.g. the ``federated`` backend's federation), validated by the backend
    backend_options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _standalone(self) -> "TargetSpec":
        if self.view is not None and self.preset is None:
            raise ValueError("view: a view of a preset's scenario; a standalone target has no preset")
        own = [k for k in ("public", "private", "prior", "eval", "num_classes", "input_shape", "image_size")
               if getattr(self, k) is not None]
        if self.preset is not None:
            if own:
                raise ValueError(f"{', '.join(own)}: only for a standalone target (one without a preset); a preset's "
                                 "target takes them from the preset")
            return self
        if self.weights == "preset" and self.module is None:
            raise ValueError("a standalone target (no preset) needs its model: weights = \"model.onnx\" (onnx), or "
                             "arch/module and weights (torch)")
        if self.public is None:
            raise ValueError("a standalone target needs public = { dataset = \"image-folder\", root = \"...\" }: "
                             "the attacker's images")
        if self.kind == "embedder" and self.access != "embedding":
            raise ValueError(f"kind = 'embedder' releases a template: access must be 'embedding', not '{self.access}'")
        return self

    @property
    def standalone(self) -> bool:
        return self.preset is None


__all__ = ["Strict", "class_list", "ModelRecipe", "PriorRecipe", "DataSpec", "ModelFile", "TargetSpec"]
