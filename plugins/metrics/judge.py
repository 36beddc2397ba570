"""A second judge: the reconstructions scored by an ensemble of independent *judge* classifiers
(``ctx.judges``: models of other architectures and seeds than the evaluation model, trained on the private
data, never the target; a preset declares them as ``judges = [...]`` recipes) and by nearest-neighbour look-ups
in the private training set.

One evaluation model is one opinion: FMLLM (https://arxiv.org/abs/2505.03519) shows that the
evaluation-model protocol accepts reconstructions that fool the evaluation model without showing the
identity (adversarial examples that transfer from the target). A reconstruction that the evaluation model
accepts but independent judges reject counts as adversarial here.

For reconstructions ``images`` of identities ``labels`` (``N`` in all, over every ``update``):

- ``judge_acc``: share of reconstructions whose judge-ensemble prediction (argmax of the mean over judges of
  their softmax) is the identity;
- ``judge_agree``: share that *every* judge classifies (argmax of its logits) as the identity (unanimity);
- ``nn_feat_acc``: share whose nearest private training image (``ctx.private_images``, every private
  identity) in the judges' feature space belongs to the identity. The feature space is the concatenation of
  each judge's L2-normalised features (``features(x)``), scaled by ``1/sqrt(J)`` for ``J`` judges: the
  squared distance is the mean over judges of the squared distance of unit feature vectors, so the nearest
  image is the one of highest mean cosine similarity over the judges (every judge weighs the same, whatever
  its feature width);
- ``nn_pixel_acc``: the same in pixel space (flattened images, Euclidean distance);
- ``adversarial_rate``: share of all reconstructions that the evaluation model accepts (argmax of
  ``ctx.eval_logits`` is the identity) and the judge ensemble rejects (its argmax is not);
- ``adversarial_share``: those reconstructions divided by the number the evaluation model accepts (0 when
  it accepts none): the part of the evaluation model's attack accuracy that the judges do not confirm.

Nearest-neighbour ties go to the first private image. Every key is a count divided by ``N``, accumulated in
``update``, so the value does not depend on how the reconstructions were batched; all keys are NaN when there
are no reconstructions. The judges need the ``features``/``head`` split
(:func:`~invertkit.core.interfaces.target.split_classifier`); without judges the metric is a
:class:`UsageError`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from invertkit.core.errors import ShapeError, UsageError
from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.config import ComponentConfig
from invertkit.core.interfaces.metric import Metric, MetricContext
from invertkit.core.interfaces.target import split_classifier
from invertkit.core.metrics import check_labels

#: query rows per distance block
BLOCK = 256


def nearest_index(queries: Tensor, refs: Tensor) -> Tensor:
    """Index into ``refs`` of each query's nearest row (Euclidean, float64, first on ties). Each distance is
    computed pair by pair (no matrix-product shortcut), so a query's answer does not depend on the other
    queries of its batch."""
    q, r = queries.double(), refs.double()
    out = [torch.cdist(q[i : i + BLOCK], r, compute_mode="donot_use_mm_for_euclid_dist").argmin(1)
           for i in range(0, len(q), BLOCK)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


class Judge(Metric):
    name = "judge"
    needs = frozenset({"eval", "private", "judges"})
    paper = "https://arxiv.org/abs/2505.03519"
    keys = ("judge_acc", "judge_agree", "nn_feat_acc", "nn_pixel_acc", "adversarial_rate", "adversarial_share")
    # adversarial_*: a high value means the evaluation model's figure is inflated by reconstructions the
    # judges do not confirm: not a stronger attack
    higher_is_better = {"judge_acc": True, "judge_agree": True, "nn_feat_acc": True, "nn_pixel_acc": True,
                        "adversarial_rate": False, "adversarial_share": False}
    summary = ("Independent judge ensemble, nearest private image (judge features, pixels), and the share of "
               "eval-accepted reconstructions the judges reject.")

    class Config(ComponentConfig):
        batch_size: int = Field(256, ge=1, le=65536, description="images per judge forward pass")

    def __init__(self, ctx: MetricContext, config=None) -> None:  # noqa: ANN001
        if not ctx.judges:
            raise UsageError("metric 'judge' needs judge models: the preset declares none "
                             "(add `judges = [...]` recipes to the preset)")
        self.splits: list[tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]] = []
        for i, judge in enumerate(ctx.judges):
            if isinstance(judge, torch.nn.Module):
                judge.eval().to(ctx.device)
            split = split_classifier(judge)
            if split is None:
                raise UsageError(f"metric 'judge': judge {i} ({type(judge).__name__}) has no features(x)/head(f) "
                                 "split; judges must be classifiers of invertkit's zoo or timm")
            self.splits.append(split)
        super().__init__(ctx, config)
        self._private_feats: Tensor | None = None
        self._private_pixels: Tensor | None = None

    # ------------------------------------------------------------------ judge passes
    def _judge(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per image: the ensemble's mean softmax ``(N, K)``, each judge's argmax ``(J, N)`` and the combined
        normalised features ``(N, sum D_j)`` (float64, CPU)."""
        probs, preds, feats = [], [], []
        scale = 1.0 / math.sqrt(len(self.splits))
        with torch.no_grad():
            for i in range(0, len(images), self.config.batch_size):
                x = images[i : i + self.config.batch_size].to(self.ctx.device)
                p_sum, p_arg, f_cat = 0.0, [], []
                for feat_fn, head_fn in self.splits:
                    f = feat_fn(x)
                    logits = head_fn(f).detach().cpu().double()
                    p_sum = p_sum + logits.softmax(1)
                    p_arg.append(logits.argmax(1))
                    f_cat.append(F.normalize(f.reshape(len(f), -1).detach().cpu().double(), dim=1) * scale)
                probs.append(p_sum / len(self.splits))
                preds.append(torch.stack(p_arg))
                feats.append(torch.cat(f_cat, 1))
        if not probs:
            return torch.zeros(0, 0), torch.zeros(len(self.splits), 0, dtype=torch.long), torch.zeros(0, 0)
        return torch.cat(probs), torch.cat(preds, 1), torch.cat(feats)

    def private_feats(self) -> Tensor:
        """The judges' combined features of every private training image (once per context)."""
        if self._private_feats is None:
            store: dict[str, Tensor] = self.ctx.__dict__.setdefault("_invertkit_cache", {})
            key = "private_judge_features"
            if key not in store:
                store[key] = self._judge(self.ctx.private_images)[2]
            self._private_feats = store[key]
        return self._private_feats

    def private_pixels(self) -> Tensor:
        """The private training images flattened, float64 on the CPU."""
        if self._private_pixels is None:
            x = self.ctx.private_images
            self._private_pixels = x.detach().cpu().reshape(len(x), -1).double()
        return self._private_pixels

    # ------------------------------------------------------------------ Metric
    def reset(self) -> None:
        self.total = 0
        self.judge_hits = 0
        self.agree_hits = 0
        self.nn_feat_hits = 0
        self.nn_pixel_hits = 0
        self.eval_accepted = 0
        self.adversarial = 0

    def update(self, images: Tensor, labels: Tensor) -> None:
        if len(images) == 0:
            return
        labels = check_labels(labels, self.ctx.num_classes)
        if len(labels) != len(images):
            raise ShapeError(f"{len(images)} reconstructions but {len(labels)} labels")
        priv_x, priv_y = self.ctx.private_images, self.ctx.private_labels.detach().cpu().long()
        if tuple(images.shape[1:]) != tuple(priv_x.shape[1:]):
            raise ShapeError(f"reconstructions {tuple(images.shape[1:])} and private images "
                             f"{tuple(priv_x.shape[1:])} differ in shape")
        probs, preds, feats = self._judge(images)
        judge_hit = probs.argmax(1) == labels
        with torch.no_grad():
            eval_pred = torch.cat([self.ctx.eval_logits(images[i : i + self.config.batch_size].to(self.ctx.device))
                                   .detach().cpu().argmax(1)
                                   for i in range(0, len(images), self.config.batch_size)])
        eval_hit = eval_pred == labels
        self.total += len(labels)
        self.judge_hits += int(judge_hit.sum())
        self.agree_hits += int((preds == labels[None, :]).all(0).sum())
        self.eval_accepted += int(eval_hit.sum())
        self.adversarial += int((eval_hit & ~judge_hit).sum())
        if len(priv_x):
            nn_feat = nearest_index(feats, self.private_feats())
            self.nn_feat_hits += int((priv_y[nn_feat] == labels).sum())
            flat = images.detach().cpu().reshape(len(images), -1)
            nn_pix = nearest_index(flat, self.private_pixels())
            self.nn_pixel_hits += int((priv_y[nn_pix] == labels).sum())

    def compute(self) -> dict[str, float]:
        if self.total == 0:
            return {k: float("nan") for k in self.keys}
        n = self.total
        return {
            "judge_acc": self.judge_hits / n,
            "judge_agree": self.agree_hits / n,
            "nn_feat_acc": self.nn_feat_hits / n,
            "nn_pixel_acc": self.nn_pixel_hits / n,
            "adversarial_rate": self.adversarial / n,
            "adversarial_share": self.adversarial / self.eval_accepted if self.eval_accepted else 0.0,
        }


@hookimpl
def invertkit_register_metrics(register) -> None:
    register(Judge)
