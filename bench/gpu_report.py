"""Everything worth measuring on a GPU machine, in one command and one markdown report (<= 8 minutes
on one H100/H200-class GPU):

    python bench/gpu_report.py > gpu_report.md             # all GPUs of the machine
    python bench/gpu_report.py --quick --device cpu         # a tiny CPU rehearsal of every section

Sections:
 1. the device tests (`pytest -m device`: the CUDA cases, and the no-synchronisation test);
 2. `python models.py` on the GPU (parameter counts, forward/backward times);
 3. the CIFAR-10 preset's training step at per-GPU batch 64 and 128: fp32, bf16 autocast,
    bf16 + torch.compile, bf16 + channels_last: images/s, peak memory, and the GPU-hours of the
    preset's 200k steps at the paper's global batch 256;
 4. a short real run: torchrun on every GPU (NCCL), cifar10_kld_d on --dataset fake, ~200 steps
    with a checkpoint, then a resume;
 5. sampling latency for 100 CIFAR-10 images at NFE 4 (RGM-D) and 7 (RGM-SR): fp32 / bf16, eager /
    NHWC (sample.py's CPU default) / compiled / CUDA graph, timed with CUDA events after warm-up (the paper: 250 ms on a V100);
 6. plug-and-play time per image for each task at 32 px.
Untrained networks of the paper's sizes stand in for trained ones: the cost does not depend on the
weights. Each section is timed; a failing section is reported and the next one runs.
"""
import argparse
import copy
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from common import median_ms_events as cuda_ms  # noqa: E402
import cli  # noqa: E402
import models  # noqa: E402
import pnp  # noqa: E402
import train_images  # noqa: E402
from schedules import make_schedule, sample_rgm  # noqa: E402


def run(cmd, timeout):
    """Run a command in the repository; (return code, last lines of its output)."""
    try:
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        return out.returncode, (out.stdout + out.stderr).strip()
    except subprocess.TimeoutExpired as e:
        return 124, f'timed out after {timeout} s: {(e.stdout or b"")[-2000:]!r}'


def tail(text, n=25):
    return '\n'.join(text.splitlines()[-n:])


def first_traceback(text, n=25):
    """The first Python traceback in a child's output (a torchrun worker's own error, above the
    launcher's summary) up to its error line, or the tail when there is none: the call chain's
    middle is cut, never the error."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if 'Traceback' in line), None)
    if start is None:
        return tail(text, n)
    frame = re.compile(r'^(\[rank\d+\]: )?(  |\s*\^+\s*$)')     # '  File ...', code lines, '^^^' marks
    end = next((i for i in range(start + 1, len(lines)) if not frame.match(lines[i])), len(lines) - 1)
    block = lines[start:end + 1]
    return '\n'.join(block if len(block) <= n else block[:n // 2] + ['...'] + block[-(n - n // 2 - 1):])


def last_json(text):
    """The last line of a child's output that is a JSON object: compilers may print after it."""
    return json.loads(next(line for line in reversed(text.splitlines()) if line.startswith('{')))


def section_tests(args):
    code, out = run([sys.executable, '-m', 'pytest', '-q', '-m', 'device', 'tests/test_devices.py'], 300)
    print(f'exit {code}\n```\n{tail(out, 15)}\n```')


def section_models(args):
    # models.py times on the GPU when there is one; --configs cifar10 celeba256 would add the 256 px network
    code, out = run([sys.executable, 'bench/models.py'] + (['--configs', 'tiny'] if args.quick else []), 300)
    print(f'exit {code}\n```\n{tail(out, 20)}\n```')


