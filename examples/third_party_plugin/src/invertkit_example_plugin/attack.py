"""``best-of-n``: the sample-and-select baseline of black-box model inversion.

Decode random latents of the public prior, ask the target for its confidence vector on each, and keep, for
every requested identity, the samples it is most confident about. No optimisation at all: it is what a
score-based attacker gets from the prior and a query budget alone, the step Plug & Play Attacks
(Struppek et al., ICML 2022, https://arxiv.org/abs/2201.12179) use to pick their starting latents.

One query returns the whole confidence vector, so a single pool of ``candidates * len(labels)`` samples is
scored for every identity at once; an identity requested ``m`` times gets the ``m`` best distinct samples
of the pool. Cost: exactly ``candidates * len(labels)`` queries, sent in batches of ``batch_size``.
"""

from __future__ import annotations

import torch
from pydantic import Field

from invertkit.core import Attack
from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces import AttackConfig, AttackResult, Capability

#: confidences are floored here before the log (the score is log p_y)
FLOOR = 1e-12


class BestOfN(Attack):
    name = "best-of-n"
    paper = "https://arxiv.org/abs/2201.12179"
    summary = "Black-box (scores): decode N prior samples per reconstruction, keep those with the highest p_y."
    requires = frozenset({Capability.PROBS})

    class Config(AttackConfig):
        candidates: int = Field(64, ge=1, description="prior samples drawn (and queried) per requested reconstruction")
        batch_size: int = Field(256, ge=1, description="images per query batch")

    def run(self, target, labels, *, prior, seed, generator) -> AttackResult:  # noqa: ANN001
        cfg = self.config
        n = len(labels)
        identities = torch.unique(labels)  # sorted
        column = {int(y): j for j, y in enumerate(identities.tolist())}
        pool = cfg.candidates * n
        z = prior.sample_latent(pool, generator)
        scores = torch.empty(pool, len(identities))
        with torch.no_grad():
            for start in range(0, pool, cfg.batch_size):
                x = prior.decode(z[start : start + cfg.batch_size]).to(target.device)
                p = target.probs(x)  # one query per row, counted (and budgeted) by the target
                logp = torch.log(p[:, identities.to(p.device)].float().clamp_min(FLOOR))
                scores[start : start + x.shape[0]] = logp.cpu()

        chosen = torch.empty(n, dtype=torch.long)
        best = torch.empty(n)
        for y, j in column.items():
            where = (labels == y).nonzero().view(-1)
            top = torch.topk(scores[:, j], len(where))  # len(where) <= n <= pool
            chosen[where] = top.indices
            best[where] = top.values
        with torch.no_grad():
            picked = z[chosen.to(z.device)]
            images = torch.cat([prior.decode(picked[i : i + cfg.batch_size]) for i in range(0, n, cfg.batch_size)])
        # queries/seconds/config are filled in by Attack.__call__ from the target's own counter
        return AttackResult(self.name, images, labels, best, 0, 0.0, seed, {}, latents=picked)


@hookimpl
def invertkit_register_attacks(register) -> None:  # noqa: ANN001 - a Registrar
    register(BestOfN)
