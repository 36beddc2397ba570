"""The paper architectures: released-checkpoint layouts, loading through the torch backend, features/head split.

``tests/data/checkpoint_layouts/*.json`` hold the key names and shapes of the released checkpoints, written out
from the official code (each file names its repository, commit and classes); the modules must match them exactly.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from invertkit.core.cache import load_into, save_module
from invertkit.core.errors import CheckpointError, ConfigError
from invertkit.core.interfaces.capability import Capability
from invertkit.core.interfaces.target import TorchTarget, split_classifier
from invertkit.plugins.targets import face_embed, mi_nets, timm_nets
from invertkit.plugins.targets.torch_backend import load_weights

LAYOUTS = Path(__file__).parent / "data" / "checkpoint_layouts"
CELEBA_CLASSES = 1000  # GMI / KED-MI / LOMMA: 1,000 CelebA identities
ARCHS = {a.name: a for a in [*mi_nets.ARCHITECTURES, *face_embed.ARCHITECTURES, *timm_nets.ARCHITECTURES]}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def layout(name: str) -> dict:
    return json.loads((LAYOUTS / f"{name}.json").read_text())


def shapes(module: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def images(n: int, shape: tuple[int, int, int], seed: int = 0) -> torch.Tensor:
    return torch.rand((n, *shape), generator=torch.Generator().manual_seed(seed))


def scramble(module: torch.nn.Module, seed: int) -> None:
    """Overwrite every BatchNorm/PReLU tensor with random values and shift every other float tensor, so that only
    a successful load can restore the outputs (cheap: the big conv weights are only shifted)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, t in module.state_dict(keep_vars=True).items():
            if not t.is_floating_point():
                continue
            if k.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.75)
            elif t.dim() == 1:
                t.copy_(torch.randn(t.shape, generator=g) * 0.1 + (1.0 if k.endswith("weight") else 0.0))
            else:
                t.mul_(0.98).add_(0.001 * (seed % 7 + 1))


