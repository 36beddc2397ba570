"""The federated scenario (issue 16): FedAvg really runs through Flower's simulation engine, the attacker's
views are bench targets with their holders' capabilities, secure aggregation withholds the client views (the
SecAgg+ sum equals FedAvg's average), DP-FedAvg's noise is the accountant's, and one client's FedSGD update
gives its image back to gradient inversion."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("flwr")

from invertkit.core.errors import UsageError  # noqa: E402
from invertkit.plugins.targets import federated as fed  # noqa: E402
from invertkit.plugins.attacks import inverting_gradients as gi  # noqa: E402
from tests.conftest import tiny_registry_with  # noqa: E402

torch.set_num_threads(1)

FED = "{ clients = 3, rounds = 2 }"
SECAGG = "{ clients = 3, rounds = 1, secure_aggregation = true }"
EXTRA = f"""
[presets.digits-fed-tiny]
summary = "digits-tiny's split and recipes, a brief prior: the federated tests' preset"
dataset = "digits"
private_classes = [0, 1, 2, 3, 4]
public_classes = [5, 6, 7, 8, 9]
seed = 0
target = {{ arch = "small-cnn", epochs = 6, lr = 0.003, batch_size = 64, seed = 0 }}
eval = {{ arch = "small-mlp", epochs = 30, lr = 0.003, batch_size = 64, seed = 1 }}
prior = {{ plugin = "wgan-gp", seed = 0, options = {{ latent_dim = 16, width = 16, steps = 20, batch_size = 64 }} }}

[targets.fed-client0]
preset = "digits-fed-tiny"
backend = "federated"
view = "server:client-0@round-2"
backend_options = {FED}

[targets.fed-participant]
preset = "digits-fed-tiny"
backend = "federated"
view = "participant:global@round-2"
backend_options = {FED}

[targets.fed-outsider]
preset = "digits-fed-tiny"
backend = "federated"
view = "outsider:global"
access = "black-box"
backend_options = {FED}

[targets.fed-secagg-client0]
preset = "digits-fed-tiny"
backend = "federated"
view = "server:client-0@round-1"
backend_options = {SECAGG}

[targets.fed-secagg-global]
preset = "digits-fed-tiny"
backend = "federated"
view = "server:global@round-1"
backend_options = {SECAGG}

[bench.federated]
targets = ["fed-*"]
attacks = ["mi-face", "nes"]
defenses = ["none", "nls"]
samples_per_identity = 2

[bench.federated.attack_options.mi-face]
iterations = 30

[bench.federated.attack_options.nes]
iterations = 3
pairs = 2
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory, plugins):  # noqa: ANN001, ANN201
    from invertkit.core.catalog import load_catalog
    from invertkit.core.zoo.scenario import build_scenario

    catalog = load_catalog(tiny_registry_with(tmp_path_factory.mktemp("fed"), EXTRA))
    return catalog, plugins, build_scenario("digits-fed-tiny", catalog, plugins)


def test_fedavg_runs_through_flower_and_keeps_every_view(setup) -> None:  # noqa: ANN001
    catalog, plugins, scenario = setup
    cfg = fed.fed_config(catalog.target("fed-client0"))
    run = fed.federation(scenario, plugins, cfg)
    flower = run.meta["flower"]
    # Flower's server-side strategy received one reply from each of 3 distinct simulated nodes in each round
    assert flower == {"train_replies": 6, "nodes": 3, "rounds": 2, "strategy": "FedAvg"}
    ids = run.meta["client_identities"]
    assert sorted(sum(ids, [])) == [0, 1, 2, 3, 4] and all(ids)  # disjoint whole identities, all of them
    for k in range(3):
        for r in (1, 2):
            assert run.path(f"client{k}", r).is_file()
    # FedAvg learns: the global model after two rounds beats the untrained one, and a client's upload differs
    acc = run.meta["global_acc"]
    assert acc["2"] > acc["0"] + 0.1
    up = run.network("client0", 2).state_dict()
    glob = run.network("global", 2).state_dict()
    assert any(not torch.equal(up[k], glob[k]) for k in up)
    # a second call reads the cache: no new Flower run
    assert fed.federation(scenario, plugins, cfg).meta == run.meta


