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


def count_flops(fn):
    """Floating-point operations of one call of fn(), by torch's flop counter formulas
    (torch.utils.flop_counter's registry: convolutions and matrix products, forward and backward;
    element-wise work is not counted). Its FlopCounterMode is not used as is: its module tracker fails
    on a step that toggles requires_grad and takes gradients inside the step (R1, the critic)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    class Count(TorchDispatchMode):
        flops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            formula = flop_registry.get(func._overloadpacket)
            if formula is not None:
                Count.flops += formula(*args, **(kwargs or {}), out_val=out)
            return out
    with Count():
        fn()
    return Count.flops


# The network's dominant layer on Fashion-MNIST: a 3x3 convolution, 32 -> 32 channels at 16 x 16, batch 32
PEAK_SHAPE = (32, 32, 16, 16)


@torch.no_grad()
def conv_peak(device, dtype=torch.float32, shape=PEAK_SHAPE, reps=30, channels_last=False):
    """GFLOP/s of a 3x3 convolution (padding 1, C -> C channels) on input `shape` (B, C, H, W) in `dtype`:
    what this machine reaches on the work that dominates the network, the yardstick of a roofline.
    Measured, not taken from a data sheet, so it is this machine on this day: the fastest of `reps` calls
    after 10 warm-up calls (the first calls choose and prepare the kernels, several times slower)."""
    B, C, H, W = shape
    device = torch.device(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    conv = torch.nn.Conv2d(C, C, 3, padding=1).to(device=device, dtype=dtype, memory_format=fmt)
    x = torch.randn(shape, device=device, dtype=dtype).to(memory_format=fmt)
    for _ in range(10):
        conv(x)
    seconds = min(median_seconds(lambda: conv(x), 1, device, warmup=False) for _ in range(reps))
    return count_flops(lambda: conv(x)) / seconds / 1e9


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