@torch.no_grad()
def calibrated(net: torch.nn.Module, shape: tuple[int, int, int]) -> torch.nn.Module:
    """Set the BatchNorm statistics from one random batch: at initialisation some of these deep nets (e.g.
    IResNet-50, EfficientNet) scale their activations to ~1e25 or ~1e-15 in eval mode, and every image would
    give the same logits, which would make the comparisons below vacuous."""
    norms = {m: m.momentum for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
    for m in norms:
        m.momentum = None  # a cumulative average: one batch sets the statistics outright
    net.train()(images(4, shape, seed=99))
    for m, momentum in norms.items():
        m.momentum = momentum
    return net.eval()


@pytest.fixture(scope="module")
def built():
    """Each (architecture, input shape) built once per module, in eval mode."""
    cache: dict[tuple[str, tuple[int, int, int]], torch.nn.Module] = {}

    def get(arch: str, shape: tuple[int, int, int]) -> torch.nn.Module:
        if (arch, shape) not in cache:
            torch.manual_seed(0)
            cache[arch, shape] = calibrated(ARCHS[arch](CELEBA_CLASSES, shape), shape)
        return cache[arch, shape]

    return get


@pytest.fixture(scope="module")
def ir152() -> torch.nn.Module:
    """IR-152 (about 62.6M parameters): built once for the whole module."""
    torch.manual_seed(0)
    # data-dependent BN statistics (not the initial 0/1), so a forgotten buffer would show in the logits
    return calibrated(ARCHS["ir152-64"](CELEBA_CLASSES, (3, 64, 64)), (3, 64, 64))


# ------------------------------------------------------------------------------------ registration


def test_every_architecture_is_registered_through_its_entry_point(plugins) -> None:
    reg = plugins.registry["architecture"]
    for name in ARCHS:
        assert name in reg, name
    assert reg["ir152-64"].plugin == "mi-nets"
    assert reg["iresnet50-arcface"].plugin == "face-embed"
    assert reg["resnet18"].plugin == "timm-nets"


#: the embedding width of each architecture (the classifier's input)
FEATURE_DIMS = {
    "vgg16-64": 2048, "ir152-64": 512, "facenet64": 512, "facenet": 512,
    "lomma-efficientnet-b0": 1280, "lomma-efficientnet-b1": 1280, "lomma-efficientnet-b2": 1408,
    **{f"iresnet{d}-{loss}": 512 for d in (18, 34, 50, 100) for loss in ("arcface", "cosface")},
    "small-arcface": 64, "small-cosface": 64,
    "efficientnet-b0": 1280, "efficientnet-b1": 1280, "efficientnet-b2": 1408,
    "resnet18": 512, "resnet50": 2048, "resnet152": 2048,
}


def test_every_architecture_builds_with_a_feature_head_split() -> None:
    assert set(FEATURE_DIMS) == set(ARCHS)
    for name, factory in ARCHS.items():
        with torch.device("meta"):  # shapes only: no memory, no initialisation cost
            net = factory(CELEBA_CLASSES, (3, 112, 112) if "iresnet" in name else (3, 64, 64))
        assert callable(net.features) and callable(net.head), name
        classifier = net.margin if name.startswith(("iresnet", "small-")) else net.get_classifier() if name in timm_nets.MODELS else net.fc_layer
        assert tuple(classifier.weight.shape) == (CELEBA_CLASSES, FEATURE_DIMS[name]), name
        assert split_classifier(net) is not None, name


@pytest.mark.parametrize(
    "arch, shape, layer, width",
    [
        ("vgg16-64", (3, 112, 112), "fc_layer", 512 * 3 * 3),  # max-pooling floors 112/32 to 3
        ("ir152-64", (3, 112, 112), "output_layer.3", 512 * 7 * 7),
        ("facenet64", (3, 96, 128), "output_layer.3", 512 * 6 * 8),
        ("iresnet50-arcface", (3, 64, 64), "fc", 512 * 4 * 4),
        ("facenet", (3, 64, 64), "feature.output_layer.3", 512 * 7 * 7),  # resized to 112x112 whatever comes in
    ],
)
def test_other_input_sizes_size_the_flattened_layer(arch, shape, layer, width) -> None:
    with torch.device("meta"):
        net = ARCHS[arch](CELEBA_CLASSES, shape)
    assert net.get_submodule(layer).in_features == width


# ------------------------------------------------------------------------------- released layouts


@pytest.mark.parametrize("arch, shape", [("vgg16-64", (3, 64, 64)), ("facenet64", (3, 64, 64)), ("facenet", (3, 64, 64))])
def test_state_dict_matches_the_released_layout(built, arch: str, shape: tuple[int, int, int]) -> None:
    rec = layout(arch)
    net = built(arch, shape)  # facenet: the same module for any input size (it resizes to 112x112)
    assert shapes(net) == rec["keys"]
    assert sum(p.numel() for p in net.parameters()) == rec["num_parameters"]


def test_ir152_state_dict_matches_the_released_layout(ir152) -> None:
    rec = layout("ir152-64")
    assert shapes(ir152) == rec["keys"]
    assert list(ir152.state_dict()) == list(rec["keys"])  # same order too
    assert sum(p.numel() for p in ir152.parameters()) == rec["num_parameters"] == 62_599_848


def test_ir152_forward_and_split(ir152) -> None:
    x = images(2, (3, 64, 64), seed=7)
    with torch.no_grad():
        f = ir152.features(x)
        logits = ir152(x)
        assert f.shape == (2, 512) and logits.shape == (2, CELEBA_CLASSES)
        assert torch.isfinite(logits).all() and not torch.allclose(logits[0], logits[1])
        assert torch.allclose(ir152.head(f), logits, atol=1e-5)


def test_iresnet50_is_the_insightface_backbone_plus_one_head_tensor(built) -> None:
    rec = layout("iresnet50")
    net = built("iresnet50-arcface", (3, 112, 112))
    got = shapes(net)
    assert got.pop("margin.weight") == [CELEBA_CLASSES, 512]
    assert got == rec["keys"]
    # the template BatchNorm is 'features' in files but not in the module, where features() is the method
    assert "embedding_bn.weight" in dict(net.named_parameters()) and callable(net.features)


@pytest.mark.parametrize("depth, blocks", [(18, 8), (34, 16), (100, 49)])
def test_iresnet_depths_have_insightface_stage_sizes(depth: int, blocks: int) -> None:
    with torch.device("meta"):
        net = face_embed.IResNet(depth, (3, 112, 112))
    assert sum(len(getattr(net, f"layer{i}")) for i in range(1, 5)) == blocks
    assert [len(getattr(net, f"layer{i}")) for i in range(1, 5)] == list(face_embed.IRESNET_LAYERS[depth])


# -------------------------------------------------------------------- loading released checkpoints


def test_ir152_released_checkpoint_loads_through_the_torch_backend_and_safetensors(ir152, tmp_path, monkeypatch) -> None:
    x = images(2, (3, 64, 64))
    with torch.no_grad():
        want = ir152(x)
    # the released layout: torch.save({"state_dict": nn.DataParallel(net).state_dict()})
    released = tmp_path / "IR152_test.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in ir152.state_dict().items()}}, released)
    st_path = tmp_path / "ir152.safetensors"
    save_module(st_path, ir152, {"arch": "ir152-64"})

    scramble(ir152, 2)
    with torch.no_grad():
        assert not torch.allclose(ir152(x), want, atol=1e-3)
    with pytest.raises(CheckpointError, match="INVERTKIT_ALLOW_PICKLE"):
        load_weights(ir152, released)
    monkeypatch.setenv("INVERTKIT_ALLOW_PICKLE", "1")
    load_weights(ir152, released)
    with torch.no_grad():
        assert torch.equal(ir152(x), want)

    scramble(ir152, 3)
    load_into(ir152, st_path)
    with torch.no_grad():
        assert torch.equal(ir152(x), want)


def test_a_released_checkpoint_of_another_architecture_is_refused(built, ir152, tmp_path, monkeypatch) -> None:
    net = built("facenet64", (3, 64, 64))
    path = tmp_path / "FaceNet64_test.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)
    monkeypatch.setenv("INVERTKIT_ALLOW_PICKLE", "1")
    with pytest.raises(CheckpointError, match="does not fit"):
        load_weights(ir152, path)


def test_released_tar_checkpoints_load_with_pickle_allowed(built, tmp_path, monkeypatch) -> None:
    net = built("vgg16-64", (3, 64, 64))
    path = tmp_path / "VGG16_88.26.tar"
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)
    monkeypatch.setenv("INVERTKIT_ALLOW_PICKLE", "1")
    load_weights(net, path)


