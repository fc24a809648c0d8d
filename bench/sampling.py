"""Sampling speed: RGM's Algorithm 3 at NFE = K (4 for RGM-D, 7 for RGM-SR) against the same network
run for 1000 steps (a DDPM-style NFE), each on one batch of samples. The network cost does not depend
on its weights, so an untrained NCSN++ of the named configuration is timed.

    OMP_NUM_THREADS=1 python bench/sampling.py                   # tiny NCSN++, CPU (1000 steps on 10 samples)
    python bench/sampling.py --config cifar10 --device cuda      # the paper: 100 CIFAR-10 samples in 0.25 s (V100)
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import median_seconds, untrained_generator   # noqa: E402
import models                                                   # noqa: E402
from schedules import make_schedule, sample_rgm                 # noqa: E402


def main(args):
    G, device, size, nz = untrained_generator(args)
    name = torch.cuda.get_device_name() if device.type == 'cuda' else f'cpu, {torch.get_num_threads()} threads'
    print(f'{name}, torch {torch.__version__}, NCSN++ {args.config} ({size}x{size}, '
          f'{sum(p.numel() for p in G.parameters()) / 1e6:.2f}M params), float32, one batch per run\n')
    print('| sampler | forward process | NFE | samples | runs | seconds (latency) | images/s | ms per NFE |')
    print('|---|---|---|---|---|---|---|---|')
    n_long = args.n_long or (args.n if device.type == 'cuda' else 10)     # 1000 steps x 100 samples: minutes on CPU
    rows = [('RGM-D', 'd', 4, args.n, args.reps), ('RGM-SR', 'sr', 7, args.n, args.reps),
            ('DDPM-style', 'd', args.steps, n_long, 1)]
    for label, process, K, n, reps in rows:
        schedule = make_schedule(process, K)
        with torch.no_grad():                                               # warm-up: one call at this batch size
            G(torch.randn(n, 3, size, size, device=device), torch.zeros(n, dtype=torch.long, device=device),
              torch.randn(n, nz, device=device))
        t = median_seconds(lambda: sample_rgm(G, schedule, (n, 3, size, size), nz, device=device), reps, device, warmup=False)
        print(f'| {label} | {process} | {K} | {n} | {reps} | {t:.3f} | {n / t:.1f} | {1e3 * t / K:.1f} |')
    if n_long != args.n:
        print(f'\nThe {args.steps}-step row ran on {n_long} samples to save time; at its images/s, {args.n} samples '
              f'would take about {t * args.n / n_long:.0f} s (cost grows about linearly with the batch on a CPU).')


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description='Images/s and latency of Algorithm 3 at NFE = K vs 1000 steps.')
    parser.add_argument('--config', default='tiny', choices=sorted(models.CONFIGS), help='NCSN++ configuration')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--n', type=int, default=100, help='samples per batch for NFE = K')
    parser.add_argument('--n-long', type=int, help='samples for the 1000-step row (default: --n on GPU, 10 on CPU)')
    parser.add_argument('--steps', type=int, default=1000, help='steps of the DDPM-style row')
    parser.add_argument('--reps', type=int, default=3, help='timed runs (median) of the NFE = K rows')
    parser.add_argument('--threads', type=int, default=0, help='CPU threads (0: torch default)')
    main(parser.parse_args())
