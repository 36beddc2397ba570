"""Gradient inversion as a bench attack (issue 16): the ``update`` capability exists only on a client's FedSGD
upload (the server's view), the attack reads the update through its ``TargetView`` (one query) and never the
client's batch, which reaches only the ``batch-recon`` metric; through ``run_cell`` the reconstruction of a
batch of one beats uniform noise by more than 10 dB PSNR; the plan skips it, with the reason, where no update
is visible."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("flwr")

import tests.test_federated as tf  # noqa: E402
from invertkit.core.errors import CapabilityError  # noqa: E402
from invertkit.core.interfaces.capability import Capability as C  # noqa: E402
from invertkit.plugins.attacks import inverting_gradients as gi  # noqa: E402
from invertkit.plugins.targets import federated as fed  # noqa: E402
from tests.conftest import tiny_registry_with  # noqa: E402

torch.set_num_threads(1)

SGD = '{ clients = 3, rounds = 1, local_steps = 1, batch_size = 1, local_mode = "eval" }'
VIEWS = {"client0": "server:client-0@round-1", "global": "server:global@round-1",
         "participant": "participant:global@round-1", "outsider": "outsider:global"}
EXTRA = tf.EXTRA + "".join(
    f'[targets.sgd-{name}]\npreset = "digits-fed-tiny"\nbackend = "federated"\nview = "{view}"\n'
    f'access = "{"black-box" if name == "outsider" else "white-box"}"\nbackend_options = {SGD}\n\n'
    for name, view in VIEWS.items()) + """
[bench.fedsgd]
targets = ["sgd-*", "fed-secagg-client0"]
attacks = ["inverting-gradients", "mi-face"]
defenses = ["none", "rounding"]
metrics = ["attack-acc", "batch-recon"]
samples_per_identity = 1

[bench.fedsgd.attack_options.inverting-gradients]
iterations = 200

[bench.fedsgd.attack_options.mi-face]
iterations = 10
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory, plugins):  # noqa: ANN001, ANN201
    from invertkit.core.catalog import load_catalog

    return load_catalog(tiny_registry_with(tmp_path_factory.mktemp("ig"), EXTRA)), plugins


@dataclasses.dataclass
class Spec:
    view: str
    backend_options: dict


@settings(max_examples=60, deadline=None)
@given(holder=st.sampled_from(["server", "participant", "outsider"]), client=st.one_of(st.none(), st.integers(0, 2)),
       rnd=st.integers(1, 3), steps=st.one_of(st.none(), st.integers(1, 3)), secagg=st.booleans())
def test_update_is_offered_only_on_a_clients_fedsgd_upload(holder, client, rnd, steps, secagg) -> None:  # noqa: ANN001
    from invertkit.core.errors import UsageError

    view = f"{holder}:{'global' if client is None else f'client-{client}'}@round-{rnd}"
    try:
        fed.parse_view(view)
    except UsageError:  # a participant or outsider never holds a client's upload
        assert client is not None and holder != "server"
        return
    spec = Spec(view, {"clients": 3, "rounds": 3, "local_steps": steps, "secure_aggregation": secagg})
    offered = C.UPDATE in fed.FederatedBackend.offers(spec)
    assert offered == (holder == "server" and client is not None and steps == 1 and not secagg)


def test_the_attack_reads_the_update_once_and_never_the_batch(setup) -> None:  # noqa: ANN001
    from invertkit.core.bench.targets import load_target
    from invertkit.core.interfaces.access import seal
    from invertkit.core.interfaces.target import UpdateRelease

    catalog, plugins = setup
    target, scenario = load_target(catalog, plugins, "sgd-client0")
    assert C.UPDATE in target.capabilities
    view = seal(target)
    release = view.update()
    assert view.queries == 1  # one update read is one query
    # what the server holds, and only that: the model it sent, the upload, the protocol's settings
    assert [f.name for f in dataclasses.fields(UpdateRelease)] == ["sent", "upload", "lr", "batch_size",
                                                                   "local_steps", "train_mode"]
    assert not any("batch" in a and a != "batch_size" for a in dir(view) + dir(release))
    cfg = fed.fed_config(catalog.target("sgd-client0"))
    run = fed.federation(scenario, plugins, cfg)
    sent, upload = run.network("global", 0).state_dict(), run.network("client0", 1).state_dict()
    assert all(torch.equal(release.sent.state_dict()[k], sent[k]) for k in sent)
    assert all(torch.equal(release.upload.state_dict()[k], upload[k]) for k in upload)
    assert (release.lr, release.batch_size, release.local_steps, release.train_mode) == (cfg.lr, 1, 1, False)
    # the global views hold no update: asking is refused, and not counted
    glob, _ = load_target(catalog, plugins, "sgd-global")
    assert C.UPDATE not in glob.capabilities
    with pytest.raises(CapabilityError):
        seal(glob).update()
    assert glob.queries == 0


