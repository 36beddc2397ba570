"""``distillation``: release a student distilled from the target on public data only.

Knowledge distillation (Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network", 2015,
https://arxiv.org/abs/1503.02531) of the trained target (the teacher) into a fresh network of the same
architecture, using only the *public* split's images (no labels): the student minimises

    T^2 * KL( softmax(teacher(x) / T) || softmax(student(x) / T) )

with random-shift augmentation. The student never sees a private image; what it knows about the private
classes is what the teacher's confidences on public images reveal — the knowledge-transfer idea behind
private-data-free releases (e.g. PATE's student, Papernot et al. 2017). The temperature ``T`` is the knob:
a higher T transfers more of the teacher's dark knowledge (better utility, less protection). The second knob,
``transfer_images``, bounds how many public images the teacher labels for the student (PATE bounds its
student's queries the same way).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.defense import DefenseContext
from invertkit.core.zoo.defended_training import DefenseTraining, RecipeOverrides, fit, teacher_network


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    t = float(temperature)
    return F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                    reduction="batchmean", log_target=True) * t * t


class Distillation(DefenseTraining):
    """Distil the target into a fresh network on the public split."""

    class Config(RecipeOverrides):
        temperature: float = Field(
            4.0,
            gt=0.0,
            description="Softmax temperature T of teacher and student (the knob: higher transfers more of the "
            "teacher's non-argmax knowledge). Hinton et al. use T in 2-20.",
        )
        transfer_images: int | None = Field(
            None, ge=1,
            description="How many public images the teacher labels for the student (a fixed random subset, the "
            "student's query budget on the teacher, as PATE bounds its student's queries); None: all of them.",
        )

    name: ClassVar[str] = "distillation"
    threat_model: ClassVar[str] = "training-time"
    summary: ClassVar[str] = (
        "Knowledge distillation of the target into a fresh network on public images only (temperature T)."
    )
    paper: ClassVar[str] = "https://arxiv.org/abs/1503.02531"

    def train(self, ctx: DefenseContext) -> nn.Module:
        teacher = teacher_network(ctx, self.name).eval()
        hp, student = self.start(ctx)
        seed = self.training_seed(ctx)
        xp = ctx.data.public[0]
        budget = self.config.transfer_images
        if budget is not None and budget < len(xp):
            xp = xp[torch.randperm(len(xp), generator=torch.Generator().manual_seed(seed))[:budget]]
        unlabelled = (xp, torch.zeros(len(xp), dtype=torch.long))
        temperature = float(self.config.temperature)

        def loss(model: nn.Module, x: Tensor, _: Tensor, epoch: int) -> Tensor:
            with torch.no_grad():
                t = teacher(x)
            return distillation_loss(model(x), t, temperature)

        fit(student, loss, unlabelled, seed=seed, **hp)
        return student

    def report(self) -> dict[str, Any]:
        return {"temperature": float(self.config.temperature), "transfer_images": self.config.transfer_images}


@hookimpl
def invertkit_register_defenses(register) -> None:  # noqa: ANN001 - a Registrar
    register(Distillation)
