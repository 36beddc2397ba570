"""The EDM prior on a preset (``digits-edm`` by default): training seconds, and the Fréchet distance of its
samples to the public images against the untrained network's and, as a yardstick, the preset's baseline GAN
prior (``--baseline``, the ``digits`` preset's WGAN-GP).

The Fréchet distance (FID's formula) is taken in the feature space of the preset's evaluation model (trained on
the private split; it sees every image the same way), between ``--samples`` decoded images of each prior and
the public images the priors were trained on. The untrained network is the builder's fresh network under the
preset's prior seed, decoded with the same sampler from the same noise. Training is the scenario cache's:
a cached prior is loaded and its recorded training seconds are printed.

    INVERTKIT_THREADS=1 python benchmarks/edm_digits.py
    INVERTKIT_THREADS=1 python benchmarks/edm_digits.py --preset digits-edm --samples 500 --baseline digits
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="digits-edm", help="a preset of registry.toml whose prior is 'edm'")
    ap.add_argument("--samples", type=int, default=500, help="decoded images per prior")
    ap.add_argument("--baseline", default="digits", help="a preset whose (GAN) prior is the yardstick; '' for none")
    ap.add_argument("--out", default=None, help="write the figures as JSON here too")
    args = ap.parse_args(argv)

    from invertkit.core.catalog import load_catalog
    from invertkit.core.metrics import GaussianStats, features, frechet_distance
    from invertkit.core.plugins import get_plugins
    from invertkit.core.threads import apply_threads
    from invertkit.core.zoo.scenario import build_scenario
    from invertkit.plugins.priors.edm import EDMPrior

    apply_threads()
    plugins, catalog = get_plugins(), load_catalog()
    t0 = time.perf_counter()
    sc = build_scenario(args.preset, catalog, plugins)
    t_build = time.perf_counter() - t0
    if not isinstance(sc.prior, EDMPrior):
        raise SystemExit(f"error: preset '{args.preset}' has no 'edm' prior")
    public = sc.split.public[0]
    feat = sc.eval_net.eval().features  # type: ignore[union-attr]

    def stats(images: torch.Tensor) -> GaussianStats:
        return GaussianStats.from_features(features(feat, images, torch.device("cpu")))

    ref = stats(public)
    noise = torch.randn(args.samples, *sc.prior.latent_shape, generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    with torch.no_grad():
        trained = sc.prior.decode(noise)
    t_sample = time.perf_counter() - t0
    builder = plugins.get("prior", "edm")(sc.preset.prior.options)
    torch.manual_seed(sc.preset.prior.seed)
    fresh = builder.wrap(builder.networks(sc.image_shape))
    with torch.no_grad():
        untrained = fresh.decode(noise)
    figures = {
        "preset": args.preset, "samples": args.samples, "threads": torch.get_num_threads(),
        "train_seconds": round(float(sc.facts["prior"]["seconds"]), 1), "train_steps": sc.facts["prior"]["steps"],
        "scenario_seconds_this_run": round(t_build, 1), "sampler": sc.prior.sampler,
        "sample_seconds": round(t_sample, 2),
        "fd_trained": round(frechet_distance(stats(trained), ref), 3),
        "fd_untrained": round(frechet_distance(stats(untrained), ref), 3),
        "fd_private_vs_public": round(frechet_distance(stats(sc.split.private_train[0]), ref), 3),
    }
    if args.baseline:
        base = build_scenario(args.baseline, catalog, plugins).prior
        with torch.no_grad():
            gan = base.decode(base.sample_latent(args.samples, torch.Generator().manual_seed(0)))  # type: ignore[union-attr]
        figures["baseline"] = {"preset": args.baseline, "prior": base.name,  # type: ignore[union-attr]
                               "fd": round(frechet_distance(stats(gan), ref), 3)}
    print(json.dumps(figures, indent=1, default=str))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(figures, fh, indent=1, default=str)


if __name__ == "__main__":
    main()
