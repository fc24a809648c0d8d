"""What other work on the machine costs a training step, and how OpenMP's idle threads should wait: ms
per step of a preset (bench/train_step.py's bench(), eager, fp32, CPU) with 1 and 2 threads, alone and
beside N busy processes (each a Python loop `while True: pass`, one core's worth of load), under three
ways of waiting: libgomp's default (spin 300,000 turns, then sleep), OMP_WAIT_POLICY=PASSIVE (sleep at
once) and GOMP_SPINCOUNT=1000 (spin briefly; what train_images.py sets). Each row runs in a fresh
process whose environment is set before torch is imported (OpenMP reads it once, at start-up).

    python bench/load.py                                   # fashion_kld_d, 1 busy process
    python bench/load.py --preset fashion_mmse_d --busy 2 --steps 20
    python bench/load.py --json results/load.json          # also the rows as JSON (docs/benchmarks.md)

"Alone" means no busy process of this script's: the rest of the machine should be idle, or the
numbers measure that too.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import cli  # noqa: E402
import train_images  # noqa: E402  (imports torch in this process, after which the children start fresh)
sys.path.append(HERE)                       # last: bench/models.py shadows no module
from train_step import WAIT_VARIABLES, WAITS  # noqa: E402  (the ways to wait, one table for both scripts)

BUSY = 'while True: pass'


def one_row(job):
    """In the child: the environment is already set; torch is imported here, by train_step."""
    sys.path.insert(0, HERE)
    import torch
    from train_step import bench
    r = bench(job['preset'], 'cpu', False, 'eager', job['batch'], job['warmup'], job['steps'], job['threads'])
    return dict(r, torch=torch.__version__, threads_used=torch.get_num_threads(),
                omp_wait_policy=os.environ.get('OMP_WAIT_POLICY'), gomp_spincount=os.environ.get('GOMP_SPINCOUNT'))


def cpu_name():
    try:
        with open('/proc/cpuinfo') as f:
            return next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def run_row(job, busy, wait):
    """One row in a fresh process beside `busy` busy-loop processes (started before it, killed after)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(job['threads']))
    for name in WAIT_VARIABLES:
        env.pop(name, None)
    env.update(WAITS[wait])
    loops = [subprocess.Popen([sys.executable, '-c', BUSY]) for _ in range(busy)]
    try:
        time.sleep(0.5 if busy else 0)                         # let the loops reach full speed
        out = subprocess.run([sys.executable, __file__, '--one', json.dumps(job)], env=env,
                             capture_output=True, text=True)
    finally:
        for p in loops:
            p.kill()
            p.wait()
    if out.returncode:
        return None, (out.stderr.strip().splitlines() or ['no output'])[-1][:80]
    return json.loads(out.stdout.strip().splitlines()[-1]), None


def main(args):
    machine = (f'{cpu_name()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, '
               f'Python {platform.python_version()}')
    print(f'{machine}; preset {args.preset}, eager fp32, {args.steps} timed steps after {args.warmup}; one process '
          'per row')
    rows, torch_version = [], None
    for wait in WAITS:
        for threads in args.threads:
            alone = None
            for busy in dict.fromkeys((0, args.busy)):          # 0 once when --busy 0
                job = dict(preset=args.preset, batch=args.batch, warmup=args.warmup, steps=args.steps, threads=threads)
                r, error = run_row(job, busy, wait)
                if r is not None:
                    torch_version = r['torch']
                    alone = r['ms'] if busy == 0 else alone
                rows.append(dict(wait=wait, threads=threads, busy=busy, error=error,
                                 **({} if r is None else dict(batch=r['batch'], ms=r['ms'], alone_ms=alone))))
    print(f'torch {torch_version}\n')
    print(table(rows))
    if args.json:
        cli.write_json(args.json, dict(command='python bench/load.py ' + ' '.join(sys.argv[1:]),
                                       date=time.strftime('%Y-%m-%d'), machine=machine, torch=torch_version,
                                       preset=args.preset, steps=args.steps, rows=rows))


def table(rows):
    """The markdown table of the rows (also rendered into docs/benchmarks.md from the JSON)."""
    lines = ['| OpenMP wait | threads | busy processes | batch | ms/step | images/s | x alone |',
             '|---|---|---|---|---|---|---|']
    for r in rows:
        if r.get('ms') is None:
            lines.append(f'| {r["wait"]} | {r["threads"]} | {r["busy"]} | failed: {r["error"]} ||||')
            continue
        ratio = f'{r["ms"] / r["alone_ms"]:.2f}' if r.get('alone_ms') else '-'
        lines.append(f'| {r["wait"]} | {r["threads"]} | {r["busy"]} | {r["batch"]} | {r["ms"]:.1f} | '
                     f'{r["batch"] / r["ms"] * 1e3:.1f} | {ratio} |')
    return '\n'.join(lines)


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--preset', default='fashion_kld_d', choices=sorted(train_images.PRESETS))
    p.add_argument('--threads', type=cli.positive_int, nargs='+', default=[1, 2],
                   help='CPU threads of the training process')
    p.add_argument('--busy', type=cli.nonnegative_int, default=1, help='busy processes beside it in the loaded rows')
    p.add_argument('--batch', type=cli.positive_int, help="default: the preset's global batch")
    p.add_argument('--warmup', type=cli.nonnegative_int, default=3)
    p.add_argument('--steps', type=cli.positive_int, default=15, help='timed steps (R1 every lazy_reg of them)')
    p.add_argument('--json', help='also write the rows, the command, date and machine to this JSON file')
    p.add_argument('--one', help=argparse.SUPPRESS)                  # internal: one row, printed as JSON
    args = p.parse_args()
    if args.one:
        print(json.dumps(one_row(json.loads(args.one))))
    else:
        cli.run_main(main, args)
