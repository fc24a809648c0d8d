"""The paper's image claims in miniature, on Fashion-MNIST and a 2-core CPU, in one command:

    python bench/fashion_table.py --dry-run                    # what it would do, how long it expects
    python bench/fashion_table.py                              # everything (hours on 2 cores; resumable)
    python bench/fashion_table.py --rows floor kld_d mmse_d    # some rows

For each model row it trains the model unless its run folder (--root/<row>) holds the final checkpoint
(a run cut short is resumed from its latest checkpoint), samples --n images with sample.py (seeded),
scores them with the Fashion-MNIST classifier against the test images, and at the end writes
table.md, table.json and samples.png (16 samples per row from seed 0: the same start noise for the
rows whose start distribution has one shape) into --root. A row already scored at this --n is not
scored again. Trainings and samplings run one at a time, each in its own process.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import metrics  # noqa: E402
import train_images  # noqa: E402

# row: (label, preset, extra training flags). The ablations are flags on fashion_kld_d (Table 3, Table 7).
MODEL_ROWS = {
    'kld_d':      ('RGM-KLD-D, K = 4', 'fashion_kld_d', []),
    'kld_sr':     ('RGM-KLD-SR, K = 7', 'fashion_kld_sr', []),
    'dswd_d':     ('RGM-DSWD-D, K = 4', 'fashion_dswd_d', []),
    'kld_d_k1':   ('RGM-KLD-D, K = 1 (one step)', 'fashion_kld_d', ['--K', '1']),
    'kld_d_lam0': ('RGM-KLD-D without fidelity (lambda = 0)', 'fashion_kld_d', ['--lam', '0']),
    'kld_d_nz0':  ('RGM-KLD-D without z', 'fashion_kld_d', ['--nz', '0']),
    'kld_d_post': ('RGM-KLD-D, posterior sampling (Algorithm 1)', 'fashion_kld_d', ['--posterior']),
    'mmse_d':     ('MMSE, K = 4 (same network without z)', 'fashion_mmse_d', []),
}
REAL_ROWS = {'floor': '10,000 training images (the floor)', 'blur3': 'training images, 3x3 box blur',
             'blur5': 'training images, 5x5 box blur'}
ROWS = {**REAL_ROWS, **{name: row[0] for name, row in MODEL_ROWS.items()}}
SEEDED_ROW = 'kld_d'            # scored over three sampling seeds: how much of a difference is noise
# Seconds per training step alone on the 2-core VM at 2 threads (bench/train_step.py), and per sampled
# image at NFE 1: estimates for --dry-run until a row's own log says better.
STEP_SECONDS = {'kld': 0.86, 'dswd': 1.0, 'mmse': 0.49}
SAMPLE_SECONDS_PER_NFE = 0.004


def preset_args(row):
    """The training flags of a model row, parsed as train_images parses them."""
    _, preset, flags = MODEL_ROWS[row]
    return train_images.parse_args(['--preset', preset, *flags])


def final_checkpoint(root, row):
    """The row's final training checkpoint, or None."""
    path = root / row / 'checkpoints' / f'ckpt_{preset_args(row).max_steps:08d}.pt'
    return path if path.is_file() else None


