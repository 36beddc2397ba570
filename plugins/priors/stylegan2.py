"""StyleGAN2 prior (Karras et al., CVPR 2020, https://arxiv.org/abs/1912.04958), as Plug & Play Attacks use it
(Struppek et al., ICML 2022, https://arxiv.org/abs/2201.12179): a style-space prior whose ``w`` an attack optimises.

The generator is a compact StyleGAN2 written for invertkit (not a copy of any implementation):

* mapping network ``z -> w``: pixel norm, then ``n_mlp`` equalised-learning-rate linear layers (learning-rate
  multiplier 0.01) with bias + leaky ReLU(0.2) x sqrt(2);
* synthesis: a learned constant 4x4 input; per resolution an upsampling modulated 3x3 conv (transposed conv,
  stride 2, then the [1, 3, 3, 1] blur) and a modulated 3x3 conv, each weight modulated by an affine of ``w``
  (bias initialised to 1) and demodulated, then per-channel noise (scaled by a learned weight) and bias + leaky
  ReLU x sqrt(2); a toRGB 1x1 modulated (not demodulated) conv per resolution, summed along upsampled skips.
  Decoding uses the *stored constant* noise maps (PPA's ``noise_mode='const'``), so it is deterministic;
  training draws fresh noise. ``num_styles = 2 log2(size) - 2`` style inputs; the prior broadcasts one ``w``
  to all of them (PPA's ``single_w``) or takes one per layer.
* output: roughly ``[-1, 1]`` at ``size`` = the next power of two >= the image side; center-cropped by
  ``crop`` (PPA crops FFHQ 1024 px to 800 px: 0.78125), resized to the image, RGB averaged to grey (or grey
  repeated) when the channels differ, mapped to ``[0, 1]`` by ``(x + 1) / 2`` and clamped.

Training (``weights`` unset) follows StyleGAN2's recipe at CPU scale: non-saturating logistic loss, R1 penalty
on real images (``r1_gamma``, lazily every ``d_reg_every`` steps, scaled by it), Adam(lr 0.002, betas (0, 0.99),
D's betas and lr adjusted for the lazy regulariser as in the paper), an exponential moving average of the
generator (``g_ema``, half-life ``ema_half_life`` images; the prior decodes the average). Left out for
brevity at this scale: path-length regularisation and style mixing. The discriminator is a small residual
StyleGAN2-style one (equalised convs, average-pool downsampling, minibatch standard deviation) sized to the image.

Pretrained weights (``weights`` set): a safetensors file holding a generator state in the key layout of
rosinality/stylegan2-pytorch's ``Generator`` (``ckpt["g_ema"]``), which this module matches name for name::

    style.{1..n_mlp}.weight (D, D), style.{i}.bias (D,)              mapping (PixelNorm at index 0)
    input.input (1, C4, 4, 4)                                        constant input
    conv1.conv.weight (1, C4, C4, 3, 3), conv1.conv.modulation.weight (C4, D), .modulation.bias (C4,)
    conv1.noise.weight (1,), conv1.activate.bias (C4,)
    to_rgb1.conv.weight (1, 3, C4, 1, 1), to_rgb1.conv.modulation.{weight,bias}, to_rgb1.bias (1, 3, 1, 1)
    convs.{2k}.conv.{weight,modulation.*,blur.kernel}, convs.{2k}.{noise.weight,activate.bias}   (upsampling)
    convs.{2k+1}.conv.{weight,modulation.*}, convs.{2k+1}.{noise.weight,activate.bias}
    to_rgbs.{k}.upsample.kernel (4, 4), to_rgbs.{k}.conv.{weight,modulation.*}, to_rgbs.{k}.bias
    noises.noise_{i} (1, 1, r, r)                                    the constant noise maps

To convert a rosinality checkpoint (a pickle: load it only if you trust it)::

    from safetensors.torch import save_file; import torch
    g = torch.load("550000.pt", map_location="cpu")["g_ema"]
    save_file({k: v.contiguous() for k, v in g.items()}, "stylegan2-ffhq.safetensors")

The architecture (style size, mapping depth, channels per resolution, output size and channels) is read from
the file's shapes; the mean ``w`` for truncation is computed from 4,096 mapped latents (seed 0), as
rosinality's ``mean_latent(4096)``. NVlabs ``.pkl`` files use other names and must be converted first. A
missing file is a :class:`DataNotFoundError`; a file that is not such a state a :class:`CheckpointError`.
"""

