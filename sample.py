"""Sampling from a trained RGM generator (Algorithm 3) and the paper's figures; the scores come from metrics.py.

    python sample.py --ckpt runs/kld_d/checkpoints/ckpt_00200000.pt   # 64 samples -> a PNG grid (the path is printed)
    python sample.py --ckpt netG_1200.pth --authors-config cifar10 --figures    # the authors' released generator
    python sample.py --ckpt runs/fashion_kld/checkpoints/ckpt_00004000.pt --n 10000 --figures   # FD, class shares
    torchrun --nproc_per_node 8 sample.py --ckpt ckpt.pt --num-samples 50000 --batch-size 500 --format npz --fid --is
                                                      # FID, KID, precision / recall (Inception features) and IS

Samples come in chunks of --batch-size; chunk c is drawn with its own random generator seeded from
(--seed, c), so the images depend on --seed and --batch-size, never on the number of processes.
"""
import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torchvision
from PIL import Image
from tqdm import tqdm

import cli
import data
import metrics
import models
from schedules import sample_ddim, sample_ddpm, sample_rgm, schedule_of


# ----------------------------------------------------------------------------
# Algorithm 3 in chunks, one random generator per chunk, chunks shared out over the processes.

def chunk_generator(seed, chunk, device='cpu'):
    """The random generator of chunk `chunk`: an independent stream derived from (seed, chunk)."""
    state = int(np.random.SeedSequence([seed, chunk]).generate_state(1)[0])
    return torch.Generator(device=device).manual_seed(state)


@torch.no_grad()
def draw(G, schedule, meta, shape, generator=None, noise_scale=0.999, steps=None, trajectory=False, clip_x0=True):
    """Samples (B, C, H, W) in [-1, 1] of any checkpoint (or [x_K, ..., x_0]): Algorithm 3 for RGM and
    MMSE models; for a DDPM, ancestral sampling over all its levels, or DDIM over `steps` of them.

    A DDPM's predicted x0 is clamped to the image range [-1, 1] at every step (`clip_x0`), as its
    authors sample it: Ho et al.'s released sampler clips by default (clip_denoised=True), and so do
    common DDPM / DDIM implementations (clip_sample=True). A baseline sampled without it is weaker than
    its authors' own, which would flatter RGM in a comparison. RGM and MMSE models are not touched."""
    device = next(G.parameters()).device
    if meta.get('prior') == 'ddpm':
        kw = dict(device=device, generator=generator, trajectory=trajectory, clip_x0=clip_x0)
        return sample_ddim(G, schedule, shape, steps, **kw) if steps else sample_ddpm(G, schedule, shape, **kw)
    return sample_rgm(G, schedule, shape, meta['nz'], device=device, posterior=meta['posterior'],
                      noise_scale=noise_scale, generator=generator, trajectory=trajectory)


def nfe(meta, schedule, steps=None):
    """Network evaluations per sample: K (RGM, MMSE, DDPM ancestral) or the DDIM steps."""
    return steps if meta.get('prior') == 'ddpm' and steps else schedule.K


def check_steps(meta, steps, K):
    """--steps is DDIM's subsequence of a DDPM's levels; an RGM or MMSE model samples its trained K levels."""
    if steps is None:
        return
    if meta.get('prior') != 'ddpm':
        raise ValueError(f"--steps chooses how many of a DDPM's levels DDIM visits; this is an "
                         f"{label_of(meta)} model, whose {K} levels are fixed by its training: drop --steps")
    if not 1 <= steps <= K:
        raise ValueError(f'--steps must lie in 1..{K} (the DDPM\'s levels), got {steps}')


@torch.no_grad()
def generate(G, schedule, meta, n, batch_size=64, seed=0, noise_scale=0.999, rank=0, world_size=1, progress=False,
             steps=None, clip_x0=True):
    """n samples as uint8 (n, C, H, W) on rank 0 (None on the others). Chunk c holds samples
    c*batch_size ... and is drawn by process c % world_size; rank 0 gathers them in order."""
    device = next(G.parameters()).device
    shape = (meta['channels'], meta['image_size'], meta['image_size'])
    chunks = math.ceil(n / batch_size)
    size = lambda c: max(0, min(batch_size, n - c * batch_size))       # samples in chunk c
    out = []
    with tqdm(total=n, unit='img', disable=not progress) as bar:
        for first in range(0, chunks, world_size):                     # one chunk per process per round
            c = first + rank
            x = torch.zeros(batch_size, *shape, dtype=torch.uint8, device=device)
            if size(c):
                x0 = draw(G, schedule, meta, (size(c), *shape), chunk_generator(seed, c, device), noise_scale,
                          steps, clip_x0=clip_x0)                                # (B, C, H, W) in [-1, 1]
                x[:size(c)] = models.to_uint8(x0)
            parts = [x]
            if world_size > 1:
                parts = [torch.empty_like(x) for _ in range(world_size)]
                dist.all_gather(parts, x)
            out += [part[:size(first + r)].cpu() for r, part in enumerate(parts)] if rank == 0 else []
            bar.update(sum(size(first + r) for r in range(world_size)))
    return torch.cat(out) if rank == 0 else None


