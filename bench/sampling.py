"""Sampling speed of Algorithm 3 at NFE = K (4 for RGM-D, 7 for RGM-SR) in each mode (eager NCHW fp32;
channels_last, sample.py's default on a CPU; bf16 weights and activations in NHWC; torch.compile), at
several batch sizes, against the same network run for 1000 steps (a DDPM-style NFE). The network
cost does not depend on its weights, so an untrained NCSN++ of the named configuration is timed; each
mode's samples are compared with eager's from the same noise (max |difference|).

    python bench/sampling.py --config fashion --threads 2              # the Fashion-MNIST network, CPU
    python bench/sampling.py --ckpt checkpoints/fashion_kld_d_4x.pt --modes eager channels_last bf16 compile --threads 2
    python bench/sampling.py --config tiny --modes eager compile --batch 16 100
    python bench/sampling.py --config cifar10 --device cuda            # the paper: 100 samples in 0.25 s (V100)

Compiled rows exclude compilation (the warm-up call compiles). Roofline: the GFLOP of one call counted
by torch's flop-counter formulas, the rate achieved and its share of a 3x3 convolution of the Fashion
network's dominant shape timed in the same run in the mode's own precision and layout, with the same
threads: common.conv_peak.
"""
import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import conv_peak, count_flops, median_seconds, untrained_generator   # noqa: E402
import cli                                                      # noqa: E402
import models                                                   # noqa: E402
from schedules import make_schedule, sample_rgm                 # noqa: E402


class BFloat16(torch.nn.Module):
    """G with bfloat16 weights in NHWC layout: its inputs cast to bfloat16, its output back to float32."""

    def __init__(self, G):
        super().__init__()
        self.G = copy.deepcopy(G).to(dtype=torch.bfloat16, memory_format=torch.channels_last)

    def forward(self, x, k, z=None):
        return self.G(x.bfloat16(), k, None if z is None else z.bfloat16()).float()


def variant(G, mode):
    """The generator as `mode` runs it: eager (NCHW fp32), channels_last (NHWC, sample.py's CPU default),
    bf16 (BFloat16), compile (torch.compile of the NHWC network on a CPU, of the plain one elsewhere)."""
    nhwc = lambda: copy.deepcopy(G).to(memory_format=torch.channels_last)     # noqa: E731
    cpu = next(G.parameters()).device.type == 'cpu'
    return {'eager': lambda: G, 'channels_last': nhwc, 'bf16': lambda: BFloat16(G),
            'compile': lambda: torch.compile(nhwc() if cpu else G)}[mode]()