def test_views_are_bench_targets_with_their_holders_capabilities(setup) -> None:  # noqa: ANN001
    from invertkit.core.bench.cell import run_cell
    from invertkit.core.bench.plan import make_plan
    from invertkit.core.bench.targets import load_target
    from invertkit.core.interfaces.capability import Capability as C

    catalog, plugins, _ = setup
    plan = make_plan(catalog, plugins, matrix="federated")
    cells = {(c.attack, c.defense, c.target): c for c in plan.cells}
    # secure aggregation: a client's upload does not exist for the server; the aggregate remains
    withheld = cells[("mi-face", "none", "fed-secagg-client0")]
    assert withheld.status == "skipped" and "secure aggregation" in withheld.reason
    assert cells[("mi-face", "none", "fed-secagg-global")].status == "planned"
    # the outsider has an API: white-box attacks are skipped, black-box ones run
    assert cells[("mi-face", "none", "fed-outsider")].status == "skipped"
    assert cells[("nes", "none", "fed-outsider")].status == "planned"
    # a training-time defense is the clients' own in a federation, never a central retraining
    nls = cells[("mi-face", "nls", "fed-participant")]
    assert nls.status == "skipped" and "local_defense" in nls.reason

    outsider, _ = load_target(catalog, plugins, "fed-outsider")
    assert not outsider.has(C.GRAD) and outsider.has(C.PROBS)
    client, _ = load_target(catalog, plugins, "fed-client0")
    assert client.has(C.GRAD)
    out = run_cell(cells[("mi-face", "none", "fed-client0")], catalog, plugins, use_cache=False, debug=True)
    assert out.record["status"] == "ok" and 0.0 <= out.record["metrics"]["acc@1"] <= 1.0
    assert out.record["metrics"]["natural_acc"] > 0.2  # the client's upload, on the private test set


def test_secure_aggregation_hands_the_server_only_the_sum(setup) -> None:  # noqa: ANN001
    catalog, plugins, scenario = setup
    cfg = fed.fed_config(catalog.target("fed-secagg-global"))
    run = fed.federation(scenario, plugins, cfg)
    assert run.meta["flower"]["distinct_uploads"] == [1]  # three results, one payload: the unmasked sum
    assert not any(run.root.glob("client*"))
    with pytest.raises(UsageError, match="secure aggregation"):
        from invertkit.core.bench.targets import load_target

        load_target(catalog, plugins, "fed-secagg-client0")
    # SecAgg+'s sum is FedAvg's average, up to its quantisation
    plain = fed.federation(scenario, plugins, fed.fed_config(catalog.target("fed-client0")))
    a, b = run.network("global", 1).state_dict(), plain.network("global", 1).state_dict()
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())
    assert worst < 1e-3


def test_dp_fedavg_noise_multiplier_gives_the_target_epsilon() -> None:
    for eps in (1.0, 8.0):
        cfg = fed.FedConfig(rounds=5, dp_epsilon=eps)
        z = fed.dp_noise_multiplier(cfg)
        assert z > 0
        spent = fed.dp_epsilon_spent(z, cfg.rounds, cfg.dp_delta)
        assert eps * 0.9 <= spent <= eps * 1.01
    # more privacy costs more noise
    assert fed.dp_noise_multiplier(fed.FedConfig(rounds=5, dp_epsilon=1.0)) > \
        fed.dp_noise_multiplier(fed.FedConfig(rounds=5, dp_epsilon=8.0))


def test_bad_views_and_configurations_are_one_clear_error() -> None:
    for bad in ("server:client-0", "participant:client-1@round-2", "server:everyone@round-1", ""):
        with pytest.raises(UsageError):
            fed.parse_view(bad)
    assert fed.parse_view("outsider:global").round is None
    from invertkit.core.errors import ConfigError

    with pytest.raises(ConfigError, match="secure_aggregation"):
        fed.fed_config(type("S", (), {"backend_options": {"dp_epsilon": 1.0, "secure_aggregation": True}})())
    with pytest.raises(UsageError, match="whole identities"):
        fed.partition(torch.tensor([0, 1, 2]), fed.FedConfig(clients=4))


@settings(max_examples=30, deadline=None)
@given(k=st.integers(2, 10), alpha=st.floats(0.05, 10.0), seed=st.integers(0, 10_000))
def test_dirichlet_partition_gives_every_image_to_exactly_one_client(k: int, alpha: float, seed: int) -> None:
    labels = torch.arange(200) % 5
    cfg = fed.FedConfig(clients=k, partition="dirichlet", alpha=alpha, seed=seed)
    try:
        parts = fed.partition(labels, cfg)
    except UsageError as exc:  # a client left without data is refused, never silently kept empty
        assert "without data" in str(exc)
        return
    allidx = torch.cat(parts)
    assert len(parts) == k and torch.equal(allidx.sort().values, torch.arange(200))


