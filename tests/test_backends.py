"""Target backends: torch (safetensors / guarded pickles / timm) and ONNX (onnxruntime), plus the checkpoint
helpers of ``core.cache`` they rest on."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from hypothesis import given
from safetensors.torch import save_file

from invertkit.core import cache
from invertkit.core.cache import META_KEY, load_into, read_meta, save_module
from invertkit.core.catalog import TargetSpec
from invertkit.core.errors import CapabilityError, CheckpointError
from invertkit.core.interfaces import ACCESS_LEVELS, Capability, Restricted
from invertkit.core.testing.contracts import TargetContract, contract_settings
from invertkit.core.testing.strategies import capability_sets
from invertkit.plugins.attacks.nes import NES
from invertkit.plugins.targets.onnx_backend import ONNX_CAPS, OnnxBackend, OnnxTarget, export_onnx
from invertkit.plugins.targets.small_nets import small_cnn, small_mlp
from invertkit.plugins.targets.torch_backend import TorchBackend, build_module

C = Capability
SHAPE = (1, 8, 8)



def random_cnn(seed: int = 0, **options: int) -> torch.nn.Module:
    """A small-cnn with random weights *and* random BatchNorm statistics (so every tensor matters)."""
    torch.manual_seed(seed)
    net = small_cnn(5, SHAPE, **options)
    with torch.no_grad():
        for name, buf in net.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_()
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
    return net.eval()


def digits(scenario, n: int = 64) -> torch.Tensor:  # noqa: ANN001
    return scenario.split.private_test[0][:n]


def write_state(path: Path, state: dict[str, torch.Tensor], meta: dict | None = None) -> Path:
    save_file({k: v.contiguous() for k, v in state.items()}, str(path),
              metadata={META_KEY: json.dumps(meta if meta is not None else {"arch": "small-cnn"})})
    return path


# ------------------------------------------------------------------------------------------ torch backend
def test_safetensors_round_trip_through_the_torch_backend(scenario, plugins, tmp_path: Path) -> None:  # noqa: ANN001
    net = random_cnn(1, width=8, feat_dim=32)  # not the default options: they must come from the metadata
    path = tmp_path / "nested" / "dir" / "net.safetensors"
    save_module(path, net, {"arch": "small-cnn", "arch_options": {"width": 8, "feat_dim": 32}})
    assert read_meta(path)["arch"] == "small-cnn"
    assert sorted(p.name for p in path.parent.iterdir()) == ["net.safetensors"], "a temporary file was left"
    target = TorchBackend().load(TargetSpec(preset="digits-tiny", weights=str(path)), scenario, plugins)
    assert target.capabilities == ACCESS_LEVELS["white-box"] - {Capability.UPDATE}  # a model holds no update
    x = torch.cat([digits(scenario), torch.rand(16, *SHAPE)])
    with torch.no_grad():
        assert torch.equal(target.logits(x), net(x))
    # an access level from the entry narrows what the loaded target exposes
    boxed = TorchBackend().load(TargetSpec(preset="digits-tiny", weights=str(path), access="label-only", budget=3),
                                scenario, plugins)
    assert boxed.capabilities == ACCESS_LEVELS["label-only"] and boxed.budget == 3
    with torch.no_grad():
        assert torch.equal(boxed.label(x[:3]), net(x[:3]).argmax(1))


def test_save_module_writes_its_temporary_file_next_to_the_destination(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    # a rename is atomic only within one filesystem: the temporary file must not go to the system temp folder
    real_replace = os.replace
    seen: list[tuple[Path, Path]] = []

    def replace(src, dst):  # noqa: ANN001, ANN202
        seen.append((Path(src), Path(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(cache.os, "replace", replace)
    dest = tmp_path / "not" / "yet" / "there.safetensors"
    save_module(dest, random_cnn(), {"arch": "small-cnn"})
    assert dest.is_file() and len(seen) == 1
    src, dst = seen[0]
    assert src.parent == dst.parent == dest.parent


def test_torch_backend_reads_the_preset(scenario, plugins) -> None:  # noqa: ANN001
    target = TorchBackend().load(TargetSpec(preset="digits-tiny", access="black-box"), scenario, plugins)
    assert target.capabilities == ACCESS_LEVELS["black-box"]
    x = digits(scenario)
    with torch.no_grad():
        assert torch.equal(target.probs(x), torch.softmax(scenario.target_net(x), 1))


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda s: s.pop("fc.bias"), "fc.bias"),
        (lambda s: s.update({"fc.weight": torch.zeros(6, 128)}), "fc.weight"),
        (lambda s: s.update({"body.0.weight": torch.zeros(32, 1, 5, 5)}), "body.0.weight"),
        (lambda s: s.update({"extra.weight": torch.zeros(3)}), "extra.weight"),
    ],
    ids=["missing-key", "wrong-shape-head", "wrong-shape-conv", "unexpected-key"],
)
def test_checkpoint_that_does_not_fit_names_the_key(scenario, plugins, tmp_path: Path, edit, key: str) -> None:  # noqa: ANN001
    state = dict(random_cnn().state_dict())
    edit(state)
    path = write_state(tmp_path / "bad.safetensors", state)
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        TorchBackend().load(TargetSpec(preset="digits-tiny", weights=str(path)), scenario, plugins)


@pytest.mark.parametrize(
    "content",
    [b"", b"\x00not a safetensors file" * 5, "truncated", (10**12).to_bytes(8, "little") + b"{}"],
    ids=["empty", "garbage", "truncated", "absurd-header"],
)
def test_corrupt_safetensors_is_a_checkpoint_error(scenario, plugins, tmp_path: Path, content) -> None:  # noqa: ANN001
    good = tmp_path / "good.safetensors"
    save_module(good, random_cnn(), {"arch": "small-cnn"})
    data = good.read_bytes()
    path = tmp_path / "corrupt.safetensors"
    path.write_bytes(data[: len(data) // 2] if content == "truncated" else content)
    with pytest.raises(CheckpointError, match="corrupt.safetensors"):
        TorchBackend().load(TargetSpec(preset="digits-tiny", weights=str(path)), scenario, plugins)
    # the same file given an explicit arch still fails cleanly (at loading the state, not the metadata)
    with pytest.raises(CheckpointError):
        load_into(small_cnn(5, SHAPE), path)


@pytest.mark.parametrize("meta", ['"small-cnn"', "[1, 2]", "{not json"])
def test_malformed_metadata_is_a_checkpoint_error(scenario, plugins, tmp_path: Path, meta: str) -> None:  # noqa: ANN001
    path = tmp_path / "meta.safetensors"
    save_file(dict(random_cnn().state_dict()), str(path), metadata={META_KEY: meta})
    with pytest.raises(CheckpointError, match="metadata"):
        TorchBackend().load(TargetSpec(preset="digits-tiny", weights=str(path)), scenario, plugins)


def test_missing_file_and_missing_arch(scenario, plugins, tmp_path: Path) -> None:  # noqa: ANN001
    with pytest.raises(CheckpointError, match="not found"):
        TorchBackend().load(TargetSpec(preset="digits-tiny", weights=str(tmp_path / "nope.safetensors")),
                            scenario, plugins)
    path = tmp_path / "anonymous.safetensors"
    save_file(dict(random_cnn().state_dict()), str(path))  # no invertkit metadata at all
    with pytest.raises(CheckpointError, match="arch"):
        TorchBackend().load(TargetSpec(preset="digits-tiny", weights=str(path)), scenario, plugins)
    # ... an entry that names the architecture makes it loadable
    target = TorchBackend().load(TargetSpec(preset="digits-tiny", weights=str(path), arch="small-cnn"),
                                 scenario, plugins)
    x = digits(scenario, 8)
    with torch.no_grad():
        assert torch.equal(target.logits(x), random_cnn()(x))


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".ckpt"])
def test_pickled_checkpoints_need_the_opt_in(scenario, plugins, tmp_path: Path, monkeypatch, suffix: str) -> None:  # noqa: ANN001
    net = random_cnn(2)
    path = tmp_path / f"net{suffix}"
    # the usual shapes of a trainer's checkpoint: wrapped in "state_dict", keys from DataParallel
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)
    spec = TargetSpec(preset="digits-tiny", weights=str(path), arch="small-cnn")
    for value in (None, "0", "true", "yes"):
        if value is None:
            monkeypatch.delenv("INVERTKIT_ALLOW_PICKLE", raising=False)
        else:
            monkeypatch.setenv("INVERTKIT_ALLOW_PICKLE", value)
        with pytest.raises(CheckpointError, match="INVERTKIT_ALLOW_PICKLE"):
            TorchBackend().load(spec, scenario, plugins)
    monkeypatch.setenv("INVERTKIT_ALLOW_PICKLE", "1")
    target = TorchBackend().load(spec, scenario, plugins)
    x = digits(scenario, 16)
    with torch.no_grad():
        assert torch.equal(target.logits(x), net(x))
    # allowed, but still checked against the architecture
    torch.save({k: v for k, v in net.state_dict().items() if k != "fc.weight"}, path)
    with pytest.raises(CheckpointError, match="fc.weight"):
        TorchBackend().load(spec, scenario, plugins)
    torch.save(net, path)  # a whole pickled model
    target = TorchBackend().load(spec, scenario, plugins)
    with torch.no_grad():
        assert torch.equal(target.logits(x), net(x))
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="not a state dict"):
        TorchBackend().load(spec, scenario, plugins)
    path.write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError):
        TorchBackend().load(spec, scenario, plugins)


def test_timm_architecture_builds_without_download(plugins, monkeypatch) -> None:  # noqa: ANN001
    pytest.importorskip("timm")
    # no network: any download attempt fails loudly
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    net = build_module(plugins, "timm:resnet18", 5, SHAPE).eval()
    assert net.conv1.in_channels == 1
    assert net.get_classifier().out_features == 5
    with torch.no_grad():
        out = net(torch.rand(3, *SHAPE))
    assert out.shape == (3, 5) and bool(torch.isfinite(out).all())


# ------------------------------------------------------------------------------------------------ ONNX
@pytest.fixture(scope="module")
def onnx_path(scenario, tmp_path_factory) -> Path:  # noqa: ANN001
    return export_onnx(scenario.target_net, tmp_path_factory.mktemp("onnx") / "tiny.onnx", SHAPE)


def test_onnx_export_matches_torch(scenario, onnx_path: Path) -> None:  # noqa: ANN001
    target = OnnxTarget(onnx_path, num_classes=5, input_shape=SHAPE)
    assert target.queries == 0  # checking the model at load time is not an attacker's query
    g = torch.Generator().manual_seed(0)
    net = scenario.target_net
    for x in (torch.rand((64, *SHAPE), generator=g), digits(scenario, 200), torch.rand((1, *SHAPE), generator=g)):
        with torch.no_grad():
            ref = net(x)
        got = target.logits(x)
        assert got.shape == ref.shape and got.dtype == torch.float32
        assert torch.allclose(got, ref, atol=1e-4, rtol=0), (got - ref).abs().max()
        assert torch.equal(target.label(x), target.probs(x).argmax(1))
    assert bool((target.label(digits(scenario, 200)) == net(digits(scenario, 200)).argmax(1)).all())


def test_onnx_capabilities_are_query_only(onnx_path: Path) -> None:
    assert OnnxTarget(onnx_path, num_classes=5, input_shape=SHAPE).capabilities == ONNX_CAPS

    @contract_settings
    @given(caps=capability_sets())
    def check(caps) -> None:  # noqa: ANN001
        target = OnnxTarget(onnx_path, num_classes=5, input_shape=SHAPE, capabilities=caps)
        assert target.capabilities == frozenset(caps) & ONNX_CAPS
        assert not target.capabilities & {C.GRAD, C.WEIGHTS, C.FEATURES}

    check()
    target = OnnxTarget(onnx_path, num_classes=5, input_shape=SHAPE, capabilities=ACCESS_LEVELS["white-box"])
    x = torch.rand((2, *SHAPE), requires_grad=True)
    assert not target.logits(x).requires_grad
    with pytest.raises(CapabilityError):
        target.features(x)
    with pytest.raises(CapabilityError):
        target.module  # noqa: B018


def test_onnx_label_only(onnx_path: Path) -> None:
    target = OnnxTarget(onnx_path, num_classes=5, input_shape=SHAPE, capabilities=ACCESS_LEVELS["label-only"], budget=10)
    assert target.capabilities == {C.LABEL}
    x = torch.rand((4, *SHAPE))
    for ask in (target.logits, target.probs, lambda v: target.topk(v, 2), target.log_probs):
        with pytest.raises(CapabilityError):
            ask(x)
    assert target.queries == 0
    full = OnnxTarget(onnx_path, num_classes=5, input_shape=SHAPE)
    assert torch.equal(target.label(x), full.logits(x).argmax(1))
    assert target.queries == 4
    # the same through an access level over the full ONNX target
    boxed = Restricted(full, ACCESS_LEVELS["label-only"])
    with pytest.raises(CapabilityError):
        boxed.probs(x)
    assert torch.equal(boxed.label(x), target.label(x))


def test_onnx_malformed_files(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07garbage bytes, not a protobuf" * 3)
    with pytest.raises(CheckpointError, match="not a valid ONNX model"):
        OnnxTarget(garbage, num_classes=5, input_shape=SHAPE)
    with pytest.raises(CheckpointError, match="not found"):
        OnnxTarget(tmp_path / "absent.onnx", num_classes=5, input_shape=SHAPE)


def test_onnx_wrong_input_or_output_size(tmp_path: Path) -> None:
    # a model declaring 1x10x10 inputs
    static = export_onnx(small_mlp(5, (1, 10, 10)), tmp_path / "static.onnx", (1, 10, 10))
    with pytest.raises(CheckpointError, match="input shape"):
        OnnxTarget(static, num_classes=5, input_shape=SHAPE)
    # a model with symbolic height/width that still only runs on 10x10 (its first Linear wants 100 inputs)
    dynamic = tmp_path / "dynamic.onnx"
    torch.onnx.export(small_mlp(5, (1, 10, 10)).eval(), (torch.zeros(2, 1, 10, 10),), str(dynamic),
                      input_names=["images"], output_names=["logits"], opset_version=17, dynamo=False,
                      dynamic_axes={"images": {0: "n", 2: "h", 3: "w"}, "logits": {0: "n"}})
    with pytest.raises(CheckpointError, match="dynamic.onnx"):
        OnnxTarget(dynamic, num_classes=5, input_shape=SHAPE)
    # the right input size but another number of classes
    seven = export_onnx(small_mlp(7, SHAPE), tmp_path / "seven.onnx", SHAPE)
    with pytest.raises(CheckpointError, match="first output"):
        OnnxTarget(seven, num_classes=5, input_shape=SHAPE)
    assert OnnxTarget(seven, num_classes=7, input_shape=SHAPE).num_classes == 7


def test_onnx_backend_preset_and_nes(scenario, plugins) -> None:  # noqa: ANN001
    from invertkit.core.cache import cache_dir

    backend = plugins.get("backend", "onnx")
    assert backend is OnnxBackend
    spec = TargetSpec(preset="digits-tiny", backend="onnx", access="black-box")
    target = backend().load(spec, scenario, plugins)
    assert target.capabilities == ACCESS_LEVELS["black-box"]
    exported = sorted((cache_dir() / "onnx").glob("digits-tiny-*.onnx"))
    assert len(exported) == 1, exported  # exported into the (session's own) cache
    stamp = exported[0].stat().st_mtime_ns
    x = digits(scenario)
    with torch.no_grad():
        assert torch.allclose(target.probs(x), torch.softmax(scenario.target_net(x), 1), atol=1e-5)
    target.reset_queries()
    labels = torch.arange(5)
    result = NES({"iterations": 3, "pairs": 2})(target, labels, prior=scenario.prior, seed=0)
    assert result.queries == target.queries == 3 * 2 * 2 * len(labels)
    assert result.images.shape == (5, *SHAPE)
    # a second load reuses the exported file
    again = backend().load(spec, scenario, plugins)
    assert exported[0].stat().st_mtime_ns == stamp
    assert torch.equal(again.probs(x), target.probs(x))


class TestOnnxTargetContract(TargetContract):
    """The generic target contract, for an ONNX target over the exported tiny CNN."""

    @pytest.fixture(autouse=True, scope="class")
    def _model(self, request, onnx_path: Path) -> None:  # noqa: ANN001
        request.cls.path = onnx_path

    def make_target(self) -> OnnxTarget:
        return OnnxTarget(self.path, num_classes=5, input_shape=SHAPE)