def save_grid(images, path, nrow=None):
    """uint8 images (N, C, H, W) -> one PNG grid, nrow images per row (default: a square)."""
    grid = torchvision.utils.make_grid(images, nrow=nrow or math.ceil(math.sqrt(len(images))), padding=2)
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(path)


def write_samples(images, out, fmt):
    """Write uint8 samples as one grid, PNG files or an npz (never a lossy format: it biases FID)."""
    if fmt == 'png':
        (out / 'png').mkdir(exist_ok=True)
        for i, image in enumerate(images.permute(0, 2, 3, 1).numpy()):            # (H, W, C)
            Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(out / 'png' / f'{i:06d}.png')
        return out / 'png'
    if fmt == 'npz':    # key arr_0, (N, H, W, C): the layout of OpenAI's guided-diffusion evaluator
        np.savez(out / 'samples.npz', arr_0=images.permute(0, 2, 3, 1).numpy())
        return out / 'samples.npz'
    save_grid(images, out / 'samples.png')
    return out / 'samples.png'


# ----------------------------------------------------------------------------
# Figures: the sampling trajectory, and the role of z (paper Figure 5).

def thin(xs, n=11):
    """At most n evenly spaced states of a trajectory, first and last kept (a DDPM's has 1001)."""
    return xs if len(xs) <= n else [xs[round(i * (len(xs) - 1) / (n - 1))] for i in range(n)]


@torch.no_grad()
def trajectory_figure(G, schedule, meta, path, n=8, generator=None, noise_scale=0.999, steps=None, clip_x0=True):
    """One row per sample: x_K, ..., x_0 of Algorithm 3 (a DDPM's: 11 evenly spaced states of its
    sampler). Returns the list [x_K, ..., x_0]."""
    shape = (n, meta['channels'], meta['image_size'], meta['image_size'])
    xs = draw(G, schedule, meta, shape, generator, noise_scale, steps, trajectory=True, clip_x0=clip_x0)
    xs = thin(xs)
    save_grid(models.to_uint8(torch.stack(xs, 1).flatten(0, 1)).cpu(), path, nrow=len(xs))   # (n (K+1), C, H, W)
    return xs


@torch.no_grad()
def z_figure(G, schedule, meta, x0, path, n_z=4, generator=None):
    """The role of z: the forward trajectory x_1..x_K of one image x0 (1, C, H, W), one shared noise,
    each x_k restored as G(x_k, k-1, z) with n_z different z. Row k: x_k, then the restorations.
    Returns the spread of the restorations (per-pixel std across z, averaged), one value per level."""
    eps = torch.randn(x0.shape, device=x0.device, generator=generator)
    rows, spread = [], []
    for k in range(1, schedule.K + 1):
        x_k = schedule.sample(x0, k, noise=eps)                                   # (1, C, H, W)
        z = torch.randn(n_z, meta['nz'], device=x0.device, generator=generator)
        level = torch.full((n_z,), k - 1, dtype=torch.long, device=x0.device)
        x0_hat = G(x_k.expand(n_z, -1, -1, -1), level, z)          # G sees x_k and is told the target level k-1
        rows += [x_k, x0_hat]
        spread.append(x0_hat.std(0).mean())
    save_grid(models.to_uint8(torch.cat(rows)).cpu(), path, nrow=1 + n_z)
    return torch.stack(spread)


