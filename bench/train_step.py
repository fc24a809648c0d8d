"""Speed of one training iteration of a preset (train_images.train_step, or mmse_step for the MMSE
baseline, plus the EMA update), side by side: eager or torch.compile, channels_last or not, threads,
and on a GPU fp32 or bf16 autocast. Each row runs in a fresh process, so its peak memory (RSS on a
CPU, allocated memory on a GPU) is its own and a compiled row does not warm up the next.

    python bench/train_step.py                                              # tiny + fashion presets, CPU
    python bench/train_step.py --presets fashion_kld_d fashion_mmse_d --variants eager compile --threads 2
    python bench/train_step.py --presets cifar10_kld_d --device cuda --precision fp32 bf16 --batch 64 128
    python bench/train_step.py --presets fashion_kld_d --flags "" "--K 1" "--lam 0" "--nz 0" "--posterior " --threads 2
    python bench/train_step.py --presets fashion_kld_d --variants eager channels_last --waits passive spin --threads 2

(A --flags string holds a space, as "--posterior " does: argparse takes one without for an option of this script.)

The last column extrapolates the preset's --max-steps at this batch on this one device. Random
images stand in for data; R1 runs every lazy_reg steps as in training, so time enough steps to
include it. Compiled rows exclude compilation (it happens in the warm-up steps).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cli  # noqa: E402
import common  # noqa: E402
from common import conv_peak, count_flops  # noqa: E402
import models  # noqa: E402
import train_images  # noqa: E402

VARIANTS = {'eager': (False, False), 'channels_last': (False, True), 'compile': (True, False),
            'compile+channels_last': (True, True)}
# How idle OpenMP threads wait in a row's process (read when torch loads, so set in the child's
# environment): 'spin' is what train_images.py sets, 'passive' sleeps at once (its earlier default),
# 'default' is libgomp's own (spin 300,000 turns). bench/load.py compares all three.
WAITS = {'spin': {'GOMP_SPINCOUNT': str(train_images.OPENMP_SPIN_TURNS)}, 'passive': {'OMP_WAIT_POLICY': 'PASSIVE'},
         'default': {}}
WAIT_VARIABLES = ('OMP_WAIT_POLICY', 'GOMP_SPINCOUNT')


def top_operators(step, steps, device, k=8):
    """[(operator, share of the self time)] of the k costliest operators over `steps` calls of step(i)
    (torch.profiler; device time on CUDA, CPU time elsewhere): where a step's time goes."""
    from torch.profiler import ProfilerActivity, profile
    cuda = device.type == 'cuda'
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        for i in range(steps):
            step(i)
        if cuda:
            torch.cuda.synchronize(device)
    events = prof.key_averages()
    time_of = (lambda e: e.self_device_time_total) if cuda else (lambda e: e.self_cpu_time_total)
    total = sum(time_of(e) for e in events) or 1
    return [(e.key, time_of(e) / total) for e in sorted(events, key=time_of, reverse=True)[:k]]