def section_train_step(args):
    preset = 'tiny' if args.quick else 'cifar10_kld_d'
    batches = [8] if args.quick else [64, 128]
    variants = [('fp32', 'eager'), ('bf16', 'eager'), ('bf16', 'compile'), ('bf16', 'channels_last')]
    steps = 3 if args.quick else 20
    print(f'`bench/train_step.py`, preset {preset}, one GPU per row, {steps} timed steps after warm-up\n')
    print('| per-GPU batch | precision | variant | ms/step | images/s | peak memory (GB) | GPU-hours for 200k steps '
          'at global batch 256 |')
    print('|---|---|---|---|---|---|---|')
    for batch in batches:
        for precision, variant in variants:
            if (args.quick or args.no_compile) and variant == 'compile':
                continue                                # compiling takes minutes
            job = dict(preset=preset, device=args.device, amp=precision == 'bf16', variant=variant, batch=batch,
                       warmup=2 if args.quick else 5, steps=steps, threads=0)
            code, out = run([sys.executable, 'bench/train_step.py', '--one', json.dumps(job)], 400)
            if code:
                print(f'| {batch} | {precision} | {variant} | failed: {tail(out, 1)[:100]} ||||')
                continue
            r = last_json(out)
            gpu_hours = 200_000 * (256 / batch) * r['ms'] / 3.6e6       # 256/batch GPUs' worth of steps
            print(f'| {batch} | {precision} | {variant} | {r["ms"]:.1f} | {r["images_per_s"]:.0f} | '
                  f'{r["peak_GB"]:.2f} | {gpu_hours:.0f} |', flush=True)


