"""GMI step at the KEDMI-lineage scale: invertkit's GMI plugin vs a peer-style loop, side by side in one run.

The setting of issue 4's speed criterion: GMI's DCGAN generator and WGAN-GP critic at 64x64 (z 100, width 64,
invertkit's ``wgan-gp`` networks) and a ResNet-152-class target (timm ``resnet152``, 1,000 classes; random
weights, since speed does not depend on them). One GMI step is: decode z, critic and target forward, the
loss -D(G(z)) + 100 * CE, backward to z, a Nesterov SGD step, the clip.

* **peer-style**: the published GMI/KEDMI loop. Identities go 60 at a time; each batch of 60 latents gets
  its own optimiser and its own iteration loop, in fp32, one batch at a time, restart after restart.
* **invertkit**: the ``gmi`` plugin through a ``TorchTarget`` and the ``wgan-gp`` prior. All identities x
  restarts go through one loop, in chunks of ``--chunk`` latents (the plugin's ``batch_size``).

Both run the same number of sample-iterations, in fp32 unless ``--tf32`` is given. The script reports
sample-iterations per second for each, the ratio, µs per sample-iteration, and the projected time for
1,000 identities x 5 restarts x 1,500 iterations.

    python benchmarks/gmi_speed.py --identities 120 --restarts 1 --iterations 20      # a GPU (H100)
    python benchmarks/gmi_speed.py --arch resnet18 --identities 8 --iterations 2 --peer-batch 4 --chunk 8  # CPU smoke
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
import torch.nn.functional as F


def build(arch: str, device: torch.device, num_classes: int = 1000):  # noqa: ANN201
    import timm

    from invertkit.core.interfaces.target import TorchTarget
    from invertkit.plugins.priors.wgan_gp import WGANGPBuilder

    if not timm.is_model(arch):
        raise SystemExit(f"unknown timm architecture '{arch}' (e.g. resnet152, resnet50, resnet18)")
    builder = WGANGPBuilder({"latent_dim": 100, "width": 64})
    nets = builder.networks((3, 64, 64))
    for n in nets.values():
        n.to(device).eval()
    prior = builder.wrap(nets)
    net = timm.create_model(arch, pretrained=False, num_classes=num_classes).to(device).eval()
    target = TorchTarget(net, num_classes=num_classes, input_shape=(3, 64, 64), device=device)
    return prior, net, target


def peer_loop(prior, net, labels: torch.Tensor, iterations: int, batch: int, device: torch.device) -> None:  # noqa: ANN001
    """The published per-batch loop: 60 identities at a time, a fresh SGD per batch, fp32."""
    G, D = prior.generator, prior.critic
    for start in range(0, len(labels), batch):
        y = labels[start : start + batch].to(device)
        z = torch.randn(len(y), 100, device=device).clamp(-1, 1).requires_grad_(True)
        opt = torch.optim.SGD([z], lr=0.02, momentum=0.9, nesterov=True)
        for _ in range(iterations):
            x = G(z)
            loss = -D(x).mean() + 100 * F.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                z.clamp_(-1, 1)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="resnet152", help="timm target architecture (ResNet-152-class: resnet152)")
    ap.add_argument("--identities", type=int, default=120)
    ap.add_argument("--restarts", type=int, default=1)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--peer-batch", type=int, default=60, help="the peer loop's identities per batch (GMI: 60)")
    ap.add_argument("--chunk", type=int, default=None, help="invertkit's latents per chunk (None: all at once)")
    ap.add_argument("--tf32", action="store_true", help="allow TF32 matmuls/convolutions for both runs")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    prior, net, target = build(args.arch, device)
    from invertkit.core.plugins import get_plugins

    gmi = get_plugins().get("attack", "gmi")({"iterations": args.iterations, "batch_size": args.chunk})
    labels = torch.arange(args.identities).repeat(args.restarts) % 1000
    work = len(labels) * args.iterations

    def timed(fn) -> float:  # noqa: ANN001
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    # warm-up both (cudnn autotuning, allocator)
    peer_loop(prior, net, labels[: args.peer_batch], 2, args.peer_batch, device)
    type(gmi)({"iterations": 2, "batch_size": args.chunk})(target, labels, prior=prior, seed=0)
    t_peer = timed(lambda: peer_loop(prior, net, labels, args.iterations, args.peer_batch, device))
    t_ours = timed(lambda: gmi(target, labels, prior=prior, seed=0))
    name = torch.cuda.get_device_name() if device.type == "cuda" else (platform.processor() or "cpu")
    print(f"device: {name}, torch {torch.__version__}, threads {torch.get_num_threads()}, tf32 {args.tf32}")
    print(f"GMI at 64x64, target {args.arch}: {args.identities} identities x {args.restarts} restarts x "
          f"{args.iterations} iterations ({work} sample-iterations)")
    for label, t in ((f"peer-style ({args.peer_batch} per batch)", t_peer), (f"invertkit (chunk {args.chunk or 'all'})", t_ours)):
        us = 1e6 * t / work
        print(f"{label:28s}: {work / t:9.0f} sample-iterations/s, {us:8.1f} us each; 1000 x 5 x 1500 would take "
              f"{us * 7.5e6 / 1e6 / 60:.1f} min")
    print(f"speed-up: {t_peer / t_ours:.2f}x")


if __name__ == "__main__":
    main()