def versus_figure(columns, trajectories, path, nrow=8):
    """Side by side: one grid per column {title: uint8 (n, C, H, W)}, and below them one trajectory
    x_K, ..., x_0 per model {title: list of (C, H, W) in [-1, 1]}."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig = plt.figure(figsize=(3.2 * len(columns), 3.6 + 0.9 * len(trajectories)))
    grid = fig.add_gridspec(1 + len(trajectories), len(columns), height_ratios=[4] + [1] * len(trajectories))
    as_rgb = lambda img: img.permute(1, 2, 0).numpy().squeeze(-1) if img.shape[0] == 1 else img.permute(1, 2, 0).numpy()
    for j, (title, images) in enumerate(columns.items()):
        ax = fig.add_subplot(grid[0, j])
        ax.imshow(as_rgb(torchvision.utils.make_grid(images, nrow=nrow, padding=1)), cmap='gray', vmin=0, vmax=255)
        ax.set_title(title)
        ax.axis('off')
    for i, (title, xs) in enumerate(trajectories.items()):
        ax = fig.add_subplot(grid[1 + i, :])
        row = models.to_uint8(torch.stack(xs)).cpu()
        ax.imshow(as_rgb(torchvision.utils.make_grid(row, nrow=len(xs), padding=1)), cmap='gray', vmin=0, vmax=255)
        ax.set_title(f'{title}: x_{len(xs) - 1} ... x_0', fontsize=9)
        ax.axis('off')
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


# ----------------------------------------------------------------------------
# Command line.

def main(args):
    wall = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    rank, world_size, device = cli.init_distributed(args.device, cli.LONG_TIMEOUT)   # rank 0 caches statistics
    master = rank == 0
    G, meta = cli.load_generator(args, device)
    nhwc = device.type == 'cpu' if args.channels_last is None else args.channels_last
    if nhwc:    # the convolutions (most of the time) run faster on a CPU; the same samples up to fp32 rounding
        G = G.to(memory_format=torch.channels_last)
    if args.compile:            # faster sampling on CPU and GPU (bench/sampling.py); compiles on the first chunk
        G = torch.compile(G)
    schedule = schedule_of(meta, device)
    schedule.check_shape((1, meta['channels'], meta['image_size'], meta['image_size']))
    check_steps(meta, args.steps, schedule.K)
    versus = open_versus(args.versus, meta, device) if args.versus else None      # checked before any work
    out = Path(args.out or default_out(args.ckpt))
    cli.prepare_out(str(out), OUTPUTS, args.overwrite, 'sample.py run', remove=False)     # refuse before any work
    scores = metrics.Scores(meta, args.n, args.fid, args.is_, args.reference, not args.no_fd, args.classifier,
                            args.data_dir, args.inception_weights, args.fid_cache,
                            batch_size=min(args.batch_size, 250), device=device)  # Inception runs at 299 px
    summary = dict(ckpt=str(args.ckpt), ema=not args.no_ema, schedule=meta['schedule'], nfe=nfe(meta, schedule, args.steps),
                   posterior=meta['posterior'], noise_scale=args.noise_scale, seed=args.seed, n=args.n, steps=args.steps,
                   clip_x0=meta.get('prior') == 'ddpm' and not args.no_clip_x0,     # a DDPM's x0_hat clamped
                   batch_size=args.batch_size, world_size=world_size, device=str(device),
                   channels_last=nhwc,
                   threads=torch.get_num_threads())     # CPU threads per process: the speed depends on them
    if master:
        summary.update(scores.prepare())
    if world_size > 1:
        dist.barrier()

    # ---- sampling (Algorithm 3), sharded over the processes ----
    if master:
        cli.prepare_out(str(out), OUTPUTS, args.overwrite, 'sample.py run')
        out.mkdir(parents=True, exist_ok=True)
        how = '' if meta.get('prior') != 'ddpm' else f', DDIM over {args.steps} levels' if args.steps else ', ancestral'
        print(f"sampling {args.n} images with {label_of(meta)}{how} (NFE {summary['nfe']}) "
              f'on {world_size} process(es), {device}')
    tic = time.perf_counter()
    images = generate(G, schedule, meta, args.n, args.batch_size, args.seed, args.noise_scale, rank, world_size,
                      progress=master, steps=args.steps, clip_x0=not args.no_clip_x0)
    if device.type == 'cuda':
        torch.cuda.synchronize()
    summary.update(sampling_seconds=time.perf_counter() - tic)
    if world_size > 1:
        dist.destroy_process_group()
    if not master:
        return

    # ---- outputs, figures, metrics (rank 0) ----
    summary.update(write_outputs(G, schedule, meta, images, args, out, device, versus))
    summary.update(scores(images))
    summary.update(images_per_second=args.n / summary['sampling_seconds'], wall_seconds=time.perf_counter() - wall)
    cli.write_json(out / 'metrics.json', summary)
    inception = ('fid', 'kid_mean', 'kid_std', 'precision', 'recall') if 'fid' in summary else ()   # else: printed above
    shown = [f'{k} {summary[k]:{".5f" if k.startswith("kid") else ".3f"}}'
             for k in (*inception, 'is_mean', 'is_std') if k in summary]
    print(' | '.join(shown + [f"NFE {summary['nfe']}", f'{args.n} samples',
                              f"{summary['images_per_second']:.1f} images/s",
                              f"wall {summary['wall_seconds']:.1f} s"]) + f" -> {out / 'metrics.json'}")


def default_out(ckpt):
    """The default --out: samples_<checkpoint name>/ beside the checkpoint, one folder per checkpoint."""
    return Path(ckpt).resolve().parent / f'samples_{Path(ckpt).stem}'


def write_outputs(G, schedule, meta, images, args, out, device, versus=None):
    """The samples in --format (and a 64-image grid), the figures asked for; returns summary entries."""
    summary = {}
    print(f'wrote {write_samples(images, out, args.format)}')
    if args.format != 'grid':
        save_grid(images[:64], out / 'samples.png')
    if args.figures:
        gen = chunk_generator(args.seed, 0, device)
        xs = trajectory_figure(G, schedule, meta, out / 'trajectory.png', n=8, generator=gen,
                               noise_scale=args.noise_scale, steps=args.steps, clip_x0=not args.no_clip_x0)
        print(f"wrote {out / 'trajectory.png'}")
        if meta['nz'] > 0:          # an MMSE model has no z
            spread = z_figure(G, schedule, meta, xs[-1][:1], out / 'z_role.png', n_z=4, generator=gen)
            summary.update(z_spread_per_level=spread.tolist())
            print(f"wrote {out / 'z_role.png'}; spread of G(x_k, k-1, z) across z, "
                  'k = 1..K: ' + ' '.join(f'{s:.3f}' for s in spread.tolist()))
    if versus:
        write_versus(G, schedule, meta, *versus, args, device, out, n=min(args.n, 64))
    return summary


OUTPUTS = ('samples.png', 'png', 'samples.npz', 'metrics.json', 'trajectory.png', 'z_role.png', 'versus.png')


def open_versus(path, meta, device):
    """(G2, meta2) of the --versus checkpoint, refused unless it makes images of this model's shape."""
    G2, meta2 = models.open_generator(path, device)
    if (meta2['channels'], meta2['image_size']) != (meta['channels'], meta['image_size']):
        raise ValueError(f"--versus {path} makes {meta2['channels']}x{meta2['image_size']}px images, "
                         f"this model {meta['channels']}x{meta['image_size']}px")
    return G2, meta2