def section_torchrun(args):
    n = max(1, torch.cuda.device_count()) if args.device == 'cuda' else 2
    steps = 20 if args.quick else 200
    preset = 'tiny' if args.quick else 'cifar10_kld_d'
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, 'run')
        base = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', str(n),
                'train_images.py', '--preset', preset, '--dataset', 'fake', '--fake-size', str(64 * n * 4),
                '--batch-size', str(8 * n if args.quick else 64 * n), '--device', args.device, '--workers', '2',
                '--out', out, '--log-every', '10', '--sample-every', '100000', '--ckpt-every', str(steps // 2)]
        tic = time.perf_counter()
        code, text = run(base + ['--max-steps', str(steps)], 600)
        first = time.perf_counter() - tic
        print(f'{n} process(es), {"NCCL" if args.device == "cuda" else "gloo"}: {steps} steps of {preset} on fake '
              f'data, checkpoint every {steps // 2}: exit {code} in {first:.0f} s')
        if code:
            print(f'```\n{first_traceback(text)}\n```')
            return
        tic = time.perf_counter()
        code, text = run(base + ['--max-steps', str(steps + steps // 2), '--resume'], 600)
        print(f'resume to step {steps + steps // 2}: exit {code} in {time.perf_counter() - tic:.0f} s; checkpoints '
              f'{sorted(train_images.checkpoints(os.path.join(out, "checkpoints")))}')
        with open(os.path.join(out, 'log.jsonl')) as f:
            records = [json.loads(line) for line in f if '"img_per_s"' in line]
        if records:
            print(f'last log record: step {records[-1]["step"]}, {records[-1]["img_per_s"]:.0f} images/s, '
                  f'peak {records[-1]["mem_GB"]:.2f} GB')
        if code:
            print(f'```\n{tail(text)}\n```')


def section_sampling(args):
    device = torch.device(args.device)
    config, n = ('tiny', 8) if args.quick else ('cifar10', 100)
    torch.manual_seed(0)
    G = models.NCSNpp(**models.CONFIGS[config]['G']).to(device).eval().requires_grad_(False)
    size, nz = models.CONFIGS[config]['G']['image_size'], G.nz
    print(f'{n} samples of NCSN++ {config} ({size}x{size}), median of {args.reps} runs after warm-up\n')
    print('| forward process | NFE | precision | mode | latency (ms) | images/s |')
    print('|---|---|---|---|---|---|')
    for process, K in (('d', 4), ('sr', 7)):
        schedule = make_schedule(process, K).to(device)
        for precision in ('fp32', 'bf16'):
            amp = train_images.bf16_autocast(device, precision == 'bf16')
            modes = (['eager', 'channels_last'] + ([] if args.quick or args.no_compile else ['compile'])
                     + (['cuda graph'] if device.type == 'cuda' else []))
            for mode in modes:
                try:
                    fn = sampler(G, schedule, n, size, nz, device, amp, mode)
                    ms = cuda_ms(fn, args.reps, device)
                    print(f'| {process} | {K} | {precision} | {mode} | {ms:.1f} | {n / ms * 1e3:.0f} |', flush=True)
                except Exception as e:          # report and go on
                    print(f'| {process} | {K} | {precision} | {mode} | failed: {type(e).__name__}: {str(e)[:80]} ||')


def sampler(G, schedule, n, size, nz, device, autocast, mode):
    """A no-argument callable that draws n samples with Algorithm 3 in the given mode."""
    shape = (n, G.conv_in.in_channels, size, size)
    net = (torch.compile(G, mode='max-autotune-no-cudagraphs') if mode == 'compile'
           else copy.deepcopy(G).to(memory_format=torch.channels_last) if mode == 'channels_last' else G)

    def eager():
        with autocast(), torch.no_grad():
            return sample_rgm(net, schedule, shape, nz, device=device)
    if mode != 'cuda graph':
        return eager
    # CUDA graph: capture the whole K-step sampler once (static input noise), replay it.
    static = {}
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            eager()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static['out'] = eager()
    return graph.replay


def section_pnp(args):
    device = torch.device(args.device)
    config = 'tiny' if args.quick else 'cifar10'
    torch.manual_seed(0)
    G = models.NCSNpp(**models.CONFIGS[config]['G']).to(device).eval().requires_grad_(False)
    schedule = make_schedule('d', 4).to(device)
    denoise = pnp.rgm_denoiser(G, schedule, G.nz)
    batch = 8 if args.quick else 100
    print(f'NCSN++ {config}, 32 px, batch {batch}, Table 6 settings per task, sigma_y 25 for denoise\n')
    print('| task | M | J | ms per image |')
    print('|---|---|---|---|')
    for task in ('denoise', 'sr2', 'sr4', 'color', 'inpaint'):
        settings, _ = pnp.paper_settings(task, 32)
        op = pnp.make_operator(task, (3, 32, 32)).to(device)
        x = torch.rand(batch, 3, 32, 32, device=device) * 2 - 1
        y = pnp.degrade(x, op, pnp.sigma_to_unit(25 if task == 'denoise' else 0))
        with torch.no_grad():
            ms = cuda_ms(lambda: pnp.drs(y, op, denoise, **settings), max(1, args.reps // 2), device)
        print(f'| {task} | {settings["M"]} | {settings["J"]} | {ms / batch:.2f} |', flush=True)


SECTIONS = [('Device tests', section_tests), ('`python models.py`', section_models),
            ('Training step, CIFAR-10 preset', section_train_step), ('torchrun: train, checkpoint, resume', section_torchrun),
            ('Sampling latency, 100 images', section_sampling), ('Plug-and-play, time per image', section_pnp)]


def main(args):
    if args.device == 'cuda' and not torch.cuda.is_available():
        sys.exit('no CUDA device: run on a GPU machine, or rehearse with --quick --device cpu')
    name = torch.cuda.get_device_name() if args.device == 'cuda' else f'CPU ({os.cpu_count()} cores)'
    count = torch.cuda.device_count() if args.device == 'cuda' else 1
    print(f'# rgm GPU report\n\n{count} x {name}, torch {torch.__version__}, '
          f'CUDA {torch.version.cuda}, {time.strftime("%Y-%m-%d %H:%M")}{" (quick rehearsal)" if args.quick else ""}\n')
    wall = time.perf_counter()
    for title, fn in SECTIONS:
        if args.sections and not any(s in title.lower() for s in args.sections):
            continue
        print(f'## {title}\n')
        tic = time.perf_counter()
        try:
            fn(args)
        except Exception:
            print(f'```\n{tail(traceback.format_exc(), 12)}\n```')
        print(f'\n({time.perf_counter() - tic:.0f} s)\n', flush=True)
    print(f'Total: {time.perf_counter() - wall:.0f} s')


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', default='cuda')
    p.add_argument('--quick', action='store_true', help='tiny sizes and few steps (a rehearsal, e.g. on a CPU)')
    p.add_argument('--reps', type=cli.positive_int, default=10, help='timed repetitions of the latency rows')
    p.add_argument('--no-compile', action='store_true', help='skip the torch.compile rows (their autotuning takes '
                   'minutes on a GPU)')
    p.add_argument('--sections', nargs='+', help='run only the sections whose title contains one of these words')
    cli.run_main(main, p.parse_args())