from __future__ import annotations

import copy
import math
import re
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from invertkit.core.errors import CheckpointError, DataNotFoundError
from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.capability import PriorFeature
from invertkit.core.interfaces.config import ComponentConfig
from invertkit.core.interfaces.prior import Prior, PriorBuilder

SQRT2 = math.sqrt(2.0)
BLUR = (1.0, 3.0, 3.0, 1.0)


# --------------------------------------------------------------------------------------------- building blocks
def blur_kernel(scale: float = 1.0) -> Tensor:
    k = torch.tensor(BLUR)
    k = k[None, :] * k[:, None]
    return k / k.sum() * scale


def upfirdn(x: Tensor, kernel: Tensor, up: int, pad: tuple[int, int]) -> Tensor:
    """Upsample by zero insertion, pad, and filter with ``kernel`` (per channel): rosinality's ``upfirdn2d``
    with ``down=1``, in plain torch."""
    b, c, h, w = x.shape
    if up > 1:
        x = F.pad(x.reshape(b, c, h, 1, w, 1), [0, up - 1, 0, 0, 0, up - 1]).reshape(b, c, h * up, w * up)
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    weight = kernel.flip(0, 1).to(x.dtype).expand(c, 1, *kernel.shape)
    return F.conv2d(x, weight, groups=c)


