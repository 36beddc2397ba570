"""``dp-sgd``: differentially private training, Abadi et al., "Deep Learning with Differential Privacy"
(CCS 2016, https://arxiv.org/abs/1607.00133), with Opacus (https://opacus.ai).

The target's architecture is trained from scratch on the private split with per-example gradient clipping
(norm ``max_grad_norm``) and Gaussian noise, over Poisson-sampled batches (sampling rate
``q = 1 / ceil(N / batch_size)``, ``ceil(N / batch_size)`` steps per epoch). BatchNorm cannot be used with
per-example gradients: :meth:`opacus.validators.ModuleValidator.fix` replaces it (by GroupNorm) first, and
in-place activations are made out-of-place (Opacus' hooks forbid them), so the defended network is that fixed
architecture.

The strength is the privacy budget: the noise multiplier is the smallest one whose RDP accountant gives at
most ``target_epsilon`` for ``delta`` after all the steps (:func:`opacus.accountants.utils.get_noise_multiplier`),
and the (epsilon, delta) actually spent — from the RDP accountant over the steps taken — is reported by
:meth:`DPSGD.report` (``epsilon``, ``delta``, ``noise_multiplier``, ``sample_rate``, ``steps``). ``delta``
defaults to ``min(1e-5, 1 / N)``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from invertkit.core.errors import ConfigError, InvertkitError, UsageError
from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.defense import DefenseContext
from invertkit.core.zoo.defended_training import DefenseTraining, RecipeOverrides, cross_entropy, fit, recipe_hparams
from invertkit.core.zoo.train import augment
from invertkit.core.zoo.scenario import log


def _opacus():  # noqa: ANN202 - imported lazily: registering the plugin must not import opacus
    try:
        import opacus
        from opacus.accountants import RDPAccountant
        from opacus.accountants.utils import get_noise_multiplier
        from opacus.validators import ModuleValidator
    except ImportError:  # pragma: no cover - opacus is a dependency
        raise UsageError("defense 'dp-sgd' needs Opacus: pip install opacus") from None
    return opacus, RDPAccountant, get_noise_multiplier, ModuleValidator


class DPSGD(DefenseTraining):
    """Train the target with DP-SGD (Opacus) for a target (epsilon, delta)."""

    class Config(RecipeOverrides):
        target_epsilon: float = Field(
            8.0,
            gt=0.0,
            description="Privacy budget epsilon the noise is calibrated to (the strength: smaller is stronger). "
            "Abadi et al. report MNIST models at epsilon 0.5, 2 and 8 (delta 1e-5).",
        )
        delta: float | None = Field(
            None, gt=0.0, lt=1.0, description="delta of (epsilon, delta)-DP; None: min(1e-5, 1/N)."
        )
        max_grad_norm: float = Field(1.0, gt=0.0, description="Per-example gradient clipping norm C.")
        batch_size: int | None = Field(
            None, ge=1, description="Expected (Poisson) batch size; None: the target recipe's."
        )
        max_shift: int | None = Field(
            None, ge=0, description="Random-shift augmentation per example (pixels); None: the recipe's."
        )

    name: ClassVar[str] = "dp-sgd"
    threat_model: ClassVar[str] = "training-time"
    summary: ClassVar[str] = (
        "DP-SGD via Opacus (BatchNorm -> GroupNorm, Poisson sampling, clipping + Gaussian noise) calibrated to "
        "a target epsilon; reports the (epsilon, delta) spent."
    )
    paper: ClassVar[str] = "https://arxiv.org/abs/1607.00133"

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self._accounting: dict[str, Any] = {}

    # ------------------------------------------------------------------ accounting
    def accounting(self, ctx: DefenseContext) -> dict[str, Any]:
        """Noise multiplier, sampling rate, steps and the (epsilon, delta) they spend, for this scenario."""
        _, RDPAccountant, get_noise_multiplier, _ = _opacus()
        hp = recipe_hparams(self.config, ctx)
        n = len(ctx.data.private_train[0])
        per_epoch = math.ceil(n / int(hp["batch_size"]))
        q = 1.0 / per_epoch
        steps = int(hp["epochs"]) * per_epoch
        delta = float(self.config.delta) if self.config.delta is not None else min(1e-5, 1.0 / n)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sigma = get_noise_multiplier(target_epsilon=float(self.config.target_epsilon), target_delta=delta,
                                         sample_rate=q, steps=steps, accountant="rdp")
            acc = RDPAccountant()
            acc.history = [(float(sigma), q, steps)]
            eps = float(acc.get_epsilon(delta))
        return {"target_epsilon": float(self.config.target_epsilon), "epsilon": round(eps, 4), "delta": delta,
                "noise_multiplier": round(float(sigma), 5), "sample_rate": round(q, 6), "steps": steps,
                "max_grad_norm": float(self.config.max_grad_norm), "accountant": "rdp"}

    def report(self) -> dict[str, Any]:
        return dict(self._accounting)

    # ------------------------------------------------------------------ network
    def build(self, ctx: DefenseContext) -> nn.Module:
        _, _, _, ModuleValidator = _opacus()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = ModuleValidator.fix(ctx.new_model())  # type: ignore[misc]
        for m in net.modules():  # Opacus' backward hooks forbid in-place activations (same function, same state)
            if getattr(m, "inplace", False):
                m.inplace = False
        errors = ModuleValidator.validate(net, strict=False)
        if errors:
            raise ConfigError(f"dp-sgd: the target architecture cannot be trained with Opacus: {errors[0]}")
        return net

    def network(self, ctx: DefenseContext | None) -> nn.Module:
        if ctx is not None and ctx.data is not None:
            self._accounting = self.accounting(ctx)
        return super().network(ctx)

    def train(self, ctx: DefenseContext) -> nn.Module:
        opacus, _, _, _ = _opacus()
        plan = self.accounting(ctx)
        hp, net = self.start(ctx)
        seed = self.training_seed(ctx)
        x, y = ctx.data.private_train
        loader = DataLoader(TensorDataset(x, y), batch_size=int(hp["batch_size"]), shuffle=False)
        optimizer = torch.optim.Adam(net.parameters(), lr=float(hp["lr"]))
        engine = opacus.PrivacyEngine(accountant="rdp")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            private, dp_optimizer, dp_loader = engine.make_private(
                module=net, optimizer=optimizer, data_loader=loader, noise_multiplier=plan["noise_multiplier"],
                max_grad_norm=float(self.config.max_grad_norm), poisson_sampling=True,
                noise_generator=torch.Generator().manual_seed(seed + 1),
            )
        shift = int(hp["max_shift"])

        def batches(epoch: int, g: torch.Generator):  # noqa: ANN202
            for xb, yb in dp_loader:
                yield (augment(xb, g, shift) if shift > 0 and len(xb) else xb), yb

        log(f"dp-sgd: noise multiplier {plan['noise_multiplier']} for epsilon {plan['target_epsilon']} "
            f"(delta {plan['delta']:.2g}), {plan['steps']} steps")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit(private, cross_entropy, epochs=int(hp["epochs"]), seed=seed, optimizer=dp_optimizer, batches=batches)
            spent = float(engine.accountant.get_epsilon(plan["delta"]))
        if abs(spent - plan["epsilon"]) > 1e-3 * max(1.0, plan["epsilon"]):
            raise InvertkitError(f"dp-sgd: the accountant spent epsilon {spent:.4f}, the plan said {plan['epsilon']:.4f}")
        # Opacus's per-sample-gradient hooks live on the layers of the wrapped module: take them off, or the
        # first attack on the freshly trained model (its gradients through the net) fails inside Opacus, while
        # the same model re-loaded from the cache works; clear their per-sample state too
        private.remove_hooks()
        trained = private._module
        for p in trained.parameters():
            for attr in ("grad_sample", "_forward_counter", "summed_grad"):
                if hasattr(p, attr):
                    delattr(p, attr)
        trained.eval()
        return trained


@hookimpl
def invertkit_register_defenses(register) -> None:  # noqa: ANN001 - a Registrar
    register(DPSGD)