def test_iresnet_state_dict_round_trips_under_its_released_names_and_nested(tmp_path) -> None:
    a = ARCHS["iresnet18-arcface"](5, (3, 32, 32)).eval()
    b = ARCHS["iresnet18-arcface"](5, (3, 32, 32)).eval()
    scramble(a, 4)
    x = images(2, (3, 32, 32))
    with torch.no_grad():
        assert not torch.allclose(a(x), b(x))
    sd = a.state_dict()
    assert [k for k in sd if k.startswith("features.")] == [f"features.{s}" for s in
                                                             ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]
    assert not any(k.startswith("embedding_bn") for k in sd)
    b.load_state_dict(sd, strict=True)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    assert "features.running_mean" in copy.deepcopy(a).state_dict()  # the renaming hooks survive a copy
    # inside a container (a DataParallel-like prefix) the renaming follows the prefix
    outer, other = torch.nn.Sequential(a), torch.nn.Sequential(ARCHS["iresnet18-arcface"](5, (3, 32, 32)).eval())
    assert "0.features.running_var" in outer.state_dict()
    other.load_state_dict(outer.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(other(x), a(x))
    # and through safetensors
    path = tmp_path / "iresnet18.safetensors"
    save_module(path, a, {"arch": "iresnet18-arcface"})
    c = ARCHS["iresnet18-arcface"](5, (3, 32, 32)).eval()
    load_into(c, path)
    with torch.no_grad():
        assert torch.equal(c(x), a(x))


def test_a_released_head_less_backbone_loads_then_enrolment_makes_it_a_classifier() -> None:
    shape = (3, 32, 32)
    torch.manual_seed(5)
    donor = face_embed.IResNet(18, shape).eval()
    backbone = donor.state_dict()  # what insightface releases: no head
    assert not any(k.startswith("margin") for k in backbone)
    net = ARCHS["iresnet18-arcface"](3, shape).eval()
    with torch.no_grad():
        assert not torch.equal(net.features(images(2, shape)), donor.features(images(2, shape)))
    net = face_embed.load_backbone(net, {f"module.{k}": v for k, v in backbone.items()})
    x = images(2, shape)
    with torch.no_grad():
        assert torch.equal(net.features(x), donor.features(x))
    with pytest.raises(CheckpointError, match="missing"):
        face_embed.load_backbone(net, {k: v for k, v in backbone.items() if not k.startswith("fc.")})

    # three identities = three prototype images; enrol 4 noisy shots each, classify 4 fresh shots each
    g = torch.Generator().manual_seed(6)
    protos = torch.rand((3, *shape), generator=g)
    labels = torch.arange(3).repeat_interleave(4)
    shots = (protos[labels] + 0.03 * torch.randn((12, *shape), generator=g)).clamp(0, 1)
    probes = (protos[labels] + 0.03 * torch.randn((12, *shape), generator=g)).clamp(0, 1)
    with torch.no_grad():
        before = (net(probes).argmax(1) == labels).float().mean().item()
        face_embed.enroll(net, shots, labels)
        logits = net(probes)
    # measured (prototype seeds 6-9): 12/12 probes right after enrolment, with the true class ahead of the best
    # other one by at least 10.4 logits (s = 64); 4-8/12 before it, with the random head (chance: 4/12)
    correct = logits.gather(1, labels[:, None]).squeeze(1)
    best_other = logits.masked_fill(torch.nn.functional.one_hot(labels, 3).bool(), -torch.inf).amax(1)
    assert (correct - best_other).min() > 5.0, (before, correct - best_other)
    assert torch.allclose(net.margin.weight.norm(dim=1), torch.ones(3), atol=1e-5)
    with pytest.raises(ConfigError, match="every class"):
        face_embed.enroll(net, shots[:4], labels[:4])


# ---------------------------------------------------------------------- features / head / forward


SMALL = [
    ("vgg16-64", (3, 64, 64)),
    ("facenet64", (3, 64, 64)),
    ("facenet", (3, 64, 64)),  # the evaluation model resizes 64x64 reconstructions to 112x112
    ("lomma-efficientnet-b0", (3, 64, 64)),
    ("iresnet50-arcface", (3, 112, 112)),
    ("iresnet18-cosface", (3, 64, 64)),
    ("efficientnet-b0", (3, 64, 64)),
    ("resnet18", (3, 64, 64)),
]


@pytest.mark.parametrize("arch, shape", SMALL)
def test_features_and_head_compose_to_the_logits(built, arch: str, shape: tuple[int, int, int]) -> None:
    net = built(arch, shape)
    x = images(2, shape)
    with torch.no_grad():
        f = net.features(x)
        logits = net(x)
        assert f.shape == (2, FEATURE_DIMS[arch])
        assert logits.shape == (2, CELEBA_CLASSES)
        assert torch.allclose(net.head(f), logits, atol=1e-5)
        assert not torch.allclose(logits[0], logits[1])  # the two images are told apart
    target = TorchTarget(net, num_classes=CELEBA_CLASSES, input_shape=shape)
    assert Capability.FEATURES in target.capabilities
    assert torch.allclose(target.features(x), f, atol=1e-5)
    assert split_classifier(net)[0] == net.features


def test_timm_models_keep_timm_names_and_pickle() -> None:
    import pickle

    import timm

    torch.manual_seed(0)
    net = ARCHS["resnet18"](10, (3, 32, 32)).eval()
    plain = timm.create_model("resnet18", pretrained=False, num_classes=10)
    assert shapes(net) == shapes(plain)
    plain.load_state_dict(net.state_dict(), strict=True)
    x = images(2, (3, 32, 32))
    back = pickle.loads(pickle.dumps(net))
    with torch.no_grad():
        assert torch.equal(plain.eval()(x), net(x))
        assert torch.equal(back.features(x), net.features(x))
    with pytest.raises(ConfigError, match="pretrained"):
        ARCHS["resnet18"](10, (3, 32, 32), pretrained=True)


def test_lomma_efficientnet_is_torchvision_features_and_avgpool_then_fc_layer() -> None:
    import torchvision

    with torch.device("meta"):
        net = ARCHS["lomma-efficientnet-b1"](CELEBA_CLASSES, (3, 64, 64))
        tv = torchvision.models.efficientnet_b1(weights=None)
    want = {f"feature.0.{k}": list(v.shape) for k, v in tv.features.state_dict().items()}
    want.update({"fc_layer.weight": [CELEBA_CLASSES, 1280], "fc_layer.bias": [CELEBA_CLASSES]})
    assert shapes(net) == want


# ------------------------------------------------------------------------------------------ heads


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 6), classes=st.integers(2, 7), dim=st.integers(2, 9), seed=st.integers(0, 10_000),
       loss=st.sampled_from(["arcface", "cosface"]))
