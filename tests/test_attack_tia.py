"""Template inversion (issue 14): the ``tia-diffusion`` attack (plugins/attacks/tia_diffusion.py), the bench's
leaked-template path (core/bench/targets.py ``leaked_templates``), the ``secure-storage`` defense and the
``template-attack`` metric (plugins/metrics/template_attack.py).

* the attack contract, with leaked templates in the context;
* through the bench on the tiny digits ArcFace embedder: TIA beats ``random-prior`` on template cosine and
  SAR; the attacker is handed the stored templates (as the defense releases them), never the images;
* black-box: every query is counted (exactly: public templates, NES in stage 2 and in guidance, selection), and
  a budget is a stopping rule the attack respects;
* secure storage: the plan skips the template attack with the reason; the baseline still runs;
* the metric: type I/II and calibration against brute force (hypothesis), the source excluded from type II.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from invertkit.core.interfaces import ACCESS_LEVELS
from invertkit.core.interfaces.attack import Attack, AttackContext
from invertkit.core.interfaces.metric import MetricContext
from invertkit.core.testing.contracts import AttackContract
from invertkit.core.testing.strategies import make_tiny_target
from invertkit.plugins.attacks.tia_diffusion import TIADiffusion, key_parameters
from invertkit.plugins.metrics.template import calibrate
from invertkit.plugins.metrics.template_attack import TemplateAttack, type2_accepts

#: toy sizes: a few training steps, few sampler steps, two candidates
FAST: dict[str, Any] = {"width": 8, "stage1_steps": 3, "stage2_steps": 2, "batch_size": 4, "n": 2, "steps": 3,
                        "nes_pairs": 2}
TINY_TIA = {"stage1_steps": 150, "stage2_steps": 30, "batch_size": 32, "n": 2, "steps": 6}


def public(n: int = 16, shape: tuple[int, ...] = (1, 8, 8)) -> Tensor:
    return torch.rand((n, *shape), generator=torch.Generator().manual_seed(0))


def leaked_for(target, n: int, seed: int = 1) -> Tensor:  # noqa: ANN001
    """Templates of ``n`` random images under ``target``'s own network, computed without charging it."""
    twin = make_tiny_target(0, num_classes=target.num_classes, input_shape=target.input_shape)
    return twin.features(torch.rand((n, *target.input_shape), generator=torch.Generator().manual_seed(seed)))


class TestTIAContract(AttackContract):
    attack_cls = TIADiffusion
    config: ClassVar[dict[str, Any]] = FAST

    def make_attack(self) -> Attack:
        target = self.make_target()
        return self.attack_cls(dict(self.config), context=AttackContext(
            public_images=public(), extras={"templates": leaked_for(target, len(self.labels))}))


def test_stage2_trains_only_the_key_layers() -> None:
    from invertkit.plugins.priors.edm import build_denoiser

    den = build_denoiser((1, 8, 8), cond_kind="vector", cond_dim=6, width=8, channel_mult=(1, 2))
    key = {id(p) for p in key_parameters(den)}
    names = [n for n, p in den.named_parameters() if id(p) in key]
    assert any(n.startswith("to_embedding") for n in names) and "null_vector" in names
    assert any(n.startswith("unet.up_blocks.1.resnets") for n in names) and any("conv_out" in n for n in names)
    assert not any(n.startswith(("unet.down_blocks", "unet.mid_block", "unet.time_embedding")) for n in names)
    assert 0 < len(key) < len(list(den.parameters())) / 2


