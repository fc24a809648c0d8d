"""Time per image of plug-and-play restoration (pnp.drs, Algorithm 4) per task.

Two denoisers: a stand-in (the identity, so the time is the SVD operators and the DRS loop
alone) and the RGM denoiser with an untrained NCSN++ of a named configuration (the network cost
does not depend on its weights). M and J are pnp.paper_settings' for each task at the image size: at 32 px
Table 6's CIFAR-10 column for denoise, sr2 and sr4; its 256 px rows for sr8 and color (Table 6 has no
32 px ones), and the colorization row for inpaint (not in the paper).

    OMP_NUM_THREADS=1 python bench/pnp.py                      # tiny NCSN++, 32x32, CPU
    python bench/pnp.py --config cifar10 --device cuda         # the paper's CIFAR-10 generator
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import median_seconds, untrained_generator   # noqa: E402
import cli          # noqa: E402
import models       # noqa: E402
import pnp          # noqa: E402
import schedules    # noqa: E402


def main(args):
    G, device, size, nz = untrained_generator(args)
    schedule = schedules.make_schedule('d', K=4)
    name = torch.cuda.get_device_name() if device.type == 'cuda' else f'cpu, {torch.get_num_threads()} threads'
    print(f'{name}, torch {torch.__version__}, NCSN++ {args.config} ({size}x{size}, '
          f'{sum(p.numel() for p in G.parameters()) / 1e6:.2f}M params), batch {args.batch}, median of {args.reps}\n')
    print('| task | M | J | G calls / image | stand-in ms / image | RGM ms / image | RGM ms / G call |')
    print('|---|---|---|---|---|---|---|')
    for task in args.tasks:
        settings = pnp.paper_settings(task, size)[0]
        op = pnp.make_operator(task, (3, size, size))
        x = torch.rand(args.batch, 3, size, size, device=device) * 2 - 1
        y = pnp.degrade(x, op, pnp.sigma_to_unit(args.sigma_y))
        denoise = pnp.rgm_denoiser(G, schedule, nz)
        t_id = median_seconds(lambda: pnp.drs(y, op, lambda v, j: v, **settings), args.reps, device) / args.batch
        t_rgm = median_seconds(lambda: pnp.drs(y, op, denoise, **settings), args.reps, device) / args.batch
        calls = settings['M'] * settings['J']
        print(f"| {task} | {settings['M']} | {settings['J']} | {calls} | {1e3 * t_id:.2f} | "
              f'{1e3 * t_rgm:.1f} | {1e3 * t_rgm / calls:.2f} |')


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description='Time per image of pnp.drs per task.')
    parser.add_argument('--config', default='tiny', choices=sorted(models.CONFIGS), help='NCSN++ configuration')
    parser.add_argument('--tasks', nargs='+', default=['denoise', 'sr2', 'sr4', 'sr8', 'color', 'inpaint'],
                        choices=sorted(pnp.TASKS))
    parser.add_argument('--batch', type=cli.positive_int, default=8)
    parser.add_argument('--reps', type=cli.positive_int, default=3)
    parser.add_argument('--sigma-y', type=cli.nonnegative_float, default=0.0, help='observation noise, 0-255 units')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--threads', type=cli.nonnegative_int, default=0, help='CPU threads (0: torch default)')
    cli.run_main(main, parser.parse_args())
