"""Choose plug-and-play settings (M, lambda, alpha) for a model on *training* images, so that the
test images pnp.py reports on play no part in the choice:

    python tune_pnp.py --ckpt runs/fashion_kld/checkpoints/ckpt_00004000.pt --dataset fashion_mnist \
        --tasks denoise sr2 sr4 inpaint --n 100

For each task it runs pnp.drs on the first --n images of the training split over a grid of
settings and prints a table of mean PSNR per setting (best first), then the pnp.py flags of the
best one. J stays at 1 (one level per iteration), as Table 6 for 32 px images.
"""
import argparse
import itertools
import time

import torch

import data
import pnp
import schedules


def observe(task, images, sigma_y, seed=0):
    """The task's operator and the observations y = H x + noise of `images` (B, C, H, W) in [-1, 1]:
    one draw per task, shared by every setting and by the baselines."""
    op = pnp.make_operator(task, images.shape[1:]).to(images.device)
    return op, pnp.degrade(images, op, pnp.sigma_to_unit(sigma_y), torch.Generator().manual_seed(seed))


def mean_scores(x, images):
    """Mean PSNR and SSIM of restorations x against the clean images (both in [-1, 1])."""
    x, truth = pnp.to_unit(x), pnp.to_unit(images)
    return pnp.psnr(x, truth).mean().item(), pnp.ssim(x, truth).mean().item()


def evaluate(G, meta, schedule, op, y, images, settings, seed=0):
    """Mean PSNR and SSIM of RGM-DRS restoring y for one setting (J = 1)."""
    denoise = pnp.rgm_denoiser(G, schedule, meta['nz'], generator=torch.Generator(images.device).manual_seed(seed))
    return mean_scores(pnp.drs(y, op, denoise, J=1, **settings), images)


def main(args):
    torch.manual_seed(args.seed)
    G, meta = pnp.load_model(args.ckpt, device=args.device)
    schedule = schedules.schedule_of(meta, args.device)
    if args.dataset == 'fashion_mnist':
        images = data.FashionMNIST(args.data_dir, train=True).tensors(args.n)[0]
    else:
        import torchvision
        train = torchvision.datasets.CIFAR10(args.data_dir, train=True, download=True)
        images = torch.stack([pnp.pil_to_model(train[i][0]) for i in range(args.n)])
    images = images.to(args.device)
    grid = list(itertools.product(args.M, args.lam, args.alpha))
    print(f'{args.ckpt}: {args.n} training images of {args.dataset}, {len(grid)} settings per task')
    for task in args.tasks:
        sigma_y = args.sigma_y if task == 'denoise' else 0.0
        tic, rows = time.perf_counter(), []
        op, y = observe(task, images, sigma_y, args.seed)
        for M, lam, alpha in grid:
            p, s = evaluate(G, meta, schedule, op, y, images, dict(M=M, lam=lam, alpha=alpha), args.seed)
            rows.append((p, s, M, lam, alpha))
        rows.sort(reverse=True)
        baseline = {k: v for k, v in pnp.paper_settings(task, meta['image_size'])[0].items() if k != 'J'}
        paper = evaluate(G, meta, schedule, op, y, images, baseline, args.seed)
        others = ', '.join(f'{name} {mean_scores(x, images)[0]:.2f}' for name, x in pnp.baselines(y, op).items())
        print(f'\n{task} (sigma_y {sigma_y}): {time.perf_counter() - tic:.0f} s; Table 6 setting {baseline}: '
              f'PSNR {paper[0]:.2f}; baselines: {others}\n')
        print('| M | lambda | alpha | PSNR | SSIM |\n|---|---|---|---|---|')
        for p, s, M, lam, alpha in rows[:args.show]:
            print(f'| {M} | {lam:g} | {alpha:g} | {p:.2f} | {s:.4f} |')
        p, s, M, lam, alpha = rows[0]
        print(f'\nbest: --M {M} --lam {lam:g} --alpha {alpha:g}', flush=True)


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--ckpt', required=True)
    p.add_argument('--dataset', default='fashion_mnist', choices=['fashion_mnist', 'cifar10'])
    p.add_argument('--data-dir', default='data')
    p.add_argument('--tasks', nargs='+', default=['denoise', 'sr2', 'sr4', 'inpaint'], choices=sorted(pnp.TASKS))
    p.add_argument('--n', type=data.positive_int, default=100, help='first N training images')
    p.add_argument('--sigma-y', type=data.positive_float, default=25.0, help='denoising noise, 0-255 units')
    p.add_argument('--M', type=data.positive_int, nargs='+', default=[5, 10, 20])
    p.add_argument('--lam', type=data.positive_float, nargs='+', default=[0.01, 0.1, 1.0, 5.0])
    p.add_argument('--alpha', type=data.positive_float, nargs='+', default=[0.1, 0.2, 0.5])
    p.add_argument('--show', type=data.positive_int, default=5, help='rows of each table')
    p.add_argument('--device', default='cpu')
    p.add_argument('--seed', type=int, default=0)
    main(p.parse_args())
