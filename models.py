"""Networks for RGM: the toy MLPs of the 2D experiment and the image networks.

Generators are called as ``G(x_next, k, z)``: ``x_next`` is the degraded sample at level
k+1 and ``k`` the *target* level (an int64 tensor of shape (B,)); G returns an estimate
of the clean sample x0. Discriminators are called as ``D(x_k, k)`` on samples of level k.
"""
import argparse
import functools
import glob
import math
import os
import tempfile
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn


# ----------------------------------------------------------------------------
# Toy networks (paper Appendix B.3): 3 hidden layers of 32 units with Tanh.

def _mlp(n_in, n_out, hidden=32, layers=3):
    dims = [n_in] + [hidden] * layers
    body = []
    for a, b in zip(dims[:-1], dims[1:]):
        body += [nn.Linear(a, b), nn.Tanh()]
    return nn.Sequential(*body, nn.Linear(dims[-1], n_out))


class ToyGenerator(nn.Module):
    """G(x_{k+1}, k, z) -> x0_hat for 2D points; input is [x, k/K, z]."""

    def __init__(self,
        dim     = 2,    # Dimension of the data points.
        K       = 4,    # Number of degradation steps (k is fed as k / K).
        nz      = 2,    # Latent dimension; 0 gives a deterministic G (MMSE baseline, no-z ablation).
        hidden  = 32,   # Units per hidden layer.
    ):
        super().__init__()
        self.dim, self.K, self.nz = dim, K, nz
        self.net = _mlp(dim + 1 + nz, dim, hidden)

    def forward(self, x_next, k, z=None):
        k = (k.float() / self.K)[:, None]                           # (B, 1)
        if self.nz > 0:
            if z is None:
                z = torch.randn(x_next.shape[0], self.nz, device=x_next.device)
            return self.net(torch.cat([x_next, k, z], dim=1))
        return self.net(torch.cat([x_next, k], dim=1))


class ToyDiscriminator(nn.Module):
    """D(x_k, k) -> logit for 2D points; input is [x, k/K]."""

    def __init__(self,
        dim     = 2,    # Dimension of the data points.
        K       = 4,    # Number of degradation steps (k is fed as k / K).
        hidden  = 32,   # Units per hidden layer.
    ):
        super().__init__()
        self.K = K
        self.net = _mlp(dim + 1, 1, hidden)

    def forward(self, x, k):
        k = (k.float() / self.K)[:, None]                           # (B, 1)
        return self.net(torch.cat([x, k], dim=1)).squeeze(1)        # (B,)


# ----------------------------------------------------------------------------
# Image networks (paper Section 5, Appendix B.1): DDGAN's NCSN++ generator with a latent z,
# the small (32 px) and large (256 px) discriminators, and DSWD's TransformNet.
#
# G(x_next, k, z): x_next = x_{k+1} is the more degraded image, k the *target* level (int64,
# shape (B,)), z ~ N(0, I) of shape (B, nz); G returns an estimate of x0 in [-1, 1].
# Sampling runs k = K-1 ... 0, calling G(x_{k+1}, k, z). D(x_k, k) -> (logit (B,), features),
# features being the 4x4 map before the minibatch-std channel (used by the MMD/DSWD priors).
#
# The layers mirror the authors' networks one to one (same parameters, same initialisation),
# so `convert_authors_generator` / `convert_authors_discriminator` load their checkpoints.
# Their CUDA-compiled FIR resampling is a depthwise (transposed) convolution here, so the
# networks run on any device, under bfloat16 autocast, with channels_last and torch.compile.
# PyTorch cannot differentiate twice through a compiled graph: compute the R1 penalty with
# the uncompiled D (torch.compile(D) shares its parameters).


def _init(layer, scale=1.0, chunks=1, fan='avg'):
    """The authors' initialisation: weights U(-a, a), biases zero, scale 0 meaning 1e-10. They use
    two rules, and so do we, layer by layer as they do:
      fan='avg'  DDPM's variance scaling (the NCSN++ body):  a^2 = 3 scale / ((fan_in + fan_out) / 2);
      fan='out'  their StyleGAN-style dense/conv helpers (the mapping network, the style layers of
                 the adaptive group norms, every discriminator layer). These mean to use fan_avg too
                 but compute fan_out:  a^2 = 3 scale / max(1, fan_out).
    fan_in = in_features (x kernel area), fan_out = out_features (x kernel area). `chunks`
    initialises stacked layers (q, k, v) as separate square ones."""
    for w in layer.weight.data.chunk(chunks):
        if fan == 'avg':
            nn.init.xavier_uniform_(w, gain=math.sqrt(scale or 1e-10))
        elif fan == 'out':
            bound = math.sqrt(3 * (scale or 1e-10) / max(1, w.shape[0] * math.prod(w.shape[2:])))
            nn.init.uniform_(w, -bound, bound)
        else:
            raise ValueError(f"fan must be 'avg' or 'out', got {fan!r}")
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