def test_margin_heads_are_cosine_logits_with_the_margin_only_on_labelled_targets(n, classes, dim, seed, loss) -> None:
    g = torch.Generator().manual_seed(seed)
    head = face_embed.HEADS[loss](classes, dim)
    with torch.no_grad():
        head.weight.copy_(torch.randn((classes, dim), generator=g))
    f = torch.randn((n, dim), generator=g)
    labels = torch.randint(-1, classes, (n,), generator=g)
    with torch.no_grad():
        cos = torch.nn.functional.normalize(f, dim=1) @ torch.nn.functional.normalize(head.weight, dim=1).T
    with torch.no_grad():
        plain = head(f)
        trained = head(f, labels)
    assert torch.allclose(plain, 64.0 * cos, atol=1e-4)
    for i in range(n):
        y = int(labels[i])
        others = [j for j in range(classes) if j != y]
        assert torch.allclose(trained[i, others], plain[i, others])
        if y < 0:
            continue
        c = float(cos[i, y].detach())
        if loss == "cosface":
            want = c - 0.35
        elif math.acos(max(-1.0, min(1.0, c))) + 0.5 < math.pi:
            want = math.cos(math.acos(max(-1.0, min(1.0, c))) + 0.5)
        else:
            want = c - math.sin(0.5) * 0.5  # insightface's fallback past theta + m = pi
        # float32 acos/sqrt near |cos| = 1 is ill-conditioned (dim=2 reaches it), hence 1e-3
        assert abs(float(trained[i, y]) / 64.0 - want) < 1e-3
        assert float(trained[i, y]) <= float(plain[i, y]) + 1e-5  # a margin only ever lowers the target logit


# ---------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "arch, shape, options, fragment",
    [
        ("ir152-64", (3, 60, 60), {}, "multiples of 16"),
        ("vgg16-64", (3, 16, 40), {}, "at least 32"),
        ("facenet64", (3, 64), {}, r"\(C, H, W\)"),
        ("iresnet50-arcface", (3, 112, 112), {"margin": 0.5}, "unknown field 'margin'"),
        ("iresnet50-cosface", (3, 112, 112), {"s": -1}, "field 's'"),
        ("facenet", (3, 64, 64), {"input_size": 100}, "input_size"),
    ],
)
def test_bad_shapes_and_options_are_one_config_error(arch, shape, options, fragment) -> None:
    with pytest.raises(ConfigError, match=fragment):
        ARCHS[arch](10, shape, **options)