def progress(root, row):
    """(steps done, seconds per step from the run's own log or the estimate)."""
    cfg = preset_args(row)
    done = max(train_images.checkpoints(str(root / row / 'checkpoints')) or [0])
    per_step = STEP_SECONDS.get(cfg.prior, STEP_SECONDS['kld'])
    log = root / row / 'log.jsonl'
    if log.is_file():
        rates = [r['img_per_s'] for r in map(json.loads, log.read_text().splitlines()) if 'img_per_s' in r]
        if rates:
            per_step = cfg.batch_size / sorted(rates)[len(rates) // 2]
    return done, per_step


def run(cmd, log):
    """Run one step of the reproduction in its own process, its output appended to `log`."""
    print('  $ ' + ' '.join(cmd), flush=True)
    with open(log, 'a') as f:
        code = subprocess.call(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if code:
        raise SystemExit(f'failed (exit {code}); the last lines of {log}:\n' + ''.join(open(log).readlines()[-15:]))


def train(root, row, data_dir):
    _, preset, flags = MODEL_ROWS[row]
    out = root / row
    resume = ['--resume'] if train_images.checkpoints(str(out / 'checkpoints')) else []
    run([sys.executable, 'train_images.py', '--preset', preset, *flags, '--data-dir', data_dir, '--out', str(out),
         *resume], root / f'{row}.train.log')


def score(root, row, seed, n, data_dir, classifier):
    """sample.py on the row's final checkpoint: its metrics.json (sampled and scored once per n, seed)."""
    out = root / row / f'eval_n{n}_seed{seed}'
    path = out / 'metrics.json'
    if not path.is_file():
        run([sys.executable, 'sample.py', '--ckpt', str(final_checkpoint(root, row)), '--n', str(n),
             '--batch-size', '500', '--seed', str(seed), '--data-dir', data_dir, '--classifier', classifier,
             '--out', str(out), '--overwrite'], root / f'{row}.sample.log')
    return json.loads(path.read_text())


def estimate(root, rows, n, seeds):
    """(lines, seconds) of what is left to do."""
    lines, total = [], 0.0
    for row in rows:
        if row in REAL_ROWS:
            lines.append(f'{row:11s} real images: scored in seconds')
            continue
        cfg = preset_args(row)
        done, per_step = progress(root, row)
        left = 0 if final_checkpoint(root, row) else (cfg.max_steps - done) * per_step
        sampled = sum((root / row / f'eval_n{n}_seed{s}' / 'metrics.json').is_file() for s in seeds[row])
        sampling = (len(seeds[row]) - sampled) * n * cfg.K * SAMPLE_SECONDS_PER_NFE
        total += left + sampling
        state = 'trained' if final_checkpoint(root, row) else f'step {done} of {cfg.max_steps}'
        lines.append(f'{row:11s} {state:22s} train {left / 60:5.0f} min, sample {sampling / 60:4.0f} min '
                     f'({len(seeds[row]) - sampled} x {n} images at NFE {cfg.K})')
    return lines, total


SHIPPED_ROWS = ('kld_d', 'kld_sr', 'dswd_d', 'mmse_d')       # checkpoints/<preset>.pt, with the classifier
SHIPPED_FEATURES = 4000          # test features kept for KID and precision / recall (fp16: 1 MB)


def ship(root, data_dir, classifier):
    """Write into checkpoints/ what a fresh clone samples and scores with: the EMA generator of each
    trained row of SHIPPED_ROWS (models.export_generator, fp16) and the classifier with the test set's
    statistics, its first SHIPPED_FEATURES features in fp16 and the floor (metrics.reference_of)."""
    import torch
    import data
    import models
    out = ROOT / 'checkpoints'
    for row in SHIPPED_ROWS:
        ckpt = final_checkpoint(root, row)
        if ckpt is not None:
            path = out / f'{MODEL_ROWS[row][1]}.pt'
            models.export_generator(models.load_checkpoint(ckpt), path)
            print(f'wrote {path} ({path.stat().st_size / 2**20:.2f} MB)')
    net, accuracy = metrics.load_classifier(classifier)
    test = data.FashionMNIST(data_dir, train=False).images
    ref = metrics.reference_of(net, test, data.FashionMNIST(data_dir, train=True).images[:len(test)])
    ref['features'] = ref['features'][:SHIPPED_FEATURES].half()
    metrics.save_classifier(net, accuracy, out / 'fashion_classifier.pt', reference=ref)
    print(f"wrote {out / 'fashion_classifier.pt'} ({(out / 'fashion_classifier.pt').stat().st_size / 2**20:.2f} MB; "
          f"test accuracy {accuracy:.4f}, floor FD {ref['fd_floor']:.3f})")


def main(args):
    if args.ship:
        return ship(Path(args.root), args.data_dir, args.classifier)
    root, rows = Path(args.root), args.rows or list(ROWS)
    seeds = {row: [0, 1, 2] if row == SEEDED_ROW else [0] for row in rows}
    lines, total = estimate(root, rows, args.n, seeds)
    print(f'{len(rows)} rows in {root}, n = {args.n}; about {total / 3600:.1f} hours left on a 2-core CPU:')
    print('\n'.join('  ' + line for line in lines))
    if args.dry_run:
        return
    root.mkdir(parents=True, exist_ok=True)
    results, started = {}, time.time()
    for i, row in enumerate(rows, 1):
        print(f'[{i}/{len(rows)}] {row}: {ROWS[row]} ({(time.time() - started) / 60:.0f} min so far)', flush=True)
        if row in REAL_ROWS:
            continue
        if not final_checkpoint(root, row):
            train(root, row, args.data_dir)
        results[row] = [score(root, row, seed, args.n, args.data_dir, args.classifier) for seed in seeds[row]]
    if any(row in REAL_ROWS for row in rows):
        real = metrics.reference_scores(args.classifier, args.data_dir, args.n)   # the floor, blurred images
        results.update({row: [real[row]] for row in rows if row in REAL_ROWS})
    write_table(root, rows, results, args.n)
    write_figure(root, [row for row in rows if row in REAL_ROWS or final_checkpoint(root, row)], args.data_dir)
    if args.pnp:
        write_pnp_table(root, args.data_dir, args.pnp_n)


def summarise(row, runs):
    """One table row from a row's metrics.json files (one per seed)."""
    fds = [r['fd'] for r in runs]
    first = runs[0]
    out = dict(row=row, label=ROWS[row], n=first.get('n_samples', first.get('n')), fd=sum(fds) / len(fds),
               fd_seeds=fds, fd_spread=(max(fds) - min(fds)) if len(fds) > 1 else None)
    if row in MODEL_ROWS:
        cfg = preset_args(row)
        shares = first['class_shares']
        rarest = min(shares, key=shares.get)
        out.update(nfe=cfg.K, images_seen=cfg.max_steps * cfg.batch_size, min_share=min(shares.values()),
                   max_share=max(shares.values()), rarest=f'{rarest} {100 * shares[rarest]:.1f}%',
                   ms_per_image=1e3 * first['sampling_seconds'] / first['n'])
    return out


def write_table(root, rows, results, n):
    table = [summarise(row, results[row]) for row in rows if row in results]
    lines = ['| model | NFE | images seen | FD | class share min - max | rarest | ms / image |',
             '|---|---|---|---|---|---|---|']
    for r in table:
        fd = f"{r['fd']:.2f}" + (f" (seeds {', '.join(f'{v:.2f}' for v in r['fd_seeds'])})" if r['fd_spread'] else '')
        if 'nfe' in r:
            lines.append(f"| {r['label']} | {r['nfe']} | {r['images_seen']:,} | {fd} | {100 * r['min_share']:.1f}% - "
                         f"{100 * r['max_share']:.1f}% | {r['rarest']} | {r['ms_per_image']:.1f} |")
        else:
            lines.append(f"| {r['label']} | | | {fd} | | | |")
    (root / 'table.md').write_text('\n'.join(lines) + '\n')
    (root / 'table.json').write_text(json.dumps(dict(n=n, rows=table), indent=2) + '\n')
    print('\n'.join(lines))
    print(f'wrote {root / "table.md"} and {root / "table.json"}')


def row_samples(root, row, data_dir, n=16):
    """n images of a row as uint8: the first training images (blurred for the blur rows), or samples of
    the row's final model drawn as sample.py draws them with --seed 0 (chunk 0: the same start noise x_K
    for every row whose start distribution has one shape)."""
    import torch
    import data
    import models
    import sample
    from schedules import schedule_of
    if row in REAL_ROWS:
        images = data.FashionMNIST(data_dir, train=True).images[:n]
        if row == 'floor':
            return images
        return models.to_uint8(metrics.box_blur(images, int(row[-1])))
    G, meta = models.load_generator(str(final_checkpoint(root, row)))
    with torch.no_grad():
        return sample.generate(G, schedule_of(meta), meta, n, batch_size=n, seed=0)


def write_figure(root, rows, data_dir):
    """samples.png: one line of 16 images per row, labelled."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import torchvision
    if not rows:
        return
    fig, axes = plt.subplots(len(rows), 1, figsize=(9, 0.75 * len(rows) + 0.3), squeeze=False)
    for ax, row in zip(axes[:, 0], rows):
        grid = torchvision.utils.make_grid(row_samples(root, row, data_dir), nrow=16, padding=1, pad_value=255)
        ax.imshow(grid[0].numpy(), cmap='gray', vmin=0, vmax=255)
        ax.set_title(ROWS[row], fontsize=8, loc='left')
        ax.axis('off')
    fig.tight_layout()
    fig.savefig(root / 'samples.png', dpi=150)
    plt.close(fig)
    print(f'wrote {root / "samples.png"}')


PNP_ROWS, PNP_TASKS = ('kld_d', 'kld_sr'), ('denoise', 'sr2', 'sr4')


def write_pnp_table(root, data_dir, n):
    """Table 4 in small: the KLD-D and KLD-SR models restoring `n` test images per task, with the
    settings each model's `pnp.py --tune` chose on `n` training images, beside the baselines."""
    import pnp
    lines = ['| task | pseudo-inverse H^+ y | bicubic | ' + ' | '.join(ROWS[r] for r in PNP_ROWS) + ' |',
             '|---|---|---|' + '---|' * len(PNP_ROWS)]
    results = {}
    for row in PNP_ROWS:
        ckpt = final_checkpoint(root, row)
        if ckpt is None:
            print(f'plug-and-play: {row} is not trained; skipped')
            return
        common = ['--ckpt', str(ckpt), '--dataset', 'fashion_mnist', '--data-dir', data_dir, '--n', str(n),
                  '--device', 'cpu']
        best = pnp.main(pnp.build_parser().parse_args(['--tune', '--task', *PNP_TASKS, *common]))
        for task in PNP_TASKS:
            out = root / row / f'pnp_{task}'
            setting = best[task]
            pnp.main(pnp.build_parser().parse_args(
                ['--task', task, *common, '--M', str(setting['M']), '--lam', str(setting['lam']), '--alpha',
                 str(setting['alpha']), '--out', str(out), '--overwrite']))
            results[row, task] = dict(json.loads((out / 'summary.json').read_text())['mean'], setting=setting)
    for task in PNP_TASKS:
        first = results[PNP_ROWS[0], task]
        cell = lambda m: f"{m['psnr']:.2f} / {m['ssim']:.3f}"     # noqa: E731
        s = lambda row: results[row, task]['setting']             # noqa: E731
        lines.append(f"| {task} | {cell(first['pinv'])} | {cell(first['bicubic']) if 'bicubic' in first else ''} | "
                     + ' | '.join(f"{cell(results[row, task]['rgm'])} (M {s(row)['M']}, lambda {s(row)['lam']:g}, "
                                  f"alpha {s(row)['alpha']:g})" for row in PNP_ROWS) + ' |')
    (root / 'pnp_table.md').write_text('\n'.join(lines) + '\n')
    print('\n'.join(lines))


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--rows', nargs='+', choices=list(ROWS), help='default: all, in this order: ' + ' '.join(ROWS))
    p.add_argument('--root', default='runs/fashion_table', help='one run folder per row, and the table')
    p.add_argument('--n', type=int, default=10_000, help='samples scored per row and seed')
    p.add_argument('--data-dir', default='data', help='Fashion-MNIST files (see data.py)')
    p.add_argument('--classifier', default=metrics.DEFAULT_CLASSIFIER, help='the classifier file (metrics.py)')
    p.add_argument('--dry-run', action='store_true', help='print what would be done and how long it would take')
    p.add_argument('--ship', action='store_true', help='only write the trained generators of ' + ', '.join(SHIPPED_ROWS)
                   + ' and the classifier with the test statistics into checkpoints/')
    p.add_argument('--pnp', action='store_true', help='also Table 4 in small: KLD-D and KLD-SR on denoise, sr2, sr4')
    p.add_argument('--pnp-n', type=int, default=100, help='training images for the settings, test images scored')
    args = p.parse_args()
    if args.n < 2:
        p.error('--n must be at least 2')
    main(args)