@torch.no_grad()
def write_versus(G, schedule, meta, G2, meta2, args, device, out, n=64):
    """versus.png: n images of this model and of the --versus checkpoint (G2, meta2) side by side, the
    same seed for both (the same start noise x_K), real test images first for Fashion-MNIST models, and
    one trajectory each."""
    schedule2 = schedule_of(meta2, device)
    columns, trajectories = {}, {}
    if meta.get('dataset') == 'fashion_mnist':
        columns['real (test set)'] = data.FashionMNIST(args.data_dir or 'data', train=False).images[:n]
    names = [label_of(meta), label_of(meta2)]
    if names[0] == names[1]:
        names = [f'{names[0]} ({Path(args.ckpt).name})', f'{names[1]} ({Path(args.versus).name})']
    for name, (net, sched, m) in zip(names, [(G, schedule, meta), (G2, schedule2, meta2)]):
        shape = (n, m['channels'], m['image_size'], m['image_size'])
        steps = args.steps if m.get('prior') == 'ddpm' else None
        print(f'versus.png: {n} images of {name} (NFE {nfe(m, sched, steps)})', flush=True)
        xs = draw(net, sched, m, shape, chunk_generator(args.seed, 0, device), args.noise_scale,
                  steps, trajectory=True, clip_x0=not args.no_clip_x0)
        xs = thin(xs)
        columns[name] = models.to_uint8(xs[-1]).cpu()
        trajectories[name] = [x[0] for x in xs]
    versus_figure(columns, trajectories, out / 'versus.png')
    print(f"wrote {out / 'versus.png'}")


