"""Train RGM on images (paper Section 5, Appendix B.2): one process, or many through torchrun.

    python train_images.py --preset tiny --out runs/tiny                      # CPU, fake data, ~1 min
    python train_images.py --preset fashion_kld_d --out runs/fashion_kld      # Fashion-MNIST on a 2-core CPU
    python train_images.py --preset fashion_mmse_d --out runs/fashion_mmse    # its MMSE baseline
    torchrun --nproc_per_node 8 train_images.py --preset cifar10_kld_d --out runs/kld_d
    torchrun --nproc_per_node 8 --max-restarts 3 train_images.py --preset cifar10_kld_sr --out runs/kld_sr
    torchrun --nproc_per_node 8 train_images.py --preset celeba256_kld_d --dataset lsun_church \
        --data-dir data/lsun --max-steps 300000 --out runs/church      # the paper's 300k steps on LSUN

Without --preset the defaults are those of cifar10_kld_d (RGM-KLD-D on CIFAR-10).

--batch-size is the global batch (the paper's 256 on CIFAR-10), split over the processes; MMD and
DSWD see the features of the whole global batch, as under the authors' DataParallel. The learning
rate follows the authors' cosine: from --lr-G / --lr-D down to --lr-min over --lr-tmax *epochs*
(their --schedule, CosineAnnealingLR stepped once per epoch), then stays at --lr-min. With their
T_max = 1800 epochs, CIFAR-10's 200k steps (~1025 epochs) end at ~43% of the starting rate.

The run directory (--out) holds config.json, log.jsonl (one JSON record per --log-every steps),
samples/ (EMA sample grids) and checkpoints/ (the latest --keep-ckpts, written atomically, in the
format of models.py). An --out that holds files is refused unless --resume continues that run (or
--resume PATH from one of its earlier checkpoints; the run's flags come from its config.json, and flags
given with --resume override them) or --overwrite starts over; a worker restarted by torchrun resumes by
itself.
--out must be on a file system that every node sees.
"""
import argparse
import contextlib
import copy
import dataclasses
import functools
import math
import os
import resource
import time
import warnings

# How long an idle OpenMP thread (torch's libgomp) spins before it sleeps. A training step runs
# thousands of small parallel regions: threads that sleep at once (OMP_WAIT_POLICY=PASSIVE) pay a
# wake-up at each, 1.6x slower alone on 2 cores; threads that spin long (libgomp's default, 300,000
# turns) take a core from any other program and lose up to 4x beside one. 1,000 turns is as fast as
# spinning alone and close to sleeping under load (docs/benchmarks.md, "Training under load"). Read
# when torch loads, so it is set before the import; a wait policy or spin count of the user's wins.
OPENMP_SPIN_TURNS = 1000
if 'OMP_WAIT_POLICY' not in os.environ:
    os.environ.setdefault('GOMP_SPINCOUNT', str(OPENMP_SPIN_TURNS))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torchvision  # noqa: E402
from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: E402
from tqdm import tqdm  # noqa: E402

import cli  # noqa: E402
import data  # noqa: E402
import losses  # noqa: E402
import models  # noqa: E402
from rundir import RUN_FILES, RunDir, checkpoints, out_lock  # noqa: E402,F401   (the run folder's life)
from schedules import SCHEDULES, make_schedule, sample_ddim, sample_rgm  # noqa: E402

ADAM_BETAS = (0.5, 0.9)             # Adam for G, D and the TransformNet (the authors')

# Paper settings (Appendix B.2-B.3; the authors' README commands and the paper's iteration counts).
# Flags given on the command line override them.
CIFAR10 = dict(dataset='cifar10', net='cifar10', batch_size=256, lr_G=1.6e-4, lr_D=1e-4, lam=1e-3,
               r1_gamma=0.02, lazy_reg=15, lr_tmax=1800, schedule='d', K=4, prior='kld')
PRESETS = {
    'cifar10_kld_d':   dict(CIFAR10, max_steps=200_000),                           # FID 3.04
    'cifar10_kld_sr':  dict(CIFAR10, schedule='sr', K=7, max_steps=230_000),       # FID 2.47
    'cifar10_dswd_d':  dict(CIFAR10, prior='dswd', dswd_projections=1000, dswd_steps=10, max_steps=150_000),
    # The authors pass --batch_size 32 to their DataParallel script: 32 is the global batch (4 per
    # V100 on 8), and ~650 epochs of the ~24k training images at 32 are the paper's 500k steps.
    'celeba256_kld_d': dict(dataset='celeba_hq', net='celeba256', batch_size=32, lr_G=2e-4, lr_D=1e-4,
                            lam=5e-5, r1_gamma=2.0, lazy_reg=10, lr_tmax=700, max_steps=500_000),
    'tiny':            dict(dataset='fake', fake_size=64, net='tiny', batch_size=8, lr_tmax=5, max_steps=40,
                            log_every=5, ckpt_every=20, sample_every=20, n_samples=16, workers=0,
                            dswd_projections=64),
}
# Fashion-MNIST on a 2-core CPU (docs/fashion_mnist.md, "Training time": bench/train_step.py timed the
# fashion_kld_d step at 359 to 916 ms alone on 2 threads, by the day's speed of the VM, so its 4,000 steps
# take 24 to 61 minutes): the 'fashion' networks
# (0.45M-parameter one-channel NCSN++, a discriminator of similar cost), a small batch for thousands of
# steps, Adam at 5e-4 for G and D without decay, and an EMA short enough to move within the run. The
# NHWC layout (channels_last) is faster for every Fashion preset's step on a CPU (docs/benchmarks.md).
FASHION = dict(dataset='fashion_mnist', net='fashion', batch_size=32, lr_G=5e-4, lr_D=5e-4, lam=1e-3,
               r1_gamma=0.02, lazy_reg=15, lr_tmax=0, ema_decay=0.995, schedule='d', K=4, max_steps=4000,
               workers=0, log_every=50, ckpt_every=1000, sample_every=500, threads=2, channels_last=True)
