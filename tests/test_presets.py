"""The bundled presets as the issue states them, and presets built from released checkpoints (`weights`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from invertkit.core.errors import CheckpointError


def test_celeba_kedmi_preset_is_the_kedmi_lineage_protocol(plugins) -> None:  # noqa: ANN001
    from invertkit.core.catalog import load_catalog

    cat = load_catalog()
    p = cat.preset("celeba-kedmi")
    assert p.dataset == "celeba-kedmi" and p.dataset in plugins.registry["dataset"]
    assert p.private_classes == tuple(range(1000)) and p.public_classes == (-1,)
    assert p.target.arch == "vgg16-64" and p.eval.arch == "facenet" and p.prior.plugin == "kedmi-gan"
    assert p.prior.options["num_classes"] == 1000
    for recipe in (p.target, p.eval):
        assert recipe.arch in plugins.registry["architecture"] and recipe.weights.endswith(".tar")
    m = cat.matrix("celeba-kedmi")
    assert m.identities == tuple(range(300)) and m.samples_per_identity == 5
    assert {"gmi", "kedmi"} <= set(m.attacks) and "fid-eval" in m.metrics


@pytest.mark.parametrize("value", ["0-9", "9..0", "a..b", "..3"])
def test_class_ranges_reject_malformed_strings(value: str) -> None:
    from pydantic import ValidationError

    from invertkit.core.catalog import BenchSpec

    with pytest.raises(ValidationError, match="inclusive range"):
        BenchSpec(attacks=["gmi"], targets=["t"], identities=value)


def _variant(tiny_registry: Path, tmp_path: Path, weights: str) -> Path:
    """The tiny registry plus a preset whose target comes from ``weights`` instead of training."""
    text = tiny_registry.read_text()
    text += f'''
[presets.digits-released]
dataset = "digits"
private_classes = [0, 1, 2, 3, 4]
public_classes = [5, 6, 7, 8, 9]
seed = 0
target = {{ arch = "small-cnn", weights = "{weights}", epochs = 6, lr = 0.003, batch_size = 64, seed = 0 }}
eval = {{ arch = "small-mlp", epochs = 30, lr = 0.003, batch_size = 64, seed = 1 }}
prior = {{ plugin = "wgan-gp", seed = 0, options = {{ latent_dim = 16, width = 16, steps = 150, batch_size = 64 }} }}
'''
    out = tmp_path / "registry.toml"
    out.write_text(text)
    return out


def test_a_preset_target_loads_from_released_weights(tiny_registry, tiny_scenario, plugins, tmp_path,  # noqa: ANN001
                                                      monkeypatch) -> None:
    from invertkit.core.cache import save_module
    from invertkit.core.catalog import load_catalog
    from invertkit.core.zoo.scenario import build_scenario

    save_module(tmp_path / "released" / "target.safetensors", tiny_scenario.target_net, {"arch": "small-cnn"})
    monkeypatch.setenv("RELEASED_DIR", str(tmp_path / "released"))
    cat = load_catalog(_variant(tiny_registry, tmp_path, "$RELEASED_DIR/target.safetensors"))
    sc = build_scenario("digits-released", cat, plugins)
    # the same network, so the same measured accuracy, and the same outputs
    assert sc.facts["target"]["test_acc"] == pytest.approx(tiny_scenario.facts["target"]["test_acc"])
    assert sc.facts["target"]["weights"].endswith("target.safetensors")
    x = tiny_scenario.split.private_test[0][:16]
    with torch.no_grad():
        assert torch.allclose(sc.target_net(x), tiny_scenario.target_net(x))


def test_a_missing_released_file_names_the_file_and_the_variable(tiny_registry, plugins, tmp_path,  # noqa: ANN001
                                                                  monkeypatch) -> None:
    from invertkit.core.catalog import load_catalog
    from invertkit.core.zoo.scenario import build_scenario

    monkeypatch.delenv("NOT_SET_WEIGHTS_DIR", raising=False)
    cat = load_catalog(_variant(tiny_registry, tmp_path, "$NOT_SET_WEIGHTS_DIR/VGG16_88.26.tar"))
    with pytest.raises(CheckpointError, match=r"'VGG16_88.26.tar' not found .*environment variable"):
        build_scenario("digits-released", cat, plugins)


def test_a_pickled_release_needs_the_opt_in(tiny_registry, tiny_scenario, plugins, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    from invertkit.core.catalog import load_catalog
    from invertkit.core.zoo.scenario import build_scenario

    # GMI/KEDMI's release layout: {"state_dict": ...} with DataParallel's "module." prefixes
    state = {f"module.{k}": v for k, v in tiny_scenario.target_net.state_dict().items()}
    torch.save({"state_dict": state}, tmp_path / "target.tar")
    cat = load_catalog(_variant(tiny_registry, tmp_path, str(tmp_path / "target.tar")))
    monkeypatch.delenv("INVERTKIT_ALLOW_PICKLE", raising=False)
    with pytest.raises(CheckpointError, match="INVERTKIT_ALLOW_PICKLE"):
        build_scenario("digits-released", cat, plugins)
    monkeypatch.setenv("INVERTKIT_ALLOW_PICKLE", "1")
    sc = build_scenario("digits-released", cat, plugins)
    assert sc.facts["target"]["test_acc"] == pytest.approx(tiny_scenario.facts["target"]["test_acc"])
