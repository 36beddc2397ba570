"""Federated learning as a target: FedAvg on Flower's simulation engine, and the views an attacker has of it.

A preset's private identities are spread over ``clients`` participants (disjoint classes per client, or a
Dirichlet split over every class), each training the preset's target architecture locally; the server
averages the uploads (FedAvg, McMahan et al., AISTATS 2017, arXiv 1602.05629, Algorithm 1: ``E`` local epochs
of SGD with batch ``B`` on every client each round, the average weighted by the clients' example counts).
The federation runs through Flower (``flwr``, the ``federated`` extra): a ``ServerApp`` running
``flwr.serverapp.strategy.FedAvg`` and a ``ClientApp`` per participant on Flower's simulation engine (Ray,
one CPU per client), following Flower's PyTorch quick-start (``examples/quickstart-pytorch``,
``pytorchexample/server_app.py`` and ``client_app.py``). Every model a view can name — each client's upload
and the global model after every round — is kept as safetensors in the cache, per (preset, configuration).

Defenses of the federation (options of the configuration, so each is its own set of targets):

- client-level DP-FedAvg (McMahan et al., ICLR 2018, arXiv 1710.06963): Flower's
  ``DifferentialPrivacyServerSideFixedClipping`` wrapper (each update clipped to ``dp_clip`` in L2, Gaussian
  noise of ``noise_multiplier * clip / clients`` added to the average); the noise multiplier is the one at
  which Opacus's RDP accountant gives ``dp_epsilon`` at ``dp_delta`` after ``rounds`` releases, every client
  taking part in every round (no sampling amplification). Clients then weigh equally (the accounted path of
  Flower's wrapper requires it).
- secure aggregation (Bonawitz et al., CCS 2017; Bell et al., CCS 2020): Flower's ``SecAggPlusWorkflow`` and
  ``secaggplus_mod``, the masking protocol run for real on the legacy workflow API, where it lives: the
  server's strategy only ever receives the masked sum, so no client's upload exists to be attacked — those
  views are withheld (the bench skips them with the reason); the aggregate remains.
- a client's training-time defense (BiDO, MID, NLS, DP-SGD, ...: ``local_defense``): each client trains its
  round with the defense's own ``train`` (its loss, optimiser and ``local_epochs``) on its own shard, starting
  from the global model; the federation's networks take the defense's layout (MID's bottleneck, DP-SGD's
  GroupNorm). DP-SGD's epsilon is then per client and round (record-level, its own accountant); over the
  rounds it composes. The bench's own training-time defenses would retrain centrally, so a federated target
  refuses them (the plan says to use ``local_defense``).

Views (a target entry's ``view``): ``server:client-K@round-R`` (the server, white-box on client K's upload
of round R), ``server:global@round-R`` (the server's aggregate; under DP-FedAvg before its noise),
``participant:global@round-R`` (what every client receives: the released global model, white-box),
``outsider:global[@round-R]`` (a black-box API on the released global model; default the last round).
``R = 0`` is the initial model. On a FedSGD federation (``local_steps = 1``) the client view also grants
``update``: the server reads the update itself (the global model of round R - 1 it sent, the upload, the local
learning rate and batch size it configured; one query), which gradient inversion
(:mod:`invertkit.plugins.attacks.inverting_gradients`) inverts; the evaluator gets the client's batch.

Deliberate differences from the references: local training is plain SGD with the preset's batch size (no
momentum, no schedule), and a client trains with its local defense's optimiser where it has one; DP-FedAvg
clips and noises every array of the state, as Flower's wrapper does, so under DP-FedAvg the architecture has
no data-dependent buffers: its BatchNorm layers become GroupNorm (Opacus's ``ModuleValidator.fix``, as for
DP-SGD; a noised BatchNorm running variance goes negative and the model's outputs non-finite).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from invertkit.core import progress
from invertkit.core.cache import atomic_write_json, cache_dir, content_key, entry_lock, load_into, save_module
from invertkit.core.errors import UsageError
from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.capability import ACCESS_LEVELS, Capability
from invertkit.core.interfaces.config import ComponentConfig, build_config
from invertkit.core.interfaces.target import TargetBackend, TargetModel, TorchTarget, UpdateRelease
from invertkit.core.zoo.train import accuracy, cross_entropy, fit

#: bump when the federation's procedure changes: cached federations are run again
VERSION = 2


class FedConfig(ComponentConfig):
    """A federation: its participants and their data, FedAvg's schedule, and its defenses."""

    clients: int = Field(3, ge=2, le=10, description="Number of participants K (all take part in every round).")
    partition: Literal["classes", "dirichlet"] = Field(
        "classes", description="classes: each client holds whole private identities (round-robin); dirichlet: "
        "each identity's images spread over clients by Dir(alpha).")
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration (partition = 'dirichlet').")
    rounds: int = Field(5, ge=1, description="Communication rounds.")
    local_epochs: int = Field(1, ge=1, description="E: local epochs per round (McMahan et al.).")
    local_steps: int | None = Field(None, ge=1, description="Instead of epochs: this many SGD steps of one batch "
                                    "each (1 = FedSGD, one gradient step per round).")
    batch_size: int | None = Field(None, ge=1, description="B: local batch size; None: the preset recipe's.")
    lr: float = Field(0.05, gt=0, description="Local SGD learning rate.")
    local_mode: Literal["train", "eval"] = Field(
        "train", description="The network's mode for local steps (eval: BatchNorm running statistics, no dropout).")
    dp_epsilon: float | None = Field(None, gt=0, description="Client-level DP-FedAvg at this epsilon (None: off).")
    dp_delta: float = Field(1e-3, gt=0, lt=1, description="DP-FedAvg delta.")
    dp_clip: float = Field(1.0, gt=0, description="DP-FedAvg: L2 clipping norm of each client's update.")
    secure_aggregation: bool = Field(False, description="Flower's SecAgg+: the server sees only the sum.")
    local_defense: str | None = Field(None, description="A training-time defense each client applies locally.")
    local_defense_options: dict[str, Any] = Field(default_factory=dict)
    seed: int = 0

    @model_validator(mode="after")
    def _combinations(self) -> "FedConfig":
        if self.secure_aggregation and self.dp_epsilon is not None:
            raise ValueError("dp_epsilon with secure_aggregation: server-side DP-FedAvg clips each client's update, "
                             "which secure aggregation hides from the server; use one or the other")
        if self.local_defense is not None and self.local_steps is not None:
            raise ValueError("local_steps with a local_defense: the defense trains its own epochs (set local_epochs)")
        return self


