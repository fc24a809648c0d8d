"""Parameter counts and timings of the named image networks (models.CONFIGS): G and D forward, and
forward + backward, median milliseconds per call after one warm-up, float32, on the GPU when there is one.

    python bench/models.py                                   # tiny and cifar10 at batch 8, one thread
    python bench/models.py --configs fashion cifar10 --batch 32 8 --threads 2
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cli  # noqa: E402
from models import CONFIGS, build_networks  # noqa: E402



def _time(fn, reps):
    """Median milliseconds per call of fn, after one warm-up call."""
    fn()
    times = []
    for _ in range(reps):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[len(times) // 2]


def main(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    print(f'device {torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}, '
          f'{torch.get_num_threads()} threads, torch {torch.__version__}, float32, median of {args.reps}\n')
    print('| config | G params | D params | batch | G fwd (ms) | G fwd+bwd (ms) | D fwd (ms) | D fwd+bwd (ms) |')
    print('|---|---|---|---|---|---|---|---|')
    batches = args.batch * len(args.configs) if len(args.batch) == 1 else args.batch
    for name, batch in zip(args.configs, batches):
        torch.manual_seed(0)
        G, D = (net.to(device) for net in build_networks(name))
        res, nz = CONFIGS[name]['G']['image_size'], CONFIGS[name]['G']['nz']
        x, z = torch.randn(batch, CONFIGS[name]['G'].get('in_channels', 3), res, res, device=device), torch.randn(batch, nz, device=device)
        k = torch.randint(0, 4, (batch,), device=device)

        def g_fwd():
            with torch.no_grad():
                G(x, k, z)

        def d_fwd():
            with torch.no_grad():
                D(x, k)

        times = [_time(g_fwd, args.reps), _time(lambda: G(x, k, z).square().mean().backward(), args.reps),
                 _time(d_fwd, args.reps), _time(lambda: D(x, k)[0].mean().backward(), args.reps)]
        count = lambda net: f'{sum(p.numel() for p in net.parameters()) / 1e6:.2f}M'
        print(f'| {name} | {count(G)} | {count(D)} | {batch} | ' + ' | '.join(f'{t:.0f}' for t in times) + ' |')


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description='Parameter counts and timings of the image networks.')
    parser.add_argument('--configs', nargs='+', default=['tiny', 'cifar10'], choices=sorted(CONFIGS))
    parser.add_argument('--batch', nargs='+', type=cli.positive_int, default=[8],
                        help='batch size (one, or one per config)')
    parser.add_argument('--reps', type=cli.positive_int, default=3, help='timed repetitions (median) after one warm-up')
    parser.add_argument('--threads', type=cli.nonnegative_int, default=1,
                        help='CPU threads; 1 gives steady numbers on a shared machine, 0 keeps torch\'s default')
    args = parser.parse_args()
    if len(args.batch) not in (1, len(args.configs)):     # zip() would drop the extra ones silently
        parser.error(f'--batch takes one size, or one per config ({len(args.configs)}), got {len(args.batch)}')
    cli.run_main(main, args)
