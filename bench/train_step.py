"""Speed of one RGM training step (train_images.train_step: a D step and a G step), per prior.

    python bench/train_step.py                                        # tiny preset on CPU, 1 and 2 threads
    python bench/train_step.py --preset cifar10_kld_d --device cuda   # one GPU: fp32 and bf16, peak memory

The last column extrapolates the preset's --max-steps at this batch on this one device (the
authors' 4 V100s took ~40 h for CIFAR-10). Random images stand in for data; R1 runs every
lazy_reg steps as in training, so time enough steps to include it.
"""
import argparse
import copy
import functools
import os
import resource
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import losses  # noqa: E402
import models  # noqa: E402
import train_images  # noqa: E402
from schedules import make_schedule  # noqa: E402


def bench(cfg, prior_name, device, amp, channels_last, compile, batch, warmup, steps):
    """(ms per step, peak memory in GB) of train_step plus the EMA update."""
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    size = cfg.image_size or models.CONFIGS[cfg.net]['G']['image_size']
    G, D = (net.to(device, memory_format=fmt) for net in models.build_networks(
        cfg.net, dict(image_size=size), dict(image_size=size)))
    G_ema = copy.deepcopy(G).requires_grad_(False)
    opt_G = torch.optim.Adam(G.parameters(), cfg.lr_G, betas=train_images.ADAM_BETAS)
    opt_D = torch.optim.Adam(D.parameters(), cfg.lr_D, betas=train_images.ADAM_BETAS)
    critic = losses.KLD(cfg.r1_gamma, cfg.lazy_reg)
    prior = train_images.make_prior(prior_name, critic, D.conv_out.out_channels * 16, device, cfg.mmd_bandwidths,
                                    cfg.dswd_projections, cfg.dswd_steps, cfg.lr_D)
    G_train, D_train = (torch.compile(G), torch.compile(D)) if compile else (G, D)
    schedule = make_schedule(cfg.schedule, cfg.K, cfg.discretisation)
    autocast = functools.partial(torch.autocast, device.type, dtype=torch.bfloat16, enabled=amp)
    x0 = (torch.rand(batch, 3, size, size, device=device) * 2 - 1).to(memory_format=fmt)
    nz = G.nz

    def step(i):
        train_images.train_step(G_train, train_images.Critic(D, train=D_train, frozen=D_train), opt_G, opt_D, x0,
                                schedule, critic, prior, i, cfg.lam, nz, cfg.posterior, autocast=autocast)
        train_images.ema_update(list(G_ema.parameters()), list(G.parameters()), cfg.ema_decay)

    for i in range(1, warmup + 1):          # start at step 1: R1 (step 0) is timed in its turn below
        step(i)
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for i in range(steps):
        step(i)
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024     # the process's peak, so far
    return (time.perf_counter() - start) / steps * 1e3, peak / 2**30


def main(args):
    cfg = train_images.parse_args(['--preset', args.preset])
    device = torch.device(args.device)
    batch = args.batch or cfg.batch_size
    priors = args.priors or [cfg.prior]
    precisions = args.precision or (['fp32', 'bf16'] if device.type == 'cuda' else ['fp32'])
    threads = args.threads if device.type == 'cpu' else [torch.get_num_threads()]
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{os.cpu_count()} CPUs'
    print(f'{args.preset}: net {cfg.net}, schedule {cfg.schedule} K={cfg.K}, batch {batch} on one device ({name}), '
          f'torch {torch.__version__}, {args.steps} timed steps after {args.warmup}'
          f'{", channels_last" if args.channels_last else ""}{", compiled" if args.compile else ""}\n')
    print(f'| prior | threads | precision | ms/step | images/s | peak memory (GB) | hours for {cfg.max_steps} steps |')
    print('|---|---|---|---|---|---|---|')
    for prior in priors:
        for n in threads:
            torch.set_num_threads(n)
            for precision in precisions:
                ms, mem = bench(cfg, prior, device, precision == 'bf16', args.channels_last, args.compile,
                                batch, args.warmup, args.steps)
                print(f'| {prior} | {n} | {precision} | {ms:.1f} | {batch / ms * 1e3:.1f} | {mem:.2f} | '
                      f'{cfg.max_steps * ms / 3.6e6:.3g} |', flush=True)


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--preset', default='tiny', choices=sorted(train_images.PRESETS))
    p.add_argument('--device', default='cpu')
    p.add_argument('--batch', type=int, default=None, help="default: the preset's global batch")
    p.add_argument('--priors', nargs='+', choices=sorted(losses.PRIORS), help="default: the preset's prior")
    p.add_argument('--precision', nargs='+', choices=['fp32', 'bf16'], help='default: fp32 (CPU), fp32 and bf16 (GPU)')
    p.add_argument('--threads', type=int, nargs='+', default=[1, 2], help='CPU threads')
    p.add_argument('--channels-last', action='store_true')
    p.add_argument('--compile', action='store_true')
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--steps', type=int, default=15, help='timed steps (R1 every lazy_reg of them)')
    main(p.parse_args())