def lrelu(x: Tensor, bias: Tensor) -> Tensor:
    """Bias + leaky ReLU(0.2), times sqrt(2) (StyleGAN2's fused activation)."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return F.leaky_relu(x + bias.view(shape), 0.2) * SQRT2


class EqualLinear(nn.Module):
    """Linear layer with an equalised learning rate: weights ``N(0, 1) / lr_mul`` scaled at run time."""

    def __init__(self, in_dim: int, out_dim: int, *, bias_init: float = 0.0, lr_mul: float = 1.0,
                 activate: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale, self.lr_mul, self.activate = lr_mul / math.sqrt(in_dim), lr_mul, activate

    def forward(self, x: Tensor) -> Tensor:
        if self.activate:
            return lrelu(F.linear(x, self.weight * self.scale), self.bias * self.lr_mul)
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class PixelNorm(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(1, keepdim=True) + 1e-8)


class Blur(nn.Module):
    def __init__(self, pad: tuple[int, int], scale: float) -> None:
        super().__init__()
        self.register_buffer("kernel", blur_kernel(scale))
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        return upfirdn(x, self.kernel, 1, self.pad)


class ModulatedConv(nn.Module):
    """A conv whose weight is scaled per input channel by an affine of ``w`` and (optionally) demodulated.

    Computed by modulating the input and scaling the output (the weight-demodulation identity), so one plain
    conv serves the whole batch."""

    def __init__(self, cin: int, cout: int, k: int, style_dim: int, *, demodulate: bool = True,
                 upsample: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, cout, cin, k, k))
        self.modulation = EqualLinear(style_dim, cin, bias_init=1.0)
        self.scale, self.k, self.demodulate, self.upsample = 1 / math.sqrt(cin * k * k), k, demodulate, upsample
        if upsample:  # transposed conv (k=3, stride 2) gives 2h+1; the blur's padding brings it to 2h
            p = (len(BLUR) - 2) - (k - 1)
            self.blur = Blur(((p + 1) // 2 + 1, p // 2 + 1), 4.0)

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        weight = self.scale * self.weight[0]  # (out, in, k, k)
        s = self.modulation(w)  # (B, in)
        x = x * s[:, :, None, None]
        if self.upsample:
            out = self.blur(F.conv_transpose2d(x, weight.transpose(0, 1), stride=2))
        else:
            out = F.conv2d(x, weight, padding=self.k // 2)
        if self.demodulate:
            # sum_{i,k} (W_oik s_bi)^2 = sum_i s_bi^2 sum_k W_oik^2: a matmul instead of a (B, out, in, k, k) tensor
            d = (s.pow(2) @ weight.pow(2).sum((2, 3)).t() + 1e-8).rsqrt()  # (B, out)
            out = out * d[:, :, None, None]
        return out


class NoiseInjection(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor, noise: Tensor) -> Tensor:
        return x + self.weight * noise


class Activation(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return lrelu(x, self.bias)


class StyledConv(nn.Module):
    def __init__(self, cin: int, cout: int, style_dim: int, upsample: bool = False) -> None:
        super().__init__()
        self.conv = ModulatedConv(cin, cout, 3, style_dim, upsample=upsample)
        self.noise = NoiseInjection()
        self.activate = Activation(cout)

    def forward(self, x: Tensor, w: Tensor, noise: Tensor) -> Tensor:
        return self.activate(self.noise(self.conv(x, w), noise))


class Upsample(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("kernel", blur_kernel(4.0))
        p = len(BLUR) - 2
        self.pad = ((p + 1) // 2 + 1, p // 2)

    def forward(self, x: Tensor) -> Tensor:
        return upfirdn(x, self.kernel, 2, self.pad)


class ToRGB(nn.Module):
    def __init__(self, cin: int, style_dim: int, channels: int, upsample: bool = True) -> None:
        super().__init__()
        if upsample:
            self.upsample = Upsample()
        self.conv = ModulatedConv(cin, channels, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: Tensor, w: Tensor, skip: Tensor | None = None) -> Tensor:
        out = self.conv(x, w) + self.bias
        return out if skip is None else out + self.upsample(skip)


class ConstantInput(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, 4, 4))

    def forward(self, batch: int) -> Tensor:
        return self.input.expand(batch, -1, -1, -1)


def default_channels(size: int, channel_base: int, channel_max: int) -> dict[int, int]:
    """Channels per resolution ``min(channel_max, channel_base // res)`` (rosinality's table for
    ``channel_base = 16384 * channel_multiplier``, ``channel_max = 512``)."""
    return {2**i: max(1, min(channel_max, channel_base // 2**i)) for i in range(2, int(math.log2(size)) + 1)}


class StyleGAN2Generator(nn.Module):
    """Mapping network + synthesis network; keys as rosinality's ``Generator`` (see the module docstring)."""

    def __init__(self, size: int, style_dim: int, n_mlp: int, channels: dict[int, int], img_channels: int = 3,
                 lr_mlp: float = 0.01) -> None:
        super().__init__()
        if size < 4 or size & (size - 1):
            raise ValueError(f"StyleGAN2 size must be a power of two >= 4, got {size}")
        self.size, self.style_dim, self.n_mlp, self.img_channels = size, style_dim, n_mlp, img_channels
        self.channels = dict(channels)
        self.style = nn.Sequential(PixelNorm(), *[EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activate=True)
                                                  for _ in range(n_mlp)])
        self.input = ConstantInput(channels[4])
        self.conv1 = StyledConv(channels[4], channels[4], style_dim)
        self.to_rgb1 = ToRGB(channels[4], style_dim, img_channels, upsample=False)
        self.log_size = int(math.log2(size))
        self.convs, self.to_rgbs, self.noises = nn.ModuleList(), nn.ModuleList(), nn.Module()
        self.num_layers = (self.log_size - 2) * 2 + 1
        for i in range(self.num_layers):
            r = 2 ** ((i + 5) // 2)
            self.noises.register_buffer(f"noise_{i}", torch.randn(1, 1, r, r))
        cin = channels[4]
        for i in range(3, self.log_size + 1):
            cout = channels[2**i]
            self.convs.append(StyledConv(cin, cout, style_dim, upsample=True))
            self.convs.append(StyledConv(cout, cout, style_dim))
            self.to_rgbs.append(ToRGB(cout, style_dim, img_channels))
            cin = cout
        self.num_ws = self.log_size * 2 - 2

    def mapping(self, z: Tensor) -> Tensor:
        return self.style(z)

    def synthesis(self, ws: Tensor, noise: str = "const", generator: torch.Generator | None = None) -> Tensor:
        """Images from ``ws`` of shape ``(B, num_ws, D)`` (or ``(B, D)``, broadcast); ``noise``: ``"const"`` (the
        stored maps), ``"random"`` (fresh per sample, from ``generator``) or ``"none"``."""
        if ws.dim() == 2:
            ws = ws.unsqueeze(1).expand(-1, self.num_ws, -1)
        b = ws.shape[0]

        def noise_map(i: int) -> Tensor:
            const: Tensor = getattr(self.noises, f"noise_{i}")
            if noise == "const":
                return const.to(ws.dtype)
            if noise == "none":
                return torch.zeros_like(const, dtype=ws.dtype)
            return torch.randn((b, *const.shape[1:]), generator=generator).to(ws.device, ws.dtype)

        x = self.conv1(self.input(b).to(ws.dtype), ws[:, 0], noise_map(0))
        skip = self.to_rgb1(x, ws[:, 1])
        i = 1
        for k, to_rgb in enumerate(self.to_rgbs):
            x = self.convs[2 * k](x, ws[:, i], noise_map(i))
            x = self.convs[2 * k + 1](x, ws[:, i + 1], noise_map(i + 1))
            skip = to_rgb(x, ws[:, i + 2], skip)
            i += 2
        return skip

    def forward(self, z: Tensor, noise: str = "const", generator: torch.Generator | None = None) -> Tensor:
        return self.synthesis(self.mapping(z), noise, generator)

    @torch.no_grad()
    def mean_style(self, n: int = 4096, seed: int = 0) -> Tensor:
        z = torch.randn((n, self.style_dim), generator=torch.Generator().manual_seed(seed))
        return self.mapping(z.to(self.input.input.device)).mean(0)


def to_image(raw: Tensor, image_shape: tuple[int, int, int], crop: float = 1.0, clamp: bool = True) -> Tensor:
    """Generator output (roughly ``[-1, 1]``) -> the prior's image space: center crop, resize, channels, ``[0, 1]``."""
    c, h, w = image_shape
    if crop < 1.0:
        side = raw.shape[-1]
        keep = max(1, round(side * crop))
        top = (side - keep) // 2
        raw = raw[..., top : top + keep, top : top + keep]
    if tuple(raw.shape[-2:]) != (h, w):
        down = raw.shape[-1] > w
        raw = F.interpolate(raw, size=(h, w), mode="bilinear", align_corners=False, antialias=down)
    if raw.shape[1] != c:
        raw = raw.mean(1, keepdim=True) if c == 1 else raw[:, :1].expand(-1, c, -1, -1)
    x = (raw + 1) / 2
    return x.clamp(0.0, 1.0) if clamp else x


# ------------------------------------------------------------------------------------------------ discriminator
class EqualConv(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k))
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        self.scale, self.k = 1 / math.sqrt(cin * k * k), k

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.k // 2)