# ------------------------------------------------------------------------------------------ the data
def partition(labels: Tensor, cfg: FedConfig) -> list[Tensor]:
    """Each client's indices into the private training set."""
    classes = sorted(int(c) for c in torch.unique(labels))
    if cfg.partition == "classes":
        if cfg.clients > len(classes):
            raise UsageError(f"partition = 'classes' gives each of {cfg.clients} clients whole identities, and the "
                             f"preset has {len(classes)}: use fewer clients or partition = 'dirichlet'")
        owned = [[c for i, c in enumerate(classes) if i % cfg.clients == k] for k in range(cfg.clients)]
        return [torch.nonzero(torch.isin(labels, torch.tensor(cs))).flatten() for cs in owned]
    rng = np.random.default_rng(cfg.seed)
    parts: list[list[int]] = [[] for _ in range(cfg.clients)]
    for c in classes:
        idx = torch.nonzero(labels == c).flatten().numpy()
        rng.shuffle(idx)
        cuts = (np.cumsum(rng.dirichlet([cfg.alpha] * cfg.clients)) * len(idx)).astype(int)[:-1]
        for k, chunk in enumerate(np.split(idx, cuts)):
            parts[k].extend(chunk.tolist())
    for k, p in enumerate(parts):
        if not p:
            raise UsageError(f"the Dirichlet split (alpha = {cfg.alpha}, seed = {cfg.seed}) left client {k} without "
                             "data: raise alpha or change the seed")
    return [torch.tensor(sorted(p)) for p in parts]


def client_identities(labels: Tensor, parts: list[Tensor]) -> list[list[int]]:
    """The identities (labels) each client holds."""
    return [sorted(int(c) for c in torch.unique(labels[p])) for p in parts]


# ------------------------------------------------------------------------------------------ local training
def dp_noise_multiplier(cfg: FedConfig) -> float:
    """The Gaussian noise multiplier at which Opacus's RDP accountant gives ``dp_epsilon`` at ``dp_delta`` after
    ``rounds`` releases of the clipped average, each client in every release (sample rate 1)."""
    from opacus.accountants.utils import get_noise_multiplier

    return float(get_noise_multiplier(target_epsilon=cfg.dp_epsilon, target_delta=cfg.dp_delta, sample_rate=1.0,
                                      steps=cfg.rounds, accountant="rdp", epsilon_tolerance=0.01))