def _groups(ch):
    """Group count of every generator group norm: min(ch / 4, 32)."""
    return min(ch // 4, 32)


def timestep_embedding(k, dim, max_period=10000):
    """Sinusoidal embedding of integer levels: [sin(k f_j), cos(k f_j)], f_j = max_period^(-j / (dim/2 - 1))."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=k.device) * (-math.log(max_period) / (half - 1)))
    arg = k.float()[:, None] * freqs[None]                                  # (B, dim/2)
    return torch.cat([arg.sin(), arg.cos()], dim=1)                         # (B, dim)


def fir_kernel():
    """The 2D FIR filter outer(f, f) with f = [1, 3, 3, 1] / 8, shaped (1, 1, 4, 4); it sums to 1."""
    f = torch.tensor([1., 3., 3., 1.]) / 8
    return torch.outer(f, f)[None, None]


def fir_downsample(x, fir):
    """Blur with `fir` and keep every second pixel: upfirdn2d(x, fir, down=2, pad=(1, 1))."""
    C = x.shape[1]
    return F.conv2d(x, fir.to(x.dtype).expand(C, 1, 4, 4), stride=2, padding=1, groups=C)


def fir_upsample(x, fir):
    """Insert zeros between pixels and blur with 4 fir: upfirdn2d(x, 4 fir, up=2, pad=(2, 1))."""
    C = x.shape[1]
    return F.conv_transpose2d(x, 4 * fir.to(x.dtype).expand(C, 1, 4, 4), stride=2, padding=1, groups=C)


class PixelNorm(nn.Module):
    """z / rms(z) over the latent dimension."""

    def forward(self, z):
        return z * torch.rsqrt(z.square().mean(dim=1, keepdim=True) + 1e-8)


class AdaGN(nn.Module):
    """Adaptive group norm: gamma(z) * GroupNorm(x) + beta(z), gamma starting at 1."""

    def __init__(self, ch, z_emb_dim):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(ch), ch, eps=1e-6, affine=False)
        self.style = _init(nn.Linear(z_emb_dim, 2 * ch), fan='out')
        self.style.bias.data[:ch] = 1

    def forward(self, x, zemb):
        gamma, beta = self.style(zemb)[:, :, None, None].chunk(2, dim=1)    # (B, C, 1, 1) each
        return gamma * self.norm(x) + beta


class SelfAttention(nn.Module):
    """Single-head self-attention over all positions, (x + attn(x)) / sqrt(2)."""

    def __init__(self, ch):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(ch), ch, eps=1e-6)
        self.qkv = _init(nn.Conv2d(ch, 3 * ch, 1), scale=0.1, chunks=3)
        self.proj = _init(nn.Conv2d(ch, ch, 1), scale=0)

    def forward(self, x):
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, 1, C, H * W).transpose(-1, -2).unbind(1)  # (B, 1, HW, C)
        h = F.scaled_dot_product_attention(q, k, v)                         # logits scaled by C^-1/2
        return (x + self.proj(h.transpose(-1, -2).reshape(B, C, H, W))) / math.sqrt(2)


class ResBlock(nn.Module):
    """BigGAN-style residual block of NCSN++: AdaGN(z), optional FIR up/down-sampling, a per-channel
    bias from the k embedding, skip rescaling by 1/sqrt(2), then optional self-attention."""

    def __init__(self, in_ch, out_ch, emb_dim, z_emb_dim, up=False, down=False, attention=False, dropout=0.0):
        super().__init__()
        self.up, self.down = up, down
        self.norm0 = AdaGN(in_ch, z_emb_dim)
        self.conv0 = _init(nn.Conv2d(in_ch, out_ch, 3, padding=1))
        self.dense_k = _init(nn.Linear(emb_dim, out_ch))
        self.norm1 = AdaGN(out_ch, z_emb_dim)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = _init(nn.Conv2d(out_ch, out_ch, 3, padding=1), scale=0)
        self.skip = _init(nn.Conv2d(in_ch, out_ch, 1)) if in_ch != out_ch or up or down else None
        self.attn = SelfAttention(out_ch) if attention else None
        if up or down:
            self.register_buffer('fir', fir_kernel(), persistent=False)

    def forward(self, x, temb, zemb):
        h = F.silu(self.norm0(x, zemb))
        if self.up:
            h, x = fir_upsample(h, self.fir), fir_upsample(x, self.fir)
        if self.down:
            h, x = fir_downsample(h, self.fir), fir_downsample(x, self.fir)
        h = self.conv0(h) + self.dense_k(temb)[:, :, None, None]
        h = self.conv1(self.dropout(F.silu(self.norm1(h, zemb))))
        x = x if self.skip is None else self.skip(x)
        h = (x + h) / math.sqrt(2)
        return h if self.attn is None else self.attn(h)


class PyramidDown(nn.Module):
    """Progressive input ('residual'): FIR blur, then a 3x3 convolution at stride 2."""

    def __init__(self, in_ch, out_ch):
        super().__init__()
        self.conv = _init(nn.Conv2d(in_ch, out_ch, 3, stride=2))
        self.register_buffer('fir', fir_kernel(), persistent=False)

    def forward(self, x):
        C = x.shape[1]
        return self.conv(F.conv2d(x, self.fir.to(x.dtype).expand(C, 1, 4, 4), padding=2, groups=C))


class NCSNpp(nn.Module):
    """NCSN++ generator with a latent z (DDGAN): G(x_next, k, z) -> estimate of x0 in [-1, 1]."""

    def __init__(self,
        image_size          = 32,           # Resolution of the images (divisible by 2^(len(ch_mult) - 1)).
        in_channels         = 3,            # Channels of x_next.
        out_channels        = 3,            # Channels of the estimate of x0.
        channels            = 128,          # Base width (the authors' num_channels_dae, nf).
        ch_mult             = (1, 2, 2, 2), # Width multiplier per resolution level.
        num_res_blocks      = 2,            # Res blocks per level in the encoder (one more in the decoder).
        attn_resolutions    = (16,),        # Resolutions with self-attention (the 4x4/8x8 middle always has it).
        dropout             = 0.0,          # Dropout inside the res blocks.
        nz                  = 100,          # Dimension of the latent z.
        z_emb_dim           = 256,          # Width of the mapping network and of the z embedding.
        n_mlp               = 4,            # Hidden layers of the mapping network (n_mlp + 1 Linear layers).
        out_tanh            = True,         # tanh on the output: an image in [-1, 1] (RGM, MMSE); off for a
                                            # DDPM's noise prediction, which must reach |eps| > 1.
    ):
        super().__init__()
        if image_size % 2 ** (len(ch_mult) - 1):
            raise ValueError(f'image_size {image_size} is not divisible by 2^{len(ch_mult) - 1} (ch_mult {ch_mult})')
        self.channels, self.nz, self.n_mlp, self.out_tanh = channels, nz, n_mlp, out_tanh
        emb_dim = 4 * channels
        block = dict(emb_dim=emb_dim, z_emb_dim=z_emb_dim, dropout=dropout)

        # Mapping network: PixelNorm, then Linear + SiLU layers (StyleGAN). With nz = 0 (no z: the MMSE
        # baseline, the z ablation) its first layer has no weights and the style is a learned constant.
        layers = [PixelNorm()]
        with warnings.catch_warnings():
            warnings.filterwarnings('ignore', 'Initializing zero-element tensors')     # nn.Linear(0, ...)
            for d_in in [nz] + [z_emb_dim] * n_mlp:
                layers += [_init(nn.Linear(d_in, z_emb_dim), fan='out'), nn.SiLU()]
        self.map_z = nn.Sequential(*layers)
        # k embedding: sinusoids, Linear, SiLU, Linear.
        self.map_k = nn.Sequential(_init(nn.Linear(channels, emb_dim)), nn.SiLU(), _init(nn.Linear(emb_dim, emb_dim)))

        # Encoder: res blocks per level, then a down block and the input-pyramid conv.
        self.conv_in = _init(nn.Conv2d(in_channels, channels, 3, padding=1))
        self.enc = nn.ModuleDict()
        cin, cpyr, skips = channels, in_channels, [channels]
        for level, mult in enumerate(ch_mult):
            res, cout = image_size >> level, channels * mult
            for i in range(num_res_blocks):
                self.enc[f'{res}x{res}_block{i}'] = ResBlock(cin, cout, attention=res in attn_resolutions, **block)
                cin = cout
                skips.append(cout)
            if level < len(ch_mult) - 1:
                self.enc[f'{res // 2}x{res // 2}_down'] = ResBlock(cin, cin, down=True, **block)
                self.enc[f'{res // 2}x{res // 2}_pyramid'] = PyramidDown(cpyr, cin)
                cpyr = cin
                skips.append(cin)

        # Decoder: the middle, then per level num_res_blocks + 1 blocks on [h, skip] and an up block.
        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(ch_mult))):
            res, cout = image_size >> level, channels * mult
            if level == len(ch_mult) - 1:
                self.dec[f'{res}x{res}_mid0'] = ResBlock(cin, cin, attention=True, **block)
                self.dec[f'{res}x{res}_mid1'] = ResBlock(cin, cin, **block)
            else:
                self.dec[f'{res}x{res}_up'] = ResBlock(cin, cin, up=True, **block)
            for i in range(num_res_blocks + 1):
                attention = res in attn_resolutions and i == num_res_blocks   # once per level, after its blocks
                self.dec[f'{res}x{res}_block{i}'] = ResBlock(cin + skips.pop(), cout, attention=attention, **block)
                cin = cout
        self.norm_out = nn.GroupNorm(_groups(cin), cin, eps=1e-6)
        self.conv_out = _init(nn.Conv2d(cin, out_channels, 3, padding=1), scale=0)

    def forward(self, x_next, k, z=None):
        """x_next: (B, C, H, W) images of level k+1; k: (B,) int64 target levels; z: (B, nz), drawn if None."""
        if z is None:
            z = torch.randn(x_next.shape[0], self.nz, device=x_next.device, dtype=x_next.dtype)
        zemb = self.map_z(z)                                                          # (B, z_emb_dim)
        temb = F.silu(self.map_k(timestep_embedding(k, self.channels).to(x_next.dtype)))  # (B, 4 channels)

        h = self.conv_in(x_next)
        x_pyr, skips = x_next, [h]
        for name, block in self.enc.items():
            if name.endswith('pyramid'):                      # add the down-sampled input pyramid
                h = x_pyr = (block(x_pyr) + h) / math.sqrt(2)
                skips.append(h)
            else:
                h = block(h, temb, zemb)
                if not name.endswith('down'):
                    skips.append(h)
        for name, block in self.dec.items():
            if 'block' in name:
                h = torch.cat([h, skips.pop()], dim=1)
            h = block(h, temb, zemb)
        out = self.conv_out(F.silu(self.norm_out(h)))
        return torch.tanh(out) if self.out_tanh else out


def minibatch_std(x, group_size=4):
    """Append the minibatch-std channel (StyleGAN). The group size G is the largest divisor of the
    batch not above `group_size`; as in the authors' code, sample i joins group i mod (B / G)."""
    B, C, H, W = x.shape
    G = max(g for g in range(1, min(group_size, B) + 1) if B % g == 0)
    std = (x.reshape(G, B // G, C, H, W).var(0, unbiased=False) + 1e-8).sqrt().mean([1, 2, 3])  # (B/G,)
    return torch.cat([x, std.repeat(G)[:, None, None, None].expand(B, 1, H, W)], dim=1)


class DownBlock(nn.Module):
    """Discriminator block: conv, + k bias, (FIR down), conv, 1x1 skip, (h + skip) / sqrt(2)."""

    def __init__(self, in_ch, out_ch, emb_dim, down):
        super().__init__()
        self.down = down
        self.conv1 = _init(nn.Conv2d(in_ch, out_ch, 3, padding=1), fan='out')     # D: the fan_out rule (_init)
        self.dense_k = _init(nn.Linear(emb_dim, out_ch), fan='out')
        self.conv2 = _init(nn.Conv2d(out_ch, out_ch, 3, padding=1), scale=0, fan='out')
        self.skip = _init(nn.Conv2d(in_ch, out_ch, 1, bias=False), fan='out')
        if down:
            self.register_buffer('fir', fir_kernel(), persistent=False)

    def forward(self, x, emb):
        h = self.conv1(F.leaky_relu(x, 0.2)) + self.dense_k(emb)[:, :, None, None]
        h = F.leaky_relu(h, 0.2)
        if self.down:
            h, x = fir_downsample(h, self.fir), fir_downsample(x, self.fir)
        return (self.conv2(h) + self.skip(x)) / math.sqrt(2)


class Discriminator(nn.Module):
    """RGM/DDGAN discriminator D(x_k, k) -> (logit (B,), features (B, C, 4, 4)). The last
    log2(image_size / 4) blocks halve the resolution, so the features are always 4x4.
    The authors' `Discriminator_small` is ch_mult (2, 4, 8, 8) at 32 px (its first block keeps
    the resolution), their `Discriminator_large` ch_mult (4, 8, 8, 8, 8, 8) at 256 px."""

    def __init__(self,
        image_size          = 32,               # Resolution of the input images.
        in_channels         = 3,                # Channels of x_k.
        channels            = 64,               # Base width (the authors' ngf); the input conv gives 2 x channels.
        ch_mult             = (2, 4, 8, 8),     # Output width of each block, in units of `channels`.
        emb_dim             = 256,              # Width of the k embedding (the authors' t_emb_dim).
        group_size          = 4,                # Minibatch-std group size (a divisor of the batch, see minibatch_std).
        zero_final          = True,             # Start final_conv at ~0 (the authors' small D does, their large D not).
    ):
        super().__init__()
        n_down = (image_size // 4).bit_length() - 1                          # halvings down to 4x4
        if image_size != 4 * 2 ** n_down or n_down > len(ch_mult):
            raise ValueError(f'image_size {image_size} must be 4 * 2^n with n <= len(ch_mult) = {len(ch_mult)}')
        self.emb_dim, self.group_size = emb_dim, group_size
        dense = functools.partial(_init, fan='out')                         # every D layer: the fan_out rule
        self.map_k = nn.Sequential(dense(nn.Linear(emb_dim, emb_dim)), nn.LeakyReLU(0.2), dense(nn.Linear(emb_dim, emb_dim)))
        self.conv_in = dense(nn.Conv2d(in_channels, 2 * channels, 1))
        widths = [2 * channels] + [channels * m for m in ch_mult]
        self.blocks = nn.ModuleList(
            DownBlock(widths[i], widths[i + 1], emb_dim, down=i >= len(ch_mult) - n_down) for i in range(len(ch_mult)))
        self.conv_out = dense(nn.Conv2d(widths[-1] + 1, widths[-1], 3, padding=1), scale=0 if zero_final else 1)
        self.linear_out = dense(nn.Linear(widths[-1], 1))                  # fan_out 1: U(-sqrt 3, sqrt 3)

    def forward(self, x_k, k):
        emb = F.leaky_relu(self.map_k(timestep_embedding(k, self.emb_dim).to(x_k.dtype)), 0.2)
        h = self.conv_in(x_k)
        for block in self.blocks:
            h = block(h, emb)
        features = h                                                        # (B, ch_mult[-1] channels, 4, 4)
        h = F.leaky_relu(self.conv_out(minibatch_std(h, self.group_size)), 0.2)
        return self.linear_out(h.sum(dim=[2, 3])).squeeze(1), features


class TransformNet(nn.Module):
    """DSWD's learned projections: Linear(dim, dim), then each row scaled to unit length.
    dim is the size of the flattened 4 x 4 discriminator features it projects: 8192 (512 x 4 x 4) for the
    paper's discriminators (CIFAR-10, 256 px), 1024 (64 x 4 x 4) for the fashion and tiny ones."""

    def __init__(self, dim=8192):
        super().__init__()
        self.linear = nn.Linear(dim, dim)

    def forward(self, theta):
        theta = self.linear(theta)                                          # (num_projections, dim)
        return theta / theta.norm(dim=1, keepdim=True)


# ----------------------------------------------------------------------------
# Named configurations (paper Appendix B.1; the authors' README commands) and a builder.

_D_SMALL = dict(ch_mult=(2, 4, 8, 8), zero_final=True)
_D_LARGE = dict(ch_mult=(4, 8, 8, 8, 8, 8), zero_final=False)

CONFIGS = {
    'tiny': dict(       # CPU tests; the same widths as the parity fixture's networks.
        G=dict(image_size=32, channels=16, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
               nz=8, z_emb_dim=16, n_mlp=2),
        D=dict(image_size=32, channels=8, emb_dim=16, **_D_SMALL)),
    'cifar10': dict(
        G=dict(image_size=32, channels=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
               nz=100, z_emb_dim=256, n_mlp=4),
        D=dict(image_size=32, channels=64, emb_dim=256, **_D_SMALL)),
    'celeba256': dict(
        G=dict(image_size=256, channels=64, ch_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2, attn_resolutions=(16,),
               nz=100, z_emb_dim=256, n_mlp=3),
        D=dict(image_size=256, channels=64, emb_dim=256, **_D_LARGE)),
}
CONFIGS['lsun256'] = CONFIGS['celeba256']
# Fashion-MNIST (one channel, 28 x 28 padded to 32) on a CPU: 0.45M-parameter G, three levels, one res
# block, no attention at 16 px; a discriminator with the small D's layout at a width that costs no more.
CONFIGS['fashion'] = dict(
    G=dict(image_size=32, in_channels=1, out_channels=1, channels=16, ch_mult=(1, 2, 2), num_res_blocks=1,
           attn_resolutions=(), nz=32, z_emb_dim=64, n_mlp=2),
    D=dict(image_size=32, in_channels=1, channels=8, emb_dim=64, **_D_SMALL))


def build_networks(config, G_kwargs=None, D_kwargs=None):
    """(G, D) of a named configuration; G_kwargs / D_kwargs override its constructor arguments,
    e.g. build_networks('tiny', G_kwargs=dict(dropout=0.1)). Build under `with torch.device(...)`
    to place them (the 'meta' device builds without memory)."""
    if config not in CONFIGS:
        raise KeyError(f'unknown configuration {config!r}; choose from {sorted(CONFIGS)}')
    return (NCSNpp(**{**CONFIGS[config]['G'], **(G_kwargs or {})}),
            Discriminator(**{**CONFIGS[config]['D'], **(D_kwargs or {})}))


# ----------------------------------------------------------------------------
# Converters from the authors' state dicts (Jae-Moo/RGM checkpoints, `module.` prefix or not).
# Usage: G.load_state_dict(convert_authors_generator(G, torch.load('netG_1200.pth')))

def _convert(net, theirs, rules):
    """Apply `rules` {our key: (their keys, transform or None)}; every key on both sides is used
    exactly once and every shape must match, else fail naming what differs."""
    theirs = {key.removeprefix('module.'): value for key, value in theirs.items()}
    ours = net.state_dict()
    assert set(rules) == set(ours), 'converter rules do not cover the network'   # our own bug if raised
    wanted = [key for src, _ in rules.values() for key in src]
    missing, unexpected = [k for k in wanted if k not in theirs], sorted(set(theirs) - set(wanted))
    if missing or unexpected:
        raise KeyError(f'the state dict does not fit {type(net).__name__}: {len(missing)} keys missing '
                       f'{missing[:5]}, {len(unexpected)} unexpected {unexpected[:5]}. Was it saved from '
                       f'the authors\' network with the same configuration (ch_mult, n_mlp, ...)?')
    out, bad = {}, []
    for key, (src, fn) in rules.items():
        tensors = [theirs[s] for s in src]
        out[key] = fn(*tensors) if fn else tensors[0]
        if out[key].shape != ours[key].shape:
            bad.append(f'{src[0]} {[tuple(t.shape) for t in tensors]} -> {key} {tuple(ours[key].shape)}')
    if bad:
        raise ValueError(f'{len(bad)} shapes do not match {type(net).__name__} (wrong configuration?): '
                         + '; '.join(bad[:5]))
    return out


def convert_authors_generator(G, state_dict):
    """State dict for our NCSNpp `G` from the authors' NCSNpp (`netG_*.pth`, or content.pth's
    'netG_dict'). Their attention NIN weights are (in, out) matrices: transposed into 1x1 convs."""
    rules = {}

    def same(ours, theirs, names=('weight', 'bias')):
        rules.update({f'{ours}.{n}': ([f'{theirs}.{n}'], None) for n in names})

    for i in range(1, 2 * G.n_mlp + 2, 2):                  # z_transform: PixelNorm, (Linear, SiLU) x (n_mlp + 1)
        same(f'map_z.{i}', f'z_transform.{i}')
    prefix = (f'all_modules.{i}' for i in range(10 ** 6))   # their flat module list, in forward order
    same('map_k.0', next(prefix))
    same('map_k.2', next(prefix))
    same('conv_in', next(prefix))
    for ours, block in [(f'enc.{n}', b) for n, b in G.enc.items()] + [(f'dec.{n}', b) for n, b in G.dec.items()]:
        p = next(prefix)
        if isinstance(block, PyramidDown):
            same(f'{ours}.conv', f'{p}.Conv2d_0')
            continue
        same(f'{ours}.norm0.style', f'{p}.GroupNorm_0.style')
        same(f'{ours}.conv0', f'{p}.Conv_0')
        same(f'{ours}.dense_k', f'{p}.Dense_0')
        same(f'{ours}.norm1.style', f'{p}.GroupNorm_1.style')
        same(f'{ours}.conv1', f'{p}.Conv_1')
        if block.skip is not None:
            same(f'{ours}.skip', f'{p}.Conv_2')
        if block.attn is not None:                           # their attention is the next module
            p = next(prefix)
            same(f'{ours}.attn.norm', f'{p}.GroupNorm_0')
            rules[f'{ours}.attn.qkv.weight'] = ([f'{p}.NIN_{j}.W' for j in range(3)],
                                                lambda *W: torch.cat([w.t() for w in W])[:, :, None, None])
            rules[f'{ours}.attn.qkv.bias'] = ([f'{p}.NIN_{j}.b' for j in range(3)], lambda *b: torch.cat(b))
            rules[f'{ours}.attn.proj.weight'] = ([f'{p}.NIN_3.W'], lambda W: W.t()[:, :, None, None])
            rules[f'{ours}.attn.proj.bias'] = ([f'{p}.NIN_3.b'], None)
    same('norm_out', next(prefix))
    same('conv_out', next(prefix))
    return _convert(G, state_dict, rules)


def convert_authors_discriminator(D, state_dict):
    """State dict for our Discriminator `D` from the authors' Discriminator_small / _large
    (content.pth's 'netD_dict')."""
    rules = {}

    def same(ours, theirs, names=('weight', 'bias')):
        rules.update({f'{ours}.{n}': ([f'{theirs}.{n}'], None) for n in names})

    same('map_k.0', 't_embed.main.0')
    same('map_k.2', 't_embed.main.2')
    same('conv_in', 'start_conv')
    for i in range(len(D.blocks)):
        same(f'blocks.{i}.conv1', f'conv{i + 1}.conv1.0')
        same(f'blocks.{i}.dense_k', f'conv{i + 1}.dense_t1')
        same(f'blocks.{i}.conv2', f'conv{i + 1}.conv2.0')
        same(f'blocks.{i}.skip', f'conv{i + 1}.skip.0', names=('weight',))
    same('conv_out', 'final_conv')
    same('linear_out', 'end_linear')
    return _convert(D, state_dict, rules)


# ----------------------------------------------------------------------------
# Checkpoints: plain dicts of tensors, numbers, strings, lists and dicts, so that
# torch.load(weights_only=True) reads them. Every network is rebuilt from the constructor
# arguments stored beside its weights; no script types an architecture twice.
#
#   format      'rgm-v1'
#   G_kwargs    NCSNpp(**G_kwargs);  D_kwargs: Discriminator(**D_kwargs)
#   meta        schedule, K, discretisation, posterior, nz, image_size, channels (+ prior, ...)
#   G, G_ema, D, transform   state dicts (transform: DSWD's TransformNet, or absent)
#   + whatever the trainer needs to resume (optimisers, schedulers, step, epoch, config)

CKPT_FORMAT = 'rgm-v1'


@torch.no_grad()
def ema_update(ema_params, params, decay):
    """The EMA of a generator's weights, every tensor at once: p_ema <- decay p_ema + (1 - decay) p."""
    torch._foreach_lerp_(list(ema_params), list(params), 1 - decay)


def save_checkpoint(ckpt, path):
    """Write atomically: a temporary file in the same folder, then a rename, so a crash never
    leaves a half-written checkpoint under `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix='.tmp-', suffix='.pt')
    try:
        with os.fdopen(fd, 'wb') as f:
            torch.save(ckpt, f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)       # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def check_is_file(path, what='checkpoint'):
    """Refuse a path that is not a file: a folder names the checkpoint files it (or its checkpoints/) holds."""
    if os.path.isdir(path):
        found = sorted(os.path.relpath(p, path) for folder in (path, os.path.join(path, 'checkpoints'))
                       for ext in ('*.pt', '*.pth') for p in glob.glob(os.path.join(glob.escape(folder), ext)))
        listing = (f'give one of its files: {", ".join(found[:10])}' + (' ...' if len(found) > 10 else '')
                   if found else 'it holds no .pt or .pth file')
        raise IsADirectoryError(f'{what} {str(path)!r} is a folder, not a file: {listing}')
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{what} {str(path)!r} does not exist')


def check_keys(ckpt, path, keys, needed_by):
    """Refuse a checkpoint that lacks one of `keys`, naming the file and what it lacks."""
    missing = [key for key in keys if key not in ckpt]
    if missing:
        raise ValueError(f'{str(path)!r} lacks {", ".join(map(repr, missing))}, which {needed_by} needs: it was '
                         'not written whole by train_images.py or models.export_generator')


def load_checkpoint(path, map_location='cpu'):
    """Read one of our checkpoints with weights_only=True; clear errors for missing, corrupt
    or foreign files."""
    check_is_file(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:      # torch raises several types for truncated or foreign files
        raise RuntimeError(f'{path!r} is not a readable checkpoint ({type(e).__name__}: {e}): the file is '
                           'truncated (a copy or save cut short) or is not a PyTorch checkpoint') from e
    if not isinstance(ckpt, dict) or ckpt.get('format') != CKPT_FORMAT:
        hint = (' It looks like the authors\' generator file: pass --authors-config with its configuration '
                f'({", ".join(sorted(CONFIGS))}) to sample.py or pnp.py.' if isinstance(ckpt, dict) and
                any(k.startswith(('module.', 'conv_map', 'all_modules')) or k == 'netG_dict' for k in ckpt) else '')
        raise ValueError(f'{path!r} is not an rgm checkpoint (format {CKPT_FORMAT!r}).{hint}')
    return ckpt


def load_generator(path, device='cpu', ema=True):
    """Rebuild G from a checkpoint alone: returns (G in eval mode, meta)."""
    ckpt = load_checkpoint(path)
    check_keys(ckpt, path, ('G_kwargs', 'meta'), 'rebuilding the generator')
    key = 'G_ema' if ema else 'G'
    if ckpt.get(key) is None:
        raise KeyError(f'{path!r} holds no {"EMA " if ema else ""}generator weights ({key!r}); '
                       + ('use the raw weights (--no-ema in sample.py and pnp.py)' if ema else
                          'use its EMA weights: drop --no-ema (an exported generator holds only those)'))
    G = NCSNpp(**ckpt['G_kwargs'])
    state = {name: v.float() if v.is_floating_point() else v for name, v in ckpt[key].items()}    # fp16 exports
    check_finite(state, f'{path!r} ({key})')
    try:
        G.load_state_dict(state)
    except RuntimeError as e:
        raise RuntimeError(f'{path!r}: weights do not fit the stored configuration: {e}') from e
    return G.to(device).eval().requires_grad_(False), dict(ckpt['meta'])


def first_non_finite(state):
    """The name of the first floating-point tensor of a state dict that holds NaN or inf, or None;
    one device sync for the whole dict."""
    named = [(name, v) for name, v in state.items() if torch.is_tensor(v) and v.is_floating_point()]
    if not named:
        return None
    finite = torch.stack([v.isfinite().all() for _, v in named]).tolist()
    return next((name for (name, _), ok in zip(named, finite) if not ok), None)


def check_finite(state, where):
    """Refuse a state dict with a NaN or inf weight, naming the first such tensor: a generator with
    one would write black images and normal-looking scores."""
    name = first_non_finite(state)
    if name is not None:
        v = state[name]
        raise ValueError(f'{where} holds non-finite weights: {name} has {(~torch.isfinite(v)).sum().item()} NaN/inf '
                         f'value(s) of {v.numel()}; the training that wrote it diverged (use an earlier checkpoint)')


def export_generator(ckpt, path, half=True, seconds_per_step=None):
    """Write what sampling and plug-and-play need of a training checkpoint (a dict as load_checkpoint
    returns): the EMA generator (fp16 storage when `half`, restored to fp32 by load_generator), its
    constructor arguments, meta and the step; no raw G, no discriminator, no optimiser state; and, when
    given, the training's measured seconds per step (for the tables' training minutes).
    Written atomically like every checkpoint; loads with load_generator."""
    check_finite(ckpt['G_ema'], 'the checkpoint\'s EMA generator')
    weights = {name: v.half() if half and v.is_floating_point() else v for name, v in ckpt['G_ema'].items()}
    save_checkpoint(dict(format=CKPT_FORMAT, G_kwargs=ckpt['G_kwargs'], D_kwargs=None, meta=ckpt['meta'],
                         G_ema=weights, step=ckpt.get('step'), exported='fp16' if half else 'fp32',
                         seconds_per_step=seconds_per_step), path)


def load_authors_generator(path, config, device='cpu', schedule='d', K=4, discretisation='original'):
    """Rebuild G from the authors' released generator (netG_*.pth, or content.pth's 'netG_dict')
    for a named configuration: returns (G in eval mode, meta) like load_generator. Their files do
    not record the forward process, so it is named by the caller."""
    if config not in CONFIGS:
        raise KeyError(f'unknown configuration {config!r}; choose from {sorted(CONFIGS)}')
    check_is_file(path, 'generator file')
    try:    # content.pth pickles the authors' argparse Namespace: allow that one class
        with torch.serialization.safe_globals([argparse.Namespace]):
            state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:      # torch raises several types for truncated or foreign files
        raise RuntimeError(f'{path!r} is not a readable generator file ({type(e).__name__}: {e})') from e
    if not isinstance(state, dict):
        raise ValueError(f'{path!r} holds a {type(state).__name__}, not a generator state dict')
    if state.get('format') == CKPT_FORMAT:
        raise ValueError(f'{path!r} is one of our checkpoints, not an authors\' file: load it without a configuration')
    G = NCSNpp(**CONFIGS[config]['G'])
    converted = convert_authors_generator(G, state.get('netG_dict', state))
    check_finite(converted, repr(path))
    G.load_state_dict(converted)
    meta = dict(schedule=schedule, K=K, discretisation=discretisation, posterior=False, nz=G.nz,
                image_size=CONFIGS[config]['G']['image_size'], channels=CONFIGS[config]['G'].get('in_channels', 3))
    return G.to(device).eval().requires_grad_(False), meta


def open_generator(path, device='cpu', ema=True, authors_config=None, schedule=None, K=None, discretisation=None):
    """(G, meta) for the command lines: our checkpoint (EMA weights unless ema=False), or the
    authors' generator file when `authors_config` names its configuration (their files do not
    record the forward process: schedule, K, discretisation default to d, 4, original)."""
    if authors_config is None:
        if (schedule, K, discretisation) != (None, None, None):
            raise ValueError('--schedule/--K/--discretisation only go with --authors-config: '
                             'our checkpoints record their forward process')
        return load_generator(path, device=device, ema=ema)
    if not ema:
        raise ValueError("--no-ema only applies to our checkpoints (the authors' netG_*.pth hold EMA weights)")
    return load_authors_generator(path, authors_config, device, schedule or 'd', K or 4, discretisation or 'original')


def to_uint8(x):
    """Images in [-1, 1] -> uint8 in 0..255, rounded as torchvision's save_image rounds, so PNG
    files, npz arrays and the images scored by FID hold the same values."""
    return ((x + 1) * 127.5 + 0.5).clamp(0, 255).to(torch.uint8)