class DBlock(nn.Module):
    """Residual block: two 3x3 convs + leaky ReLU, 2x average-pool down; a 1x1 skip; sum / sqrt(2)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1, self.conv2, self.skip = EqualConv(cin, cin, 3), EqualConv(cin, cout, 3), EqualConv(cin, cout, 1, False)

    def forward(self, x: Tensor) -> Tensor:
        y = F.leaky_relu(self.conv1(x), 0.2) * SQRT2
        y = F.avg_pool2d(F.leaky_relu(self.conv2(y), 0.2) * SQRT2, 2)
        return (y + F.avg_pool2d(self.skip(x), 2)) / SQRT2


class StyleGAN2Discriminator(nn.Module):
    """A small residual StyleGAN2-style discriminator on ``size`` x ``size`` images in ``[-1, 1]``."""

    def __init__(self, size: int, img_channels: int, channels: dict[int, int]) -> None:
        super().__init__()
        self.size = size
        self.from_rgb = EqualConv(img_channels, channels[size], 1)
        blocks, res = [], size
        while res > 4:
            blocks.append(DBlock(channels[res], channels[res // 2]))
            res //= 2
        self.blocks = nn.Sequential(*blocks)
        c4 = channels[4]
        self.final_conv = EqualConv(c4 + 1, c4, 3)
        self.final_linear = nn.Sequential(EqualLinear(c4 * 16, c4, activate=True), EqualLinear(c4, 1))

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        h = F.leaky_relu(self.from_rgb(x), 0.2) * SQRT2
        h = self.blocks(h)
        group = min(4, h.shape[0])  # minibatch standard deviation over groups of up to 4
        if h.shape[0] % group:
            group = 1
        std = h.reshape(group, -1, *h.shape[1:]).var(0, unbiased=False).add(1e-8).sqrt().mean((1, 2, 3))
        std = std.view(-1, 1, 1, 1).repeat(group, 1, *h.shape[2:])
        h = F.leaky_relu(self.final_conv(torch.cat([h, std], 1)), 0.2) * SQRT2
        return self.final_linear(h.flatten(1)).squeeze(1)


# ------------------------------------------------------------------------------------------------ weights files
def _shapes(path: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise DataNotFoundError(f"StyleGAN2 weights file not found: {path} (a safetensors file with a "
                                "rosinality/stylegan2-pytorch g_ema state; see `invertkit show prior stylegan2`)")
    try:
        with safe_open(str(path), framework="pt") as fh:
            return {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a valid safetensors file: {exc}") from None


def architecture_from_file(path: str | Path) -> dict:
    """``size``, ``style_dim``, ``n_mlp``, ``channels`` and ``img_channels`` of the generator in ``path``."""
    path = Path(path)
    shapes = _shapes(path)
    needed = ["style.1.weight", "input.input", "to_rgb1.bias", "conv1.conv.weight"]
    missing = [k for k in needed if k not in shapes]
    if missing:
        raise CheckpointError(f"{path} is not a StyleGAN2 g_ema state in rosinality/stylegan2-pytorch's key layout "
                              f"(missing {', '.join(missing)}; it has {', '.join(sorted(shapes)[:4])}...)")
    n_mlp = max(int(m.group(1)) for k in shapes if (m := re.fullmatch(r"style\.(\d+)\.weight", k)))
    n_rgbs = len({m.group(1) for k in shapes if (m := re.fullmatch(r"to_rgbs\.(\d+)\.bias", k))})
    size = 2 ** (n_rgbs + 2)
    channels = {4: shapes["input.input"][1]}
    for k in range(n_rgbs):
        key = f"convs.{2 * k}.conv.weight"
        if key not in shapes:
            raise CheckpointError(f"{path}: StyleGAN2 state has to_rgbs.{k} but no '{key}'")
        channels[2 ** (k + 3)] = shapes[key][1]
    return {"size": size, "style_dim": shapes["style.1.weight"][1], "n_mlp": n_mlp, "channels": channels,
            "img_channels": shapes["to_rgb1.bias"][1]}


def load_generator(path: str | Path) -> StyleGAN2Generator:
    """A :class:`StyleGAN2Generator` built to the file's shapes and loaded from it (strict)."""
    from invertkit.core.cache import load_into

    arch = architecture_from_file(path)
    gen = StyleGAN2Generator(arch["size"], arch["style_dim"], arch["n_mlp"], arch["channels"], arch["img_channels"])
    return load_into(gen, path)