def dp_epsilon_spent(noise_multiplier: float, rounds: int, delta: float) -> float:
    """Opacus's RDP accountant's epsilon after ``rounds`` full-participation Gaussian releases."""
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    for _ in range(rounds):
        acc.step(noise_multiplier=noise_multiplier, sample_rate=1.0)
    return float(acc.get_epsilon(delta))


def client_seed(cfg: FedConfig, k: int, server_round: int) -> int:
    return cfg.seed * 1000 + server_round * 17 + k


def step_indices(n: int, batch: int, seed: int, steps: int) -> list[Tensor]:
    """The rows of a client's shard each of its ``steps`` local steps trains on (``local_steps`` mode)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randperm(n, generator=g)[:batch] for _ in range(steps)]


def client_batches(scenario: Any, cfg: FedConfig, k: int, server_round: int) -> list[tuple[Tensor, Tensor]]:
    """The evaluator's copy of the batches client ``k`` took its local steps on in ``server_round`` (never an
    attacker's: the gradient-inversion figures compare its reconstructions with them)."""
    if cfg.local_steps is None:
        raise UsageError("client_batches: only a local_steps federation (FedSGD) has a batch per step")
    x, y = scenario.split.private_train
    part = partition(y, cfg)[k]
    batch = cfg.batch_size or scenario.preset.target.batch_size
    return [(x[part][i], y[part][i]) for i in step_indices(len(part), batch, client_seed(cfg, k, server_round),
                                                             cfg.local_steps)]


@dataclass
class ClientTask:
    """What a client process needs to train a round: its shard, an empty network to load the global model into,
    the configuration, and (with a local defense) the scenario's data and recipe. Sent once to each Ray actor."""

    template: nn.Module
    shards: list[tuple[Tensor, Tensor]]
    cfg: FedConfig
    recipe: Any
    split: Any
    #: the preset's architecture, untrained (a local defense's ``new_model``; ``template`` is its layout)
    base: nn.Module | None = None

    def local_train(self, k: int, state: dict[str, Tensor], server_round: int) -> nn.Module:
        net = copy.deepcopy(self.template)
        net.load_state_dict(state)
        x, y = self.shards[k]
        seed = client_seed(self.cfg, k, server_round)
        if self.cfg.local_defense is not None:
            return self.defended_train(k, net, seed)
        batch = self.cfg.batch_size or self.recipe.batch_size
        opt = torch.optim.SGD(net.parameters(), lr=self.cfg.lr)
        picks = step_indices(len(x), batch, seed, self.cfg.local_steps) if self.cfg.local_steps is not None else None

        def steps(_epoch: int, _g: torch.Generator):  # noqa: ANN202 - local_steps: one batch per step
            for idx in picks:
                yield x[idx], y[idx]

        # eval mode: BatchNorm's running statistics and no dropout during the local steps
        keep_eval = (lambda _e, m: m.eval()) if self.cfg.local_mode == "eval" else None
        fit(net, cross_entropy, (x, y), epochs=1 if picks is not None else self.cfg.local_epochs, batch_size=batch,
            seed=seed, optimizer=opt, batches=steps if picks is not None else None, schedule=False, on_epoch=keep_eval)
        return net.eval()

    def defended_train(self, k: int, net: nn.Module, seed: int) -> nn.Module:
        """The local defense's own training on client ``k``'s shard, from the global model."""
        from invertkit.core.interfaces.defense import DefenseContext
        from invertkit.core.plugins import load_plugins

        defense = local_defense(load_plugins(), self.cfg)
        recipe = self.recipe.model_copy(update={"epochs": self.cfg.local_epochs,
                                                "batch_size": self.cfg.batch_size or self.recipe.batch_size})
        data = replace(self.split, private_train=self.shards[k])
        ctx = DefenseContext(seed=seed, data=data, recipe=recipe, new_model=lambda: copy.deepcopy(self.base),
                             cached=lambda _key, train, _build=None: train(), extras={"target_net": net})
        own_build = defense.build

        def from_global(c: DefenseContext) -> nn.Module:  # the defense's layout, holding the global weights
            fresh = own_build(c)
            fresh.load_state_dict(net.state_dict())
            return fresh

        defense.build = from_global  # type: ignore[method-assign]
        trained = defense.train(ctx)
        if set(trained.state_dict()) != set(net.state_dict()):
            raise UsageError(f"local defense '{self.cfg.local_defense}' changes the network's layout; FedAvg needs "
                             "every client to upload the global model's arrays")
        return trained.eval()


