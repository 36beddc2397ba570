"""The face-swap autoencoder as a prior: shared encoder, inter (dense bottleneck) and decoder, trained on public
images to reconstruct them, with a label-embedding extension for class-conditional generation.

The architecture is that of the face-swap tools' autoencoders: faceswap's "Original" model (deepfakes/faceswap,
``plugins/train/model/original.py``; blocks from ``lib/model/nn_blocks.py``) and DeepFaceLab's SAEHD/LIAE split
into Encoder, Inter and Decoder (iperov/DeepFaceLab, ``core/leras/archis/DeepFakeArchi.py``). For a 64x64 face
the Original model is

* **encoder**: four ``Conv2DBlock`` (5x5 convolution, stride 2, ``same`` padding, LeakyReLU 0.1) of 128, 256,
  512 and 1024 channels, flattened (64 -> 4x4);
* **inter** (the bottleneck): ``Dense(1024)`` (the code; ``encoder_dim``), ``Dense(4 * 4 * 1024)``, reshaped to
  4x4x1024, then an ``UpscaleBlock(512)`` (3x3 convolution to 4 x 512 channels, LeakyReLU 0.1, pixel shuffle x2);
* **decoder**: ``UpscaleBlock`` 256, 128, 64, then ``Conv2DOutput`` (5x5 convolution to the image channels,
  sigmoid).

Face-swap tools train one encoder and one inter shared by two identities with a decoder each (faceswap's A and
B; DFL's DF) or one shared decoder (DFL's LIAE). A model-inversion prior has no identity pairs: the public images
train **one shared autoencoder** to reconstruct them (faceswap's optimiser: Adam, learning rate 5e-5, betas
(0.5, 0.99); batch 16; mean absolute error), and the prior's latent space is the ``Dense(encoder_dim)`` code.

**Label embedding** (the technical report's extension; there is no official code): :class:`ConditionalSwap`
adds ``E[y]``, a learnt embedding of the *target's* class ``y`` (``encoder_dim`` wide, initialised to zero, so an
untuned model reconstructs its input), to the code of a swap source ``x0``: ``f(x0, y) = decoder(inter_out(
inter_in(encoder(x0)) + E[y]))``. The attack ``faceswap-mia`` (:mod:`invertkit.plugins.attacks.faceswap_mia`)
tunes ``E`` and a few layers after the injection point from the target's outputs; the prior itself knows no
target class, so it is unconditional (``decode(z)`` ignores ``labels``).

Deliberate differences:

* **Sized to the image.** ``width`` sets the first encoder stage (faceswap: 128); stage ``i`` has
  ``width * 2**i`` channels, the inter ``8 * width`` and the decoder stages halve from there, as the Original.
  The number of stride-2 stages brings the image to 4x4 (images of 16 pixels or more; 64 -> 4 stages, the
  Original's) or 2x2 (smaller ones: 8x8 digits); a map that is not a power of two (28x28 MNIST) is resized
  bilinearly to the image before the output convolution.
* **Training length.** Face-swap tools train until the user stops them; ``epochs`` passes over the public set.
* **Augmentation.** Faceswap's random warps and transforms are replaced by the project's small random shift
  (``max_shift``); no masks (``learn_mask`` off, as the Original's default), no SSIM loss. On sparse images the
  mean absolute error (the L1 median: black) can pull the decoder into an all-black, saturated output (measured on
  mnist-gmi: 9.6 dB public PSNR); ``loss="mse"`` avoids it (18.8 dB there).
* ``sample_latent`` draws from a diagonal Gaussian fitted to the codes of the public images (the ``autoencoder``
  prior's :class:`~invertkit.plugins.priors.autoencoder.LatentStats`), so ``random-prior`` and latent-space
  attacks start from plausible codes.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from invertkit.core.errors import ShapeError, UsageError
from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.config import ComponentConfig
from invertkit.core.interfaces.prior import PriorBuilder
from invertkit.core.zoo.train import fit
from invertkit.plugins.priors.autoencoder import AutoencoderPrior, LatentStats

__all__ = ["ConditionalSwap", "FaceSwapAEBuilder", "FaceSwapPrior", "SwapDecoder", "SwapEncoder", "SwapInter",
           "TUNABLE", "layout"]

#: the generator layers after the label injection that fine-tuning may train, besides the embedding
TUNABLE = ("inter", "decoder", "output")


def layout(side: int) -> tuple[int, int]:
    """``(stages, lowest)``: the stride-2 stages that bring an image of ``side`` pixels to the bottleneck map of
    ``lowest`` pixels (4 for 16 pixels or more, else 2): 64 -> (4, 4), the Original's; 28 -> (3, 4); 8 -> (2, 2)."""
    lowest = 4 if side >= 16 else 2
    return max(1, math.ceil(math.log2(max(side, lowest) / lowest))), lowest


