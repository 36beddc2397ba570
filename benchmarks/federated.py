"""Model inversion in federated learning (issue 16): attack accuracy per view and round, under DP-FedAvg and
secure aggregation, the global model's accuracy beside each, and gradient inversion of one client's update.

Class-level inversion: one FedAvg federation on Flower (``--clients`` clients holding disjoint private
identities, ``--rounds`` rounds; every view is read from its cache) attacked through each view at rounds 1, 5
and 20 — a client's upload (the server, white-box), the aggregate (the server, white-box), the released global
model (a participant, white-box) and the outsider's API (black-box) — by ``--attack`` (white-box views) and
``--api-attack`` (the outsider), with ``--matrix``'s options; then the same views after the last round under
DP-FedAvg at each ``--epsilons`` and under secure aggregation (where the client views are skipped with the
reason). Every cell goes through the bench (``make_plan``/``run_bench``, cached), acc@1 is the evaluation
model's on the reconstructions, over all identities and per client's identities.

Reconstruction from one update: a FedSGD federation (one SGD step of batch ``B`` per client, in eval mode) per
``--batch-sizes``; the server inverts client 0's round-1 upload (:mod:`invertkit.plugins.attacks.inverting_gradients`)
and the figures compare it with the client's batch (PSNR, SSIM, LPIPS where its weights are on disk), beside a
uniform-noise baseline and DLG for B = 1.

    python benchmarks/federated.py --out /tmp/federated                          # digits (CPU: ~30 min)
    python benchmarks/federated.py --preset mnist-gmi --out /tmp/federated-mnist  # MNIST (INVERTKIT_DATA)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch


def toml_dict(d: dict[str, Any]) -> str:
    return "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in d.items()) + " }"


def sweep_targets(args: argparse.Namespace) -> tuple[str, list[dict[str, Any]]]:
    """The extra registry entries: one target per (federation, view); and their description."""
    rounds = [int(r) for r in args.view_rounds.split(",")]
    last = max(rounds)
    base = {"clients": args.clients, "rounds": last}
    feds = [("fedavg", base)]
    feds += [(f"dp-eps{e:g}", {**base, "dp_epsilon": float(e), "dp_clip": args.dp_clip})
             for e in (float(x) for x in args.epsilons.split(","))]
    feds.append(("secagg", {**base, "secure_aggregation": True}))
    views = [("client0", "server:client-0@round-{r}", "white-box"), ("server", "server:global@round-{r}", "white-box"),
             ("participant", "participant:global@round-{r}", "white-box"),
             ("outsider", "outsider:global@round-{r}", "black-box")]
    text, rows = [], []
    for fname, opts in feds:
        for r in (rounds if fname == "fedavg" else [last]):
            for vname, view, access in views:
                name = f"fedb-{fname}-{vname}-r{r}"
                text.append(f'[targets.{name}]\npreset = "{args.preset}"\nbackend = "federated"\n'
                            f'view = "{view.format(r=r)}"\naccess = "{access}"\nbackend_options = {toml_dict(opts)}\n')
                rows.append({"target": name, "federation": fname, "view": vname, "round": r, "options": opts})
    return "\n".join(text), rows


def client_breakdown(images: torch.Tensor, labels: torch.Tensor, eval_net: torch.nn.Module,
                     identities: list[list[int]]) -> list[float]:
    """acc@1 (the evaluation model's top-1 agrees with the intended identity) over each client's identities."""
    with torch.no_grad():
        hit = eval_net(images).argmax(1) == labels
    out = []
    for ids in identities:
        mine = torch.isin(labels, torch.tensor(ids))
        out.append(float(hit[mine].float().mean()) if mine.any() else float("nan"))
    return out


def class_level(args: argparse.Namespace) -> list[dict[str, Any]]:
    from invertkit.core.bench.plan import make_plan
    from invertkit.core.bench.runner import run_bench
    from invertkit.core.catalog import parse_catalog
    from invertkit.core.plugins import get_plugins
    from invertkit.core.zoo.scenario import build_scenario
    from invertkit.plugins.targets.federated import fed_config, federation

    extra, rows = sweep_targets(args)
    text = Path(args.registry).read_text() if args.registry else _bundled_text()
    matrix = f"""
[bench.fed-sweep]
targets = ["fedb-*"]
attacks = ["{args.attack}", "{args.api_attack}"]
defenses = ["none"]
metrics = ["attack-acc"]
samples_per_identity = {args.samples}
"""
    catalog = parse_catalog(text + "\n" + extra + matrix, source="benchmarks/federated.py")
    spec = catalog.matrix(args.matrix)
    opts = {f"attack:{a}": dict(spec.attack_options.get(a, {})) for a in (args.attack, args.api_attack)}
    plugins = get_plugins()
    scenario = build_scenario(args.preset, catalog, plugins)
    plan = make_plan(catalog, plugins, matrix="fed-sweep", options=opts)
    # the API attack where only an API is held (the outsider); the white-box attack on every other view
    plan.cells = [c for c in plan.cells if c.attack != args.api_attack or c.target.endswith(tuple(
        f"outsider-r{r['round']}" for r in rows))]
    t0 = time.perf_counter()
    outcomes = run_bench(plan, catalog, plugins)
    by_target = {r["target"]: r for r in rows}
    results = []
    baseline_done = False
    for out in outcomes:
        rec = out.record
        if rec["attack"] == "random-prior":  # it never looks at the target: one row is the baseline
            if baseline_done or rec["status"] != "ok":
                continue
            baseline_done = True
        row = by_target[rec["target"]]
        cfg = fed_config(catalog.target(rec["target"]))
        run = federation(scenario, plugins, cfg)
        rnd = row["round"]
        res = {**{k: row[k] for k in ("federation", "view", "round")}, "attack": rec["attack"],
               "status": rec["status"], "reason": rec.get("reason", ""),
               "acc@1": rec.get("metrics", {}).get("acc@1"), "natural_acc": rec.get("metrics", {}).get("natural_acc"),
               "global_acc": run.meta["global_acc"].get(str(rnd)), "client_identities": run.meta["client_identities"],
               "epsilon": (run.meta.get("dp") or {}).get("epsilon", {}).get(str(rnd)),
               "flower": run.meta.get("flower")}
        if rec["attack"] == "random-prior":
            res.update(federation="baseline", view="prior samples", round="–", global_acc=None, natural_acc=None)
        if rec["status"] == "ok" and out.images is not None:
            res["acc@1_per_client"] = client_breakdown(out.images, out.labels, scenario.eval_net.eval(),
                                                       run.meta["client_identities"])
        results.append(res)
    print(f"class-level: {len(outcomes)} cells in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    return results


def _bundled_text() -> str:
    from importlib import resources

    return resources.files("invertkit").joinpath("registry.toml").read_text()


def reconstruction(args: argparse.Namespace) -> list[dict[str, Any]]:
    from invertkit.core.catalog import load_catalog
    from invertkit.core.plugins import get_plugins
    from invertkit.core.zoo.scenario import build_scenario
    from invertkit.plugins.attacks import inverting_gradients as gi
    from invertkit.plugins.targets.federated import FedConfig, client_batches, federation

    catalog = load_catalog(args.registry)
    plugins = get_plugins()
    scenario = build_scenario(args.preset, catalog, plugins)
    out = []
    for b in (int(x) for x in args.batch_sizes.split(",")):
        cfg = FedConfig(clients=args.clients, rounds=1, local_steps=1, batch_size=b, local_mode="eval")
        run = federation(scenario, plugins, cfg)
        base, upload = run.network("global", 0), run.network("client0", 1)
        grads = gi.update_gradient(base, upload, cfg.lr)  # the server's view: the model it sent, the upload
        labels = gi.infer_labels(base, grads, b, scenario.split.public[0])
        ((x, y),) = client_batches(scenario, cfg, 0, 1)  # the evaluator's side only
        label_hits = int(torch.minimum(torch.bincount(labels, minlength=scenario.num_classes),
                                       torch.bincount(y, minlength=scenario.num_classes)).sum())
        methods = [("inverting-gradients", {"iterations": args.gi_iterations})]
        if b == 1:
            methods.append(("dlg", {"method": "dlg", "iterations": args.dlg_iterations}))
        for name, conf in methods:
            t0 = time.perf_counter()
            rec, _ = gi.invert_update(base, grads, labels, scenario.image_shape, conf)
            out.append({"batch_size": b, "method": name, **gi.scores(rec, x), "labels_right": label_hits,
                        "seconds": round(time.perf_counter() - t0, 1), "options": conf,
                        "global_acc_round0": run.meta["global_acc"]["0"]})
        g = torch.Generator().manual_seed(0)
        out.append({"batch_size": b, "method": "uniform noise", **gi.scores(torch.rand(x.shape, generator=g), x)})
        print(f"gradient inversion B={b}: {out[-2]}", file=sys.stderr)
    return out


def _f(v: Any, digits: int = 3) -> str:
    return "–" if v is None or v != v else f"{v:.{digits}f}"


def render(result: dict[str, Any]) -> str:
    """The tables of ``federated.json`` as Markdown (benchmarks/RESULTS.md)."""
    lines: list[str] = []
    rows = result.get("class_level") or []
    if rows:
        ids = next((r["client_identities"] for r in rows if r.get("client_identities")), [])
        heads = " | ".join(f"acc@1 client {k} ids {v}" for k, v in enumerate(ids))
        lines += [f"| federation | view | round | attack | acc@1 (all ids) | {heads} | model's acc | global acc | ε |",
                  "|" + "---|" * (8 + len(ids))]
        for r in rows:
            per = r.get("acc@1_per_client") or [None] * len(ids)
            if r["status"] != "ok":
                lines.append(f"| {r['federation']} | {r['view']} | {r['round']} | {r['attack']} | skipped: "
                             f"{r['reason'][:90]} |" + " |" * (len(ids) + 3))
                continue
            lines.append(f"| {r['federation']} | {r['view']} | {r['round']} | {r['attack']} | {_f(r['acc@1'])} | "
                         + " | ".join(_f(v) for v in per)
                         + f" | {_f(r['natural_acc'])} | {_f(r['global_acc'])} | {_f(r.get('epsilon'), 2)} |")
    rec = result.get("reconstruction") or []
    if rec:
        lines += ["", "| batch size | method | PSNR (dB) | SSIM | LPIPS | labels right | seconds |",
                  "|---|---|---|---|---|---|---|"]
        for r in rec:
            lines.append(f"| {r['batch_size']} | {r['method']} | {_f(r['psnr'], 1)} | {_f(r['ssim'])} | "
                         f"{_f(r.get('lpips'))} | {r.get('labels_right', '–')} | {r.get('seconds', '–')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    from invertkit.core.threads import apply_threads

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="digits")
    p.add_argument("--registry", default=None)
    p.add_argument("--matrix", default="federated", help="the matrix whose attack options are used")
    p.add_argument("--clients", type=int, default=3)
    p.add_argument("--view-rounds", default="1,5,20")
    p.add_argument("--epsilons", default="8,64,512")
    p.add_argument("--dp-clip", type=float, default=1.0)
    p.add_argument("--attack", default="gmi")
    p.add_argument("--api-attack", default="nes")
    p.add_argument("--samples", type=int, default=5, help="samples per identity")
    p.add_argument("--batch-sizes", default="1,8,32")
    p.add_argument("--gi-iterations", type=int, default=4800)
    p.add_argument("--dlg-iterations", type=int, default=100)
    p.add_argument("--skip", choices=["class-level", "reconstruction"], default=None)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    apply_threads()
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    if args.skip != "reconstruction":
        result["reconstruction"] = reconstruction(args)
        (args.out / "federated.json").write_text(json.dumps(result, indent=1, default=str))
    if args.skip != "class-level":
        result["class_level"] = class_level(args)
    (args.out / "federated.json").write_text(json.dumps(result, indent=1, default=str))
    (args.out / "federated.md").write_text(render(result))
    print(args.out / "federated.md")


if __name__ == "__main__":
    main()
