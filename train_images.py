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
--resume PATH from one of its earlier checkpoints) or --overwrite starts over; a worker restarted by
torchrun resumes by itself.
--out must be on a file system that every node sees.
"""
import argparse
import contextlib
import copy
import dataclasses
import functools
import glob
import json
import math
import os
import re
import resource
import time
import urllib.error
import warnings

import torch
import torch.distributed as dist
import torchvision
from torch.nn.parallel import DistributedDataParallel as DDP
from torchvision import transforms
from tqdm import tqdm

import data
import losses
import models
from schedules import SCHEDULES, make_schedule, sample_rgm

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
# Fashion-MNIST on a 2-core CPU in <= 30 minutes (README, "Real images on a CPU"): the 'fashion' networks
# (0.45M-parameter one-channel NCSN++, a discriminator of similar cost), a small batch for thousands of
# steps, Adam at 5e-4 for G and D without decay, and an EMA short enough to move within the run.
FASHION = dict(dataset='fashion_mnist', net='fashion', batch_size=32, lr_G=5e-4, lr_D=5e-4, lam=1e-3,
               r1_gamma=0.02, lazy_reg=15, lr_tmax=0, ema_decay=0.995, schedule='d', K=4, max_steps=4000,
               workers=0, log_every=50, ckpt_every=1000, sample_every=500, threads=2)
PRESETS.update({
    'fashion_kld_d':  dict(FASHION, prior='kld'),
    'fashion_mmse_d': dict(FASHION, prior='mmse'),     # the MMSE baseline: same G (without z), K, steps, data
})
PRIOR_CHOICES = sorted(losses.PRIORS) + ['mmse']
DATASETS = ('cifar10', 'celeba_hq', 'lsun_church', 'folder', 'fake', 'fashion_mnist')
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.webp', '.bmp')


# ----------------------------------------------------------------------------
# Data: images in [-1, 1]; the random horizontal flip happens on the device (see the loop).

class ImageFiles(torch.utils.data.Dataset):
    """Every image under a folder (recursively), as (image, 0) like torchvision's data sets. Files are
    read by data.open_image (16-bit files scaled to 8 bits); one that cannot be decoded stops the run
    naming it (train() can check them all first: --check-images)."""

    def __init__(self, root, transform):
        if not os.path.isdir(root):
            raise FileNotFoundError(f'--data-dir {root!r} does not exist: give the folder of training images')
        self.files = sorted(p for p in glob.glob(os.path.join(root, '**', '*'), recursive=True)
                            if p.lower().endswith(IMAGE_EXTENSIONS))
        if not self.files:
            raise FileNotFoundError(f'--data-dir {root!r} holds no images ({", ".join(IMAGE_EXTENSIONS)})')
        self.transform = transform

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        return self.transform(data.open_image(self.files[i], 'RGB')), 0


def build_dataset(name, data_dir, image_size, fake_size=64, download=True):
    """The training set; resize and center crop to image_size (a no-op for CIFAR-10 at 32).
    Fashion-MNIST is one-channel and padded to 32 x 32 (data.py)."""
    if name == 'fashion_mnist':
        if image_size != 32:
            raise ValueError(f'fashion_mnist is 32 x 32 (28 x 28 padded), not --image-size {image_size}')
        return data.FashionMNIST(data_dir, train=True, download=download)
    tf = transforms.Compose([transforms.Resize(image_size), transforms.CenterCrop(image_size),
                             transforms.ToTensor(), transforms.Normalize([0.5] * 3, [0.5] * 3)])
    if name == 'cifar10':
        try:
            return torchvision.datasets.CIFAR10(data_dir, train=True, transform=tf, download=download)
        except (urllib.error.URLError, OSError) as e:
            raise RuntimeError(f'CIFAR-10 is not in --data-dir {data_dir!r} and cannot be downloaded ({e}): put '
                               f'cifar-10-python.tar.gz (from https://www.cs.toronto.edu/~kriz/) into {data_dir!r} '
                               'and run again') from e
    if name in ('celeba_hq', 'folder'):
        return ImageFiles(data_dir, tf)
    if name == 'lsun_church':
        if not os.path.isdir(os.path.join(data_dir, 'church_outdoor_train_lmdb')):
            raise FileNotFoundError(f'--data-dir {data_dir!r} has no church_outdoor_train_lmdb folder (LSUN)')
        lsun = torchvision.datasets.LSUN(data_dir, classes=['church_outdoor_train'], transform=tf)
        return torch.utils.data.Subset(lsun, range(min(len(lsun), 120_000)))     # the authors' first 120k
    if name == 'fake':
        return torchvision.datasets.FakeData(fake_size, (3, image_size, image_size), num_classes=1, transform=tf)
    raise ValueError(f'unknown data set {name!r}: choose one of {DATASETS}')


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


RUN_FILES = ('config.json', 'log.jsonl', 'samples', 'checkpoints')     # what a run writes in --out
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


# ----------------------------------------------------------------------------
# Run directory and checkpoints (the contract of models.py).

def checkpoints(folder):
    """{step: path} of the checkpoints in a run's checkpoint folder."""
    found = {}
    for path in glob.glob(os.path.join(folder, 'ckpt_*.pt')):
        match = re.fullmatch(r'ckpt_(\d+)\.pt', os.path.basename(path))
        if match:
            found[int(match.group(1))] = path
    return found