def test_black_box_counts_every_query_and_respects_its_budget() -> None:
    caps = ACCESS_LEVELS["embedding"]
    cfg = {**FAST, "stage2_steps": 2}
    c = TIADiffusion.Config(**cfg)
    n_public, templates = 16, 3
    attack = TIADiffusion(cfg, context=AttackContext(public_images=public(n_public)))
    target = make_tiny_target(0, capabilities=caps)
    attack.context.extras["templates"] = leaked_for(target, templates)
    result = attack(target, torch.tensor([0, 1, 2]), seed=0)
    evaluations = 2 * c.steps - 1  # Heun with an Euler step into sigma = 0: one guidance estimate each
    expected = (n_public + c.stage2_steps * c.batch_size * 2 * c.nes_pairs
                + evaluations * templates * c.n * 2 * c.nes_pairs + templates * c.n)
    assert result.queries == target.queries == expected
    # a budget below that: it stops guiding at the refusal, keeps what it has, never passes the budget
    budget = expected - templates * c.n - 5
    tight = make_tiny_target(0, capabilities=caps, budget=budget)
    attack = TIADiffusion(cfg, context=AttackContext(public_images=public(n_public),
                                                     extras={"templates": leaked_for(tight, templates)}))
    result = attack(tight, torch.tensor([0, 1, 2]), seed=0)
    assert len(result) == templates and tight.queries <= budget and tight.exhausted


def test_a_cached_stage_2_samples_as_the_cell_that_trained_it() -> None:
    # black-box stage 2 draws NES directions; they come from stage 2's own generator, not the attack's, so the
    # attack's sampling noise is the same whether stage 2 was trained in this run or read from the cache
    import copy

    store: dict[str, Any] = {}

    def cache(key, train, build, *, label):  # noqa: ANN001, ANN202 - the bench cache's contract, in memory
        k = json.dumps(key, sort_keys=True, default=str)
        if k not in store:
            store[k] = train()
        return copy.deepcopy(store[k]).eval()

    caps = ACCESS_LEVELS["embedding"]
    target = make_tiny_target(0, capabilities=caps)
    runs = []
    for _ in range(2):
        attack = TIADiffusion(FAST, context=AttackContext(public_images=public(), cache=cache,
                                                          extras={"templates": leaked_for(target, 3)}))
        runs.append(attack(make_tiny_target(0, capabilities=caps), torch.tensor([0, 1, 2]), seed=0))
    assert len(store) == 2  # stage 1 and stage 2, trained once
    assert torch.equal(runs[0].images, runs[1].images)


def test_without_leaked_templates_it_says_so() -> None:
    from invertkit.core.errors import UsageError

    attack = TIADiffusion(FAST, context=AttackContext(public_images=public()))
    with pytest.raises(UsageError, match="leaked templates"):
        attack(make_tiny_target(0), torch.tensor([0]), seed=0)


# ------------------------------------------------------------------------------------- through the bench
@pytest.fixture(scope="module")
def bench_records(tiny_catalog, plugins) -> dict:  # noqa: ANN001
    from invertkit.core.bench.plan import make_plan
    from invertkit.core.bench.runner import run_cell
    from invertkit.core.testing.contracts import torch_threads

    plan = make_plan(tiny_catalog, plugins, matrix="templates-tiny", targets="tiny-embedder",
                     defenses="none,secure-storage", options={"attack:tia-diffusion": TINY_TIA})
    with torch_threads(1):
        return {(c.attack, c.defense): run_cell(c, tiny_catalog, plugins, use_cache=False).record for c in plan.cells}


def test_tia_beats_random_prior_on_the_tiny_embedder(bench_records: dict) -> None:
    tia, base = bench_records["tia-diffusion", "none"], bench_records["random-prior", "none"]
    assert tia["status"] == "ok" and base["status"] == "ok", (tia, base)
    t, b = tia["metrics"], base["metrics"]
    assert t["tia_cos"] > b["tia_cos"] + 0.3
    assert t["sar1@1e-3"] > b["sar1@1e-3"] + 0.3 and t["sar1@1e-2"] >= t["sar1@1e-3"]
    assert t["sar2@1e-3"] > b["sar2@1e-3"] + 0.2
    assert t["fd_src"] < b["fd_src"] and t["ssim"] > b["ssim"]
    assert t["queries"] > 0 and b["queries"] == 0
    assert tia["samples"] == base["samples"] == 5 * 3  # one reconstruction per leaked template


def test_the_gmi_style_baseline_runs_white_box_only_and_beats_the_prior(bench_records: dict) -> None:
    gmi, base = bench_records["gmi-template", "none"], bench_records["random-prior", "none"]
    assert gmi["status"] == "ok", gmi
    assert gmi["metrics"]["tia_cos"] > base["metrics"]["tia_cos"] + 0.25
    assert gmi["metrics"]["sar1@1e-3"] > base["metrics"]["sar1@1e-3"]


