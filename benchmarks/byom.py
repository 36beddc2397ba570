"""Time from "I have model.onnx and a folder of images" to a report, as a red-teamer bringing their own model.

Makes what such a user has, then times the two commands they run:

* ``model.onnx``: a 1,000-class ImageNet-shaped classifier (timm ``mobilenetv3_small_100``, 224 px input,
  ImageNet mean/std written into the file's metadata, so the entry need not repeat it) — random weights: no
  pretrained ImageNet weights can be downloaded here, so its figures mean nothing, but every step a user's
  pretrained file goes through is the same and takes the same time;
* ``public/``: a folder of face images (scikit-image's ``lfw_subset``, 100 faces) as the attacker's public data;
* a registry with one ``[targets.mine]`` block and a matrix (random-prior and NES, no defense and rounding).

Then: ``invertkit validate registry.toml`` and ``invertkit bench --registry registry.toml --matrix mine``, each
timed (wall clock, fresh cache); the report is ``OUT/report.html``.

    python benchmarks/byom.py --out /tmp/byom        # --threads N (INVERTKIT_THREADS) to pin the threads
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def make_inputs(d: Path) -> None:
    import numpy as np
    import onnx
    import timm
    import torch
    from PIL import Image
    from skimage.data import lfw_subset

    torch.manual_seed(0)
    net = timm.create_model("mobilenetv3_small_100", pretrained=False, num_classes=1000).eval()
    path = d / "model.onnx"
    torch.onnx.export(net, (torch.zeros(1, 3, 224, 224),), str(path), input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}}, opset_version=17, dynamo=False)
    model = onnx.load(str(path))
    entry = model.metadata_props.add()
    entry.key, entry.value = "preprocess", json.dumps(IMAGENET)
    onnx.save(model, str(path))
    (d / "public").mkdir(exist_ok=True)
    for i, face in enumerate(lfw_subset()):
        Image.fromarray((np.clip(face, 0, 1) * 255).astype(np.uint8)).convert("RGB").save(d / "public" / f"{i:03d}.png")


def registry(d: Path) -> Path:
    text = textwrap.dedent(f"""
        [targets.mine]
        summary = "my 1,000-class classifier, exported to ONNX (224 px, ImageNet normalisation in the file)"
        backend = "onnx"
        weights = "{d / 'model.onnx'}"
        access = "black-box"
        image_size = 32
        public = {{ dataset = "image-folder", root = "{d / 'public'}" }}
        prior = {{ plugin = "wgan-gp", options = {{ steps = 300 }} }}

        [bench.mine]
        targets = ["mine"]
        attacks = ["random-prior", "nes"]
        defenses = ["none", "rounding"]
        identities = "0..2"
        samples_per_identity = 2

        [bench.mine.attack_options.nes]
        iterations = 20
    """)
    (d / "registry.toml").write_text(text)
    return d / "registry.toml"


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd)} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return took, proc.stdout


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="byom-out")
    ap.add_argument("--threads", default=None, help="INVERTKIT_THREADS for the commands (default: the policy's)")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="byom-"))
    make_inputs(work)
    reg = registry(work)
    env = {**os.environ, "INVERTKIT_CACHE": str(work / "cache")}
    if args.threads:
        env["INVERTKIT_THREADS"] = args.threads
    cli = [sys.executable, str(Path(__file__).resolve().parents[1] / "cli.py")]
    t_val, out_val = timed([*cli, "validate", str(reg)], env)
    t_bench, out_bench = timed([*cli, "bench", "--registry", str(reg), "--matrix", "mine", "--out", args.out], env)
    t_again, _ = timed([*cli, "bench", "--registry", str(reg), "--matrix", "mine", "--out", args.out + "-again"], env)
    print(out_val.strip())
    print(f"validate: {t_val:.1f} s; bench (fresh cache: prior trained, 6 cells): {t_bench:.1f} s; "
          f"total {t_val + t_bench:.1f} s; bench again (cached): {t_again:.1f} s")
    print(f"report: {Path(args.out) / 'report.html'}")


if __name__ == "__main__":
    main()