def check_same_run(ckpt, path, meta, G_kwargs, D_kwargs, batch_size):
    """Refuse a checkpoint of another configuration, naming what differs (other flags, such as
    --max-steps or the learning rates, may change on resume)."""
    theirs = dict(ckpt['meta'], batch_size=ckpt['config']['batch_size'], G_kwargs=ckpt['G_kwargs'],
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

def init_distributed(device):
    """Join torchrun's process group (NCCL on GPUs, gloo on CPU); returns (rank, world size, device)."""
    rank, world_size = int(os.environ['RANK']), int(os.environ['WORLD_SIZE'])
    options = {}
    if device.type == 'cuda':
        device = torch.device('cuda', int(os.environ['LOCAL_RANK']))
        torch.cuda.set_device(device)
        options['device_id'] = device
    if os.environ.get('TORCHELASTIC_USE_AGENT_STORE') == 'True' and int(os.environ.get('TORCHELASTIC_MAX_RESTARTS', 0)):
        # torchrun's shared store keeps the addresses of the previous attempt, which restarted workers
        # then fail to reach (PyTorch issue 135712): give each attempt its own keys. The attempt number
        # is consistent only within one node.
        if int(os.environ['LOCAL_WORLD_SIZE']) != world_size:
            raise RuntimeError('torchrun --max-restarts over several nodes: export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 '
                               'before torchrun, else restarted workers cannot connect (PyTorch issue 135712)')
        store, _, _ = next(dist.rendezvous('env://'))
        attempt = os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')
        options.update(store=dist.PrefixStore(f'rgm/attempt_{attempt}', store), rank=rank, world_size=world_size)
    dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo', **options)
    return rank, world_size, device


def main(args):
    """One process, or one of torchrun's (RANK in the environment); leaves the process group at the end."""
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        raise RuntimeError(f'--device {args.device}, but torch sees no GPU: use --device cpu')
    rank, world_size, device = 0, 1, torch.device(args.device)
    if 'RANK' in os.environ:
        rank, world_size, device = init_distributed(device)
    if rank:
        warnings.simplefilter('ignore')                 # the other ranks' warnings repeat rank 0's
    try:
        train(args, rank, world_size, device)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def train(args, rank, world_size, device):
    """The training run, in phases: configuration, run directory, data, networks, resume, loop."""
    master = rank == 0                                  # rank 0 alone prints and writes
    # ---- configuration ----
    net = models.CONFIGS[args.net]
    image_size = args.image_size or net['G']['image_size']
    G_kwargs = {key: list(v) if isinstance(v, tuple) else v for key, v in net['G'].items()}
    G_kwargs.update(image_size=image_size, nz=G_kwargs['nz'] if args.nz is None else args.nz)
    D_kwargs = {key: list(v) if isinstance(v, tuple) else v for key, v in net['D'].items()}
    D_kwargs.update(image_size=image_size)
    mmse = args.prior == 'mmse'
    if mmse:                            # the MMSE restorer E[x0 | x_{k+1}] has no z and no discriminator
        if args.nz:
            raise ValueError(f'--prior mmse trains G without a latent z: drop --nz {args.nz} (or give --nz 0)')
        if args.posterior:
            raise ValueError('--prior mmse is sampled with Algorithm 3 only: drop --posterior')
        G_kwargs['nz'], D_kwargs = 0, None
    nz, channels = G_kwargs['nz'], G_kwargs.get('in_channels', 3)
    if nz < 0:
        raise ValueError(f'--nz must be >= 0 (0 = no latent z), got {nz}')
    schedule = make_schedule(args.schedule, args.K, args.discretisation)
    schedule.check_shape((1, channels, image_size, image_size))
    schedule.to(device)                                 # tables beside the data: no copies in the loop
    if args.posterior and args.schedule != 'd':
        raise ValueError(f'--posterior (Algorithm 1) exists for the denoising process d only, not {args.schedule!r}')
    local_batch = split_batch(args.batch_size, world_size, 1 if mmse else D_kwargs.get('group_size', 4))
    if args.threads:
        torch.set_num_threads(args.threads)

    # ---- run directory: new, resumed by --resume, or resumed after a torchrun restart ----
    ckpt_dir = os.path.join(args.out, 'checkpoints')
    restart = torch.tensor(int(os.environ.get('TORCHELASTIC_RESTART_COUNT', 0)), device=device)
    if dist.is_initialized():           # torchrun counts restarts per node: take the largest count
        dist.all_reduce(restart, op=dist.ReduceOp.MAX)
    restarted = int(restart) > 0
    found = checkpoints(ckpt_dir)
    if args.resume or restarted:
        if not found:
            raise FileNotFoundError(f'--resume: no checkpoint under {ckpt_dir}')
        resume_path = found[max(found)]
        if args.resume not in (None, 'latest'):        # --resume PATH: an earlier checkpoint of this run
            if os.path.realpath(args.resume) not in {os.path.realpath(p) for p in found.values()}:
                raise FileNotFoundError(f'--resume {args.resume}: not one of the checkpoints of {args.out} '
                                        f'({", ".join(sorted(os.path.basename(p) for p in found.values()))})')
            resume_path = args.resume if not restarted else resume_path
    else:
        if found and not args.overwrite:
            raise FileExistsError(f'{args.out} already holds checkpoints: pass --resume to continue that run, '
                                  '--overwrite to start over in it, or choose another --out')
        data.prepare_out(args.out, RUN_FILES, args.overwrite, 'training run', remove=master)
        resume_path = None

    # ---- data ----
    if master and args.dataset in ('cifar10', 'fashion_mnist'):
        build_dataset(args.dataset, args.data_dir, image_size)                     # download once
    if dist.is_initialized():
        dist.barrier()
    dataset = build_dataset(args.dataset, args.data_dir, image_size, args.fake_size, download=False)
    if isinstance(dataset, ImageFiles):
        check_folder(dataset, args.check_images, args.skip_bad_images, master)
    steps_per_epoch = len(dataset) // args.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f'the data set has {len(dataset)} images, fewer than one --batch-size {args.batch_size}')
    sampler = EpochSampler(torch.utils.data.DistributedSampler(
        dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=args.seed, drop_last=True))
    loader = torch.utils.data.DataLoader(dataset, batch_size=local_batch, sampler=sampler, drop_last=True,
                                         num_workers=args.workers, pin_memory=device.type == 'cuda',
                                         persistent_workers=args.workers > 0)

    # ---- networks, identical on every rank ----
    torch.manual_seed(args.seed)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    G = models.NCSNpp(**G_kwargs).to(device, memory_format=memory_format)
    G_ema = copy.deepcopy(G).requires_grad_(False).eval()              # EMA: a separate model
    opt_G = torch.optim.Adam(G.parameters(), lr=args.lr_G, betas=ADAM_BETAS)
    sched_G = torch.optim.lr_scheduler.LambdaLR(opt_G, cosine_lr(args.lr_G, args.lr_min, args.lr_tmax, steps_per_epoch))
    D = opt_D = sched_D = critic = prior = transform = None
    if not mmse:
        D = models.Discriminator(**D_kwargs).to(device, memory_format=memory_format)
        opt_D = torch.optim.Adam(D.parameters(), lr=args.lr_D, betas=ADAM_BETAS)
        sched_D = torch.optim.lr_scheduler.LambdaLR(opt_D, cosine_lr(args.lr_D, args.lr_min, args.lr_tmax, steps_per_epoch))
        critic = losses.KLD(r1_gamma=args.r1_gamma, lazy_reg=args.lazy_reg)
        prior = make_prior(args.prior, critic, D_kwargs['channels'] * D_kwargs['ch_mult'][-1] * 16, device,
                           args.mmd_bandwidths, args.dswd_projections, args.dswd_steps, args.lr_D)
        transform = prior.transform if args.prior == 'dswd' else None
    meta = dict(schedule=args.schedule, K=args.K, discretisation=args.discretisation, posterior=args.posterior,
                nz=nz, image_size=image_size, channels=channels, prior=args.prior, dataset=args.dataset)
    config = dict(vars(args), world_size=world_size, local_batch=local_batch, steps_per_epoch=steps_per_epoch)

    # ---- resume ----
    start_step = 0
    if resume_path:
        try:
            ckpt = models.load_checkpoint(resume_path)
        except (RuntimeError, ValueError) as e:
            others = sorted(p for p in found.values() if p != resume_path)
            raise RuntimeError(f'{e}. Resume from an earlier checkpoint of the run with --resume PATH'
                               + (f' (there: {", ".join(others)})' if others else ' (there is none)')) from e
        check_same_run(ckpt, resume_path, meta, G_kwargs, D_kwargs, args.batch_size)
        for module, key in [(G, 'G'), (G_ema, 'G_ema'), (D, 'D'), (opt_G, 'opt_G'), (opt_D, 'opt_D'),
                            (sched_G, 'sched_G'), (sched_D, 'sched_D')]:
            if module is not None:
                module.load_state_dict(ckpt[key])
        if transform is not None:
            transform.load_state_dict(ckpt['transform'])
            prior.opt.load_state_dict(ckpt['opt_T'])
        start_step = ckpt['step']
        del ckpt

    # ---- wrappers: DDP averages gradients; compiled copies for speed (see Critic for D's three views) ----
    ddp = functools.partial(DDP, device_ids=[device.index] if device.type == 'cuda' else None)
    maybe_ddp = ddp if dist.is_initialized() else (lambda net: net)
    maybe_compile = torch.compile if args.compile else (lambda net: net)
    G_train = maybe_compile(maybe_ddp(G))
    if D is not None:
        D_ddp = maybe_ddp(D)
        critic_views = Critic(D, train=maybe_compile(D_ddp), r1=D_ddp, frozen=maybe_compile(D))
    autocast = bf16_autocast(device, args.amp)
    shared = torch.Generator(device)                    # same draws on every rank

    # ---- run directory and log ----
    log_path = os.path.join(args.out, 'log.jsonl')
    if master:
        os.makedirs(os.path.join(args.out, 'samples'), exist_ok=True)
        os.makedirs(ckpt_dir, exist_ok=True)
        for tmp in glob.glob(os.path.join(ckpt_dir, '.tmp-*')):      # left by a save that was killed
            os.remove(tmp)
        newer = [path for step_, path in found.items() if start_step and step_ > start_step]
        if newer:               # --resume PATH went back: keep the later checkpoints aside, not in the way
            aside = os.path.join(ckpt_dir, f'superseded_from_{start_step:08d}')
            os.makedirs(aside, exist_ok=True)
            for path in newer:
                os.replace(path, os.path.join(aside, os.path.basename(path)))
            print(f'--resume {resume_path}: moved {len(newer)} later checkpoint(s) to {aside}')
        with open(os.path.join(args.out, 'config.json'), 'w') as f:
            json.dump(dict(config, G_kwargs=G_kwargs, D_kwargs=D_kwargs, meta=meta), f, indent=2)
        records = []
        if start_step and os.path.exists(log_path):     # keep the records up to the checkpoint; a line
            with open(log_path) as f:                   # cut by a crash (no newline) is past it
                records = [line for line in f if line.endswith('\n') and json.loads(line).get('step', 0) <= start_step]
        with open(log_path, 'w') as f:
            f.writelines(records)
            f.write(json.dumps(dict(event='resume' if start_step else 'start', step=start_step,
                                    world_size=world_size, checkpoint=resume_path,
                                    restart=int(restart))) + '\n')
        millions = [sum(p.numel() for p in net.parameters()) / 1e6 if net is not None else 0 for net in (G, D)]
        print(f'{"resuming " + resume_path if start_step else "new run"}: {world_size} process(es) on '
              f'{device.type}, {torch.get_num_threads()} thread(s), global batch {args.batch_size}, '
              f'{steps_per_epoch} steps per epoch, G {millions[0]:.2f}M, D {millions[1]:.2f}M parameters'
              + (' (MMSE baseline: no D)' if mmse else ''))

    def save_checkpoint(step):
        ckpt = dict(format=models.CKPT_FORMAT, G_kwargs=G_kwargs, D_kwargs=D_kwargs, meta=meta,
                    G=G.state_dict(), G_ema=G_ema.state_dict(), D=D and D.state_dict(),
                    opt_G=opt_G.state_dict(), opt_D=opt_D and opt_D.state_dict(),
                    sched_G=sched_G.state_dict(), sched_D=sched_D and sched_D.state_dict(),
                    step=step, epoch=step // steps_per_epoch, config=config)
        if transform is not None:
            ckpt.update(transform=transform.state_dict(), opt_T=prior.opt.state_dict())
        models.save_checkpoint(ckpt, os.path.join(ckpt_dir, f'ckpt_{step:08d}.pt'))
        found = checkpoints(ckpt_dir)
        for old in sorted(found)[:-args.keep_ckpts] if args.keep_ckpts > 0 else []:
            os.remove(found[old])

    # ---- training loop ----
    # The loss terms are summed on the device and read (averaged over ranks, checked for NaN/inf)
    # only at a log, sample or checkpoint step: no device sync in between, and nothing is saved
    # after a non-finite value.
    names = ['mmse'] if mmse else ['loss_D', 'r1', 'fidelity', 'prior', 'loss_G']
    step, sums, n_sums, t_log = start_step, torch.zeros(len(names), device=device), 0, time.time()
    never = 2**62
    first_bad = torch.full((len(names),), never, device=device)        # first step each term was NaN/inf
    ema_params, params = list(G_ema.parameters()), list(G.parameters())
    bar = tqdm(total=args.max_steps, initial=start_step, disable=not master, dynamic_ncols=True)
    while step < args.max_steps:
        epoch, skip = divmod(step, steps_per_epoch)
        sampler.set_epoch(epoch, skip * local_batch)
        for x0, _ in loader:
            torch.manual_seed(step_seed(args.seed, rank, step))
            shared.manual_seed(step_seed(args.seed, world_size, step))
            x0 = x0.to(device, non_blocking=True, memory_format=memory_format)
            flip = torch.rand(x0.shape[0], 1, 1, 1, device=device) < 0.5          # random horizontal flip
            x0 = torch.where(flip, x0.flip(3), x0)
            if mmse:
                terms = mmse_step(G_train, opt_G, x0, schedule, autocast=autocast)
            else:
                terms = train_step(G_train, critic_views, opt_G, opt_D, x0, schedule, critic, prior, step, args.lam,
                                   nz, args.posterior, shared=shared, autocast=autocast)
                sched_D.step()
            sched_G.step()
            models.ema_update(ema_params, params, args.ema_decay)
            step += 1
            terms = torch.stack([terms[name] for name in names]).float()
            sums += terms
            first_bad = torch.where(torch.isfinite(terms), first_bad, first_bad.clamp(max=step))
            n_sums += 1
            bar.update(1)

            log_now = step % args.log_every == 0 or step == args.max_steps
            save_now = step % args.ckpt_every == 0 or step == args.max_steps
            sample_now = step % args.sample_every == 0
            if not (log_now or save_now or sample_now):
                continue
            # Average over ranks, and stop on NaN/inf before anything is saved.
            mean = sums / n_sums
            if dist.is_initialized():
                dist.all_reduce(mean)
                mean /= world_size
                dist.all_reduce(first_bad, op=dist.ReduceOp.MIN)
            mean, bad_at = mean.tolist(), first_bad.tolist()
            if min(bad_at) < never:
                bad = ', '.join(f'{name} from step {at}' for name, at in sorted(zip(names, bad_at), key=lambda p: p[1])
                                if at < never)
                last = checkpoints(ckpt_dir)
                raise FloatingPointError(f'non-finite {bad} (checked at step {step}): stopping. The last good '
                                         f'checkpoint is {last[max(last)] if last else "none (none was written)"}')
            if log_now:
                elapsed, t_log = time.time() - t_log, time.time()
                record = dict(step=step, epoch=step // steps_per_epoch, **dict(zip(names, mean)),
                              lr_G=opt_G.param_groups[0]['lr'],
                              **({} if mmse else dict(lr_D=opt_D.param_groups[0]['lr'])),
                              img_per_s=n_sums * args.batch_size / elapsed,
                              mem_GB=(torch.cuda.max_memory_allocated(device) if device.type == 'cuda' else
                                      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**30)
                sums, n_sums = torch.zeros_like(sums), 0
                if master:
                    with open(log_path, 'a') as f:
                        f.write(json.dumps(record) + '\n')
                    bar.set_postfix(mmse=f'{record["mmse"]:.1f}') if mmse else bar.set_postfix(
                        D=f'{record["loss_D"]:.3f}', fid=f'{record["fidelity"]:.1f}', prior=f'{record["prior"]:.3f}')
            if master and sample_now:
                grid = sample_rgm(G_ema, schedule, (args.n_samples, channels, image_size, image_size), nz, device=device,
                                  posterior=args.posterior, generator=torch.Generator(device).manual_seed(args.seed))
                path = os.path.join(args.out, 'samples', f'{step:08d}.png')
                torchvision.utils.save_image((grid + 1) / 2, path, nrow=int(math.sqrt(args.n_samples)))
            if master and save_now:
                save_checkpoint(step)
            if step >= args.max_steps:
                break
    bar.close()
    if master:
        print(f'done: step {step}, checkpoints in {ckpt_dir}')


def unit_interval(text):
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f'must be in [0, 1), got {text}')
    return value


def parse_args(argv=None):
    """Flags; a --preset sets the defaults, and flags given explicitly override them."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--preset', choices=sorted(PRESETS), help='paper settings (any flag overrides them): '
                   + '; '.join(f'{name}: {s}' for name, s in PRESETS.items()))
    g = p.add_argument_group('data')
    g.add_argument('--dataset', default='cifar10', choices=DATASETS,
                   help='cifar10 (downloaded into --data-dir), celeba_hq (a folder of images; the authors '
                        'trained on those of CelebA\'s train partition), lsun_church '
                        '(--data-dir holds church_outdoor_train_lmdb; needs `pip install lmdb`), folder (any '
                        'folder of images, see --image-size), fashion_mnist (one channel, padded to 32 x 32; '
                        'its IDX files in --data-dir, /usr/share/datasets/fashion-mnist, or downloaded), fake '
                        '(random images, for tests)')
    g.add_argument('--data-dir', default='data')
    g.add_argument('--image-size', type=data.positive_int, default=None, help='resize + center crop to this side (default: --net\'s)')
    g.add_argument('--fake-size', type=data.positive_int, default=64, help='number of images of --dataset fake')
    g.add_argument('--check-images', default='auto', choices=['auto', 'all', 'none'],
                   help=f'folder data sets: decode every file before training (auto: folders of up to '
                        f'{CHECK_AUTO_MAX} files)')
    g.add_argument('--skip-bad-images', action='store_true', help='train without the files the check cannot read')
    g.add_argument('--workers', type=data.nonnegative_int, default=4, help='data loading processes per rank')
    g = p.add_argument_group('model')
    g.add_argument('--net', default='cifar10', choices=sorted(models.CONFIGS), help='network sizes (models.CONFIGS)')
    g.add_argument('--schedule', default='d', choices=sorted(SCHEDULES), help='forward process: d, sr_naive, sr')
    g.add_argument('--K', type=data.positive_int, default=4, help='degradation steps = NFE (1 = the single-step ablation)')
    g.add_argument('--discretisation', default='original', choices=['original', 'square', 'geometric'])
    g.add_argument('--posterior', action='store_true', help='Algorithm 1 (posterior sampling, d only)')
    g.add_argument('--prior', default='kld', choices=PRIOR_CHOICES,
                   help='kld, mmd, dswd (RGM), or mmse: the MMSE baseline ||G(x_{k+1}, k) - x0||^2, no z, no D')
    g.add_argument('--nz', type=int, default=None, help='latent dimension (default: --net\'s; 0 = no z)')
    g.add_argument('--lam', type=data.nonnegative_float, default=1e-3, help='fidelity weight lambda (0 = no fidelity)')
    g.add_argument('--mmd-bandwidths', type=float, nargs='+', default=[1.0, 2.0, 4.0, 8.0, 16.0])
    g.add_argument('--dswd-projections', type=data.positive_int, default=1000)
    g.add_argument('--dswd-steps', type=data.positive_int, default=10, help='inner steps that fit the DSWD directions')
    g = p.add_argument_group('optimisation')
    g.add_argument('--batch-size', type=data.positive_int, default=256, help='global batch, split over the processes')
    g.add_argument('--lr-G', type=data.positive_float, default=1.6e-4)
    g.add_argument('--lr-D', type=data.positive_float, default=1e-4, help='also the TransformNet\'s (DSWD)')
    g.add_argument('--lr-tmax', type=data.nonnegative_int, default=1800, help='cosine decay length in epochs (0 = constant lr)')
    g.add_argument('--lr-min', type=data.nonnegative_float, default=1e-5)
    g.add_argument('--r1-gamma', type=data.nonnegative_float, default=0.02)
    g.add_argument('--lazy-reg', type=data.positive_int, default=15, help='R1 every this many steps')
    g.add_argument('--ema-decay', type=unit_interval, default=0.9999)
    g.add_argument('--max-steps', type=data.positive_int, default=200_000)
    g.add_argument('--amp', action='store_true', help='bfloat16 autocast')
    g.add_argument('--channels-last', action='store_true')
    g.add_argument('--compile', action='store_true', help='torch.compile G and D')
    g = p.add_argument_group('run')
    g.add_argument('--out', default='runs/rgm', help='run directory')
    g.add_argument('--resume', nargs='?', const='latest', metavar='PATH',
                   help='continue the run in --out from its latest checkpoint, or from PATH (one of its checkpoints)')
    g.add_argument('--overwrite', action='store_true',
                   help='start a new run in an --out that already holds one (its config, log, samples and '
                        'checkpoints are deleted first)')
    g.add_argument('--ckpt-every', type=data.positive_int, default=5000)
    g.add_argument('--keep-ckpts', type=data.nonnegative_int, default=3, help='checkpoints kept (the latest; 0 = all)')
    g.add_argument('--sample-every', type=data.positive_int, default=5000)
    g.add_argument('--n-samples', type=data.positive_int, default=64, help='images in each EMA sample grid')
    g.add_argument('--log-every', type=data.positive_int, default=100)
    g.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    g.add_argument('--threads', type=data.nonnegative_int, default=0, help='CPU threads per process (0 = torch\'s default)')
    g.add_argument('--seed', type=int, default=0)
    preset = p.parse_known_args(argv)[0].preset
    if preset:
        p.set_defaults(**PRESETS[preset])
    return p.parse_args(argv)


if __name__ == '__main__':
    main(parse_args())
