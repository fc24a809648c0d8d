"""Helpers shared by the benchmark scripts (and the torchrun tests): timing, and the processes
started under a torchrun agent."""
import time
from pathlib import Path

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


def median_ms_events(fn, reps, device):
    """Median milliseconds of fn() over `reps` calls after two warm-up calls; on CUDA timed with CUDA
    events (the GPU's own clock, no host round trip inside the interval), else with the wall clock."""
    fn()
    fn()
    if device.type != 'cuda':
        return median_seconds(fn, reps, device, warmup=False) * 1e3
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def untrained_generator(args):
    """Seeded, untrained NCSN++ of configuration `args.config` on `args.device` (timing only)."""
    import models
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    config = models.CONFIGS[args.config]['G']
    with torch.device(device):
        G = models.NCSNpp(**config).eval().requires_grad_(False)
    return G, device, config['image_size'], config['nz']


def child_pids(pid, env_prefix=None):
    """Process ids whose parent is `pid` (read from /proc), optionally only those whose environment
    holds a variable starting with `env_prefix` (bytes, e.g. b'RANK=1')."""
    kids = []
    for stat in Path('/proc').glob('[0-9]*/stat'):
        try:
            if int(stat.read_text().rsplit(')', 1)[1].split()[1]) != pid:
                continue
            if env_prefix is None or any(v.startswith(env_prefix)
                                         for v in (stat.parent / 'environ').read_bytes().split(b'\0')):
                kids.append(int(stat.parent.name))
        except OSError:                                     # the process ended meanwhile
            continue
    return kids