# ------------------------------------------------------------------------------------------ the federation
@dataclass
class Federation:
    """A finished federation in the cache: its folder and what it recorded (``meta``)."""

    root: Path
    meta: dict[str, Any]
    template: nn.Module = field(repr=False)

    def path(self, who: str, rnd: int) -> Path:
        return self.root / f"{who}-r{rnd}.safetensors"

    def network(self, who: str, rnd: int) -> nn.Module:
        path = self.path(who, rnd)
        if not path.is_file():
            raise UsageError(f"the federation has no '{who}' model of round {rnd} ({path.name})")
        return load_into(copy.deepcopy(self.template), path).eval()


def federation_dir() -> Path:
    d = cache_dir() / "federated"
    d.mkdir(parents=True, exist_ok=True)
    return d


def local_defense(plugins: Any, cfg: FedConfig) -> Any:
    defense = plugins.get("defense", cfg.local_defense)(cfg.local_defense_options)
    if getattr(defense, "kind", "output") != "training" or not callable(getattr(defense, "train", None)):
        raise UsageError(f"local_defense '{cfg.local_defense}' is not a training-time defense: a client applies "
                         "one while it trains (an output defense filters an API: put it in the bench's defenses)")
    return defense


def build_template(scenario: Any, plugins: Any, cfg: FedConfig) -> tuple[nn.Module, nn.Module]:
    """The initial global model (the local defense's layout, e.g. MID's bottleneck or DP-SGD's GroupNorm, else
    the preset's architecture) and an untrained network of the preset's architecture."""
    from invertkit.core.interfaces.defense import DefenseContext
    from invertkit.core.zoo.preset_models import build_arch

    torch.manual_seed(cfg.seed)
    base = build_arch(plugins, scenario.preset.target, scenario.num_classes, scenario.image_shape)
    if cfg.dp_epsilon is not None:  # no data-dependent buffers under DP-FedAvg: BatchNorm becomes GroupNorm
        from opacus.validators import ModuleValidator

        base = ModuleValidator.fix(base)
    if cfg.local_defense is None:
        return base, base
    ctx = DefenseContext(seed=cfg.seed, data=scenario.split, recipe=scenario.preset.target,
                         new_model=lambda: copy.deepcopy(base))
    torch.manual_seed(cfg.seed)
    return local_defense(plugins, cfg).build(ctx).eval(), base


def federation_key(scenario: Any, cfg: FedConfig) -> str:
    """The content key of a federation: the procedure's version, its configuration, the data and the recipe."""
    return content_key({"v": VERSION, "cfg": cfg.model_dump(mode="json"), "data": scenario.keys.get("data"),
                        "recipe": scenario.preset.target.model_dump(mode="json")})


def federation(scenario: Any, plugins: Any, cfg: FedConfig) -> Federation:
    """The federation ``cfg`` over ``scenario``'s private data: run through Flower once per content key, under
    a lock, and kept in the cache (``federated/<key>/``; ``meta.json`` written last marks it finished)."""
    if scenario.preset is None:
        raise UsageError(f"target '{scenario.name}' is a model the user brings: a federation trains the preset's "
                         "architecture, so it needs a preset")
    key = federation_key(scenario, cfg)
    root = federation_dir() / key
    template, base = build_template(scenario, plugins, cfg)
    with entry_lock(root.with_suffix(".dir"), f"the federation {key}"):
        meta_path = root / "meta.json"
        if not meta_path.is_file():
            root.mkdir(parents=True, exist_ok=True)
            meta = run_federation(scenario, cfg, template, root, base)
            atomic_write_json(meta_path, meta)
    return Federation(root, json.loads(meta_path.read_text()), template)


def _state(net: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}


