"""Time per training iteration of each toy method, and the default run's total.

    python bench/toy2d.py [--iters 200] [--threads 1 2]
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import toy2d  # noqa: E402


def main(args):
    print(f'torch {torch.__version__}, {os.cpu_count()} CPUs, batch {args.batch_size}, K = 4')
    print(f"{'method':8s}{'threads':>8s}{'ms/iter':>10s}{'default iters':>15s}{'default total (s)':>19s}")
    for threads in args.threads:
        torch.set_num_threads(threads)
        total = 0.0
        for method, cfg in toy2d.METHODS.items():
            toy2d.train(method, iters=10, batch_size=args.batch_size, progress=False)   # warm-up
            t0 = time.perf_counter()
            toy2d.train(method, iters=args.iters, batch_size=args.batch_size, progress=False)
            ms = (time.perf_counter() - t0) / args.iters * 1000
            total += ms * cfg['iters'] / 1000
            print(f"{method:8s}{threads:8d}{ms:10.2f}{cfg['iters']:15d}{ms * cfg['iters'] / 1000:19.1f}")
        print(f"{'all':8s}{threads:8d}{'':10s}{'':15s}{total:19.1f}")


if __name__ == '__main__':
    p = argparse.ArgumentParser()
    p.add_argument('--iters', type=int, default=200)
    p.add_argument('--batch-size', type=int, default=1000)
    p.add_argument('--threads', type=int, nargs='+', default=[1, 2])
    main(p.parse_args())