PRESETS.update({
    'fashion_kld_d':  dict(FASHION, prior='kld'),
    'fashion_kld_sr': dict(FASHION, prior='kld', schedule='sr', K=7),     # 32 -> 4 px, as cifar10_kld_sr
    # DSWD with 100 projections, not CIFAR-10's 1000: fitting 1000 directions of the 1024-d features for
    # 10 inner steps cost 0.94 s per prior call (one thread, measured), over an hour a run; 100 cost 0.10 s
    # (docs/fashion_mnist.md). Measured alone, the preset's step is 664 ms (KLD: 547 ms).
    'fashion_dswd_d': dict(FASHION, prior='dswd', dswd_projections=100, dswd_steps=10),
    'fashion_mmse_d': dict(FASHION, prior='mmse'),     # the MMSE baseline: same G (without z), K, steps, data
    # A standard DDPM with the same network (without z): noise prediction over 1000 levels of the same VP
    # process; 4,000 steps = the RGM presets' 128,000 training images (--max-steps 16000: 4x as many).
    'fashion_ddpm':   dict(FASHION, prior='ddpm', K=1000, sample_every=1000),
})
BASELINES = ('mmse', 'ddpm')          # trained without z and without a discriminator
PRIOR_CHOICES = sorted(losses.PRIORS) + list(BASELINES)


# ----------------------------------------------------------------------------
# Data (data.py builds the sets; the random horizontal flip happens on the device, in the loop).

class EpochSampler(torch.utils.data.Sampler):
    """This rank's share of a shuffled epoch (DistributedSampler), less its first `skip` indices,
    so that a run resumed mid-epoch sees the rest of that epoch's images in the same order."""

    def __init__(self, sampler):
        self.sampler, self.skip = sampler, 0

    def set_epoch(self, epoch, skip=0):
        self.sampler.set_epoch(epoch)
        self.skip = skip

    def __iter__(self):
        return iter(list(self.sampler)[self.skip:])

    def __len__(self):
        return len(self.sampler) - self.skip


def split_batch(batch_size, world_size, group_size):
    """The per-process batch, with the errors of a global batch that cannot be split."""
    if batch_size % world_size:
        raise ValueError(f'--batch-size {batch_size} is the global batch: it must divide over the '
                         f'{world_size} processes')
    local = batch_size // world_size
    if local % group_size:
        raise ValueError(f'the per-process batch {local} (= {batch_size} / {world_size} processes) is not '
                         f'divisible by the discriminator\'s minibatch-std group {group_size}')
    return local


CHECK_AUTO_MAX = 30_000         # --check-images auto: decode every file of folders up to this size


def check_folder(dataset, policy, skip, master):
    """Decode every image of a folder data set before training (policy 'all', or 'auto' for folders of
    up to CHECK_AUTO_MAX files) on rank 0, shared with the other ranks. Bad files stop the run, named,
    or with `skip` are dropped from the data set with a warning."""
    if policy == 'none' or (policy == 'auto' and len(dataset.files) > CHECK_AUTO_MAX):
        return
    bad = [data.check_images(dataset.files) if master else None]
    if dist.is_initialized():
        dist.broadcast_object_list(bad, src=0)
    bad = bad[0]
    if not bad:
        return
    listing = '; '.join(f'{path}: {reason}' for path, reason in bad[:10]) + (' ...' if len(bad) > 10 else '')
    if not skip:
        raise OSError(f'{len(bad)} of {len(dataset.files)} images cannot be read: {listing}. Remove or repair '
                      'them, or pass --skip-bad-images to train without them')
    dataset.files = [p for p in dataset.files if p not in {path for path, _ in bad}]
    if master:
        warnings.warn(f'--skip-bad-images: training without {len(bad)} unreadable images: {listing}')
    if not dataset.files:
        raise OSError('no readable image is left in the folder')


# ----------------------------------------------------------------------------
# One RGM iteration (Appendix B.2).

def make_prior(name, critic, features, device, bandwidths, projections, inner_steps, lr):
    """The generator's prior g_phi: the critic itself (KLD), or MMD / DSWD on D's `features` values
    per image (the flattened (C, 4, 4) map; DSWD learns its TransformNet with Adam at `lr`)."""
    if name == 'kld':
        return critic
    if name == 'mmd':
        return losses.MMD(bandwidths=bandwidths)
    if name != 'dswd':
        raise ValueError(f'unknown prior {name!r}: choose one of {sorted(losses.PRIORS)}')
    return losses.DSWD(models.TransformNet(features).to(device), num_projections=projections,
                       inner_steps=inner_steps, lr=lr, betas=ADAM_BETAS)


class _Gather(torch.autograd.Function):
    """All-gather along dim 0 whose backward sums every rank's gradient of the global batch and
    keeps this rank's slice (equal local batches on all ranks, as all_gather needs anyway)."""

    @staticmethod
    def forward(ctx, x):
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad.chunk(dist.get_world_size())[dist.get_rank()]


def gather(x):
    """Concatenate x over all ranks along dim 0, keeping gradients: every rank then computes MMD/DSWD
    on the global batch; the gather's backward sums each rank's gradient into the local slice,
    and DDP's averaging makes the generator's gradient that of the single-process global batch.
    (torch.distributed.nn.functional.all_gather does this too, but recent PyTorch deprecates it.)"""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return x
    return _Gather.apply(x.contiguous())


def prior_term(prior, D, x_k, x_k_hat, k, shared=None, autocast=contextlib.nullcontext):
    """g_phi(x_k_hat) of Eq. 8. KLD: -D(x_k_hat, k), batch mean (Eq. 7). MMD, DSWD: a distance between
    D's features of the real x_k and of the generated x_k_hat, over the global batch."""
    with autocast():
        if isinstance(prior, losses.KLD):
            return prior.generator_loss(D, x_k_hat, k).float().mean()
        with torch.no_grad():
            f_real = D(x_k, k)[1]                                     # (B, C, 4, 4)
        f_fake = D(x_k_hat, k)[1]
    f_real, f_fake = gather(f_real.flatten(1).float()), gather(f_fake.flatten(1).float())   # (B_global, F)
    if isinstance(prior, losses.DSWD):                              # same directions on every rank
        return prior(f_real, f_fake, generator=shared)
    return prior(f_real, f_fake)


