"""Face-swap MIA: model inversion with a face-swap autoencoder prior and a label embedding.

From a technical report on template-inversion (TIA) and model-inversion (MIA) attacks against face models (its
second method); **there is no official code**, so everything below is our reading of the report's algorithm,
with the choices it leaves open named as such. Threat model: a white-box classifier ``F`` over enrolled
identities (gradients and logits); the attacker names a target class ``y_t`` and holds public face images,
never private ones.

**Prior.** The face-swap autoencoder :mod:`invertkit.plugins.priors.faceswap_ae` (faceswap/DeepFaceLab: shared
encoder, dense inter bottleneck, decoder), trained on the public images to reconstruct them (the prior plugin
``faceswap-ae``, whose options ``prior`` holds), extended with a label embedding ``E`` over the target's classes
injected into the bottleneck: ``f(x0, y) = decoder(inter_out(code(x0) + E[y]))``
(:class:`~invertkit.plugins.priors.faceswap_ae.ConditionalSwap`).

**Fine-tuning** (the report's algorithm). Repeatedly: sample a training image ``x`` (public) and a swap source
``x0`` (public); ``y = F(x)``, a query through the target; generate ``x' = f(x0, y)``; classify ``y' = F(x')``;
minimise ``L_cls(y', y)``. The backbone (encoder and code layer) is frozen; the embedding and the layer groups in
``tune`` train (``inter``: the inter's expansion after the injection; ``decoder``; ``output``). Our choices: ``y``
is the target's top-1 class on ``x`` (the embedding needs a class) and ``L_cls`` the cross-entropy to it
(``loss="hard"``) or, with ``loss="soft"``, to the target's whole probability vector on ``x``; one epoch is one
pass over the public images as ``x`` (``x0`` a fresh random permutation of them), Adam at ``tune_lr``, run by
the project's training loop (:func:`invertkit.core.zoo.train.fit`). Every ``F`` evaluation goes through the
attacker's view of the target *as defended* and is counted (``2 x public`` rows an epoch); the tuned generator
is cached through ``AttackContext.cache`` (per target x defense), its queries charged again on re-use.

**Inference.** For each requested sample of identity ``y_t``, an input face ``x_input`` (a public image;
``input="random"``, or ``input="confident"``: the public images the target scores highest for ``y_t``, one query
per public image) keeps its pose and expression: generate ``x' = f(x_input, y_t)``, read the target's
confidence ``F(x')[y_t]`` as feedback and, while it is below ``tau``, take a gradient step (Adam, ``lr``) on the
cross-entropy ``-log F(x')[y_t]`` with respect to ``search``: the bottleneck code of ``x_input`` (``code``, the
generation condition) or ``x_input``'s pixels (``input``, kept in ``[0, 1]``), up to ``max_iterations`` steps.
A sample stops as soon as its confidence reaches ``tau`` (the shared loop's per-sample early stopping,
:func:`invertkit.core.optim.optimise`, with ``stop_below = -log tau``) and is then no longer queried; the image
returned is the best one evaluated. The result's ``extras`` carry ``tau``, ``success_rate_at_tau`` (the share of
samples whose target confidence reached ``tau``), ``iterations_mean``/``iterations_max`` (gradient steps used:
0 where the first generation already reached ``tau``), ``confidence_mean`` and the fine-tuning's figures; the
bench records them under ``attack_facts``.

A query budget: the search is the shared loop's, so it ends at the target's refusal with what it has
(``budget_exhausted`` in the extras); a refusal during the fine-tuning (which needs its queries in full) is raised.

Choices the report leaves open (our defaults, all options): ``tau = 0.9``, ``max_iterations = 100``, ``lr =
0.05``, ``search = "code"``, ``tune = ["inter"]``, ``tune_epochs = 20``, ``tune_lr = 1e-3``, ``tune_batch_size =
64``. The prior is trained here from ``prior`` (``faceswap-ae`` options, faceswap's defaults unless given) on the
attacker's public images and cached like a bench prior (content-addressed safetensors); the bench's scenario prior
is not used (``needs_prior = False``), but a :class:`~invertkit.plugins.priors.faceswap_ae.FaceSwapPrior` handed
to the attack directly is.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from invertkit.core import losses
from invertkit.core.errors import UsageError
from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.attack import Attack, AttackConfig, derive
from invertkit.core.interfaces.capability import Capability as C
from invertkit.core.interfaces.results import AttackResult
from invertkit.core.optim import batched, optimise
from invertkit.core.zoo.train import fit
from invertkit.plugins.priors.faceswap_ae import ConditionalSwap, FaceSwapAEBuilder, FaceSwapPrior

__all__ = ["FaceSwapMIA", "faceswap_prior", "finetune"]


def faceswap_prior(options: dict[str, Any], public: Tensor, *, seed: int = 0) -> tuple[FaceSwapPrior, dict[str, Any]]:
    """The ``faceswap-ae`` prior of ``options`` trained on ``public`` (no target involved), cached by content
    (config, data, seed, layout) as safetensors in the models cache; returns it with its training facts."""
    from invertkit.core.zoo.model_cache import architecture_signature, cached_meta, cached_model, fingerprint

    builder = FaceSwapAEBuilder(options)
    shape = tuple(int(s) for s in public.shape[1:])

    def build() -> nn.ModuleDict:
        torch.manual_seed(seed)
        return nn.ModuleDict(builder.networks(shape))  # type: ignore[arg-type]

    key = {"what": "prior-faceswap-ae", "cfg": builder.config.model_dump(), "seed": seed, "data": fingerprint(public),
           "arch": architecture_signature(dict(build()))}
    facts: dict[str, Any] = {}

    def train() -> nn.ModuleDict:
        nets = build()
        facts.update(builder.train(dict(nets), public, seed=seed))
        return nets

    nets = cached_model(key, train, build, label="prior-faceswap-ae", extra_meta=facts)
    if not facts:
        facts = {k: v for k, v in cached_meta(key, "prior-faceswap-ae").items() if k.startswith("public_")}
    return builder.wrap(dict(nets)), facts  # type: ignore[arg-type]


def finetune(swap: ConditionalSwap, target: Any, public: Tensor, *, epochs: int, batch_size: int, lr: float,
             loss: str, seed: int) -> dict[str, float]:
    """The report's fine-tuning of ``swap`` in place (module docstring): per batch ``y = F(x)``, ``x' = f(x0, y)``,
    minimise ``L_cls(F(x'), y)``; ``target`` is the attacker's view (``2 * batch`` rows a batch). Returns the last
    loss and how often the target read the generations as the class they were made for, in the last epoch."""
    n = len(public)
    bs = min(batch_size, n)
    dev = next(swap.parameters()).device
    seen = {"hits": 0, "rows": 0, "loss": float("nan")}

    def batches(epoch: int, g: torch.Generator):  # noqa: ANN202
        seen["hits"] = seen["rows"] = 0
        order, sources = torch.randperm(n, generator=g), torch.randperm(n, generator=g)
        for i in range(0, n - bs + 1, bs):
            x, x0 = public[order[i : i + bs]].to(dev), public[sources[i : i + bs]].to(dev)
            with torch.no_grad():
                out = target.logits(x)
            yield x0, out

    def loss_fn(model: nn.Module, x0: Tensor, out: Tensor, _epoch: int) -> Tensor:
        y = out.argmax(1)
        logits = target.logits(model(x0, y))
        seen["hits"] += int((logits.argmax(1) == y).sum())
        seen["rows"] += len(y)
        if loss == "soft":
            lo = F.kl_div(F.log_softmax(logits, 1), F.log_softmax(out, 1), reduction="batchmean", log_target=True)
        else:
            lo = F.cross_entropy(logits, y)
        seen["loss"] = float(lo.detach())
        return lo

    opt = torch.optim.Adam(swap.trainable(), lr=lr)
    seconds = fit(swap, loss_fn, batches=batches, epochs=epochs, optimizer=opt, seed=seed)
    for p in swap.parameters():
        p.grad = None
    swap.eval()
    return {"finetune_loss": seen["loss"], "finetune_agreement": seen["hits"] / seen["rows"] if seen["rows"] else float("nan"),
            "finetune_seconds": round(seconds, 3)}


class FaceSwapMIA(Attack):
    name = "faceswap-mia"
    #: the technical report it follows has no public link to give here (see the module docstring); the test
    #: catalogue lists it among the components without one
    paper = ""
    summary = ("White-box MIA with a face-swap autoencoder prior: a label embedding tuned on public images from the "
               "target's outputs, then a public input face swapped to the target class, refined until F(x')_t >= tau.")
    requires = frozenset({C.GRAD, C.LOGITS})
    needs_prior = False

    class Config(AttackConfig):
        prior: dict[str, Any] = Field(default_factory=dict, description="options of the 'faceswap-ae' prior trained "
                                                                        "on the public images (its defaults: faceswap's)")
        prior_seed: int = Field(0, ge=0, description="seed of the prior's training")
        # ---- fine-tuning
        tune: list[Literal["inter", "decoder", "output"]] = Field(["inter"], description="generator layer groups "
                                                                 "trained with the label embedding (backbone frozen)")
        tune_epochs: int = Field(20, ge=0, description="fine-tuning passes over the public images")
        tune_batch_size: int = Field(64, ge=1, description="fine-tuning batch (x and x0 pairs)")
        tune_lr: float = Field(1e-3, gt=0, description="fine-tuning Adam learning rate")
        loss: Literal["hard", "soft"] = Field("hard", description="L_cls: cross-entropy to F(x)'s top-1 (hard) or "
                                                                 "KL to F(x)'s probabilities (soft)")
        tune_seed: int = Field(0, ge=0, description="seed of the fine-tuning (the tuned generator is cached per seed)")
        # ---- inference
        tau: float = Field(0.9, gt=0, le=1, description="stop once the target's confidence in y_t reaches tau")
        max_iterations: int = Field(100, ge=1, description="most gradient steps per sample")
        lr: float = Field(0.05, gt=0, description="Adam learning rate of the refinement")
        search: Literal["code", "input"] = Field("code", description="what the refinement moves: the bottleneck "
                                                                     "code of x_input, or x_input's pixels")
        input: Literal["random", "confident"] = Field("random", description="x_input: a random public image, or the "
                                                                           "public images the target scores highest for y_t")
        batch_size: int | None = Field(None, ge=1, description="samples refined together (None: all at once)")

    # ------------------------------------------------------------------------------------ derived models
    def _public(self) -> Tensor:
        images = getattr(self.context, "public_images", None)
        if images is None or len(images) < 2:
            raise UsageError("attack 'faceswap-mia' trains its face-swap prior on the attacker's public images: set "
                             "attack.context = AttackContext(public_images=...) (the bench does) before running it")
        return images

    def swap_model(self, target: Any, prior: FaceSwapPrior, prior_key: dict[str, Any]) -> tuple[ConditionalSwap, dict[str, Any]]:
        """The label-conditioned generator fine-tuned against ``target`` (the attacker's view), or the cached one
        (its queries charged again)."""
        from invertkit.core.zoo.model_cache import fingerprint

        cfg, public = self.config, self._public()
        k = int(target.num_classes)
        fields = ("tune", "tune_epochs", "tune_batch_size", "tune_lr", "loss", "tune_seed")
        key = {"what": "faceswap-mia-tuned", "prior": prior_key, "data": fingerprint(public), "classes": k,
               "cfg": {f: getattr(cfg, f) for f in fields}}
        facts: dict[str, Any] = {}

        def build() -> ConditionalSwap:
            return ConditionalSwap(prior, k, cfg.tune).to(target.device)

        def train() -> ConditionalSwap:
            swap = build()
            facts.update(finetune(swap, target, public, epochs=cfg.tune_epochs, batch_size=cfg.tune_batch_size,
                                  lr=cfg.tune_lr, loss=cfg.loss, seed=cfg.tune_seed))
            return swap

        swap = derive(self.context, key, train, build, label="faceswap-mia-tuned")
        swap.requires_grad_(False)
        return swap, facts

    def _inputs(self, target: Any, labels: Tensor, generator: torch.Generator) -> Tensor:
        """The input faces, one public image per requested sample."""
        public = self._public()
        if self.config.input == "random":
            return public[torch.randint(len(public), (len(labels),), generator=generator)]
        with torch.no_grad():  # one query per public image
            probs = torch.cat([target.logits(public[s]).softmax(1).cpu() for s in batched(len(public), 512)])
        picks = torch.empty(len(labels), dtype=torch.long)
        for y in labels.unique():
            rows = (labels == y).nonzero().squeeze(1)
            order = probs[:, int(y)].argsort(descending=True)
            picks[rows] = order[torch.arange(len(rows)) % len(order)]
        return public[picks]

    # --------------------------------------------------------------------------------------------- run
    def run(self, target, labels, *, prior, seed, generator) -> AttackResult:  # noqa: ANN001
        cfg = self.config
        k = int(target.num_classes)
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= k):
            raise UsageError(f"attack 'faceswap-mia': identities must be target classes in [0, {k})")
        public = self._public()
        if tuple(public.shape[1:]) != tuple(int(s) for s in target.input_shape):
            raise UsageError(f"attack 'faceswap-mia': public images of shape {tuple(public.shape[1:])} but the target "
                             f"takes {tuple(target.input_shape)}")
        from invertkit.core.zoo.model_cache import fingerprint

        if isinstance(prior, FaceSwapPrior):
            p_facts: dict[str, Any] = {}
            prior_key: dict[str, Any] = {"given": fingerprint(*[t for n in prior.networks().values()
                                                                for t in n.state_dict().values()])}
        else:
            prior, p_facts = faceswap_prior(cfg.prior, public, seed=cfg.prior_seed)
            prior_key = {"cfg": FaceSwapAEBuilder(cfg.prior).config.model_dump(), "seed": cfg.prior_seed}
        q0 = target.queries
        swap, t_facts = self.swap_model(target, prior, prior_key)
        q1 = target.queries
        dev = next(swap.parameters()).device
        x_in = self._inputs(target, labels, generator).to(dev)
        q2 = target.queries
        y = labels.to(dev)

        if cfg.search == "code":
            with torch.no_grad():
                start = torch.cat([swap.code(x_in[s]) for s in batched(len(x_in), 512)])

            def image(p: Tensor, idx: Tensor) -> Tensor:
                return swap.generate(p, y[idx])
            project = None
        else:
            start = x_in

            def image(p: Tensor, idx: Tensor) -> Tensor:
                return swap(p, y[idx])

            def project(p: Tensor) -> Tensor:
                return p.clamp(0.0, 1.0)

        params, best, steps, exhausted = [], [], [], False
        for sl in batched(len(start), cfg.batch_size):
            out = optimise(start[sl], objective=lambda p, idx, o=sl.start: losses.cross_entropy(
                               target.logits(image(p, idx + o)), y[idx + o]),
                           iterations=cfg.max_iterations, lr=cfg.lr, optimizer="adam", project=project,
                           keep_best=True, stop_below=-math.log(cfg.tau))
            params.append(out.params)
            best.append(out.loss)
            steps.append(out.iterations)
            exhausted |= out.exhausted
            if out.exhausted:
                break
        done = sum(len(p) for p in params)
        if done < len(start):  # the budget ran out: the rest keep their starting point, unscored
            params.append(start[done:].detach())
            best.append(torch.full((len(start) - done,), float("inf"), device=dev))
            steps.append(torch.zeros(len(start) - done, dtype=torch.long, device=dev))
        z, loss, ran = torch.cat(params), torch.cat(best), torch.cat(steps)
        with torch.no_grad():
            idx = torch.arange(len(z), device=dev)
            images = torch.cat([image(z[s], idx[s]) for s in batched(len(z), 512)])
        confidence = torch.exp(-loss).cpu()
        success = confidence >= cfg.tau * (1 - 1e-6)
        # gradient steps used: a sample that reached tau was evaluated ``ran`` times, the last one at tau
        used = torch.where(success, ran.cpu() - 1, ran.cpu()).clamp_min(0)
        count = max(1, len(used))
        extras = {"tau": cfg.tau, "success_rate_at_tau": int(success.sum()) / count,
                  "iterations_mean": int(used.sum()) / count,
                  "iterations_max": int(used.max()) if len(used) else 0,
                  "confidence_mean": float(confidence.mean()) if len(confidence) else 0.0,
                  "finetune_queries": q1 - q0, "input_queries": q2 - q1, "search_queries": target.queries - q2,
                  "budget_exhausted": bool(exhausted), **t_facts, **{f"prior_{n}": v for n, v in p_facts.items()}}
        return AttackResult(self.name, images.cpu(), labels, confidence, 0, 0.0, seed, {}, latents=z.cpu(), extras=extras)


@hookimpl
def invertkit_register_attacks(register) -> None:  # noqa: ANN001
    register(FaceSwapMIA)
