"""Sampling speed of Algorithm 3 at NFE = K (4 for RGM-D, 7 for RGM-SR), eager or torch.compile, at
several batch sizes, against the same network run for 1000 steps (a DDPM-style NFE). The network
cost does not depend on its weights, so an untrained NCSN++ of the named configuration is timed.

    python bench/sampling.py --config fashion --threads 2              # the Fashion-MNIST network, CPU
    python bench/sampling.py --config tiny --modes eager compile --batch 16 100
    python bench/sampling.py --config cifar10 --device cuda            # the paper: 100 samples in 0.25 s (V100)

Compiled rows exclude compilation (the warm-up call compiles). Roofline: the GFLOP of one call counted
by torch's flop-counter formulas, the rate achieved and its share of a 3x3 convolution of the Fashion
network's dominant shape timed in the same run (fp32, the same threads): common.conv_peak.
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import conv_peak, count_flops, median_seconds, untrained_generator   # noqa: E402
import cli                                                      # noqa: E402
import models                                                   # noqa: E402
from schedules import make_schedule, sample_rgm                 # noqa: E402


def main(args):
    G, device, size, nz = untrained_generator(args)
    C = G.conv_in.in_channels
    name = torch.cuda.get_device_name() if device.type == 'cuda' else f'cpu, {torch.get_num_threads()} threads'
    print(f'{name}, torch {torch.__version__}, NCSN++ {args.config} ({C}x{size}x{size}, '
          f'{sum(p.numel() for p in G.parameters()) / 1e6:.2f}M params), float32, median of {args.reps} runs\n')
    peak = conv_peak(device)
    print(f'peak: {peak:.0f} GFLOP/s (fp32 3x3 convolution, common.conv_peak)\n')
    print('| sampler | forward process | NFE | mode | samples | latency (s) | images/s | ms per NFE | GFLOP / image | '
          'GFLOP/s | % of peak |')
    print('|---|---|---|---|---|---|---|---|---|---|---|')
    nets = {'eager': G}
    if 'compile' in args.modes:
        nets['compile'] = torch.compile(G)
    for mode in args.modes:
        for label, process, K in (('RGM-D', 'd', 4), ('RGM-SR', 'sr', 7)):
            schedule = make_schedule(process, K).to(device)
            for n in args.batch:
                run = lambda: sample_rgm(nets[mode], schedule, (n, C, size, size), nz, device=device)   # noqa: E731
                t = median_seconds(run, args.reps, device, warmup=True)     # the warm-up call compiles
                gflop = count_flops(lambda: sample_rgm(G, schedule, (n, C, size, size), nz, device=device)) / 1e9
                print(f'| {label} | {process} | {K} | {mode} | {n} | {t:.3f} | {n / t:.1f} | {1e3 * t / K:.1f} | '
                      f'{gflop / n:.3f} | {gflop / t:.1f} | {100 * gflop / t / peak:.0f}% |', flush=True)
    if args.steps:
        n_long = args.n_long or (max(args.batch) if device.type == 'cuda' else 10)
        schedule = make_schedule('d', args.steps).to(device)
        t = median_seconds(lambda: sample_rgm(G, schedule, (n_long, C, size, size), nz, device=device), 1, device)
        gflop = count_flops(lambda: G(torch.randn(n_long, C, size, size, device=device),
                                      torch.zeros(n_long, dtype=torch.long, device=device),
                                      torch.randn(n_long, nz, device=device) if nz else None)) * args.steps / 1e9
        print(f'| DDPM-style | d | {args.steps} | eager | {n_long} | {t:.3f} | {n_long / t:.2f} | '
              f'{1e3 * t / args.steps:.1f} | {gflop / n_long:.3f} | {gflop / t:.1f} | {100 * gflop / t / peak:.0f}% |')


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config', default='tiny', choices=sorted(models.CONFIGS), help='NCSN++ configuration')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--batch', type=cli.positive_int, nargs='+', default=[100], help='samples per call')
    parser.add_argument('--modes', nargs='+', default=['eager'], choices=['eager', 'compile'])
    parser.add_argument('--steps', type=cli.nonnegative_int, default=1000,
                        help='steps of the DDPM-style row (0: skip it)')
    parser.add_argument('--n-long', type=cli.positive_int,
                        help='samples for the 1000-step row (default: the largest batch on GPU, 10 on CPU)')
    parser.add_argument('--reps', type=cli.positive_int, default=3, help='timed runs (median)')
    parser.add_argument('--threads', type=cli.nonnegative_int, default=0, help='CPU threads (0: torch default)')
    cli.run_main(main, parser.parse_args())