def label_of(meta):
    """'RGM-KLD-D K=4', 'MMSE K=4', ... from a checkpoint's meta."""
    prior = meta.get('prior', 'kld')
    if prior == 'ddpm':
        return f"DDPM ({meta['K']} levels)"
    return (f"RGM-{prior.upper()}" if prior != 'mmse' else 'MMSE') + f"-{meta['schedule'].upper()} K={meta['K']}"


def build_parser():
    p = argparse.ArgumentParser(description='Sample from an RGM generator (Algorithm 3); figures; FID and IS.')
    cli.add_generator_args(p)
    p.add_argument('--n', '--num-samples', dest='n', type=cli.positive_int, default=64,
                   help='number of samples (under torchrun write --num-samples: torchrun takes --n for its own)')
    p.add_argument('--batch-size', type=cli.positive_int, default=64,
                   help='samples per chunk and per network call; with --seed it fixes the images')
    p.add_argument('--seed', type=cli.seed, default=0)
    p.add_argument('--steps', type=cli.positive_int, help="DDPM checkpoints: DDIM (eta 0) over this many evenly spaced "
                   "levels (default: ancestral sampling over all of them); RGM models sample their trained K levels")
    p.add_argument('--no-clip-x0', action='store_true', help="DDPM checkpoints: do not clamp the predicted x0 to "
                   "[-1, 1] at each step (clamped by default, as Ho et al.'s sampler does)")
    p.add_argument('--noise-scale', type=cli.nonnegative_float, default=0.999, help='scale of the fresh forward noise (authors 0.999; posterior-trained models draw from q(x_k | x_{k+1}, x0_hat) unscaled)')
    p.add_argument('--device', default=cli.DEFAULT_DEVICE)
    p.add_argument('--threads', type=cli.nonnegative_int, default=0,
                   help="CPU threads per process (0 = torch's default); metrics.json records them beside the speed")
    p.add_argument('--out', help='output folder (default: samples_<checkpoint name>/ beside the checkpoint); one '
                                 'that holds files needs --overwrite')
    p.add_argument('--overwrite', action='store_true',
                   help="replace an earlier run's outputs in --out (" + ', '.join(OUTPUTS) + ')')
    p.add_argument('--format', default='grid', choices=['grid', 'png', 'npz'],
                   help='one PNG grid, one PNG per sample, or samples.npz (uint8); never JPEG')
    p.add_argument('--channels-last', action=argparse.BooleanOptionalAction, default=None,
                   help='the generator in NHWC layout (default: on a CPU, where it samples faster; '
                   'bench/sampling.py --modes eager channels_last)')
    p.add_argument('--compile', action='store_true', help='torch.compile the generator (bench/sampling.py, 2-core '
                   'CPU: 1.35-1.45x the NHWC default, after a compilation of a few seconds; needs a C++ compiler)')
    p.add_argument('--figures', action='store_true', help='also write trajectory.png and z_role.png')
    p.add_argument('--versus', metavar='CKPT', help='also write versus.png: this model beside another checkpoint '
                                                    '(e.g. the MMSE baseline), same seed, min(--n, 64) images and '
                                                    'one trajectory each')
    p.add_argument('--fid', action='store_true', help='FID against the --reference set, with KID and precision / recall '
                                                     '(k = 3) in the same Inception features')
    p.add_argument('--is', dest='is_', action='store_true', help='Inception Score')
    p.add_argument('--reference', help='cifar10 (training set) or a folder of images (default: the checkpoint\'s '
                                       'data set when that is cifar10)')
    p.add_argument('--inception-weights', help=f'local copy of {metrics.URL_INCEPTION_V3} (for machines without internet)')
    p.add_argument('--data-dir', help="where torch-fidelity keeps CIFAR-10 (default $TORCH_HOME/fidelity_datasets); "
                                      "for Fashion-MNIST models, its files (default data/, see data.py)")
    p.add_argument('--no-fd', action='store_true',
                   help='Fashion-MNIST models: skip the classifier Frechet distance and class shares (on by default)')
    p.add_argument('--classifier', default=metrics.DEFAULT_CLASSIFIER,
                   help='Fashion-MNIST classifier file (the default is trained on the training split and written '
                        'there if absent; another path must exist: metrics.py --train-classifier trains one)')
    p.add_argument('--fid-cache', help='cache of reference statistics (default $TORCH_HOME/fidelity_cache)')
    return p


if __name__ == '__main__':
    cli.run_main(main, build_parser().parse_args())