def run_federation(scenario: Any, cfg: FedConfig, template: nn.Module, root: Path,
                   base: nn.Module | None = None) -> dict[str, Any]:
    """Run FedAvg through Flower's simulation engine and save every model the views name; returns the record
    (global accuracy per round, clients' identities, epsilon, Flower's own counts)."""
    from importlib.util import find_spec

    if find_spec("flwr") is None:
        raise UsageError("the federated scenario runs on Flower: pip install 'invertkit[federated]'")
    x, y = scenario.split.private_train
    parts = partition(y, cfg)
    task = ClientTask(template=template, shards=[(x[p], y[p]) for p in parts], cfg=cfg, recipe=scenario.preset.target,
                      split=scenario.split, base=base if base is not None else template)
    test = scenario.split.private_test
    record: dict[str, Any] = {"clients": cfg.clients, "rounds": cfg.rounds,
                              "client_identities": client_identities(y, parts),
                              "client_examples": [len(p) for p in parts], "global_acc": {}, "flower": {}}
    save_module(root / "global-r0.safetensors", template, {"who": "global", "round": 0})
    record["global_acc"]["0"] = accuracy(template, *test)

    def keep_global(rnd: int, state: dict[str, Tensor], who: str = "global") -> None:
        net = copy.deepcopy(template)
        net.load_state_dict(state)
        save_module(root / f"{who}-r{rnd}.safetensors", net, {"who": who, "round": rnd})
        if who == "global":
            record["global_acc"][str(rnd)] = accuracy(net.eval(), *test)

    def keep_client(k: int, rnd: int, state: dict[str, Tensor]) -> None:
        net = copy.deepcopy(template)
        net.load_state_dict(state)
        save_module(root / f"client{k}-r{rnd}.safetensors", net, {"who": f"client-{k}", "round": rnd})

    t0 = time.perf_counter()
    with progress.task(f"federation: {cfg.clients} clients x {cfg.rounds} rounds on Flower", unit="run") as t:
        if cfg.secure_aggregation:
            from invertkit.plugins.targets.federated_secagg import run_secagg

            run_secagg(task, cfg, template, keep_global, record)
        else:
            _run_fedavg(task, cfg, template, keep_global, keep_client, record)
        t.advance(1)
    record["seconds"] = round(time.perf_counter() - t0, 2)
    return record