def save_generator(path: str | Path, gen: StyleGAN2Generator) -> None:
    """Write ``gen`` as a weights file this prior loads (the rosinality key layout, safetensors)."""
    from safetensors.torch import save_file

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in gen.state_dict().items()}, str(path))


# ------------------------------------------------------------------------------------------------ the prior
class StyleGAN2Prior(Prior):
    """``z ~ N(0, I)`` -> ``w`` (mapping) -> image; attacks may optimise ``w`` (``decode_style``)."""

    name = "stylegan2"
    has_style_space = True

    def __init__(self, generator: StyleGAN2Generator, image_shape: tuple[int, int, int], *, crop: float = 1.0,
                 discriminator: StyleGAN2Discriminator | None = None) -> None:
        self.generator = generator.eval().requires_grad_(False)
        self.discriminator = discriminator.eval().requires_grad_(False) if discriminator is not None else None
        self.has_discriminator = discriminator is not None  # type: ignore[misc]
        self.crop = float(crop)
        self.image_shape = tuple(int(s) for s in image_shape)  # type: ignore[assignment]
        self.latent_shape = (generator.style_dim,)
        self._w_avg = generator.mean_style()

    @property
    def device(self) -> torch.device:
        return self.generator.input.input.device

    @property
    def style_shape(self) -> tuple[int, ...]:
        return (self.generator.style_dim,)

    @property
    def num_styles(self) -> int:
        return self.generator.num_ws

    def to_style(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.generator.mapping(z)

    def style_mean(self) -> Tensor:
        return self._w_avg.to(self.device)

    def decode_style(self, w: Tensor, labels: Tensor | None = None) -> Tensor:
        return to_image(self.generator.synthesis(w, "const"), self.image_shape, self.crop)

    def decode(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.decode_style(self.to_style(z))

    def realism(self, x: Tensor) -> Tensor:
        if self.discriminator is None:
            return super().realism(x)
        return self.discriminator(x * 2 - 1)


class StyleGAN2Builder(PriorBuilder):
    name = "stylegan2"
    summary = "StyleGAN2 (mapping z->w, modulated convs): trained on the public split, or a user's g_ema weights."
    paper = "https://arxiv.org/abs/1912.04958"
    #: a discriminator only when trained here (a user's g_ema weights come without one), so not promised
    provides = frozenset({PriorFeature.STYLE_SPACE})

    class Config(ComponentConfig):
        weights: str | None = Field(None, description="safetensors file with a StyleGAN2 g_ema state in "
                                    "rosinality/stylegan2-pytorch's key layout (architecture read from it); "
                                    "None: train on the public split")
        crop: float = Field(1.0, gt=0, le=1, description="center-crop fraction of the generator output before "
                                                       "resizing to the image (PPA on FFHQ 1024 px: 800/1024)")
        style_dim: int = Field(64, ge=2, description="z and w size (StyleGAN2: 512; CPU default 64)")
        n_mlp: int = Field(4, ge=1, description="mapping layers (StyleGAN2: 8; CPU default 4)")
        channel_base: int = Field(1024, ge=4, description="channels at resolution r: min(channel_max, "
                                  "channel_base // r) (StyleGAN2 config-f: 32768; CPU default 1024)")
        channel_max: int = Field(64, ge=1, description="most channels per layer (StyleGAN2: 512; CPU default 64)")
        steps: int = Field(1500, ge=1, description="training steps (generator updates)")
        batch_size: int = Field(32, ge=2, description="images per step (StyleGAN2: 32)")
        lr: float = Field(0.002, gt=0, description="Adam learning rate (StyleGAN2: 0.002)")
        beta2: float = Field(0.99, ge=0, lt=1, description="Adam beta2 (StyleGAN2: 0.99; beta1 is 0)")
        r1_gamma: float = Field(10.0, ge=0, description="R1 penalty weight gamma (rosinality default: 10)")
        d_reg_every: int = Field(16, ge=1, description="lazy R1: every this many steps, scaled by it (16)")
        ema_half_life: float = Field(10_000.0, gt=0, description="half-life of the generator average in images "
                                     "(StyleGAN2: 10k)")

    # ------------------------------------------------------------------ networks
    def _size(self, image_shape: tuple[int, int, int]) -> int:
        return max(4, 2 ** math.ceil(math.log2(max(image_shape[1:]))))

    def networks(self, image_shape: tuple[int, int, int]) -> dict[str, nn.Module]:
        cfg = self.config
        self._image_shape = tuple(int(s) for s in image_shape)  # wrap() decodes to this shape
        if cfg.weights is not None:
            arch = architecture_from_file(cfg.weights)
            return {"g_ema": StyleGAN2Generator(arch["size"], arch["style_dim"], arch["n_mlp"], arch["channels"],
                                                arch["img_channels"])}
        size = self._size(image_shape)
        channels = default_channels(size, cfg.channel_base, cfg.channel_max)
        return {
            "g_ema": StyleGAN2Generator(size, cfg.style_dim, cfg.n_mlp, channels, image_shape[0]),
            "discriminator": StyleGAN2Discriminator(size, image_shape[0], channels),
        }

    # ------------------------------------------------------------------ training
    def train(self, nets: dict[str, nn.Module], public_images: Tensor, *, seed: int, progress=None,  # noqa: ANN001
              target: nn.Module | None = None) -> dict:
        cfg = self.config
        t0 = time.perf_counter()
        g_ema: StyleGAN2Generator = nets["g_ema"]  # type: ignore[assignment]
        if cfg.weights is not None:
            from invertkit.core.cache import load_into

            load_into(g_ema, cfg.weights)
            g_ema.eval()
            return {"seconds": time.perf_counter() - t0, "weights": str(cfg.weights), "trained": False}
        D: StyleGAN2Discriminator = nets["discriminator"].train()  # type: ignore[assignment]
        g = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        G = copy.deepcopy(g_ema).train().requires_grad_(True)
        g_ema.requires_grad_(False)
        ratio = cfg.d_reg_every / (cfg.d_reg_every + 1)
        opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=(0.0, cfg.beta2))
        opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr * ratio, betas=(0.0, cfg.beta2**ratio))
        image_shape = tuple(public_images.shape[1:])
        beta = 0.5 ** (cfg.batch_size / cfg.ema_half_life)
        n, bs = len(public_images), cfg.batch_size
        nan = torch.tensor(float("nan"))
        d_loss = g_loss = r1 = nan  # detached tensors: read once at the end, no host sync per step
        params_ema, params_g = list(g_ema.parameters()), list(G.parameters())

        def fake(batch: int) -> Tensor:
            z = torch.randn((batch, G.style_dim), generator=g)
            return to_image(G(z, "random", g), image_shape, 1.0, clamp=False) * 2 - 1  # type: ignore[arg-type]

        for step in range(cfg.steps):
            real = public_images[torch.randint(0, n, (bs,), generator=g)] * 2 - 1
            # discriminator: non-saturating logistic loss
            G.requires_grad_(False)
            D.requires_grad_(True)
            loss_d = F.softplus(D(fake(bs).detach())).mean() + F.softplus(-D(real)).mean()
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            d_loss = loss_d.detach()
            if cfg.r1_gamma > 0 and step % cfg.d_reg_every == 0:  # lazy R1 on real images
                real_r = real.detach().requires_grad_(True)
                grad = torch.autograd.grad(D(real_r).sum(), real_r, create_graph=True)[0]
                penalty = grad.pow(2).flatten(1).sum(1).mean()
                opt_d.zero_grad(set_to_none=True)
                (cfg.r1_gamma / 2 * penalty * cfg.d_reg_every).backward()
                opt_d.step()
                r1 = penalty.detach()
            # generator: non-saturating loss
            G.requires_grad_(True)
            D.requires_grad_(False)
            loss_g = F.softplus(-D(fake(bs))).mean()
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            g_loss = loss_g.detach()
            with torch.no_grad():
                torch._foreach_lerp_(params_ema, params_g, 1 - beta)
                for be, b in zip(g_ema.buffers(), G.buffers()):
                    be.copy_(b)
            if progress is not None and (step + 1) % 50 == 0:
                progress(step + 1, cfg.steps, float(g_loss))
        g_ema.eval()
        D.eval().requires_grad_(False)
        return {"seconds": time.perf_counter() - t0, "steps": cfg.steps, "d_loss": float(d_loss), "g_loss": float(g_loss),
                "r1": float(r1), "trained": True}

    def wrap(self, nets: dict[str, nn.Module]) -> Prior:
        gen: StyleGAN2Generator = nets["g_ema"]  # type: ignore[assignment]
        image_shape = getattr(self, "_image_shape", None)
        disc = nets.get("discriminator")
        if image_shape is None:  # the image shape the networks were made for
            image_shape = (disc.from_rgb.weight.shape[1] if disc is not None else gen.img_channels, gen.size, gen.size)
        return StyleGAN2Prior(gen, image_shape, crop=self.config.crop, discriminator=disc)  # type: ignore[arg-type]


@hookimpl
def invertkit_register_priors(register) -> None:
    register(StyleGAN2Builder)