def test_secure_storage_skips_the_template_attack_with_the_reason(bench_records: dict) -> None:
    for attack in ("tia-diffusion", "gmi-template"):
        skipped = bench_records[attack, "secure-storage"]
        assert skipped["status"] == "skipped"
        assert "never releases the templates" in skipped["reason"] and "secure storage" in skipped["reason"]
    assert bench_records["random-prior", "secure-storage"]["status"] == "ok"  # the baseline needs no template


def test_the_attacker_gets_stored_templates_never_images(tiny_catalog, plugins) -> None:  # noqa: ANN001
    from invertkit.core.bench.plan import Cell
    from invertkit.core.bench.targets import leaked_templates
    from invertkit.core.zoo.scenario import build_scenario

    sc = build_scenario("digits-embed-tiny", tiny_catalog, plugins)
    cell = Cell("tia-diffusion", "biohash", "tiny-embedder", samples_per_identity=2)
    ids = torch.tensor([0, 3])
    leak = leaked_templates(tiny_catalog, plugins, cell, sc, plugins.get("defense", "biohash")({"bits": 16}), ids)
    assert set(leak.attacker) == {"templates"}  # no image, no index
    bits = leak.attacker["templates"]
    assert bits.shape == (4, 16) and set(bits.unique().tolist()) <= {0.0, 1.0}  # BioHash bits, as stored
    assert leak.labels.tolist() == [0, 0, 3, 3]
    x, y = sc.split.private_train
    assert torch.equal(leak.evaluator["paired_reference"], x[leak.evaluator["template_index"]])
    assert y[leak.evaluator["template_index"]].tolist() == [0, 0, 3, 3]
    none = leaked_templates(tiny_catalog, plugins, cell, sc, plugins.get("defense", "secure-storage")(), ids)
    assert none.attacker == {} and none.evaluator["templates"].shape[0] == 4
    assert leaked_templates(tiny_catalog, plugins, Cell("gmi", "none", "tiny-cnn"), sc, None, ids) is None


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                HealthCheck.function_scoped_fixture])
@given(ids=st.lists(st.integers(0, 4), min_size=1, max_size=5, unique=True), per=st.integers(1, 4),
       seed=st.integers(0, 1000))
def test_leaked_templates_are_aligned_with_the_labels_and_sources(tiny_catalog, plugins, ids, per, seed) -> None:  # noqa: ANN001
    """The bench's contract with template attacks and metrics: row i of every side is the same private image."""
    from invertkit.core.bench.plan import Cell
    from invertkit.core.bench.targets import evaluator_target, leaked_templates
    from invertkit.core.zoo.scenario import build_scenario

    sc = build_scenario("digits-embed-tiny", tiny_catalog, plugins)
    cell = Cell("tia-diffusion", "none", "tiny-embedder", samples_per_identity=per, seed=seed)
    leak = leaked_templates(tiny_catalog, plugins, cell, sc, plugins.get("defense", "none")(), torch.tensor(ids))
    x, y = sc.split.private_train
    index = leak.evaluator["template_index"]
    assert len(index) == len(set(index.tolist())) == len(leak.labels) == per * len(ids)
    assert leak.labels.tolist() == y[index].tolist() == [i for i in ids for _ in range(per)]
    clean = evaluator_target(tiny_catalog, plugins, "tiny-embedder").features(x[index])
    assert torch.allclose(leak.evaluator["templates"], clean) and torch.allclose(leak.attacker["templates"], clean)


# ------------------------------------------------------------------------------------- the metric
class Linear(nn.Module):
    def __init__(self, w: Tensor) -> None:
        super().__init__()
        self.w = w

    def features(self, x: Tensor) -> Tensor:
        return x.flatten(1).double() @ self.w

    def head(self, f: Tensor) -> Tensor:
        return f

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)


