"""FGMIA against GMI, per reconstruction, in one run: images per second of FGMIA's sampling and of GMI's latent
optimisation, on one preset's white-box target, the same identities x samples for both.

* **FGMIA** (``fgmia``): its feature-conditioned EDM is trained first (timed apart: a one-off cost per target,
  cached by the bench), then ``--samples`` images per identity are sampled (``--steps`` Euler steps, the
  official 50 by default) from the identities' TransF+ScaleFT features. No optimisation, no query.
* **GMI** (``gmi``): ``--gmi-iterations`` momentum-SGD steps per latent through the preset's GAN prior and the
  target (the official 2,400 by default; the CPU bench matrices use 300).

Both attacks get the same rows of labels and run in one process, one after the other, with the same torch
threads. Printed: seconds, images per second and seconds per reconstruction for each, the ratio, and the number
of reconstructions from which FGMIA's training is paid back.

    INVERTKIT_THREADS=1 python benchmarks/fgmia_speed.py --preset digits --samples 20
    INVERTKIT_DATA=/tmp/judge_work/npm python benchmarks/fgmia_speed.py --preset mnist-gmi --train-steps 2000
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="digits", help="a preset of registry.toml with a white-box target")
    ap.add_argument("--samples", type=int, default=20, help="reconstructions per private identity")
    ap.add_argument("--steps", type=int, default=50, help="FGMIA sampling steps (official: 50)")
    ap.add_argument("--train-steps", type=int, default=1000, help="FGMIA's EDM training steps")
    ap.add_argument("--fgmia-options", default="{}", help="more FGMIA options, as JSON")
    ap.add_argument("--gmi-iterations", type=int, default=2400, help="GMI iterations (official: 2400)")
    ap.add_argument("--out", default=None, help="write the figures as JSON here too")
    args = ap.parse_args(argv)

    from invertkit.core.catalog import load_catalog
    from invertkit.core.interfaces.access import seal
    from invertkit.core.interfaces.attack import AttackContext
    from invertkit.core.interfaces.target import TorchTarget
    from invertkit.core.plugins import get_plugins
    from invertkit.core.threads import apply_threads
    from invertkit.core.zoo.scenario import build_scenario
    from invertkit.plugins.attacks.fgmia import FGMIA, generate

    apply_threads()
    plugins = get_plugins()
    scenario = build_scenario(args.preset, load_catalog(), plugins)
    k = scenario.num_classes
    shape = tuple(scenario.split.public[0].shape[1:])
    public = scenario.split.public[0]
    labels = torch.arange(k).repeat_interleave(args.samples)

    def target() -> TorchTarget:
        return TorchTarget(scenario.target_net, num_classes=k, input_shape=shape, name=args.preset)

    options = {"train_steps": args.train_steps, "steps": args.steps, **json.loads(args.fgmia_options)}
    fgmia = FGMIA(options, context=AttackContext(public_images=public))
    view = seal(target())
    t0 = time.perf_counter()
    model = fgmia.diffusion_model(view, public)
    t_train = time.perf_counter() - t0
    conds = fgmia.identity_conditions(view, model, public)
    t0 = time.perf_counter()
    images = generate(model, conds[labels], shape, fgmia.config, torch.Generator().manual_seed(0), view.device)
    t_fgmia = time.perf_counter() - t0

    gmi = plugins.get("attack", "gmi")({"iterations": args.gmi_iterations})
    t0 = time.perf_counter()
    result = gmi(target(), labels, prior=scenario.prior, seed=0)
    t_gmi = time.perf_counter() - t0

    n = len(labels)
    assert images.shape[0] == n == len(result)
    figures = {
        "preset": args.preset, "reconstructions": n, "device": platform.processor() or "cpu",
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "fgmia": {"sampling_steps": args.steps, "train_steps": args.train_steps, "train_seconds": round(t_train, 2),
                  "seconds": round(t_fgmia, 3), "images_per_second": round(n / t_fgmia, 2),
                  "seconds_per_image": round(t_fgmia / n, 4)},
        "gmi": {"iterations": args.gmi_iterations, "seconds": round(t_gmi, 3), "images_per_second": round(n / t_gmi, 2),
                "seconds_per_image": round(t_gmi / n, 4)},
    }
    per_gmi, per_fgmia = t_gmi / n, t_fgmia / n
    figures["speedup"] = round(per_gmi / per_fgmia, 2)
    figures["break_even_images"] = (round(t_train / (per_gmi - per_fgmia)) if per_gmi > per_fgmia else None)
    print(f"{args.preset}: {n} reconstructions ({k} identities x {args.samples}), {figures['threads']} torch threads")
    print(f"FGMIA: EDM trained in {t_train:.1f} s ({args.train_steps} steps); sampling ({args.steps} steps) "
          f"{t_fgmia:.2f} s = {n / t_fgmia:.1f} images/s, {1e3 * per_fgmia:.1f} ms per image")
    print(f"GMI:   {args.gmi_iterations} iterations {t_gmi:.2f} s = {n / t_gmi:.1f} images/s, "
          f"{1e3 * per_gmi:.1f} ms per image")
    print(f"FGMIA samples {figures['speedup']}x faster per reconstruction; its training is paid back after "
          f"{figures['break_even_images']} reconstructions")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(figures, fh, indent=1)


if __name__ == "__main__":
    main()