@dataclasses.dataclass
class Critic:
    """The one discriminator D and the three ways a training step calls it. All three share D's
    weights; they differ only in wrappers, which is why there are three:
      train   the D step: DDP-wrapped under torchrun (averages D's gradients over the ranks) and
              compiled under --compile;
      r1      the D steps that add the R1 penalty: like `train` but never compiled, because PyTorch
              cannot differentiate twice through a compiled graph (R1 is a gradient of a gradient);
      frozen  the G step: D's weights are fixed there, so no DDP (it would wait for D's gradients,
              which never come); compiled under --compile.
    Critic(D) alone (one process, eager) uses D itself for all three."""
    D: torch.nn.Module
    train: torch.nn.Module = None
    r1: torch.nn.Module = None
    frozen: torch.nn.Module = None

    def __post_init__(self):
        self.train, self.r1, self.frozen = (v if v is not None else self.D for v in (self.train, self.r1, self.frozen))


@contextlib.contextmanager
def weights_frozen(net):
    """No gradient for net's weights inside (gradients still flow through it to its input)."""
    net.requires_grad_(False)
    try:
        yield
    finally:
        net.requires_grad_(True)


def train_step(G, D, opt_G, opt_D, x0, schedule, gan, prior, step, lam, nz, posterior=False,
               shared=None, autocast=contextlib.nullcontext):
    """One RGM iteration (Appendix B.2): a discriminator step, then a generator step.
      D step: D learns to tell real x_k ~ q(x_k | x0) from restored x_k_hat, with the non-saturating
              GAN loss of `gan` (a losses.KLD, R1 every gan.lazy_reg steps). The authors train D this
              way under every prior.
      G step: Eq. 8, lam * fidelity(x_{k+1}, x0_hat) + g_phi(x_k_hat), with fresh k, x0 noises, z.
              g_phi is `prior`: under KLD the same losses.KLD object (its generator_loss, -D), under
              MMD / DSWD a distance between D's features of real and restored x_k.
    D: a Critic (or a bare discriminator, used for every call). `shared` is a random generator that
    draws what must agree over ranks (DSWD's level k and directions).
    Returns the detached terms {loss_D, r1, fidelity, prior, loss_G} as 0-dim tensors on x0's device."""
    B, K, dev = x0.shape[0], schedule.K, x0.device
    D = D if isinstance(D, Critic) else Critic(D)

    def restore(x_next, k):
        """x0_hat = G(x_{k+1}, k, z) (G is told the *target* level k) and x_k_hat at level k."""
        z = torch.randn(B, nz, device=dev) if nz > 0 else None
        with autocast():
            x0_hat = G(x_next, k, z).float()
        if posterior:                                   # Algorithm 1: x_k_hat ~ q(x_k | x_{k+1}, x0_hat)
            return x0_hat, schedule.posterior_sample(x0_hat, x_next, k)
        return x0_hat, schedule.sample(x0_hat, k)       # Algorithm 2: forward(x0_hat, k), fresh noise

    # ---- D step: D is trained as a GAN critic under every prior (the authors) ----
    k = torch.randint(K, (B,), device=dev)
    x_k, x_next = schedule.sample(x0, k), schedule.sample(x0, k + 1)     # independent noises
    with torch.no_grad():
        _, x_k_hat = restore(x_next, k)
    r1_step = gan.r1_gamma > 0 and step % gan.lazy_reg == 0             # Python ints: no device sync
    with autocast():
        loss_D, r1 = gan.discriminator_loss(D.r1 if r1_step else D.train, x_k, x_k_hat, k, step)
    opt_D.zero_grad(set_to_none=True)
    loss_D.backward()
    opt_D.step()

    # ---- G step: Eq. 8, with fresh draws ----
    if isinstance(prior, losses.DSWD):                  # one level for the whole global batch
        k = torch.randint(K, (1,), device=dev if shared is None else shared.device, generator=shared)
        k = k.to(dev).expand(B)
    else:
        k = torch.randint(K, (B,), device=dev)
    x_k, x_next = schedule.sample(x0, k), schedule.sample(x0, k + 1)
    with weights_frozen(D.D):
        x0_hat, x_k_hat = restore(x_next, k)
        if posterior:
            fid = losses.posterior_fidelity(x_next, x_k_hat, k, schedule)
        else:
            fid = losses.fidelity(x_next, x0_hat, k, schedule)
        g = prior_term(prior, D.frozen, x_k, x_k_hat, k, shared, autocast)
        loss_G = lam * fid.mean() + g
        opt_G.zero_grad(set_to_none=True)
        loss_G.backward()
        opt_G.step()
    return dict(loss_D=loss_D.detach().float(), r1=r1.float(), fidelity=fid.mean().detach(),
                prior=g.detach(), loss_G=loss_G.detach())


def bf16_autocast(device, enabled):
    """A no-argument callable that opens bfloat16 autocast on `device` (a no-op when not enabled):
    the `autocast` argument of train_step and mmse_step."""
    return functools.partial(torch.autocast, torch.device(device).type, dtype=torch.bfloat16, enabled=enabled)


def mmse_step(G, opt_G, x0, schedule, autocast=contextlib.nullcontext):
    """The MMSE baseline that RGM replaces (paper Section 3, a diffusion model's restorer with K large
    steps): G(x_{k+1}, k) without z, trained on ||G(x_{k+1}, k) - x0||^2 for k uniform in 0..K-1, whose
    minimiser is the posterior mean E[x0 | x_{k+1}]; no discriminator. Returns {mmse: the batch mean}."""
    k = torch.randint(schedule.K, (x0.shape[0],), device=x0.device)
    x_next = schedule.sample(x0, k + 1)
    with autocast():
        x0_hat = G(x_next, k, None).float()
    loss = losses.mmse_loss(x0_hat, x0).mean()
    opt_G.zero_grad(set_to_none=True)
    loss.backward()
    opt_G.step()
    return dict(mmse=loss.detach())