def test_gradient_inversion_recovers_a_clients_image_from_its_update(setup) -> None:  # noqa: ANN001
    """The server sees the global model and client 0's FedSGD upload (B = 1): the label comes from the update,
    and the reconstruction is far closer to the client's image than noise is."""
    _, plugins, scenario = setup
    cfg = fed.FedConfig(clients=3, rounds=1, local_steps=1, batch_size=1, local_mode="eval")
    run = fed.federation(scenario, plugins, cfg)
    base, upload = run.network("global", 0), run.network("client0", 1)
    grads = gi.update_gradient(base, upload, cfg.lr)
    labels = gi.infer_labels(base, grads, 1, scenario.split.public[0])
    ((x, y),) = fed.client_batches(scenario, cfg, 0, 1)  # the evaluator's side
    assert torch.equal(labels, y)
    rec, _ = gi.invert_update(base, grads, labels, scenario.image_shape, {"iterations": 200})
    got = gi.scores(rec, x)
    noise = gi.scores(torch.rand_like(x), x)
    assert got["psnr"] > noise["psnr"] + 10 and got["ssim"] > 0.8


def test_label_counts_of_a_batch_come_from_the_bias_gradient(setup) -> None:  # noqa: ANN001
    import torch.nn.functional as F

    _, plugins, scenario = setup
    run = fed.federation(scenario, plugins, fed.fed_config(type("S", (), {"backend_options": {"clients": 3, "rounds": 2}})()))
    net = run.network("global", 2)
    x, y = scenario.split.private_train
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(x), generator=g)[:8]
    params = dict(net.named_parameters())
    grads = dict(zip(params, torch.autograd.grad(F.cross_entropy(net(x[idx]), y[idx]), list(params.values())), strict=True))
    got = gi.infer_labels(net, grads, 8, scenario.split.public[0])
    assert len(got) == 8
    true = torch.bincount(y[idx], minlength=5)
    est = torch.bincount(got, minlength=5)
    assert int((true - est).abs().sum()) <= 4  # at most two labels misplaced out of eight


@pytest.mark.slow
def test_a_local_defense_trains_every_client_in_its_own_layout(setup) -> None:  # noqa: ANN001
    """MID applied by each client: the federation's models are MID's (a variational bottleneck), trained by the
    defense's own loss on each shard from the global model, and the federation still learns."""
    _, plugins, scenario = setup
    cfg = fed.FedConfig(clients=3, rounds=2, local_defense="mid")
    run = fed.federation(scenario, plugins, cfg)
    glob = run.network("global", 2)
    assert type(glob).__name__ == "VIBClassifier"
    assert run.meta["global_acc"]["2"] > run.meta["global_acc"]["0"] + 0.1
    with pytest.raises(UsageError, match="not a training-time defense"):
        fed.federation(scenario, plugins, fed.FedConfig(clients=3, rounds=1, local_defense="rounding"))


@pytest.mark.slow
def test_dp_fedavg_runs_flowers_wrapper_and_adds_the_accountants_noise(setup) -> None:  # noqa: ANN001
    """Under DP-FedAvg the participant's global model is the server's clipped average plus Gaussian noise of
    standard deviation noise_multiplier x clip / clients, the multiplier being the accountant's."""
    _, plugins, scenario = setup
    cfg = fed.FedConfig(clients=3, rounds=1, dp_epsilon=8.0)
    run = fed.federation(scenario, plugins, cfg)
    assert run.meta["flower"]["strategy"] == "DifferentialPrivacyServerSideFixedClipping(FedAvg)"
    assert run.meta["flower"]["train_replies"] == 3
    z = run.meta["dp"]["noise_multiplier"]
    assert abs(run.meta["dp"]["epsilon"]["1"] - 8.0) < 0.5
    server, released = run.network("server", 1).state_dict(), run.network("global", 1).state_dict()
    noise = torch.cat([(released[k] - server[k]).flatten() for k in server if server[k].is_floating_point()])
    expected = z * cfg.dp_clip / cfg.clients
    assert 0.9 * expected < float(noise.std()) < 1.1 * expected
    # the server's view of the aggregate is the clean one; the participant holds the noisy release
    from invertkit.plugins.targets.federated import parse_view, view_network

    a = view_network(run, cfg, parse_view("server:global@round-1")).state_dict()
    b = view_network(run, cfg, parse_view("participant:global@round-1")).state_dict()
    assert all(torch.equal(a[k], server[k]) for k in a) and any(not torch.equal(b[k], a[k]) for k in a)