def brute_type2(rec: np.ndarray, labels: np.ndarray, priv: np.ndarray, plabels: np.ndarray, src: np.ndarray,
                thr: float) -> tuple[int, int]:
    ok = pairs = 0
    for i, j in itertools.product(range(len(rec)), range(len(priv))):
        if plabels[j] != labels[i] or j == src[i]:
            continue
        cos = rec[i] @ priv[j] / (np.linalg.norm(rec[i]) * np.linalg.norm(priv[j]))
        ok += int(cos > thr)
        pairs += 1
    return ok, pairs


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), n=st.integers(1, 6), thr=st.floats(-0.9, 0.9))
def test_type2_pairs_match_brute_force_and_exclude_the_source(seed: int, n: int, thr: float) -> None:
    g = torch.Generator().manual_seed(seed)
    priv = torch.randn(12, 4, generator=g, dtype=torch.float64)
    plabels = torch.randint(0, 3, (12,), generator=g)
    src = torch.randint(0, 12, (n,), generator=g)
    labels = plabels[src]
    rec = priv[src] + 0.5 * torch.randn(n, 4, generator=g, dtype=torch.float64)
    got = type2_accepts(rec, labels, priv, plabels, src, thr)
    assert got == brute_type2(rec.numpy(), labels.numpy(), priv.numpy(), plabels.numpy(), src.numpy(), thr)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), fmr=st.sampled_from([1e-3, 1e-2, 0.05, 0.2]))
def test_calibration_bounds_the_false_match_rate(seed: int, fmr: float) -> None:
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(40, 5, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 6, (40,), generator=g)
    thr, achieved, _ = calibrate(feats, labels, fmr)
    u = feats / feats.norm(dim=1, keepdim=True)
    sim = (u @ u.T).numpy()
    imp = np.array([sim[i, j] for i in range(40) for j in range(i + 1, 40) if labels[i] != labels[j]])
    above = (imp > thr).sum()
    assert above <= math.floor(fmr * len(imp)) and math.isclose(achieved, above / len(imp))
    assert (imp >= thr).sum() > math.floor(fmr * len(imp))  # the threshold is an impostor score: tight


