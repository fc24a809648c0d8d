"""Time per training iteration of each toy method, and the default run's total.

    python bench/toy2d.py [--iters 200] [--threads 1 2]

The rest of the machine should be idle: timings of small CPU kernels suffer badly from
other processes competing for the cores.
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cli  # noqa: E402
import toy2d  # noqa: E402


def main(args):
    print(f'torch {torch.__version__}, {os.cpu_count()} CPUs, K = 4, per-method batch sizes of toy2d.METHODS')
    print(f"{'method':8s}{'batch':>6s}{'threads':>8s}{'ms/iter':>10s}{'default iters':>15s}{'default total (s)':>19s}")
    for threads in args.threads:
        torch.set_num_threads(threads)
        total = 0.0
        for method, cfg in toy2d.METHODS.items():
            toy2d.train(method, iters=10, progress=False)                              # warm-up
            t0 = time.perf_counter()
            toy2d.train(method, iters=args.iters, progress=False)
            ms = (time.perf_counter() - t0) / args.iters * 1000
            total += ms * cfg['iters'] / 1000
            print(f"{method:8s}{cfg['batch_size']:6d}{threads:8d}{ms:10.2f}{cfg['iters']:15d}{ms * cfg['iters'] / 1000:19.1f}")
        print(f"{'all':8s}{'':6s}{threads:8d}{'':10s}{'':15s}{total:19.1f}")


if __name__ == '__main__':
    p = argparse.ArgumentParser()
    p.add_argument('--iters', type=cli.positive_int, default=200)
    p.add_argument('--threads', type=cli.positive_int, nargs='+', default=[1, 2])
    cli.run_main(main, p.parse_args())