def main(args):
    if args.ckpt:       # trained weights: the same time, but a difference from eager that means something
        if args.threads:
            torch.set_num_threads(args.threads)
        device = torch.device(args.device)
        G, meta = models.load_generator(args.ckpt, device)
        G.requires_grad_(False)
        size, nz, config = meta['image_size'], meta['nz'], Path(args.ckpt).name
    else:
        G, device, size, nz = untrained_generator(args)
        config = args.config
    C = G.conv_in.in_channels
    name = torch.cuda.get_device_name() if device.type == 'cuda' else f'cpu, {torch.get_num_threads()} threads'
    print(f'{name}, torch {torch.__version__}, NCSN++ {config} ({C}x{size}x{size}, '
          f'{sum(p.numel() for p in G.parameters()) / 1e6:.2f}M params), float32, median of {args.reps} runs\n')
    # the yardstick of each mode: the convolution in its own layout and precision
    layouts = {'eager': (torch.float32, False), 'channels_last': (torch.float32, True), 'bf16': (torch.bfloat16, True),
               'compile': (torch.float32, device.type == 'cpu')}
    peaks = {}
    for mode in dict.fromkeys([*args.modes, args.long_mode]):
        dtype, nhwc = layouts[mode]
        if (dtype, nhwc) not in peaks:
            peaks[dtype, nhwc] = conv_peak(device, dtype, channels_last=nhwc)
            print(f"peak: {peaks[dtype, nhwc]:.0f} GFLOP/s ({str(dtype).split('.')[1]} 3x3 convolution, "
                  f"{'NHWC' if nhwc else 'NCHW'}, common.conv_peak)")
    print()
    print('| sampler | forward process | NFE | mode | samples | latency (s) | images/s | ms per NFE | GFLOP / image | '
          'GFLOP/s | % of peak | max diff from eager |')
    print('|---|---|---|---|---|---|---|---|---|---|---|---|')
    nets = {mode: variant(G, mode) for mode in args.modes}
    for mode in args.modes:
        for label, process, K in (('RGM-D', 'd', 4), ('RGM-SR', 'sr', 7)):
            schedule = make_schedule(process, K).to(device)
            for n in args.batch:
                run = lambda: sample_rgm(nets[mode], schedule, (n, C, size, size), nz, device=device)   # noqa: E731
                t = median_seconds(run, args.reps, device, warmup=True)     # the warm-up call compiles
                gflop = count_flops(lambda: sample_rgm(G, schedule, (n, C, size, size), nz, device=device)) / 1e9
                same = torch.Generator(device=device)
                diff = (sample_rgm(nets[mode], schedule, (n, C, size, size), nz, device=device, generator=same.manual_seed(0))
                        - sample_rgm(G, schedule, (n, C, size, size), nz, device=device, generator=same.manual_seed(0)))
                print(f'| {label} | {process} | {K} | {mode} | {n} | {t:.3f} | {n / t:.1f} | {1e3 * t / K:.1f} | '
                      f'{gflop / n:.3f} | {gflop / t:.1f} | {100 * gflop / t / peaks[layouts[mode]]:.0f}% | '
                      f'{diff.abs().max():.1e} |', flush=True)
    if args.steps:
        n_long = args.n_long or (max(args.batch) if device.type == 'cuda' else 10)
        schedule = make_schedule('d', args.steps).to(device)
        net = nets.get(args.long_mode) or variant(G, args.long_mode)
        t = median_seconds(lambda: sample_rgm(net, schedule, (n_long, C, size, size), nz, device=device), 1, device,
                           warmup=args.long_mode == 'compile')
        gflop = count_flops(lambda: G(torch.randn(n_long, C, size, size, device=device),
                                      torch.zeros(n_long, dtype=torch.long, device=device),
                                      torch.randn(n_long, nz, device=device) if nz else None)) * args.steps / 1e9
        print(f'| DDPM-style | d | {args.steps} | {args.long_mode} | {n_long} | {t:.3f} | {n_long / t:.2f} | '
              f'{1e3 * t / args.steps:.1f} | {gflop / n_long:.3f} | {gflop / t:.1f} | '
              f'{100 * gflop / t / peaks[layouts[args.long_mode]]:.0f}% | |')


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config', default='tiny', choices=sorted(models.CONFIGS), help='NCSN++ configuration')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--ckpt', help='time this trained generator instead of an untrained --config network (the '
                        'same cost; the difference from eager then measures what a mode changes in real samples)')
    parser.add_argument('--batch', type=cli.positive_int, nargs='+', default=[100], help='samples per call')
    parser.add_argument('--modes', nargs='+', default=['eager', 'channels_last'],
                        choices=['eager', 'channels_last', 'bf16', 'compile'])
    parser.add_argument('--long-mode', default='channels_last', choices=['eager', 'channels_last', 'bf16', 'compile'],
                        help='the mode of the DDPM-style row (default: the fastest on a CPU without compiling)')
    parser.add_argument('--steps', type=cli.nonnegative_int, default=1000,
                        help='steps of the DDPM-style row (0: skip it)')
    parser.add_argument('--n-long', type=cli.positive_int,
                        help='samples for the 1000-step row (default: the largest batch on GPU, 10 on CPU)')
    parser.add_argument('--reps', type=cli.positive_int, default=3, help='timed runs (median)')
    parser.add_argument('--threads', type=cli.nonnegative_int, default=0, help='CPU threads (0: torch default)')
    cli.run_main(main, parser.parse_args())
