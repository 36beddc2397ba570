"""Bring your own model (issue 12), the parts: input preprocessing, user modules, key mapping, the labelled
folder-per-class dataset and the audit behind ``validate``'s warnings."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from torch import nn

from invertkit.core.audit import capability_warnings, response, scaling_warning
from invertkit.core.cache import load_checkpoint
from invertkit.core.errors import CheckpointError, UnknownNameError
from invertkit.core.interfaces.capability import ACCESS_LEVELS, Capability
from invertkit.core.interfaces.target import TorchTarget
from invertkit.core.preprocess import Preprocess
from invertkit.core.preprocess_module import PreprocessModule, wrap
from invertkit.core.usermodel import load_user_module


# ------------------------------------------------------------------------------------------ preprocess
@settings(max_examples=25, deadline=None)
@given(scale=st.sampled_from([1.0, 255.0]), bgr=st.booleans(), size=st.integers(4, 12),
       mean=st.lists(st.floats(-1, 1), min_size=3, max_size=3), std=st.lists(st.floats(0.1, 2), min_size=3, max_size=3))
def test_preprocess_is_the_documented_map(scale, bgr, size, mean, std):
    spec = Preprocess(size=size, scale=scale, mean=mean, std=std, channel_order="bgr" if bgr else "rgb")
    x = torch.rand(2, 3, 8, 8)
    out = PreprocessModule(spec, 3)(x)
    ref = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                                          antialias=size < 8) if size != 8 else x
    ref = (ref * scale - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    if bgr:
        ref = ref.flip(1)
    assert out.shape == (2, 3, size, size)
    assert torch.allclose(out, ref, atol=1e-4)


def test_preprocess_is_differentiable_and_keeps_the_feature_split():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 6))
            self.fc = nn.Linear(6, 4)

        def features(self, x):
            return self.body(x)

        def head(self, f):
            return self.fc(f)

        def forward(self, x):
            return self.head(self.features(x))

    net = wrap(Net(), Preprocess(size=16, scale=255, mean=[120.0], std=[60.0]), (3, 8, 8))
    t = TorchTarget(net, num_classes=4, input_shape=(3, 8, 8))
    assert t.has(Capability.FEATURES, Capability.GRAD)
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    t.logits(x).sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert t.features(x).shape == (2, 6)
    assert wrap(nn.Identity(), Preprocess(), (3, 8, 8)).__class__ is nn.Identity  # nothing to do: no wrapper


def test_preprocess_bad_values_name_the_field():
    with pytest.raises(ValueError, match="std"):
        Preprocess(std=[0.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="mean has 2 values"):
        PreprocessModule(Preprocess(mean=[0.1, 0.2]), 3)
    with pytest.raises(ValueError, match="extra"):
        Preprocess.model_validate({"scael": 255})


def test_declared_preprocess_wins_over_the_file():
    merged = Preprocess.model_validate({"scale": 255}).merged({"scale": 1, "mean": [0.5], "std": [0.25]})
    assert merged.scale == 255 and merged.mean == (0.5,) and merged.std == (0.25,)


# ------------------------------------------------------------------------------------------ user modules
def test_file_py_build_with_options_and_relative_path(tmp_path):
    (tmp_path / "net.py").write_text("import torch.nn as nn\n\ndef build(classes=3):\n"
                                     "    return nn.Sequential(nn.Flatten(), nn.Linear(12, classes))\n")
    net = load_user_module("net.py:build", {"classes": 7}, base=tmp_path)
    assert net(torch.zeros(1, 3, 2, 2)).shape == (1, 7)
    with pytest.raises(CheckpointError, match="Did you mean 'build'"):
        load_user_module("net.py:biuld", base=tmp_path)
    with pytest.raises(CheckpointError, match="not found"):
        load_user_module("nope.py:build", base=tmp_path)
    (tmp_path / "bad.py").write_text("def build():\n    return 3\n")
    with pytest.raises(CheckpointError, match="not a torch nn.Module"):
        load_user_module("bad.py:build", base=tmp_path)


def test_torchscript_loads_and_a_pickle_is_refused(tmp_path):
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 2)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(net, torch.zeros(1, 3, 2, 2)).save(str(tmp_path / "m.ts"))
        loaded = load_user_module(str(tmp_path / "m.ts"))
    x = torch.rand(2, 3, 2, 2)
    assert torch.allclose(loaded(x), net(x))
    torch.save(net, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="not a TorchScript archive"):
        load_user_module(str(tmp_path / "m.pt"))


def test_key_map_by_pattern_and_by_position(tmp_path):
    src = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    state = {f"model.layers.{k}": v.clone() for k, v in src.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    dst = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with pytest.raises(CheckpointError, match="key_map can rename"):
        load_checkpoint(dst, tmp_path / "w.safetensors")
    load_checkpoint(dst, tmp_path / "w.safetensors", key_map={r"^model\.layers\.": ""})
    assert torch.equal(dst[2].weight, src[2].weight)
    dst2 = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    load_checkpoint(dst2, tmp_path / "w.safetensors", key_map="by-position")
    assert torch.equal(dst2[0].bias, src[0].bias)
    with pytest.raises(CheckpointError, match="does not fit the module's"):
        load_checkpoint(nn.Sequential(nn.Linear(4, 2), nn.ReLU(), nn.Linear(2, 3)), tmp_path / "w.safetensors",
                        key_map="by-position")


# ------------------------------------------------------------------------------------------ class folders
def _write_class_tree(root, classes=("alice", "bob", "carol"), per=3):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in classes:
        (root / c / "sub").mkdir(parents=True)
        for i in range(per):
            Image.fromarray(rng.integers(0, 255, (20, 16, 3), dtype=np.uint8)).save(root / c / "sub" / f"{i}.png")


def test_class_folder_labels_follow_sorted_names(tmp_path):
    from invertkit.plugins.datasets.class_folder import ClassFolder

    _write_class_tree(tmp_path)
    ds = ClassFolder()
    x, y = ds.load(str(tmp_path), size=8)
    assert x.shape == (9, 3, 8, 8) and float(x.min()) >= 0 and float(x.max()) <= 1
    assert y.tolist() == [0] * 3 + [1] * 3 + [2] * 3
    assert ds.class_names(str(tmp_path)) == ["alice", "bob", "carol"]
    x2, y2 = ds.load(str(tmp_path), size=8, classes=["carol", 0], per_class=2)
    assert y2.tolist() == [0, 0, 2, 2]
    with pytest.raises(UnknownNameError, match="Did you mean 'carol'"):
        ds.load(str(tmp_path), classes=["carl"])


# ------------------------------------------------------------------------------------------ audit
def test_capability_loss_is_named():
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    t = TorchTarget(net, num_classes=3, input_shape=(3, 2, 2), capabilities=ACCESS_LEVELS["black-box"])
    assert capability_warnings("t", "black-box", "torch", t) == []
    lost = capability_warnings("t", "white-box", "onnx", t)
    assert len(lost) == 1 and "grad" in lost[0] and "no gradients" in lost[0]
    none = TorchTarget(net, num_classes=3, input_shape=(3, 2, 2), capabilities=frozenset())
    assert "no capabilities at all" in capability_warnings("t", "embedding", "onnx", none)[0]


def test_scaling_warning_finds_a_0_255_model_fed_0_1():
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16
    y = torch.tensor(d.target)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 64, 10))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(40):  # a model trained on 0..255 pixels
        loss = nn.functional.cross_entropy(net(x[:800] * 255), y[:800])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()

    def load(p):
        return TorchTarget(wrap(net, p, (1, 8, 8)), num_classes=10, input_shape=(1, 8, 8))

    probe = x[1000:1064]
    assert response(load(Preprocess(scale=255)), probe) > 10 * response(load(Preprocess()), probe)
    msg = scaling_warning("t", load, Preprocess(), probe)
    assert msg is not None and "preprocess.scale = 255" in msg
    assert scaling_warning("t", load, Preprocess(scale=255), probe) is None


# ------------------------------------------------------------------------------------------ many classes
def test_mi_face_log_probability_moves_a_1000_class_model():
    """At p_y ~ 1/1000 the paper's cost 1 - p_y has a vanishing gradient; the log-probability objective does not."""
    from invertkit.plugins.attacks.mi_face import MIFace

    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 1000))
    with torch.no_grad():
        net[1].weight.mul_(20)  # the logit scale of a trained model
    target = TorchTarget(net, num_classes=1000, input_shape=(1, 8, 8))
    labels = torch.tensor([3, 500, 999])

    def p_y(objective):
        out = MIFace({"iterations": 40, "objective": objective, "tv_weight": 0.0})(target, labels, seed=0)
        with torch.no_grad():
            return torch.softmax(net(out.images), 1).gather(1, labels[:, None]).mean().item()

    paper, logp = p_y("probability"), p_y("log-probability")
    assert paper < 0.01 < 0.5 < logp
