"""Bring your own model (issue 12), end to end through the CLI: an ONNX classifier and an ONNX embedder with
their own input sizes and scalings, and a torch module from a ``file.py:build`` with a renamed state dict, each
declared with one ``[targets.*]`` block and a folder of public images; ``validate`` reports what each exposes
and flags the silent capability losses and a wrong scaling; ``bench`` attacks the ONNX classifier with NES and
the torch module with GMI without invertkit training any target."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

ROOT = Path(__file__).resolve().parents[1]

MODULE_PY = '''
import torch
from torch import nn


class Net(nn.Module):
    """A user's digits classifier on 8x8 grey images in [0, 1], with its own layer names."""

    def __init__(self, width=16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.proj = nn.Linear(width * 16, 32)
        self.cls = nn.Linear(32, 10)

    def features(self, x):
        return torch.relu(self.proj(self.stem(x).flatten(1)))

    def head(self, f):
        return self.cls(f)

    def forward(self, x):
        return self.head(self.features(x))


def build(width=16):
    return Net(width)
'''


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0, torch.tensor(d.target)


def _fit(net: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 25, out=None) -> nn.Module:  # noqa: ANN001
    torch.manual_seed(0)
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(epochs):
        for i in range(0, len(x), 64):
            logits = net(x[i:i + 64])
            loss = nn.functional.cross_entropy(logits if out is None else out(logits), y[i:i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


class Scaled(nn.Module):
    """A model trained on 16x16 images in 0..255 normalised by mean/std: what the ONNX files expect."""

    def __init__(self, outputs: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Flatten(), nn.Linear(8 * 64, outputs))

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.body(x)


def _export(net: nn.Module, path: Path, meta: dict | None = None) -> None:
    import onnx

    torch.onnx.export(net, (torch.zeros(2, 1, 16, 16),), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, opset_version=17, dynamo=False)
    if meta:
        model = onnx.load(str(path))
        for k, v in meta.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = k, v
        onnx.save(model, str(path))


@pytest.fixture(scope="module")
def brought(tmp_path_factory) -> Path:  # noqa: ANN001
    """Everything a user would have: model files and a folder of public images (digits 5-9), plus a labelled
    folder of private digits 0-4 and an evaluation network for the torch target."""
    from PIL import Image
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("byom")
    x, y = _digits()
    x16 = nn.functional.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    to_model = lambda v: (v * 255 - 120.0) / 60.0  # noqa: E731 - the files' own convention
    clf = _fit(Scaled(10), to_model(x16[:1400]), y[:1400])
    _export(clf, d / "classifier.onnx", {"preprocess": json.dumps({"scale": 255, "mean": [120.0], "std": [60.0]})})
    emb = _fit(Scaled(16), x16[:1400] * 255, y[:1400], out=lambda f: f[:, :10])  # raw 0..255 pixels
    _export(emb, d / "embedder.onnx")  # says nothing about its scaling: the user must

    (d / "model.py").write_text(MODULE_PY)
    ns: dict = {}
    exec(MODULE_PY, ns)  # noqa: S102 - the test's own module text
    torch_net = _fit(ns["build"](), x[:1400], y[:1400])
    save_file({f"backbone.{k}": v for k, v in torch_net.state_dict().items()}, str(d / "net.safetensors"))
    judge = _fit(ns["build"](24), x[200:1600], y[200:1600])
    save_file(judge.state_dict(), str(d / "judge.safetensors"))

    for folder, keep in (("public", range(5, 10)), ("private", range(0, 5))):
        for i in np.flatnonzero(np.isin(y.numpy(), list(keep)))[:300]:
            sub = d / folder / (f"{int(y[i])}" if folder == "private" else "")
            sub.mkdir(parents=True, exist_ok=True)
            Image.fromarray((x[i, 0].numpy() * 255).astype(np.uint8)).save(sub / f"{i}.png")
    return d


def _registry(d: Path) -> Path:
    prior = '{ plugin = "wgan-gp", seed = 0, options = { latent_dim = 16, width = 16, steps = 150, batch_size = 64 } }'
    text = textwrap.dedent(f"""
        schema = 1

        [targets.onnx-clf]
        summary = "a user's ONNX digits classifier: 16x16 input, 0..255 pixels, its own mean/std (in the file)"
        backend = "onnx"
        weights = "{d / 'classifier.onnx'}"
        access = "black-box"
        image_size = 8
        public = {{ dataset = "image-folder", root = "{d / 'public'}", options = {{ channels = 1 }} }}
        prior = {prior}

        [targets.onnx-embedder]
        summary = "a user's ONNX embedder, declared with the wrong scaling"
        backend = "onnx"
        weights = "{d / 'embedder.onnx'}"
        kind = "embedder"
        access = "embedding"
        image_size = 8
        public = {{ dataset = "image-folder", root = "{d / 'public'}", options = {{ channels = 1 }} }}

        [targets.onnx-clf-as-embedding]
        backend = "onnx"
        weights = "{d / 'classifier.onnx'}"
        access = "embedding"
        image_size = 8
        public = {{ dataset = "image-folder", root = "{d / 'public'}", options = {{ channels = 1 }} }}

        [targets.onnx-clf-white-box]
        backend = "onnx"
        weights = "{d / 'classifier.onnx'}"
        access = "white-box"
        image_size = 8
        public = {{ dataset = "image-folder", root = "{d / 'public'}", options = {{ channels = 1 }} }}

        [targets.torch-mod]
        summary = "a user's torch module from model.py:build, its state dict under another prefix"
        module = "{d / 'model.py'}:build"
        weights = "{d / 'net.safetensors'}"
        key_map = {{ "^backbone\\\\." = "" }}
        input_shape = [1, 8, 8]
        access = "white-box"
        public = {{ dataset = "image-folder", root = "{d / 'public'}", options = {{ channels = 1 }} }}
        private = {{ dataset = "class-folder", root = "{d / 'private'}", options = {{ channels = 1 }} }}
        prior = {prior}
        eval = {{ module = "{d / 'model.py'}:build", module_options = {{ width = 24 }}, weights = "{d / 'judge.safetensors'}" }}

        [bench.byom]
        targets = ["onnx-clf", "torch-mod"]
        attacks = ["random-prior", "nes", "gmi"]
        defenses = ["none", "rounding", "bido"]
        identities = [0, 1, 2, 3, 4]
        samples_per_identity = 4

        [bench.byom.attack_options.gmi]
        iterations = 60

        [bench.byom.attack_options.nes]
        iterations = 30
        pairs = 8
    """)
    path = d / "registry.toml"
    path.write_text(text)
    return path


def invoke(*args: str):  # noqa: ANN201
    from invertkit.cli import cli

    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_validate_reports_capabilities_and_flags_silent_losses_and_scaling(brought: Path) -> None:
    res = invoke("validate", str(_registry(brought)))
    assert res.exit_code == 0, res.output
    out, err = res.stdout, res.stderr
    assert "target onnx-clf: onnx classifier, input [1, 8, 8], 10 classes, exposes {label, probs, topk}" in out
    assert "target torch-mod: torch classifier, input [1, 8, 8], 10 classes" in out
    lines = [line for line in err.splitlines() if line.startswith("warning:")]
    by_target = {t: [line for line in lines if f"target '{t}'" in line] for t in
                 ("onnx-clf", "onnx-embedder", "onnx-clf-as-embedding", "onnx-clf-white-box", "torch-mod")}
    assert by_target["onnx-clf"] == [] and by_target["torch-mod"] == []  # correctly declared: nothing to say
    assert "no capabilities at all" in by_target["onnx-clf-as-embedding"][0]
    assert "{features, grad, weights} lost (no gradients" in " ".join(by_target["onnx-clf-white-box"])
    assert any("barely respond" in w and "preprocess.scale = 255" in w for w in by_target["onnx-embedder"]), lines
    assert "5 warning(s)" not in out and "warning(s)" in out


def test_bench_attacks_brought_models_without_training_a_target(brought: Path, tmp_path: Path) -> None:
    reg = _registry(brought)
    out = tmp_path / "out"
    res = invoke("bench", "--registry", str(reg), "--matrix", "byom", "--out", str(out))
    assert res.exit_code == 0, res.output
    assert "training target" not in res.stderr and "training eval" not in res.stderr
    records = {(r["attack"], r["defense"], r["target"]): r
               for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    # no preset: invertkit cannot retrain a brought model, so a training-time defense is skipped with the reason
    assert all(r["status"] == "skipped" for (a, dfn, t), r in records.items() if dfn == "bido")
    assert "cannot retrain" in records["nes", "bido", "onnx-clf"]["reason"]
    assert "cannot retrain" in records["gmi", "bido", "torch-mod"]["reason"]
    # white-box GMI on the ONNX file is impossible (no gradients); NES on it runs through the API
    assert records["gmi", "none", "onnx-clf"]["status"] == "skipped"
    nes, base = records["nes", "none", "onnx-clf"], records["random-prior", "none", "onnx-clf"]
    assert nes["status"] == "ok" and base["status"] == "ok", (nes, base)
    # no evaluation model and no private data: the target-side figures, and the metrics that need more are named
    assert {"acc@1", "knn_dist"}.isdisjoint(nes["metrics"]) and "target_acc@1" in nes["metrics"]
    assert "evaluation model" in nes["metrics_not_applicable"]["attack-acc"]
    assert nes["metrics"]["target_acc@1"] > base["metrics"]["target_acc@1"] + 0.2
    assert nes["metrics"]["queries"] > 0 and base["metrics"]["queries"] == 0
    assert records["nes", "rounding", "onnx-clf"]["status"] == "ok"
    # the torch module with the user's private digits and evaluation model: acc@1 and KNN apply
    gmi, tbase = records["gmi", "none", "torch-mod"], records["random-prior", "none", "torch-mod"]
    assert gmi["status"] == "ok", gmi
    assert gmi["metrics"]["acc@1"] > tbase["metrics"]["acc@1"] + 0.2
    assert gmi["metrics"]["knn_dist"] < tbase["metrics"]["knn_dist"]
    assert gmi["metrics"]["natural_acc"] > 0.8  # the brought network, on the user's private digits
    assert (out / "report.html").is_file()


def test_standalone_entries_are_checked(tmp_path: Path) -> None:
    reg = tmp_path / "r.toml"
    reg.write_text('[targets.x]\nbackend = "onnx"\nweights = "missing.onnx"\n'
                   'public = { dataset = "image-folder", root = "nowhere" }\n')
    res = invoke("validate", str(reg))
    assert res.exit_code != 0 and "missing.onnx" in res.output and len(res.output.strip().splitlines()) == 1
    reg.write_text('[targets.x]\npreset = "p"\npublic = { dataset = "image-folder" }\n')
    res = invoke("validate", str(reg))
    assert res.exit_code != 0 and "only for a standalone target" in res.output


def test_run_identities_by_range_and_name(brought: Path, tmp_path: Path) -> None:
    reg = _registry(brought)
    res = invoke("run", "--registry", str(reg), "-a", "gmi", "-t", "torch-mod", "--identities", "0..1,3",
                 "--samples", "2", "-o", "iterations=20", "--out", str(tmp_path / "r"))
    assert res.exit_code == 0, res.output
    rec = json.loads((tmp_path / "r" / "record.json").read_text())
    assert rec["samples"] == 6 and "acc@1" in rec["metrics"]
    res = invoke("run", "--registry", str(reg), "-a", "gmi", "-t", "torch-mod", "--identities", "4,2",
                 "--samples", "1", "-o", "iterations=5")
    assert res.exit_code == 0, res.output  # class-folder names of the private digits are '0'..'4': indices here
    bad = invoke("run", "--registry", str(reg), "-a", "nes", "-t", "onnx-clf", "--identities", "12")
    assert bad.exit_code != 0 and "out of range" in bad.output and "10 classes" in bad.output
    bad = invoke("run", "--registry", str(reg), "-a", "nes", "-t", "onnx-clf", "--identities", "cat")
    assert bad.exit_code != 0 and "no named classes" in bad.output


def test_a_preset_takes_public_images_from_another_dataset(brought: Path, plugins) -> None:  # noqa: ANN001
    from invertkit.core.catalog import parse_catalog
    from invertkit.core.errors import RegistryFileError
    from invertkit.core.zoo.scenario import load_split

    text = textwrap.dedent(f"""
        [presets.p]
        dataset = "digits"
        private_classes = [0, 1, 2]
        public = {{ dataset = "image-folder", root = "{brought / 'public'}" }}
        target = {{ arch = "small-cnn" }}
        eval = {{ arch = "small-mlp" }}
        prior = {{ plugin = "wgan-gp" }}
    """)
    split = load_split(plugins, parse_catalog(text).preset("p"))
    assert split.public[0].shape == (300, 1, 8, 8)  # the folder's PNGs, at the private images' size and channels
    assert split.num_classes == 3 and split.private_train[0].shape[1:] == (1, 8, 8)
    with pytest.raises(RegistryFileError, match="not both"):
        parse_catalog(text.replace("private_classes = [0, 1, 2]", "private_classes = [0, 1, 2]\npublic_classes = [5]"))