def ddpm_step(G, opt_G, x0, schedule, autocast=contextlib.nullcontext):
    """The diffusion model a user would pick instead of RGM (Ho et al. 2020, Eq. 14): over the K = 1000
    levels of the same VP process, k uniform in 0..K-1, x_{k+1} = abar_{k+1} x0 + sigmabar_{k+1} eps,
    and G(x_{k+1}, k) (no z) trained to predict the noise: ||eps - G(x_{k+1}, k)||^2 (losses.ddpm_loss).
    Sampled by schedules.sample_ddpm (all K levels) or schedules.sample_ddim. Returns {ddpm: the batch mean}."""
    k = torch.randint(schedule.K, (x0.shape[0],), device=x0.device)
    eps = torch.randn_like(x0)
    x_next = schedule.sample(x0, k + 1, noise=eps)
    with autocast():
        eps_hat = G(x_next, k, None).float()
    loss = losses.ddpm_loss(eps_hat, eps).mean()
    opt_G.zero_grad(set_to_none=True)
    loss.backward()
    opt_G.step()
    return dict(ddpm=loss.detach())


BASELINE_STEPS = {'mmse': mmse_step, 'ddpm': ddpm_step}     # the step of each baseline's objective


# ----------------------------------------------------------------------------
# Run directory and checkpoints (the contract of models.py).

def check_same_run(ckpt, path, meta, G_kwargs, D_kwargs, batch_size):
    """Refuse a checkpoint of another configuration, naming what differs (other flags, such as
    --max-steps or the learning rates, may change on resume)."""
    theirs = dict(ckpt['meta'], batch_size=ckpt['config'].get('batch_size'), G_kwargs=ckpt['G_kwargs'],
                  D_kwargs=ckpt['D_kwargs'])
    ours = dict(meta, batch_size=batch_size, G_kwargs=G_kwargs, D_kwargs=D_kwargs)
    diff = [f'{key}: checkpoint {theirs.get(key)!r}, now {value!r}' for key, value in ours.items()
            if theirs.get(key) != value]
    if diff:
        raise ValueError(f'{path} is from another configuration ({"; ".join(diff)}). Resume with the '
                         'settings of that run, or give a new --out for a new run.')


