"""Secure aggregation for :mod:`invertkit.plugins.targets.federated`: FedAvg under Flower's SecAgg+
(Bell et al., "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead", CCS 2020; the SecAgg
protocol of Bonawitz et al., CCS 2017, arXiv 1611.04482), run through Flower's own implementation: the
``SecAggPlusWorkflow`` on the server and the ``secaggplus_mod`` on every client, on Flower's workflow API
(where Flower's SecAgg+ lives; its ``examples/flower-secure-aggregation`` app follows the same layout).

Each client masks its quantised upload with pairwise and self masks whose seeds are secret-shared among the
others; the server unmasks only their sum. The strategy's ``aggregate_fit`` therefore receives, for every client that
took part, the same unmasked sum (Flower puts it into each legacy result), never a client's model: the number
of distinct parameter payloads it received per round is recorded (``flower.distinct_uploads``: 1), and the
bench withholds the ``server:client-K`` views. Settings: every client shares its secrets with all others
(``num_shares = clients``), any ``clients - 1`` of them reconstruct (at least 2), Flower's defaults for the
clipping range (8), quantisation range (2^22) and modulus range (2^32); arrays are clipped to ±8 before
quantisation (the network's weights and BatchNorm statistics lie well inside; the int counter of batches
seen is clipped, and it is not used when BatchNorm has a momentum).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch
from torch import nn


def run_secagg(task: Any, cfg: Any, template: nn.Module, keep_global, record: dict[str, Any]) -> None:  # noqa: ANN001
    from flwr.client import ClientApp, NumPyClient
    from flwr.client.mod import secaggplus_mod
    from flwr.common import Context, ndarrays_to_parameters
    from flwr.server import LegacyContext, ServerApp, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
    from flwr.simulation import run_simulation

    from invertkit.plugins.targets.federated import _quiet_flower, backend_config

    _quiet_flower()
    names = list(template.state_dict())
    dtypes = {k: v.dtype for k, v in template.state_dict().items()}

    def to_state(arrays: list[np.ndarray]) -> dict[str, torch.Tensor]:
        return {k: torch.as_tensor(np.asarray(a)).to(dtypes[k]) for k, a in zip(names, arrays, strict=True)}

    def to_arrays(state: dict[str, torch.Tensor]) -> list[np.ndarray]:
        return [state[k].detach().cpu().numpy().astype(np.float64 if state[k].dtype == torch.int64 else None)
                for k in names]

    class Participant(NumPyClient):
        def __init__(self, k: int) -> None:
            self.k = k

        def fit(self, parameters, config):  # noqa: ANN001, ANN201
            net = task.local_train(self.k, to_state(parameters), int(config.get("server-round", 0)))
            return to_arrays(net.state_dict()), len(task.shards[self.k][0]), {"partition-id": self.k}

    def client_fn(context: Context):  # noqa: ANN202
        return Participant(int(context.node_config["partition-id"])).to_client()

    client_app = ClientApp(client_fn=client_fn, mods=[secaggplus_mod])
    seen: dict[str, Any] = {"aggregations": 0, "results": [], "distinct": []}

    class Recording(FedAvg):
        """FedAvg that counts what reaches the server's strategy: under SecAgg+, one unmasked sum a round."""

        def configure_fit(self, server_round, parameters, client_manager):  # noqa: ANN001, ANN202
            pairs = super().configure_fit(server_round, parameters, client_manager)
            for _, ins in pairs:
                ins.config["server-round"] = server_round
            return pairs

        def aggregate_fit(self, server_round, results, failures):  # noqa: ANN001, ANN202
            seen["aggregations"] += 1
            seen["results"].append(len(results))
            seen["distinct"].append(len({hashlib.sha256(b"".join(res.parameters.tensors)).hexdigest()
                                         for _, res in results}))
            return super().aggregate_fit(server_round, results, failures)

    def evaluate(rnd: int, arrays: list[np.ndarray], _config: dict) -> tuple[float, dict]:  # noqa: ANN001
        if rnd > 0:
            keep_global(rnd, to_state(arrays))
        return 0.0, {"accuracy": record["global_acc"].get(str(rnd), float("nan"))}

    strategy = Recording(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=cfg.clients,
                         min_available_clients=cfg.clients, evaluate_fn=evaluate,
                         initial_parameters=ndarrays_to_parameters(to_arrays(template.state_dict())))
    server_app = ServerApp()

    @server_app.main()
    def main(grid, context: Context) -> None:  # noqa: ANN001
        legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=cfg.rounds), strategy=strategy)
        workflow = DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(
            num_shares=cfg.clients, reconstruction_threshold=max(2, cfg.clients - 1)))
        workflow(grid, legacy)

    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=cfg.clients,
                   backend_config=backend_config(cfg))
    if seen["aggregations"] != cfg.rounds:
        raise RuntimeError(f"the SecAgg+ simulation aggregated {seen['aggregations']} of {cfg.rounds} rounds; see "
                           "Flower's log above")
    record["flower"] = {"rounds": seen["aggregations"], "results_per_aggregation": seen["results"],
                        "distinct_uploads": seen["distinct"],
                        "strategy": "FedAvg under SecAggPlusWorkflow"}