def test_the_plan_skips_gradient_inversion_where_no_update_is_visible(setup) -> None:  # noqa: ANN001
    from invertkit.core.bench.plan import make_plan

    catalog, plugins = setup
    cells = {(c.attack, c.defense, c.target): c for c in make_plan(catalog, plugins, matrix="fedsgd").cells}
    assert cells[("inverting-gradients", "none", "sgd-client0")].status == "planned"
    for t in ("sgd-global", "sgd-participant", "sgd-outsider"):
        cell = cells[("inverting-gradients", "none", t)]
        assert cell.status == "skipped" and "needs {update}" in cell.reason, (t, cell.reason)
    # an output filter of the API does not serve the update; secure aggregation withholds the upload itself
    assert "needs {update}" in cells[("inverting-gradients", "rounding", "sgd-client0")].reason
    assert "secure aggregation" in cells[("inverting-gradients", "none", "fed-secagg-client0")].reason
    # class-level MI on the very same update view still runs
    assert cells[("mi-face", "none", "sgd-client0")].status == "planned"


def test_through_the_bench_the_reconstruction_beats_noise_by_10_db(setup) -> None:  # noqa: ANN001
    from invertkit.core.bench.cell import run_cell
    from invertkit.core.bench.plan import make_plan
    from invertkit.core.zoo.scenario import build_scenario

    catalog, plugins = setup
    cells = {(c.attack, c.defense, c.target): c for c in make_plan(catalog, plugins, matrix="fedsgd").cells}
    out = run_cell(cells[("inverting-gradients", "none", "sgd-client0")], catalog, plugins, use_cache=False,
                   debug=True)
    rec = out.record
    assert rec["status"] == "ok" and rec["metrics"]["queries"] == 1 and rec["samples"] == 1
    # the evaluator's side: the client's batch, the noise baseline against it
    scenario = build_scenario("digits-fed-tiny", catalog, plugins)
    ((x, y),) = fed.client_batches(scenario, fed.fed_config(catalog.target("sgd-client0")), 0, 1)
    noise = gi.scores(torch.rand(x.shape, generator=torch.Generator().manual_seed(0)), x)
    m = rec["metrics"]
    assert m["batch_psnr"] > noise["psnr"] + 10 and m["batch_ssim"] > noise["ssim"] + 0.3
    assert m["batch_labels"] == 1.0 and torch.equal(out.labels, y)  # the label, inferred from the update
    # class-level MI on the same update view still runs; batch-recon pairs the batch with its closest sample
    cls = run_cell(cells[("mi-face", "none", "sgd-client0")], catalog, plugins, use_cache=False, debug=True).record
    assert cls["status"] == "ok" and cls["samples"] == 5 and 0 < cls["metrics"]["batch_psnr"] < m["batch_psnr"]
    # class-level MI on a global view: there is no batch there, so batch-recon is not applicable, with the reason
    glob = run_cell(cells[("mi-face", "none", "sgd-global")], catalog, plugins, use_cache=False, debug=True).record
    assert glob["status"] == "ok" and "batch-recon" in glob["metrics_not_applicable"]


def test_dlg_is_a_variant_with_its_own_defaults(plugins) -> None:  # noqa: ANN001
    dlg, ig = plugins.get("attack", "dlg"), plugins.get("attack", "inverting-gradients")
    assert dlg.Config().method == "dlg" and ig.Config().method == "inverting-gradients"
    assert dlg.requires == ig.requires == frozenset({C.UPDATE}) and not dlg.needs_prior