def bench(preset, device, amp, variant, batch, warmup, steps, threads, flags=(), profile=0):
    """{ms, images_per_s, peak_GB} of one preset's training iteration (with train_images `flags` on top):
    the networks, optimisers and prior built by train_images.configure and build_nets, as a run builds them;
    with `profile` steps, also the top operators of that many more steps (top_operators)."""
    compile, channels_last = VARIANTS[variant]
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device)
    cfg = train_images.parse_args(['--preset', preset, *flags])
    cfg.batch_size = batch = batch or cfg.batch_size
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    cfg.seed = 0
    setup = train_images.configure(cfg, 1, device)
    nets = train_images.build_nets(cfg, setup, device, steps_per_epoch=1, memory_format=fmt)
    G_ema, params = list(nets.G_ema.parameters()), list(nets.G.parameters())
    autocast = train_images.bf16_autocast(device, amp)
    size = setup.image_size
    x0 = (torch.rand(batch, setup.channels, size, size, device=device) * 2 - 1).to(memory_format=fmt)
    G_train = torch.compile(nets.G) if compile else nets.G
    if setup.baseline:
        def step(i):
            train_images.BASELINE_STEPS[cfg.prior](G_train, nets.opt_G, x0, setup.schedule, autocast=autocast)
            models.ema_update(G_ema, params, cfg.ema_decay)
    else:
        D_fast = torch.compile(nets.D) if compile else nets.D
        critic = train_images.Critic(nets.D, train=D_fast, frozen=D_fast)     # R1 on the eager D, as in training
        shared = torch.Generator(device).manual_seed(0)

        def step(i):
            train_images.train_step(G_train, critic, nets.opt_G, nets.opt_D, x0, setup.schedule, nets.critic,
                                    nets.prior, i, cfg.lam, setup.nz, cfg.posterior, shared=shared, autocast=autocast)
            models.ema_update(G_ema, params, cfg.ema_decay)

    for i in range(1, warmup + 1):          # start at step 1: R1 (step 0) is timed in its turn below
        step(i)
    # the arithmetic of the timed steps: one plain step and one with R1, counted, weighted as they are timed
    lazy = getattr(cfg, 'lazy_reg', 0) if not setup.baseline else 0
    plain, with_r1 = count_flops(lambda: step(1)), count_flops(lambda: step(0)) if lazy else 0
    r1_steps = len(range(0, steps, lazy)) if lazy else 0
    flops = (plain * (steps - r1_steps) + with_r1 * r1_steps) / steps
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
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024     # this process's peak
    ms = (time.perf_counter() - start) / steps * 1e3
    return dict(ms=ms, images_per_s=batch / ms * 1e3, peak_GB=peak / 2**30, batch=batch, max_steps=cfg.max_steps,
                gflop=flops / 1e9, profile=top_operators(step, profile, device) if profile else None)


def peak(device, amp, variant, threads):
    """GFLOP/s of the network's dominant convolution (common.conv_peak) in this row's precision and layout."""
    if threads:
        torch.set_num_threads(threads)
    return dict(gflops=conv_peak(device, torch.bfloat16 if amp else torch.float32,
                                 channels_last=VARIANTS[variant][1]))


def child(job, wait='spin'):
    """Run one job (a row, or a peak with kind='peak') in a fresh process whose idle OpenMP threads wait
    as `wait` says (WAITS): its JSON, or None and the error."""
    env = {k: v for k, v in os.environ.items() if k not in WAIT_VARIABLES}
    out = subprocess.run([sys.executable, __file__, '--one', json.dumps(job)], capture_output=True, text=True,
                         env=dict(env, **WAITS[wait]))
    if out.returncode:
        return None, out.stderr.strip().splitlines()[-1][:80]
    return json.loads(next(line for line in reversed(out.stdout.splitlines()) if line.startswith('{'))), None