def backend_config(cfg: FedConfig) -> dict[str, Any]:
    """Flower's simulation backend: one CPU per client and Ray's start light (one client at a time on a small
    machine; more run at once where more CPUs are free)."""
    cpus = max(1, min(cfg.clients, (os.cpu_count() or 1) // 2))
    return {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": cpus, "num_gpus": 0, "include_dashboard": False, "log_to_driver": False}}


def _quiet_flower() -> None:
    for name in ("flwr", "ray"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _run_fedavg(task: ClientTask, cfg: FedConfig, template: nn.Module, keep_global, keep_client,  # noqa: ANN001
                record: dict[str, Any]) -> None:
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg
    from flwr.simulation import run_simulation

    _quiet_flower()
    dp = cfg.dp_epsilon is not None
    noise = dp_noise_multiplier(cfg) if dp else 0.0
    client_app = ClientApp()

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        k = int(context.node_config["partition-id"])
        rnd = int(msg.content["config"]["server-round"])
        state = msg.content["arrays"].to_torch_state_dict()
        net = task.local_train(k, state, rnd)
        n = len(task.shards[k][0])
        # under DP-FedAvg every client weighs the same (the accounted average); else FedAvg's n_k
        metrics = MetricRecord({"num-examples": 1 if dp else n, "partition-id": k, "examples": n})
        return Message(content=RecordDict({"arrays": ArrayRecord(net.state_dict()), "metrics": metrics}),
                       reply_to=msg)

    seen: dict[str, Any] = {"replies": 0, "nodes": set(), "partitions": set(), "rounds": 0}

    class Recording(FedAvg):
        """FedAvg that keeps what the server holds: every upload (before any DP clipping), the average."""

        def aggregate_train(self, server_round, replies):  # noqa: ANN001, ANN202
            replies = list(replies)
            for reply in replies:
                if reply.has_error():
                    continue
                k = int(reply.content["metrics"]["partition-id"])
                seen["replies"] += 1
                seen["nodes"].add(int(reply.metadata.src_node_id))
                seen["partitions"].add(k)
                if not dp:  # under DP the wrapper clips first: the uploads are kept by the outer layer
                    keep_client(k, server_round, reply.content["arrays"].to_torch_state_dict())
            arrays, metrics = super().aggregate_train(server_round, replies)
            if arrays is not None and dp:
                keep_global(server_round, arrays.to_torch_state_dict(), who="server")
            seen["rounds"] = server_round
            return arrays, metrics

    class Uploads(DifferentialPrivacyServerSideFixedClipping):
        """The DP wrapper, with the server's copy of each unclipped upload kept before it clips them."""

        def aggregate_train(self, server_round, replies):  # noqa: ANN001, ANN202
            replies = list(replies)
            for reply in replies:
                if not reply.has_error():
                    keep_client(int(reply.content["metrics"]["partition-id"]), server_round,
                                reply.content["arrays"].to_torch_state_dict())
            return super().aggregate_train(server_round, replies)

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        inner = Recording(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=cfg.clients,
                          min_available_nodes=cfg.clients)
        strategy = Uploads(inner, noise, cfg.dp_clip, cfg.clients) if dp else inner

        def evaluate(rnd: int, arrays: ArrayRecord) -> MetricRecord:
            if rnd > 0:
                keep_global(rnd, arrays.to_torch_state_dict())
            return MetricRecord({"accuracy": record["global_acc"].get(str(rnd), float("nan"))})

        strategy.start(grid=grid, initial_arrays=ArrayRecord(template.state_dict()), num_rounds=cfg.rounds,
                       evaluate_fn=evaluate)

    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=cfg.clients,
                   backend_config=backend_config(cfg))
    if seen["rounds"] != cfg.rounds or seen["partitions"] != set(range(cfg.clients)):
        raise RuntimeError(f"the Flower simulation ended after {seen['rounds']} of {cfg.rounds} rounds with "
                           f"{seen['replies']} client replies; see Flower's log above")
    record["flower"] = {"train_replies": seen["replies"], "nodes": len(seen["nodes"]), "rounds": seen["rounds"],
                        "strategy": "DifferentialPrivacyServerSideFixedClipping(FedAvg)" if dp else "FedAvg"}
    if dp:
        record["dp"] = {"noise_multiplier": noise, "clip": cfg.dp_clip, "delta": cfg.dp_delta,
                        "epsilon": {str(r): dp_epsilon_spent(noise, r, cfg.dp_delta) for r in range(1, cfg.rounds + 1)}}


# ------------------------------------------------------------------------------------------ views
VIEW = re.compile(r"^(?P<holder>server|participant|outsider):(?P<what>client-(?P<k>\d+)|global)(?:@round-(?P<r>\d+))?$")


@dataclass(frozen=True)
class View:
    holder: str
    client: int | None
    round: int | None

    @property
    def access_ceiling(self) -> str:
        return "black-box" if self.holder == "outsider" else "white-box"


def parse_view(text: str | None) -> View:
    m = VIEW.match(text or "")
    if not m:
        raise UsageError(f"view '{text}' is not a federated view: server:client-K@round-R, server:global@round-R, "
                         "participant:global@round-R or outsider:global[@round-R]")
    k = int(m["k"]) if m["k"] is not None else None
    if k is not None and m["holder"] != "server":
        raise UsageError(f"view '{text}': only the server receives a client's upload")
    if m["r"] is None and m["holder"] != "outsider":
        raise UsageError(f"view '{text}' needs its round: {text}@round-R")
    return View(m["holder"], k, int(m["r"]) if m["r"] is not None else None)


def view_network(fed: Federation, cfg: FedConfig, view: View) -> nn.Module:
    rnd = cfg.rounds if view.round is None else view.round
    if rnd > cfg.rounds:
        raise UsageError(f"round {rnd}: the federation runs {cfg.rounds} rounds")
    if view.client is not None:
        if view.client >= cfg.clients:
            raise UsageError(f"client-{view.client}: the federation has clients 0..{cfg.clients - 1}")
        if rnd == 0:
            raise UsageError("round 0 is the initial model: clients upload from round 1")
        return fed.network(f"client{view.client}", rnd)
    if view.holder == "server" and cfg.dp_epsilon is not None and rnd > 0:
        return fed.network("server", rnd)  # the server's average before its DP noise
    return fed.network("global", rnd)


def releases_update(view: View, cfg: FedConfig) -> bool:
    """The view is a client's upload whose update the server can read as one gradient (``update`` capability):
    FedSGD (``local_steps = 1``, plain SGD: no local defense) without secure aggregation."""
    return view.client is not None and cfg.local_steps == 1 and cfg.local_defense is None and not cfg.secure_aggregation


class ClientUpload(TorchTarget):
    """Client K's upload of round R as the server holds it: the uploaded network (white-box), and on a FedSGD
    federation its update (:class:`~invertkit.core.interfaces.target.UpdateRelease`: the global model of round
    R - 1 the server sent, the upload, the local learning rate, batch size and mode the server configured)."""

    def __init__(self, net: nn.Module, release: Any, *, capabilities: frozenset, **kw: Any) -> None:
        super().__init__(net, capabilities=capabilities, **kw)
        self._capabilities = self._capabilities | (frozenset(capabilities) & {Capability.UPDATE})
        self._release = release

    def _update(self) -> UpdateRelease:
        return self._release()


def fed_config(spec: Any) -> FedConfig:
    return build_config(FedConfig, getattr(spec, "backend_options", {}) or {}, what="federated target options")


class FederatedBackend(TargetBackend):
    """A view of a preset's federation (see the module's docstring)."""

    name = "federated"
    paper = "https://arxiv.org/abs/1602.05629"
    summary = "a view of FedAvg on Flower over the preset's data: a client's upload, the global model (server, participant), the outsider's API"

    @staticmethod
    def offers(spec) -> frozenset:  # noqa: ANN001
        """The view holder's access; ``update`` only on a client's FedSGD upload (:func:`releases_update`)."""
        view = parse_view(spec.view)
        whole = ACCESS_LEVELS[view.access_ceiling]
        return whole if releases_update(view, fed_config(spec)) else whole - {Capability.UPDATE}

    @staticmethod
    def withheld(spec) -> str:  # noqa: ANN001
        """Why the view does not exist for the attacker (``""`` when it does): the bench skips its cells."""
        view, cfg = parse_view(spec.view), fed_config(spec)
        if view.client is not None and cfg.secure_aggregation:
            return (f"secure aggregation: the server receives only the masked sum of the {cfg.clients} uploads, so "
                    f"client-{view.client}'s upload is never visible (the aggregate, server:global, remains)")
        return ""

    @staticmethod
    def refuses_defense(spec, defense) -> str:  # noqa: ANN001
        if getattr(defense, "kind", "output") == "training":
            return (f"'{defense.name}' would retrain the model centrally; in a federation each client applies a "
                    f"training-time defense locally: give the target backend_options.local_defense = '{defense.name}'")
        return ""

    @staticmethod
    def view_key(spec, scenario) -> str:  # noqa: ANN001
        """What a view's model is made of: its federation's content key."""
        return federation_key(scenario, fed_config(spec))

    def load(self, spec, scenario, plugins) -> TargetModel:  # noqa: ANN001
        view, cfg = parse_view(spec.view), fed_config(spec)
        why = self.withheld(spec)
        if why:
            raise UsageError(why)
        run = federation(scenario, plugins, cfg)
        net = view_network(run, cfg, view)
        caps = ACCESS_LEVELS[spec.access] & self.offers(spec)
        if not releases_update(view, cfg):
            return TorchTarget(net, num_classes=scenario.num_classes, input_shape=scenario.image_shape,
                               capabilities=caps, budget=spec.budget, name="target")
        rnd, k = view.round, view.client

        def release() -> UpdateRelease:  # fresh copies from the cache on every read
            return UpdateRelease(sent=run.network("global", rnd - 1), upload=run.network(f"client{k}", rnd),
                                 lr=cfg.lr, batch_size=cfg.batch_size or scenario.preset.target.batch_size,
                                 local_steps=1, train_mode=cfg.local_mode == "train")

        return ClientUpload(net, release, num_classes=scenario.num_classes, input_shape=scenario.image_shape,
                            capabilities=caps, budget=spec.budget, name="target")

    def evaluator_extras(self, spec, scenario, plugins) -> dict:  # noqa: ANN001
        """The evaluator's side of a client's FedSGD update view: the batch the client took its step on
        (``paired_reference``, ``paired_labels``), what a reconstruction of the update is compared with."""
        view, cfg = parse_view(spec.view), fed_config(spec)
        if not releases_update(view, cfg):
            return {}
        ((x, y),) = client_batches(scenario, cfg, view.client, view.round)
        return {"paired_reference": x, "paired_labels": y}


@hookimpl
def invertkit_register_target_backends(register) -> None:  # noqa: ANN001
    register(FederatedBackend)


__all__ = ["ClientUpload", "FedConfig", "Federation", "FederatedBackend", "View", "releases_update", "federation",
           "parse_view", "partition",
           "dp_noise_multiplier", "dp_epsilon_spent", "view_network"]