def metric_ctx(extras: dict, second: bool = True) -> tuple[MetricContext, Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(3)
    centres = torch.randn(4, 16, generator=g)
    labels = torch.arange(4).repeat_interleave(6)
    images = (centres[labels] + 0.6 * torch.randn(24, 16, generator=g)).view(24, 1, 4, 4)
    system = Linear(torch.randn(16, 8, generator=g, dtype=torch.float64))
    other = Linear(torch.randn(16, 8, generator=g, dtype=torch.float64))
    ctx = MetricContext(eval_logits=other if second else None, eval_features=other.features if second else None,
                        private_images=images, private_labels=labels, num_classes=4,
                        extras={"template_features": system.features, **extras})
    return ctx, images, labels, system.features(images)


def test_metric_exact_inversions_succeed_and_random_ones_do_not() -> None:
    ctx, images, labels, clean = metric_ctx({})
    index = torch.tensor([0, 7, 13, 20])
    ctx.extras.update({"templates": clean[index], "template_index": index})
    exact = TemplateAttack(ctx)
    exact.update(images[index], labels[index])
    out = exact.compute()
    assert math.isclose(out["tia_cos"], 1.0, abs_tol=1e-9) and out["tia_l2"] < 1e-9
    assert out["sar1@1e-3"] == out["sar1@1e-2"] == out["transfer_sar1@1e-3"] == 1.0
    assert 0.0 <= out["sar2@1e-3"] <= out["sar2@1e-2"] <= 1.0  # a looser threshold accepts at least as many
    ok, pairs = type2_accepts(clean[index], labels[index], clean, labels, index, out["threshold@1e-2"])
    assert pairs == 4 * 5 and math.isclose(out["sar2@1e-2"], ok / pairs)
    noise = TemplateAttack(ctx)
    noise.update(torch.rand((4, 1, 4, 4), generator=torch.Generator().manual_seed(9)) * 3, labels[index])
    worse = noise.compute()
    assert worse["tia_cos"] < out["tia_cos"] and worse["fd_src"] > out["fd_src"]
    assert worse["sar1@1e-2"] < 1.0


def test_metric_is_batch_split_invariant_and_needs_its_templates() -> None:
    from invertkit.core.errors import UsageError

    ctx, images, labels, clean = metric_ctx({})
    index = torch.tensor([1, 2, 8, 15, 22])
    recon = images[index] + 0.3
    ctx.extras.update({"templates": clean[index], "template_index": index})
    whole = TemplateAttack(ctx)
    whole.update(recon, labels[index])
    parts = TemplateAttack(ctx)
    parts.update(recon[:2], labels[index][:2])
    parts.update(recon[2:], labels[index][2:])
    a, b = whole.compute(), parts.compute()
    assert all(math.isclose(a[k], b[k], rel_tol=1e-9, abs_tol=1e-12) for k in a)
    bare, *_ = metric_ctx({}, second=False)
    with pytest.raises(UsageError, match="templates"):
        TemplateAttack(bare)
    bare.extras["templates"] = clean[index]
    only = TemplateAttack(bare)
    only.update(recon, labels[index])
    assert math.isnan(only.compute()["transfer_sar1@1e-3"])  # no second recogniser: no transfer figure


# ------------------------------------------------------------------------------------- a brought ONNX embedder
@pytest.mark.slow
def test_tia_attacks_a_brought_onnx_embedder_through_the_cli(tmp_path: Path) -> None:
    """A user's ONNX embedder, declared with one registry entry (public folder, private class folder), attacked
    black-box by TIA through ``invertkit bench``: only the templates of the private images leak."""
    import json
    import textwrap

    from click.testing import CliRunner
    from PIL import Image
    from sklearn.datasets import load_digits

    from invertkit.cli import cli

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 64, 16))
    head = nn.Linear(16, 5)
    keep = y < 5
    opt = torch.optim.Adam([*net.parameters(), *head.parameters()], 3e-3)
    for _ in range(15):
        for i in range(0, int(keep.sum()), 64):
            loss = nn.functional.cross_entropy(head(net(x[keep][i:i + 64])), y[keep][i:i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    torch.onnx.export(net, (torch.zeros(2, 1, 8, 8),), str(tmp_path / "embedder.onnx"), input_names=["x"],
                      output_names=["t"], dynamic_axes={"x": {0: "n"}, "t": {0: "n"}}, opset_version=17, dynamo=False)
    for folder, digits in (("public", range(5, 10)), ("private", range(0, 5))):
        for i in np.flatnonzero(np.isin(y.numpy(), list(digits)))[:200]:
            sub = tmp_path / folder / (str(int(y[i])) if folder == "private" else "")
            sub.mkdir(parents=True, exist_ok=True)
            Image.fromarray((x[i, 0].numpy() * 255).astype(np.uint8)).save(sub / f"{i}.png")
    reg = tmp_path / "registry.toml"
    reg.write_text(textwrap.dedent(f"""
        [targets.my-embedder]
        backend = "onnx"
        weights = "{tmp_path / 'embedder.onnx'}"
        kind = "embedder"
        access = "embedding"
        num_classes = 5
        public = {{ dataset = "image-folder", root = "{tmp_path / 'public'}", options = {{ channels = 1 }} }}
        private = {{ dataset = "class-folder", root = "{tmp_path / 'private'}", options = {{ channels = 1 }} }}
        prior = {{ plugin = "wgan-gp", seed = 0, options = {{ latent_dim = 16, width = 16, steps = 100, batch_size = 64 }} }}

        [bench.mine]
        targets = ["my-embedder"]
        attacks = ["random-prior", "tia-diffusion"]
        metrics = ["template-attack", "pixel"]
        samples_per_identity = 2

        [bench.mine.attack_options.tia-diffusion]
        stage1_steps = 150
        stage2 = false
        guidance = false
        batch_size = 32
        n = 4
        steps = 6
    """))
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["bench", "--registry", str(reg), "--matrix", "mine", "--out", str(out)],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    records = {r["attack"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    tia, base = records["tia-diffusion"], records["random-prior"]
    assert tia["status"] == "ok" and base["status"] == "ok", (tia, base)
    assert tia["metrics"]["tia_cos"] > base["metrics"]["tia_cos"] + 0.2
    assert tia["metrics"]["queries"] >= 200  # the public templates, queried through the API
    assert math.isnan(tia["metrics"]["transfer_sar1@1e-3"])  # no evaluation model given: no second recogniser