def cosine_lr(base, lr_min, tmax, steps_per_epoch):
    """LambdaLR factor at a step: the authors' cosine over `tmax` epochs, stepped once per epoch."""
    def factor(step):
        if tmax <= 0:
            return 1.0
        epoch = min(step // steps_per_epoch, tmax)
        return (lr_min + (base - lr_min) * (1 + math.cos(math.pi * epoch / tmax)) / 2) / base
    return factor


def step_seed(seed, rank, step):
    """One seed per (run, rank, step): a resumed run draws the noises the uninterrupted run would."""
    return ((seed * 1_000_003 + rank) * 1_000_003 + step) % 2**63


# ----------------------------------------------------------------------------
# The phases of a training run: configuration, run directory, data, networks, the periodic report.

@dataclasses.dataclass
class Setup:
    """What the flags fix before any work: network arguments, the forward process, the batch split."""
    G_kwargs: dict
    D_kwargs: dict          # None for the MMSE baseline (no discriminator)
    schedule: object
    local_batch: int
    image_size: int
    channels: int

    @property
    def nz(self):
        return self.G_kwargs['nz']

    @property
    def baseline(self):
        """A baseline trained without z and D (--prior mmse or ddpm)."""
        return self.D_kwargs is None


def configure(args, world_size, device):
    """Check the flags against each other and build the Setup (nothing is read or written)."""
    if args.resume and args.overwrite:
        raise ValueError('--resume continues the run in --out and --overwrite starts it over: give one of them')
    net = models.CONFIGS[args.net]
    image_size = args.image_size or net['G']['image_size']
    G_kwargs = {key: list(v) if isinstance(v, tuple) else v for key, v in net['G'].items()}
    G_kwargs.update(image_size=image_size, nz=G_kwargs['nz'] if args.nz is None else args.nz)
    D_kwargs = {key: list(v) if isinstance(v, tuple) else v for key, v in net['D'].items()}
    D_kwargs.update(image_size=image_size)
    if args.prior in BASELINES:         # the MMSE restorer and the DDPM have no z and no discriminator
        if args.nz:
            raise ValueError(f'--prior {args.prior} trains G without a latent z: drop --nz {args.nz} (or give --nz 0)')
        if args.posterior:
            raise ValueError(f'--prior {args.prior} is sampled with its own sampler (MMSE: Algorithm 3 only): drop --posterior')
        if args.prior == 'ddpm' and args.schedule != 'd':
            raise ValueError(f'--prior ddpm runs on the Gaussian process d, not --schedule {args.schedule}')
        G_kwargs['nz'], D_kwargs = 0, None
        if args.prior == 'ddpm':        # G predicts the noise eps ~ N(0, I): no tanh on its output (a tanh
            G_kwargs['out_tanh'] = False    # caps |eps_hat| at 1, and the DDPM samples noise)
    if G_kwargs['nz'] < 0:
        raise ValueError(f'--nz must be >= 0 (0 = no latent z), got {G_kwargs["nz"]}')
    channels = G_kwargs.get('in_channels', 3)
    if data.channels_of(args.dataset) != channels:
        wanted = data.channels_of(args.dataset)
        raise ValueError(f'--dataset {args.dataset} has {wanted}-channel images but --net {args.net} makes '
                         f'{channels}-channel ones: choose a --net of {wanted} channel(s) ('
                         + ', '.join(n for n, c in models.CONFIGS.items() if c['G'].get('in_channels', 3) == wanted) + ')')
    schedule = make_schedule(args.schedule, args.K, args.discretisation)
    schedule.check_shape((1, channels, image_size, image_size))
    schedule.to(device)                                 # tables beside the data: no copies in the loop
    if args.posterior and args.schedule != 'd':
        raise ValueError(f'--posterior (Algorithm 1) exists for the denoising process d only, not {args.schedule!r}')
    for name in ('lr_G', 'lr_D'):
        if args.lr_tmax and args.lr_min > getattr(args, name):
            raise ValueError(f'--lr-min {args.lr_min:g} is above --{name.replace("_", "-")} {getattr(args, name):g}: '
                             'the cosine would raise the rate; give a smaller --lr-min (or --lr-tmax 0)')
    if args.n_samples > 1024:
        raise ValueError(f'--n-samples {args.n_samples}: a sample grid of more than 1024 images is not readable')
    local_batch = split_batch(args.batch_size, world_size, 1 if D_kwargs is None else D_kwargs.get('group_size', 4))
    return Setup(G_kwargs, D_kwargs, schedule, local_batch, image_size, channels)


def make_loader(args, setup, rank, world_size, device, master):
    """(sampler, loader, steps per epoch) of this rank's share of the training set."""
    if master and args.dataset in ('cifar10', 'fashion_mnist'):
        data.build_dataset(args.dataset, args.data_dir, setup.image_size)             # download once
    if dist.is_initialized():
        dist.barrier()
    dataset = data.build_dataset(args.dataset, args.data_dir, setup.image_size, args.fake_size, download=False)
    if isinstance(dataset, data.ImageFiles):
        check_folder(dataset, args.check_images, args.skip_bad_images, master)
    steps_per_epoch = len(dataset) // args.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f'the data set has {len(dataset)} images, fewer than one --batch-size {args.batch_size}')
    sampler = EpochSampler(torch.utils.data.DistributedSampler(
        dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=args.seed, drop_last=True))
    loader = torch.utils.data.DataLoader(dataset, batch_size=setup.local_batch, sampler=sampler, drop_last=True,
                                         num_workers=args.workers, pin_memory=device.type == 'cuda',
                                         persistent_workers=args.workers > 0)
    return sampler, loader, steps_per_epoch


@dataclasses.dataclass
class Nets:
    """The networks, optimisers and learning-rate schedules of a run (D's are None for MMSE)."""
    G: torch.nn.Module
    G_ema: torch.nn.Module          # the EMA of G's weights: a separate copy
    opt_G: torch.optim.Optimizer
    sched_G: object
    D: torch.nn.Module = None
    opt_D: torch.optim.Optimizer = None
    sched_D: object = None
    critic: losses.KLD = None       # D's GAN loss (and the prior under KLD)
    prior: object = None            # g_phi of Eq. 8

    @property
    def transform(self):
        """DSWD's TransformNet, learned beside D, or None."""
        return self.prior.transform if isinstance(self.prior, losses.DSWD) else None

    def state_dicts(self):
        """Everything a resumed run needs, under the checkpoint's keys (models.py's format)."""
        state = {key: getattr(self, key) and getattr(self, key).state_dict()
                 for key in ('G', 'G_ema', 'D', 'opt_G', 'opt_D', 'sched_G', 'sched_D')}
        if self.transform is not None:
            state.update(transform=self.transform.state_dict(), opt_T=self.prior.opt.state_dict())
        return state

    def load_state_dicts(self, ckpt):
        for key in ('G', 'G_ema', 'D', 'opt_G', 'opt_D', 'sched_G', 'sched_D'):
            if getattr(self, key) is not None:
                getattr(self, key).load_state_dict(ckpt[key])
        if self.transform is not None:
            self.transform.load_state_dict(ckpt['transform'])
            self.prior.opt.load_state_dict(ckpt['opt_T'])

    def first_bad_weight(self):
        """'G.<name>' of the first weight that holds NaN or inf, or None (one device sync)."""
        nets = [(name, getattr(self, name)) for name in ('G', 'G_ema', 'D') if getattr(self, name) is not None]
        if self.transform is not None:
            nets.append(('transform', self.transform))
        return models.first_non_finite({f'{net_name}.{name}': p for net_name, net in nets
                                        for name, p in net.state_dict().items()})


def build_nets(args, setup, device, steps_per_epoch, memory_format):
    """Networks identical on every rank (seeded), Adam with the authors' betas, the cosine schedule."""
    torch.manual_seed(args.seed)
    G = models.NCSNpp(**setup.G_kwargs).to(device, memory_format=memory_format)
    G_ema = copy.deepcopy(G).requires_grad_(False).eval()
    opt_G = torch.optim.Adam(G.parameters(), lr=args.lr_G, betas=ADAM_BETAS)
    nets = Nets(G, G_ema, opt_G, torch.optim.lr_scheduler.LambdaLR(
        opt_G, cosine_lr(args.lr_G, args.lr_min, args.lr_tmax, steps_per_epoch)))
    if not setup.baseline:
        D_kwargs = setup.D_kwargs
        nets.D = models.Discriminator(**D_kwargs).to(device, memory_format=memory_format)
        nets.opt_D = torch.optim.Adam(nets.D.parameters(), lr=args.lr_D, betas=ADAM_BETAS)
        nets.sched_D = torch.optim.lr_scheduler.LambdaLR(
            nets.opt_D, cosine_lr(args.lr_D, args.lr_min, args.lr_tmax, steps_per_epoch))
        nets.critic = losses.KLD(r1_gamma=args.r1_gamma, lazy_reg=args.lazy_reg)
        nets.prior = make_prior(args.prior, nets.critic, D_kwargs['channels'] * D_kwargs['ch_mult'][-1] * 16, device,
                                args.mmd_bandwidths, args.dswd_projections, args.dswd_steps, args.lr_D)
    return nets


def open_resume(run, path, meta, setup, batch_size, prior):
    """The checkpoint a run resumes from, checked whole and against this configuration before any data or
    network is made. A corrupt or incomplete file names the other checkpoints."""
    states = ('G', 'G_ema', 'opt_G', 'sched_G') + (() if setup.baseline else ('D', 'opt_D', 'sched_D')) + \
        (('transform', 'opt_T') if prior == 'dswd' else ())
    try:
        ckpt = models.load_checkpoint(path)
        models.check_keys(ckpt, path, ('meta', 'G_kwargs', 'D_kwargs', 'config', 'step') + states, '--resume')
    except (RuntimeError, ValueError) as e:
        others = sorted(p for p in run.checkpoints().values() if p != path)
        raise RuntimeError(f'{e}. Resume from an earlier checkpoint of the run with --resume PATH'
                           + (f' (there: {", ".join(others)})' if others else ' (there is none)')) from e
    check_same_run(ckpt, path, meta, setup.G_kwargs, setup.D_kwargs, batch_size)
    return ckpt


def wrap(nets, args, device):
    """(G as the loop calls it, D's three views): DDP averages gradients; compiled copies for speed."""
    # broadcast_buffers=False: the networks' only buffers are the constant FIR filters. With it on, DDP
    # copies rank 0's buffers in place before every forward; under NCCL that bumps their autograd
    # version between D's forward on the real images and R1's backward through it, which fails.
    ddp = functools.partial(DDP, device_ids=[device.index] if device.type == 'cuda' else None,
                            broadcast_buffers=False)
    maybe_ddp = ddp if dist.is_initialized() else (lambda net: net)
    maybe_compile = torch.compile if args.compile else (lambda net: net)
    G_train = maybe_compile(maybe_ddp(nets.G))
    if nets.D is None:
        return G_train, None
    D_ddp = maybe_ddp(nets.D)
    return G_train, Critic(nets.D, train=maybe_compile(D_ddp), r1=D_ddp, frozen=maybe_compile(nets.D))


class Monitor:
    """The loss terms summed on the device, and the first step at which each was NaN or inf. They are
    read (averaged over ranks) only by `reduce`, at log, sample and checkpoint steps: no device sync
    in between."""
    NEVER = 2**62

    def __init__(self, names, device):
        self.names, self.device = names, device
        self.first_bad = torch.full((len(names),), self.NEVER, device=device)
        self.reset()

    def reset(self):
        self.sums, self.count, self.since = torch.zeros(len(self.names), device=self.device), 0, time.time()

    def add(self, terms, step):
        """Terms of the step that has just made the count `step`."""
        terms = torch.stack([terms[name] for name in self.names]).float()
        self.sums += terms
        self.first_bad = torch.where(torch.isfinite(terms), self.first_bad, self.first_bad.clamp(max=step))
        self.count += 1

    def reduce(self):
        """{name: mean over steps and ranks} and {name: first bad step} of the terms that went non-finite."""
        mean, first_bad = self.sums / self.count, self.first_bad.clone()
        if dist.is_initialized():
            dist.all_reduce(mean)
            mean /= dist.get_world_size()
            dist.all_reduce(first_bad, op=dist.ReduceOp.MIN)
        bad = {name: at for name, at in zip(self.names, first_bad.tolist()) if at < self.NEVER}
        return dict(zip(self.names, mean.tolist())), bad


def stop_if_bad(bad, step, run, nets=None):
    """Stop before anything is saved when a loss term went non-finite, or (at a checkpoint step, nets
    given) a weight did although the losses were finite; name the last good checkpoint."""
    what = ', '.join(f'{name} from step {at}' for name, at in sorted(bad.items(), key=lambda p: p[1]))
    if not bad and nets is not None:
        weight = nets.first_bad_weight()
        what = weight and f'weight {weight}'
    if what:
        last = run.latest()
        raise FloatingPointError(f'non-finite {what} (checked at step {step}): stopping. The last good '
                                 f'checkpoint is {last or "none (none was written)"}')


def threads_note(threads):
    """The CPU threads of this process, and how idle OpenMP threads wait: the training output says it."""
    why = '--threads' if threads else 'torch\'s default'
    policy, spin = os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT')
    wait = (f'OMP_WAIT_POLICY={policy}' if policy else f'OpenMP threads spin {spin} turns, then sleep' if spin
            else 'OpenMP\'s default wait')
    busy = ('; beside another busy program, --threads 1 is faster' if torch.get_num_threads() > 1 else '')
    return f'{torch.get_num_threads()} CPU thread(s) ({why}; {wait}{busy})'


def train(args, rank, world_size, device):
    """The training run, in phases: configuration, run directory, data, networks, resume, loop."""
    master = rank == 0                                  # rank 0 alone prints and writes
    setup = configure(args, world_size, device)
    if args.threads:
        torch.set_num_threads(args.threads)
    run = RunDir(args.out)
    restart = torch.tensor(int(os.environ.get('TORCHELASTIC_RESTART_COUNT', 0)), device=device)
    if dist.is_initialized():           # torchrun counts restarts per node: take the largest count
        dist.all_reduce(restart, op=dist.ReduceOp.MAX)
    with out_lock(args.out, master):                    # refuses a second training into the same --out
        run_training(args, rank, world_size, device, master, setup, run, restart)


def run_training(args, rank, world_size, device, master, setup, run, restart):
    """train() once the run directory is this process's alone."""
    resume_path = run.choose_start(args.resume, args.overwrite, int(restart) > 0, master)
    meta = dict(schedule=args.schedule, K=args.K, discretisation=args.discretisation, posterior=args.posterior,
                nz=setup.nz, image_size=setup.image_size, channels=setup.channels, prior=args.prior,
                dataset=args.dataset)
    ckpt = open_resume(run, resume_path, meta, setup, args.batch_size, args.prior) if resume_path else None
    start_step = ckpt['step'] if ckpt else 0
    if start_step >= args.max_steps and not int(restart):   # before config.json and the log are rewritten
        raise ValueError(f'--resume: {resume_path} is at step {start_step}, so --max-steps {args.max_steps} leaves '
                         'nothing to train: give a larger --max-steps')
    sampler, loader, steps_per_epoch = make_loader(args, setup, rank, world_size, device, master)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    try:
        nets = build_nets(args, setup, device, steps_per_epoch, memory_format)
    except (RuntimeError, MemoryError) as e:      # an allocation that cannot fit, before any file is written
        if 'alloc' not in str(e).lower() and not isinstance(e, MemoryError):
            raise
        raise MemoryError(f'the networks do not fit in memory (--net {args.net}, --nz {setup.nz}): {e}') from e
    config = dict(vars(args), world_size=world_size, local_batch=setup.local_batch, steps_per_epoch=steps_per_epoch)
    if ckpt:
        nets.load_state_dicts(ckpt)
        del ckpt
    G_train, critic_views = wrap(nets, args, device)
    autocast = bf16_autocast(device, args.amp)
    shared = torch.Generator(device)                    # same draws on every rank
    if master:
        run.begin(start_step, dict(event='resume' if start_step else 'start', step=start_step, world_size=world_size,
                                   checkpoint=resume_path, restart=int(restart)),
                  dict(config, G_kwargs=setup.G_kwargs, D_kwargs=setup.D_kwargs, meta=meta), args.overwrite)
        millions = [sum(p.numel() for p in net.parameters()) / 1e6 if net is not None else 0 for net in (nets.G, nets.D)]
        print(f'{"resuming " + resume_path if start_step else "new run"}: {world_size} process(es) on '
              f'{device.type}, {threads_note(args.threads)}, global batch {args.batch_size}, '
              f'{steps_per_epoch} steps per epoch, G {millions[0]:.2f}M, D {millions[1]:.2f}M parameters'
              + (f' ({args.prior.upper()} baseline: no D)' if setup.baseline else ''))

    # ---- the loop: one train_step (or a baseline's step) per batch, a report every so often ----
    monitor = Monitor([args.prior] if setup.baseline else ['loss_D', 'r1', 'fidelity', 'prior', 'loss_G'], device)
    baseline_step = BASELINE_STEPS.get(args.prior)
    ema_params, params = list(nets.G_ema.parameters()), list(nets.G.parameters())
    step = start_step
    bar = tqdm(total=args.max_steps, initial=start_step, disable=not master, dynamic_ncols=True)
    while step < args.max_steps:
        epoch, skip = divmod(step, steps_per_epoch)
        sampler.set_epoch(epoch, skip * setup.local_batch)
        for x0, _ in loader:
            torch.manual_seed(step_seed(args.seed, rank, step))
            shared.manual_seed(step_seed(args.seed, world_size, step))
            x0 = x0.to(device, non_blocking=True, memory_format=memory_format)
            flip = torch.rand(x0.shape[0], 1, 1, 1, device=device) < 0.5          # random horizontal flip
            x0 = torch.where(flip, x0.flip(3), x0)
            if setup.baseline:
                terms = baseline_step(G_train, nets.opt_G, x0, setup.schedule, autocast=autocast)
            else:
                terms = train_step(G_train, critic_views, nets.opt_G, nets.opt_D, x0, setup.schedule, nets.critic,
                                   nets.prior, step, args.lam, setup.nz, args.posterior, shared=shared,
                                   autocast=autocast)
                nets.sched_D.step()
            nets.sched_G.step()
            models.ema_update(ema_params, params, args.ema_decay)
            step += 1
            monitor.add(terms, step)
            bar.update(1)
            report(step, args, monitor, nets, setup, run, meta, config, steps_per_epoch, bar, master, device)
            if step >= args.max_steps:
                break
    bar.close()
    if master:
        print(f'done: step {step}, checkpoints in {run.ckpt_dir}')


def report(step, args, monitor, nets, setup, run, meta, config, steps_per_epoch, bar, master, device):
    """At log, sample and checkpoint steps: average the terms over ranks and stop on NaN/inf (losses,
    and the weights before a save); then log, write an EMA sample grid, save a checkpoint."""
    log_now = step % args.log_every == 0 or step == args.max_steps
    save_now = step % args.ckpt_every == 0 or step == args.max_steps
    sample_now = step % args.sample_every == 0
    if not (log_now or save_now or sample_now):
        return
    mean, bad = monitor.reduce()
    stop_if_bad(bad, step, run, nets if save_now else None)
    if log_now:
        elapsed = time.time() - monitor.since
        record = dict(step=step, epoch=step // steps_per_epoch, **mean, lr_G=nets.opt_G.param_groups[0]['lr'],
                      **({} if setup.baseline else dict(lr_D=nets.opt_D.param_groups[0]['lr'])),
                      img_per_s=monitor.count * args.batch_size / elapsed,
                      mem_GB=(torch.cuda.max_memory_allocated(device) if device.type == 'cuda' else
                              resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**30)
        monitor.reset()
        if master:
            run.log(record)
            bar.set_postfix({args.prior: f'{mean[args.prior]:.1f}'}) if setup.baseline else bar.set_postfix(
                D=f'{mean["loss_D"]:.3f}', fid=f'{mean["fidelity"]:.1f}', prior=f'{mean["prior"]:.3f}')
    if master and sample_now:
        shape = (args.n_samples, setup.channels, setup.image_size, setup.image_size)
        generator = torch.Generator(device).manual_seed(args.seed)
        if args.prior == 'ddpm':        # the training grids of the DDPM: DDIM with 50 steps
            grid = sample_ddim(nets.G_ema, setup.schedule, shape, min(50, setup.schedule.K), device=device,
                               generator=generator, clip_x0=True)      # as sample.py draws it
        else:
            grid = sample_rgm(nets.G_ema, setup.schedule, shape, setup.nz, device=device, posterior=args.posterior,
                              generator=generator)
        torchvision.utils.save_image((grid + 1) / 2, os.path.join(run.out, 'samples', f'{step:08d}.png'),
                                     nrow=int(math.sqrt(args.n_samples)))
    if master and save_now:
        run.save(dict(format=models.CKPT_FORMAT, G_kwargs=setup.G_kwargs, D_kwargs=setup.D_kwargs, meta=meta,
                      **nets.state_dicts(), step=step, epoch=step // steps_per_epoch, config=config),
                 step, args.keep_ckpts)


def main(args):
    """One process, or one of torchrun's (RANK in the environment); leaves the process group at the end."""
    rank, world_size, device = cli.init_distributed(args.device)
    if rank:
        warnings.simplefilter('ignore')                 # the other ranks' warnings repeat rank 0's
    try:
        train(args, rank, world_size, device)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def parse_args(argv=None):
    """Flags; a --preset sets the defaults, and flags given explicitly override them."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--preset', choices=sorted(PRESETS), help='paper settings (any flag overrides them): '
                   + '; '.join(f'{name}: {s}' for name, s in PRESETS.items()))
    g = p.add_argument_group('data')
    g.add_argument('--dataset', default='cifar10', choices=data.DATASETS,
                   help='cifar10 (downloaded into --data-dir), celeba_hq (a folder of images; the authors '
                        'trained on those of CelebA\'s train partition), lsun_church '
                        '(--data-dir holds church_outdoor_train_lmdb; needs `pip install lmdb`), folder (any '
                        'folder of images, see --image-size), fashion_mnist (one channel, padded to 32 x 32; '
                        'its IDX files in --data-dir, /usr/share/datasets/fashion-mnist, or downloaded), fake '
                        '(random images, for tests)')
    g.add_argument('--data-dir', default='data')
    g.add_argument('--image-size', type=cli.positive_int, default=None, help='resize + center crop to this side (default: --net\'s)')
    g.add_argument('--fake-size', type=cli.positive_int, default=64, help='number of images of --dataset fake')
    g.add_argument('--check-images', default='auto', choices=['auto', 'all', 'none'],
                   help=f'folder data sets: decode every file before training (auto: folders of up to '
                        f'{CHECK_AUTO_MAX} files)')
    g.add_argument('--skip-bad-images', action='store_true', help='train without the files the check cannot read')
    g.add_argument('--workers', type=cli.nonnegative_int, default=4, help='data loading processes per rank')
    g = p.add_argument_group('model')
    g.add_argument('--net', default='cifar10', choices=sorted(models.CONFIGS), help='network sizes (models.CONFIGS)')
    g.add_argument('--schedule', default='d', choices=sorted(SCHEDULES), help='forward process: d, sr_naive, sr')
    g.add_argument('--K', type=cli.positive_int, default=4, help='degradation steps = NFE (1 = the single-step ablation)')
    g.add_argument('--discretisation', default='original', choices=['original', 'square', 'geometric'])
    g.add_argument('--posterior', action='store_true', help='Algorithm 1 (posterior sampling, d only)')
    g.add_argument('--prior', default='kld', choices=PRIOR_CHOICES,
                   help='kld, mmd, dswd (RGM); mmse: the MMSE baseline ||G(x_{k+1}, k) - x0||^2; ddpm: a DDPM, '
                        '||eps - G(x_{k+1}, k)||^2 over --K levels (1000); both without z and D')
    g.add_argument('--nz', type=int, default=None, help='latent dimension (default: --net\'s; 0 = no z)')
    g.add_argument('--lam', type=cli.nonnegative_float, default=1e-3, help='fidelity weight lambda (0 = no fidelity)')
    g.add_argument('--mmd-bandwidths', type=cli.positive_float, nargs='+', default=[1.0, 2.0, 4.0, 8.0, 16.0],
                   help='RBF kernel bandwidths of the MMD prior')
    g.add_argument('--dswd-projections', type=cli.positive_int, default=1000)
    g.add_argument('--dswd-steps', type=cli.positive_int, default=10, help='inner steps that fit the DSWD directions')
    g = p.add_argument_group('optimisation')
    g.add_argument('--batch-size', type=cli.positive_int, default=256, help='global batch, split over the processes')
    g.add_argument('--lr-G', type=cli.positive_float, default=1.6e-4)
    g.add_argument('--lr-D', type=cli.positive_float, default=1e-4, help='also the TransformNet\'s (DSWD)')
    g.add_argument('--lr-tmax', type=cli.nonnegative_int, default=1800, help='cosine decay length in epochs (0 = constant lr)')
    g.add_argument('--lr-min', type=cli.nonnegative_float, default=1e-5)
    g.add_argument('--r1-gamma', type=cli.nonnegative_float, default=0.02)
    g.add_argument('--lazy-reg', type=cli.positive_int, default=15, help='R1 every this many steps')
    g.add_argument('--ema-decay', type=cli.decay_rate, default=0.9999)
    g.add_argument('--max-steps', type=cli.positive_int, default=200_000)
    g.add_argument('--amp', action='store_true', help='bfloat16 autocast')
    g.add_argument('--channels-last', action=argparse.BooleanOptionalAction, default=False,
                   help='NHWC memory layout (the Fashion presets use it: 1.03-1.17x faster on a CPU, the same '
                        'update to fp32 rounding; docs/benchmarks.md)')
    g.add_argument('--compile', action='store_true', help='torch.compile G and D')
    g = p.add_argument_group('run')
    g.add_argument('--out', default='runs/rgm', help='run directory')
    g.add_argument('--resume', nargs='?', const='latest', metavar='PATH',
                   help='continue the run in --out from its latest checkpoint, or from PATH (one of its checkpoints)')
    g.add_argument('--overwrite', action='store_true',
                   help='start a new run in an --out that already holds one (its config, log, samples and '
                        'checkpoints are deleted first)')
    g.add_argument('--ckpt-every', type=cli.positive_int, default=5000)
    g.add_argument('--keep-ckpts', type=cli.nonnegative_int, default=3, help='checkpoints kept (the latest; 0 = all)')
    g.add_argument('--sample-every', type=cli.positive_int, default=5000)
    g.add_argument('--n-samples', type=cli.positive_int, default=64, help='images in each EMA sample grid (at most 1024)')
    g.add_argument('--log-every', type=cli.positive_int, default=100)
    g.add_argument('--device', default=cli.DEFAULT_DEVICE)
    g.add_argument('--threads', type=cli.nonnegative_int, default=0, help='CPU threads per process (0 = torch\'s default)')
    g.add_argument('--seed', type=cli.seed, default=0)
    known = p.parse_known_args(argv)[0]
    if known.preset:
        p.set_defaults(**PRESETS[known.preset])
    if known.resume:
        p.set_defaults(**run_settings(known.out, known.preset, set(vars(known))))
    return p.parse_args(argv)


NOT_INHERITED = ('out', 'resume', 'overwrite', 'device')      # of this command, or of the machine


def run_settings(out, preset, flags):
    """--resume: the flags of the run in `out`, read from its config.json, as the defaults (flags given now
    override them), so that the run continues with its own preset and settings. A --preset other than the
    run's is refused."""
    config = RunDir(out).config()
    if config is None:
        return {}                                   # no run there: choose_start says so
    if preset and config.get('preset') != preset:
        started = f'with --preset {config["preset"]}' if config.get('preset') else 'without --preset'
        raise ValueError(f'--preset {preset}, but the run in {out} was started {started}: drop --preset '
                         '(--resume continues with the run\'s own settings, from its config.json)')
    return {key: value for key, value in config.items() if key in flags and key not in NOT_INHERITED}


if __name__ == '__main__':
    cli.run_main(main, parse_args())
