"""Timing helper shared by the benchmark scripts."""
import time

import torch


def median_seconds(fn, reps, device, warmup=True):
    """Median wall time of fn() over `reps` calls, optionally after one warm-up call;
    on CUDA the device is synchronised around each call."""
    if warmup:
        fn()
    times = []
    for _ in range(reps):
        if device.type == 'cuda':
            torch.cuda.synchronize()
        tic = time.perf_counter()
        fn()
        if device.type == 'cuda':
            torch.cuda.synchronize()
        times.append(time.perf_counter() - tic)
    return sorted(times)[len(times) // 2]