class _Up(nn.Sequential):
    """Faceswap's ``UpscaleBlock``: 3x3 convolution to ``4 * out`` channels, LeakyReLU 0.1, pixel shuffle x2."""

    def __init__(self, cin: int, out: int) -> None:
        super().__init__(nn.Conv2d(cin, out * 4, 3, 1, 1), nn.LeakyReLU(0.1), nn.PixelShuffle(2))


class SwapEncoder(nn.Module):
    """The shared encoder: ``stages`` of faceswap's ``Conv2DBlock`` (5x5, stride 2, LeakyReLU 0.1), flattened."""

    def __init__(self, image_shape: tuple[int, int, int], width: int) -> None:
        super().__init__()
        c, h, w = image_shape
        stages, _ = layout(max(h, w))
        layers: list[nn.Module] = []
        cin = c
        for i in range(stages):
            layers += [nn.Conv2d(cin, width * 2**i, 5, 2, 2), nn.LeakyReLU(0.1)]
            cin = width * 2**i
        self.net = nn.Sequential(*layers, nn.Flatten())
        with torch.no_grad():
            self.flat = int(self.net(torch.zeros(1, c, h, w)).shape[1])

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class SwapInter(nn.Module):
    """The inter: ``squeeze`` (``Dense(encoder_dim)``, the code), then ``expand`` (``Dense(lowest**2 * 8 width)``,
    reshaped, one ``UpscaleBlock`` to ``4 width`` channels)."""

    def __init__(self, image_shape: tuple[int, int, int], width: int, encoder_dim: int, flat: int) -> None:
        super().__init__()
        _, lowest = layout(max(image_shape[1:]))
        self.lowest, self.channels, self.code_dim = lowest, 8 * width, int(encoder_dim)
        self.squeeze = nn.Linear(flat, encoder_dim)
        self.dense = nn.Linear(encoder_dim, lowest * lowest * self.channels)
        self.up = _Up(self.channels, self.channels // 2)

    def expand(self, code: Tensor) -> Tensor:
        return self.up(self.dense(code).view(-1, self.channels, self.lowest, self.lowest))

    def forward(self, h: Tensor) -> Tensor:
        return self.expand(self.squeeze(h))


class SwapDecoder(nn.Module):
    """The decoder: ``stages - 1`` ``UpscaleBlock``s halving the channels, a bilinear resize to the image when the
    map is not its size, and faceswap's ``Conv2DOutput`` (5x5 convolution, sigmoid)."""

    def __init__(self, image_shape: tuple[int, int, int], width: int) -> None:
        super().__init__()
        c, h, w = image_shape
        stages, _ = layout(max(h, w))
        self.image_shape = (int(c), int(h), int(w))
        ch = 4 * width
        blocks: list[nn.Module] = []
        for _ in range(stages - 1):
            blocks.append(_Up(ch, max(1, ch // 2)))
            ch = max(1, ch // 2)
        self.blocks = nn.Sequential(*blocks)
        self.out = nn.Conv2d(ch, c, 5, 1, 2)

    def forward(self, h: Tensor) -> Tensor:
        x = self.blocks(h)
        if tuple(x.shape[2:]) != self.image_shape[1:]:
            x = F.interpolate(x, size=self.image_shape[1:], mode="bilinear", align_corners=False)
        return torch.sigmoid(self.out(x))


class _Codes(nn.Module):
    """Images to bottleneck codes: the encoder, then the inter's ``Dense(encoder_dim)``."""

    def __init__(self, encoder: SwapEncoder, inter: SwapInter) -> None:
        super().__init__()
        self.encoder, self.inter = encoder, inter

    def forward(self, x: Tensor) -> Tensor:
        return self.inter.squeeze(self.encoder(x))


class _Images(nn.Module):
    """Bottleneck codes to images: the inter's expansion, then the decoder."""

    def __init__(self, inter: SwapInter, decoder: SwapDecoder) -> None:
        super().__init__()
        self.inter, self.decoder, self.image_shape = inter, decoder, decoder.image_shape

    def forward(self, z: Tensor) -> Tensor:
        return self.decoder(self.inter.expand(z))


class FaceSwapPrior(AutoencoderPrior):
    """The trained autoencoder as a prior (the ``autoencoder`` prior's interface): latents are the
    ``Dense(encoder_dim)`` codes, ``decode`` the inter's expansion and the decoder, ``encode`` the code of images,
    ``sample_latent`` the Gaussian fitted to the public codes. Unconditional (``labels`` are ignored)."""

    name = "faceswap-ae"

    def __init__(self, encoder: SwapEncoder, inter: SwapInter, decoder: SwapDecoder, stats: LatentStats) -> None:
        super().__init__(_Codes(encoder, inter), _Images(inter, decoder), stats, inter.code_dim)  # type: ignore[arg-type]
        self.parts = {"encoder": encoder, "inter": inter, "decoder": decoder, "stats": stats}

    def networks(self) -> dict[str, nn.Module]:
        """The four networks as the builder made them (``encoder``, ``inter``, ``decoder``, ``stats``)."""
        return dict(self.parts)


class ConditionalSwap(nn.Module):
    """The label-embedding extension: ``f(x0, y) = decoder(inter.expand(inter.squeeze(encoder(x0)) + E[y]))``.

    Built over *copies* of a :class:`FaceSwapPrior`'s networks (the prior stays as it is). ``tune`` names the
    layers after the injection point that train with the embedding (:data:`TUNABLE`: ``inter`` the inter's
    expansion, ``decoder`` the upscale blocks, ``output`` the output convolution); every other parameter (the
    encoder and the code layer, the *backbone*) has ``requires_grad`` off and stays bit-identical.
    """

    def __init__(self, prior: FaceSwapPrior, num_classes: int, tune: tuple[str, ...] | list[str] = ("inter",)) -> None:
        super().__init__()
        import copy

        unknown = sorted(set(tune) - set(TUNABLE))
        if unknown:
            raise UsageError(f"unknown layer group(s) {unknown} to tune (known: {', '.join(TUNABLE)})")
        parts = prior.networks()
        self.encoder = copy.deepcopy(parts["encoder"])
        self.inter = copy.deepcopy(parts["inter"])
        self.decoder = copy.deepcopy(parts["decoder"])
        self.embedding = nn.Embedding(int(num_classes), self.inter.code_dim)
        nn.init.zeros_(self.embedding.weight)
        self.num_classes, self.tune = int(num_classes), tuple(tune)
        self.requires_grad_(False)
        self.embedding.requires_grad_(True)
        groups = {"inter": (self.inter.dense, self.inter.up), "decoder": (self.decoder.blocks,), "output": (self.decoder.out,)}
        for name in self.tune:
            for m in groups[name]:
                m.requires_grad_(True)

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def code(self, x: Tensor) -> Tensor:
        """The bottleneck code of ``x`` (the frozen backbone)."""
        return self.inter.squeeze(self.encoder(x))

    def generate(self, code: Tensor, labels: Tensor) -> Tensor:
        """The image of ``code`` with the embedding of ``labels`` injected."""
        return self.decoder(self.inter.expand(code + self.embedding(labels.long())))

    def forward(self, x0: Tensor, labels: Tensor) -> Tensor:
        return self.generate(self.code(x0), labels)


class FaceSwapAEBuilder(PriorBuilder):
    name = "faceswap-ae"
    summary = ("Face-swap autoencoder (faceswap/DeepFaceLab: shared encoder, dense inter bottleneck, decoder) "
               "trained to reconstruct public images; latent = the bottleneck code.")
    paper = "https://arxiv.org/abs/2005.05535"

    class Config(ComponentConfig):
        width: int = Field(128, ge=2, description="channels of the first encoder stage (faceswap Original: 128)")
        encoder_dim: int = Field(1024, ge=2, description="bottleneck code size, the inter's first Dense (Original: 1024)")
        epochs: int = Field(100, ge=1, description="passes over the public set (face-swap tools train until stopped)")
        batch_size: int = Field(16, ge=2, description="batch size (faceswap default: 16)")
        lr: float = Field(5e-5, gt=0, description="Adam learning rate, constant (faceswap: 5e-5)")
        beta1: float = Field(0.5, ge=0, lt=1, description="Adam beta1 (faceswap: 0.5)")
        beta2: float = Field(0.99, ge=0, lt=1, description="Adam beta2 (faceswap: 0.99)")
        loss: Literal["mae", "mse"] = Field("mae", description="reconstruction loss (faceswap Original: mean absolute error)")
        max_shift: int = Field(1, ge=0, description="random-shift augmentation of the inputs (pixels)")

    def networks(self, image_shape: tuple[int, int, int]) -> dict[str, nn.Module]:
        cfg = self.config
        enc = SwapEncoder(image_shape, cfg.width)
        return {"encoder": enc, "inter": SwapInter(image_shape, cfg.width, cfg.encoder_dim, enc.flat),
                "decoder": SwapDecoder(image_shape, cfg.width), "stats": LatentStats(cfg.encoder_dim)}

    def train(self, nets: dict[str, nn.Module], public_images: Tensor, *, seed: int, progress=None,  # noqa: ANN001
              target: nn.Module | None = None) -> dict:
        cfg = self.config
        n = len(public_images)
        if n < 2:
            raise ShapeError(f"prior 'faceswap-ae' needs at least 2 public images, got {n}")
        ae = nn.Sequential(nets["encoder"], nets["inter"], nets["decoder"])
        recon = F.l1_loss if cfg.loss == "mae" else F.mse_loss

        def loss_fn(model: nn.Module, x: Tensor, _y: Tensor, _epoch: int) -> Tensor:
            return recon(model(x), x)

        opt = torch.optim.Adam(ae.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
        seconds = fit(ae, loss_fn, (public_images, torch.zeros(n, dtype=torch.long)), epochs=cfg.epochs,
                      batch_size=min(cfg.batch_size, n), max_shift=cfg.max_shift, seed=seed, optimizer=opt,
                      schedule=False, drop_last=True, progress=progress)
        with torch.no_grad():
            codes = torch.cat([nets["inter"].squeeze(nets["encoder"](public_images[i : i + 512])) for i in range(0, n, 512)])
            nets["stats"].fit(codes)
            rec = torch.cat([nets["decoder"](nets["inter"].expand(codes[i : i + 512])) for i in range(0, n, 512)])
            mse = float(F.mse_loss(rec, public_images))
            mae = float(F.l1_loss(rec, public_images))
        return {"seconds": seconds, "epochs": cfg.epochs, "public_reconstruction_mae": mae,
                "public_reconstruction_mse": mse, "public_reconstruction_psnr": -10 * math.log10(max(mse, 1e-12))}

    def wrap(self, nets: dict[str, nn.Module]) -> FaceSwapPrior:
        return FaceSwapPrior(nets["encoder"], nets["inter"], nets["decoder"], nets["stats"])  # type: ignore[arg-type]


@hookimpl
def invertkit_register_priors(register) -> None:  # noqa: ANN001
    register(FaceSwapAEBuilder)