def main(args):
    device = torch.device(args.device)
    precisions = args.precision or (['fp32', 'bf16'] if device.type == 'cuda' else ['fp32'])
    threads = args.threads if device.type == 'cpu' else [0]
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{os.cpu_count()} CPUs'
    print(f'one device ({name}), torch {torch.__version__}, {args.steps} timed steps after {args.warmup} '
          '(compilation happens in the warm-up); one process per row\n')
    print('Roofline: GFLOP a step counted by torch\'s flop counter (convolutions and matrix products, forward and '
          'backward), the rate achieved, and its share of the peak: a 3x3 convolution of the network\'s dominant '
          f'shape {common.PEAK_SHAPE} measured in a fresh process with the same threads, precision and layout.\n')
    print('| preset | prior | variant | OpenMP wait | threads | precision | batch | ms/step | images/s | GFLOP/step | '
          'GFLOP/s | peak GFLOP/s | % of peak | peak memory (GB) | hours for --max-steps |')
    print('|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|')
    peaks, profiles = {}, []
    for preset, flags in ([p, f.split()] for p in args.presets for f in args.flags or ['']):
        prior = train_images.parse_args(['--preset', preset, *flags]).prior
        row = ' '.join([preset, *flags])
        for batch in args.batch or [None]:
            for variant, wait in ((v, w) for v in args.variants for w in args.waits):
                for n in threads:
                    for precision in precisions:
                        amp = precision == 'bf16'
                        key = (amp, VARIANTS[variant][1], n, wait)
                        if key not in peaks:
                            peaks[key] = child(dict(kind='peak', device=args.device, amp=amp, variant=variant,
                                                    threads=n), wait)[0]
                        job = dict(preset=preset, device=args.device, amp=amp, variant=variant, batch=batch,
                                   warmup=args.warmup, steps=args.steps, threads=n, flags=flags, profile=args.profile)
                        r, error = child(job, wait)
                        if r is None:
                            print(f'| {row} | {prior} | {variant} | {wait} | {n or "-"} | {precision} | '
                                  f'{batch or "-"} | failed: {error} ||||||||', flush=True)
                            continue
                        rate = r['gflop'] / r['ms'] * 1e3
                        top = peaks[key]['gflops'] if peaks[key] else float('nan')
                        print(f'| {row} | {prior} | {variant} | {wait} | {n or "-"} | {precision} | {r["batch"]} | '
                              f'{r["ms"]:.1f} | {r["images_per_s"]:.1f} | {r["gflop"]:.2f} | {rate:.1f} | {top:.0f} | '
                              f'{100 * rate / top:.0f}% | {r["peak_GB"]:.2f} | '
                              f'{r["max_steps"] * r["ms"] / 3.6e6:.3g} |', flush=True)
                        if r.get('profile'):
                            profiles.append((f'{row}, {variant}, {wait}, {n or "-"} threads, {precision}', r['profile']))
    if profiles:
        print(f'\nWhere the time goes: the costliest operators of {args.profile} more steps (torch.profiler, share of '
              'the self time)\n')
        for label, top in profiles:
            print(f'- {label}: ' + ', '.join(f'{name} {100 * share:.1f}%' for name, share in top))

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--presets', nargs='+', default=['tiny', 'fashion_kld_d', 'fashion_mmse_d'],
                   choices=sorted(train_images.PRESETS))
    p.add_argument('--flags', nargs='+', metavar='"FLAGS"', help='train_images flags on top of each preset, one '
                   'quoted string per row set, e.g. "" "--K 1" "--nz 0" (an ablation costs what its flags make it)')
    p.add_argument('--device', default='cpu')
    p.add_argument('--batch', type=cli.positive_int, nargs='+', help="default: the preset's global batch")
    p.add_argument('--variants', nargs='+', default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument('--waits', nargs='+', default=['spin'], choices=list(WAITS),
                   help="how idle OpenMP threads wait: 'spin' (the default: briefly, as train_images.py sets), "
                        "'passive' (sleep at once) or 'default' (libgomp's long spin); on a CPU only")
    p.add_argument('--profile', type=cli.nonnegative_int, default=0, metavar='STEPS',
                   help='also profile this many steps of each row and print its costliest operators')
    p.add_argument('--precision', nargs='+', choices=['fp32', 'bf16'], help='default: fp32 (CPU), fp32 and bf16 (GPU)')
    p.add_argument('--threads', type=cli.nonnegative_int, nargs='+', default=[1, 2], help='CPU threads (0: torch\'s)')
    p.add_argument('--warmup', type=cli.nonnegative_int, default=3)
    p.add_argument('--steps', type=cli.positive_int, default=15, help='timed steps (R1 every lazy_reg of them)')
    p.add_argument('--one', help=argparse.SUPPRESS)                  # internal: one row, printed as JSON
    args = p.parse_args()
    if args.one:
        job = json.loads(args.one)
        print(json.dumps(peak(**{k: v for k, v in job.items() if k != 'kind'}) if job.get('kind') == 'peak'
                         else bench(**job)))
    else:
        cli.run_main(main, args)
