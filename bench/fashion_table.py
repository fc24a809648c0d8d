"""The paper's image claims in miniature, on Fashion-MNIST and a 2-core CPU, in one command:

    python bench/fashion_table.py --dry-run                    # what it would do, how long it expects
    python bench/fashion_table.py                              # everything (hours on 2 cores; resumable)
    python bench/fashion_table.py --rows floor kld_d mmse_d    # some rows
    python bench/fashion_table.py --shipped                    # the shipped weights for rows not trained here
    python bench/fashion_table.py --rows kld_d kld_sr ddpm     # RGM against a DDPM: quality against NFE

For each model row it trains the model unless it has a generator already (source(): its final checkpoint
under --root/<row>, else with --shipped its file in checkpoints/; a run cut short is resumed from its
latest checkpoint), samples --n images with sample.py (seeded), scores them with the Fashion-MNIST
classifier against the test images (FD, KID, precision / recall, class shares, mean pixel value), and at
the end writes table.md, table.json and samples.png (16 samples per row from seed 0: the same start noise
for the rows whose start distribution has one shape) into --root. A row already scored at this --n is
not scored again. Trainings and samplings run one at a time, each in its own process; `--jobs 2` trains
two rows side by side on one thread each (about 1.7x faster in all on 2 cores).

The DDPM rows (a noise-prediction DDPM with the same network, at the RGM presets' training budget and
at 4x) are sampled at every setting of SAMPLERS, DDIM at 4 to 100 steps and ancestral sampling over all
1000 levels, on --nfe-n images each, and written as nfe_table.md, nfe.json, nfe.png (FD, KID, precision
and recall against NFE) and nfe_samples.png (the grids) with the RGM rows that are trained scored at the
same --nfe-n. `--threads N` runs every sampling on N CPU threads; the tables say what they ran on.

Everything a run measured goes into --root/results.json with its command, date and machine;
`--publish NAME` copies it to results/NAME.json and renders README.md and docs/ from the results files
(bench/render.py; the views they show: bench/pages.py).

The file reads in the order of a run: the rows and the constants; the two record types; where a row's
generator comes from; training; sampling and scoring; the estimate; main and its phases; then what
the phases write (the table, the figures, the NFE comparison, plug-and-play, the results file) and
--ship.
"""
import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import cli  # noqa: E402
import metrics  # noqa: E402
import train_images  # noqa: E402

# ---------------------------------------------------------------------------------------------------------
# The rows, and how they are sampled

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
    'ddpm':       ('DDPM, same network, 128,000 training images', 'fashion_ddpm', []),
    'ddpm_4x':    ('DDPM, same network, 512,000 training images', 'fashion_ddpm', ['--max-steps', '16000']),
}
REAL_ROWS = {'floor': 'training images (the floor)', 'blur3': 'training images, 3x3 box blur',
             'blur5': 'training images, 5x5 box blur'}
ROWS = {**REAL_ROWS, **{name: row[0] for name, row in MODEL_ROWS.items()}}      # the tables' order
SEEDED_ROW = 'kld_d'            # scored over three sampling seeds: how much of a difference is noise
SHIPPED_ROWS = ('kld_d', 'kld_sr', 'dswd_d', 'mmse_d', 'ddpm')     # checkpoints/<preset>.pt, with the classifier
SHIPPED_FEATURES = 4000          # test features kept for KID and precision / recall (fp16: 1 MB)

# A row is sampled by its own chain (RGM's K steps, MMSE's), or, for the diffusion rows, by one of SAMPLERS:
# DDIM (eta = 0) over that many evenly spaced levels, or ANCESTRAL: DDPM's ancestral sampler over all 1000
# levels (sample.py without --steps), named by its NFE.
DIFFUSION_ROWS = ('ddpm', 'ddpm_4x')
ANCESTRAL = 1000
SAMPLERS = (4, 7, 10, 25, 50, 100, ANCESTRAL)
RGM_POINTS = ('kld_d', 'kld_sr')        # the RGM rows drawn beside the diffusion rows
NFE_N = 500     # samples per point there: ancestral sampling (1000 NFE) costs about 3 s an image on 2 cores
BATCH = 500     # sampling batch: every ms / image of the tables is measured at this batch
FIGURE_DDIM_STEPS = 100                 # the diffusion rows' line in samples.png: DDIM at this many steps
NFE_GRID_SAMPLERS = (10, 100, ANCESTRAL)    # the diffusion rows' lines in nfe_samples.png
PNP_ROWS, PNP_TASKS = ('kld_d', 'kld_sr'), ('denoise', 'sr2', 'sr4')

# What things cost, for --dry-run until a row's own log says better. Seconds per training step on the 2-core
# VM at 2 threads, the median of the table's own runs as the shipped files record it (seconds_per_step; kld:
# the KLD-SR run, 0.602; dswd 0.726, disturbed; mmse 0.367, disturbed; ddpm 0.292), and per sampled image at
# NFE 1 (batch 500).
STEP_SECONDS = {'kld': 0.60, 'dswd': 0.73, 'mmse': 0.37, 'ddpm': 0.29}
SAMPLE_SECONDS_PER_NFE = 0.003
# A step of two trainings side by side, one thread each, against a step of one alone on two threads
# (fashion_kld_d, 2-core VM, one day): 0.84 s each (median of the four ablation runs' logs) against 0.74 s
# (bench/train_step.py, the fastest of three timings that day), so about 1.7x the images per second in all.
SIDE_BY_SIDE = 0.84 / 0.74


# ---------------------------------------------------------------------------------------------------------
# The records: one sampling a row needs, and one scored point

class Sampling(NamedTuple):
    """One sampling of a row: n images from `seed`, drawn by `sampler` (None: the row's own chain; a DDPM
    row's: DDIM over that many levels, or ANCESTRAL), `nfe` network evaluations an image."""
    n: int
    seed: int
    sampler: Optional[int]
    nfe: int


class Point(NamedTuple):
    """A scored sampling: the row, how it was sampled, and what sample.py's metrics.json says of it."""
    row: str
    sampling: Sampling
    scores: dict


def steps_flags(sampler):
    """sample.py's flags for a sampler: none for a row's own chain and for ANCESTRAL (all levels)."""
    return [] if sampler in (None, ANCESTRAL) else ['--steps', str(sampler)]


def eval_dir(root, row, n, seed, sampler=None):
    """Where sample.py writes a row's samples and metrics.json at this n, seed (and DDPM sampler)."""
    tail = '' if sampler is None else ('_ddpm1000' if sampler == ANCESTRAL else f'_ddim{sampler}')
    return root / row / f'eval_n{n}_seed{seed}{tail}'


# ---------------------------------------------------------------------------------------------------------
# Where a row's generator comes from. A model row is scored with the first of these that exists, an order
# of precedence decided in source() alone:
#   'trained'  its final training checkpoint under --root (final_checkpoint), with or without --shipped;
#   'shipped'  with --shipped, checkpoints/<preset>.pt of a row of SHIPPED_ROWS (shipped_file);
#   None       neither: the row is trained (from its latest checkpoint, if a run was cut short).

def preset_args(row):
    """The training flags of a model row, parsed as train_images parses them."""
    _, preset, flags = MODEL_ROWS[row]
    return train_images.parse_args(['--preset', preset, *flags])


def final_checkpoint(root, row):
    """The row's final training checkpoint, or None."""
    path = root / row / 'checkpoints' / f'ckpt_{preset_args(row).max_steps:08d}.pt'
    return path if path.is_file() else None


def shipped_file(row):
    """checkpoints/<preset>.pt of a row that ships its weights, or None."""
    path = ROOT / 'checkpoints' / f'{MODEL_ROWS[row][1]}.pt'
    return path if row in SHIPPED_ROWS and path.is_file() else None


def source(root, row, shipped=False):
    """Where the row's generator comes from: 'trained', 'shipped' or None, in that order of precedence."""
    if final_checkpoint(root, row):
        return 'trained'
    return 'shipped' if shipped and shipped_file(row) else None


def weights(root, row, shipped=False):
    """The generator file a row is scored with (source()), or None: the row must be trained."""
    where = source(root, row, shipped)
    return final_checkpoint(root, row) if where == 'trained' else shipped_file(row) if where == 'shipped' else None


# ---------------------------------------------------------------------------------------------------------
# Training: each run in its own process

def run(cmd, log):
    """Run one step of the reproduction in its own process, its output appended to `log`."""
    print('  $ ' + ' '.join(cmd), flush=True)
    with open(log, 'a') as f:
        code = subprocess.call(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if code:
        raise SystemExit(f'failed (exit {code}); the last lines of {log}:\n' + ''.join(open(log).readlines()[-15:]))


def train(root, row, data_dir, threads=0):
    """train_images.py on one row into --root/<row>, resumed if a run there was cut short."""
    _, preset, flags = MODEL_ROWS[row]
    out = root / row
    resume = ['--resume'] if train_images.checkpoints(str(out / 'checkpoints')) else []
    run([sys.executable, 'train_images.py', '--preset', preset, *flags, '--data-dir', data_dir, '--out', str(out),
         *(['--threads', str(threads)] if threads else []), *resume], root / f'{row}.train.log')


def train_side_by_side(root, rows, data_dir, jobs, train_row=None):
    """Train `rows` `jobs` at a time, each process on cores // jobs threads (at least one): on a small CPU
    more images per second in all than one run at a time on every core (SIDE_BY_SIDE), since one training
    step does not keep two threads busy. A row starts only when a slot is free and no training has failed:
    after the first failure no further row starts, and the failure is raised once the runs under way have
    ended (they are not killed: each keeps its checkpoints and resumes next time). `train_row(root, row,
    data_dir, threads)` trains one row (default: this runner's train)."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    waiting, running = list(rows), set()
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        while waiting or running:
            while waiting and len(running) < jobs:
                running.add(pool.submit(train_row or train, root, waiting.pop(0), data_dir, threads))
            done, running = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                future.result()         # raises the failure; leaving the `with` waits for the runs under way


def check_shipped(root, rows):
    """--shipped: every row of SHIPPED_ROWS asked for and not trained under --root needs its file in
    checkpoints/; a missing one is refused, named, rather than planned as a training of hours."""
    missing = [f'checkpoints/{MODEL_ROWS[row][1]}.pt ({row})' for row in rows
               if row in SHIPPED_ROWS and not weights(root, row, shipped=True)]
    if missing:
        raise FileNotFoundError(f'--shipped: {", ".join(missing)} missing from {ROOT / "checkpoints"}: restore '
                                'it (git checkout checkpoints/), or drop --shipped to train the row')


def logged_rates(run_dir):
    """Images per second of every record in a run's log.jsonl (none before the run starts)."""
    log = Path(run_dir) / 'log.jsonl'
    return [r['img_per_s'] for r in map(json.loads, log.read_text().splitlines()) if 'img_per_s' in r] \
        if log.is_file() else []


def median_step_seconds(rates, batch_size):
    """Seconds per step at the median of logged rates (robust to a few disturbed stretches), or None."""
    return batch_size / sorted(rates)[len(rates) // 2] if rates else None


def progress(root, row):
    """(steps done, seconds per step from the run's own log or the estimate)."""
    cfg = preset_args(row)
    done = max(train_images.checkpoints(str(root / row / 'checkpoints')) or [0])
    logged = median_step_seconds(logged_rates(root / row), cfg.batch_size)
    return done, logged or STEP_SECONDS.get(cfg.prior, STEP_SECONDS['kld'])


def train_minutes(root, row, shipped=False):
    """Minutes the training of the generator the row is scored with takes alone: its steps times the
    median seconds per step of its run's log (robust to a few disturbed stretches), or the rate stored with
    the shipped weights; None when that is not recorded."""
    where, cfg = source(root, row, shipped), preset_args(row)
    if where == 'trained':
        return cfg.max_steps * progress(root, row)[1] / 60 if (root / row / 'log.jsonl').is_file() else None
    if where == 'shipped':
        import torch
        rate = torch.load(shipped_file(row), map_location='cpu', weights_only=True).get('seconds_per_step')
        return None if rate is None else cfg.max_steps * rate / 60
    return None


# ---------------------------------------------------------------------------------------------------------
# Sampling and scoring: sample.py in its own process, its metrics.json kept beside the samples

def seeds_of(rows):
    """{row: its sampling seeds}: three for SEEDED_ROW, one for every other row."""
    return {row: [0, 1, 2] if row == SEEDED_ROW else [0] for row in rows}


def evaluations(row, n, nfe_n, seeds, diffusion, samplers=SAMPLERS):
    """The Samplings a row needs: its seeds at n (each DDPM sampler at nfe_n for the diffusion rows), and
    the RGM points at nfe_n too when a diffusion row is in the run."""
    K = preset_args(row).K
    if row in DIFFUSION_ROWS:
        return [Sampling(nfe_n, 0, sampler, sampler) for sampler in samplers]
    todo = [Sampling(n, seed, None, K) for seed in seeds[row]]
    if diffusion and row in RGM_POINTS and nfe_n != n:
        todo.insert(1, Sampling(nfe_n, 0, None, K))
    return todo


def scores_of(metrics_path, ckpt):
    """A sampling's metrics.json if it was made from `ckpt` as it is now (the same file, not rewritten
    since), else None."""
    if ckpt is None or not Path(metrics_path).is_file():
        return None
    r = json.loads(Path(metrics_path).read_text())
    same = Path(r.get('ckpt', '')) == Path(ckpt) and Path(ckpt).stat().st_mtime <= Path(metrics_path).stat().st_mtime
    return r if same else None


def cached(root, row, n, seed, sampler=None, shipped=False):
    """The row's metrics.json at this n, seed and sampler if it was scored from the weights the row has now
    (scores_of) and, for a DDPM, with x0 clamped as sample.py now samples; else None: the row is sampled
    and scored again."""
    r = scores_of(eval_dir(root, row, n, seed, sampler) / 'metrics.json', weights(root, row, shipped))
    return r if r is not None and (row not in DIFFUSION_ROWS or r.get('clip_x0')) else None


def score(root, row, s, data_dir, classifier, shipped=False, threads=0):
    """sample.py on the row's generator (weights()) for Sampling `s`, on `threads` CPU threads (0: torch's
    default): its metrics.json (sampled and scored again only when `cached` has none). The samples stay
    beside it (samples.npz), to be scored again without sampling."""
    out = eval_dir(root, row, s.n, s.seed, s.sampler)
    if cached(root, row, s.n, s.seed, s.sampler, shipped) is None:
        run([sys.executable, 'sample.py', '--ckpt', str(weights(root, row, shipped)), '--n', str(s.n),
             '--batch-size', str(BATCH), '--seed', str(s.seed), '--data-dir', data_dir, '--classifier', classifier,
             '--format', 'npz', *steps_flags(s.sampler), '--threads', str(threads), '--out', str(out), '--overwrite'],
            root / f'{row}.sample.log')
    return json.loads((out / 'metrics.json').read_text())


# ---------------------------------------------------------------------------------------------------------
# The estimate (--dry-run)

def estimate(root, rows, n, seeds, nfe_n=None, shipped=False, samplers=SAMPLERS, jobs=1, pnp=False):
    """(lines, seconds) of what is left to do. With jobs > 1 and two rows or more to train, they run side by
    side, as many at a time as jobs, cores and rows allow (more processes than cores gain nothing)."""
    lines, total, training, to_train = [], 0.0, 0.0, 0
    diffusion = any(row in DIFFUSION_ROWS for row in rows)
    for row in rows:
        if row in REAL_ROWS:
            lines.append(f'{row:11s} real images: scored in seconds')
            continue
        cfg = preset_args(row)
        done, per_step = progress(root, row)
        where = source(root, row, shipped)
        left = 0 if where else (cfg.max_steps - done) * per_step
        todo = [s for s in evaluations(row, n, nfe_n or n, seeds, diffusion, samplers)
                if cached(root, row, s.n, s.seed, s.sampler, shipped) is None]
        sampling = sum(s.n * s.nfe * SAMPLE_SECONDS_PER_NFE for s in todo)
        total, training, to_train = total + sampling, training + left, to_train + (left > 0)
        state = {'trained': 'trained', 'shipped': 'shipped weights'}.get(where, f'step {done} of {cfg.max_steps}')
        what = ', '.join(f'{s.n} at NFE {s.nfe}' for s in todo) or 'nothing'
        lines.append(f'{row:11s} {state:22s} train {left / 60:5.0f} min, sample {sampling / 60:4.0f} min ({what})')
    lanes = min(jobs, os.cpu_count() or 1, to_train)
    if lanes > 1:
        lines.append(f'trainings {lanes} at a time: {training / 60:.0f} min of training take about '
                     f'{training * SIDE_BY_SIDE / lanes / 60:.0f}')
        training *= SIDE_BY_SIDE / lanes
    if pnp:
        lines.append('plug-and-play (--pnp): not in this estimate')
    return lines, total + training


# ---------------------------------------------------------------------------------------------------------
# main, in phases: the plan, training and scoring, the tables

def main(args):
    """The runner in phases: the plan and its estimate, training and scoring, the tables and figures,
    plug-and-play, the results file. --ship does only the export."""
    root = Path(args.root)
    if args.ship:
        return ship(root, args.data_dir, args.classifier)
    rows = args.rows or list(ROWS)
    if args.shipped:
        check_shipped(root, rows)
    if not args.train_only:
        metrics.check_classifier(args.classifier)       # a mistyped --classifier stops before hours of training
    print_plan(root, rows, args)
    if args.dry_run:
        return
    root.mkdir(parents=True, exist_ok=True)
    points = train_and_score(root, rows, args)
    if args.train_only:
        return
    table, nfe = write_tables(root, rows, points, args)
    pnp = write_pnp_table(root, args.data_dir, args.pnp_n, args.shipped) if args.pnp else None
    write_results(root, table, nfe, pnp)
    if args.publish:
        publish(root, args.publish)


def print_plan(root, rows, args):
    """What is left to do and how long it should take (estimate)."""
    diffusion = any(row in DIFFUSION_ROWS for row in rows)
    lines, total = estimate(root, rows, args.n, seeds_of(rows), args.nfe_n, args.shipped, args.samplers, args.jobs,
                            args.pnp)
    print(f'{len(rows)} rows in {root}, n = {args.n}' + (f', diffusion comparison at n = {args.nfe_n}' if diffusion
          else '') + f'; about {total / 3600:.1f} hours left on a 2-core CPU:')
    print('\n'.join('  ' + line for line in lines))


def train_and_score(root, rows, args):
    """Train the rows without a generator (side by side first with --jobs, else each just before it is
    scored) and score each model row: the Points of every sampling, and of the samplers at which an earlier
    run scored a diffusion row at this --nfe-n (they join the NFE comparison); none with --train-only."""
    seeds, diffusion = seeds_of(rows), any(row in DIFFUSION_ROWS for row in rows)
    points, started = [], time.time()
    untrained = [row for row in rows if row in MODEL_ROWS and not weights(root, row, args.shipped)]
    if args.jobs > 1 and len(untrained) > 1:
        print(f"training {' '.join(untrained)}, {args.jobs} at a time", flush=True)
        train_side_by_side(root, untrained, args.data_dir, args.jobs)
    for i, row in enumerate(rows, 1):
        print(f'[{i}/{len(rows)}] {row}: {ROWS[row]} ({(time.time() - started) / 60:.0f} min so far)', flush=True)
        if row in REAL_ROWS:
            continue
        if not weights(root, row, args.shipped):
            train(root, row, args.data_dir)
        if args.train_only:
            continue
        for s in evaluations(row, args.n, args.nfe_n, seeds, diffusion, args.samplers):
            points.append(Point(row, s, score(root, row, s, args.data_dir, args.classifier, args.shipped,
                                              args.threads)))
        if row in DIFFUSION_ROWS:
            for sampler in (s for s in SAMPLERS if s not in args.samplers):
                done = cached(root, row, args.nfe_n, 0, sampler, args.shipped)
                if done is not None:
                    points.append(Point(row, Sampling(args.nfe_n, 0, sampler, sampler), done))
    return points


def write_tables(root, rows, points, args):
    """table.md, table.json and samples.png; with a diffusion row, the NFE comparison (write_nfe_table).
    Returns what table.json and nfe.json hold (None for a part not made)."""
    runs = {}           # row: its scores at --n, one per seed (the diffusion rows are in the NFE comparison only)
    for p in points:
        if p.sampling.n == args.n and p.row not in DIFFUSION_ROWS:
            runs.setdefault(p.row, []).append(p.scores)
    if any(row in REAL_ROWS for row in rows):
        # the floor and the blurred images: n training images against all 10,000 test images, as samples are
        real = metrics.reference_scores(args.classifier, args.data_dir, args.n, n_test=10_000)
        runs.update({row: [real[row]] for row in rows if row in REAL_ROWS})
    minutes = {row: train_minutes(root, row, args.shipped) for row in rows if row in MODEL_ROWS}
    ordered = [row for row in ROWS if row in rows]              # the table's order, whatever the run's
    table = write_table(root, [row for row in ordered if row in runs], runs, args.n, minutes)
    write_figure(root, [row for row in ordered if row in REAL_ROWS or weights(root, row, args.shipped)], args.data_dir,
                 args.shipped)
    if not any(row in DIFFUSION_ROWS for row in rows):
        return table, None
    # the floor at the comparison's n: nfe_n training images against the whole test set, as samples are
    floor = metrics.reference_scores(args.classifier, args.data_dir, args.nfe_n, n_test=10_000)['floor']
    return table, write_nfe_table(root, nfe_points(points, args.nfe_n), args.nfe_n, minutes, floor)


def nfe_points(points, nfe_n):
    """The Points of the NFE comparison: the diffusion rows and RGM_POINTS at nfe_n, seed 0, one per row and
    sampler."""
    chosen = {(p.row, p.sampling.sampler): p for p in points if p.sampling.n == nfe_n and p.sampling.seed == 0
              and (p.row in DIFFUSION_ROWS or p.row in RGM_POINTS)}
    return list(chosen.values())


# ---------------------------------------------------------------------------------------------------------
# The table: one line per row, each metric averaged over the row's seeds

METRICS = ('fd', 'kid_mean', 'precision', 'recall', 'mean_pixel')


def summarise(row, runs, minutes=None):
    """One table row from a row's metrics.json files (one per seed): each metric's mean over the seeds,
    its values and spread (max - min) when there are several; NFE, training, shares and speed."""
    first = runs[0]
    out = dict(row=row, label=ROWS[row], n=first.get('n_samples', first.get('n')), seeds=len(runs),
               reference_mean_pixel=first.get('reference_mean_pixel'))
    for key in METRICS:
        values = [r.get(key) for r in runs]
        ok = None not in values
        out[key] = sum(values) / len(values) if ok else None
        out[f'{key}_seeds'] = values if ok else None
        out[f'{key}_spread'] = max(values) - min(values) if ok and len(values) > 1 else None
    out.update(fd_seeds=[r['fd'] for r in runs])
    shares = first['class_shares']
    rarest = min(shares, key=shares.get)
    out.update(min_share=min(shares.values()), max_share=max(shares.values()),
               rarest=f'{rarest} {100 * shares[rarest]:.1f}%')
    if row in MODEL_ROWS:
        cfg = preset_args(row)
        out.update(nfe=first.get('nfe', cfg.K), images_seen=cfg.max_steps * cfg.batch_size, train_minutes=minutes,
                   ms_per_image=1e3 * first['sampling_seconds'] / first['n'])
    return out


def cell(r, key, fmt, bold=False):
    """A metric (in bold if asked), with its per-seed values when the row has several."""
    if r[key] is None:
        return ''
    text = f'**{format(r[key], fmt)}**' if bold else format(r[key], fmt)
    return text + (f" ({', '.join(format(v, fmt) for v in r[f'{key}_seeds'])})" if r[f'{key}_spread'] is not None else '')


# KID as it is, not x 1000 as for Inception features: in this classifier's 128-d features it runs from
# about 0 (real images) to about 6 (a 5x5 blur), so three decimals read best.
HEADER = ('| model | NFE | train min | images seen | FD | KID | precision | recall | class share min - max '
          '| rarest | mean pixel | ms / image |')


def table_line(r, mark='', bold=()):
    """A row of the table (summarise's dict); `mark` follows its timings (train min, ms / image); the metrics
    named in `bold` are set in bold."""
    model = 'nfe' in r
    metric = lambda key, fmt: cell(r, key, fmt, key in bold)       # noqa: E731
    return ' | '.join(['', r['label'], str(r['nfe']) if model else '',
                       f"{r['train_minutes']:.0f}{mark}" if model and r['train_minutes'] is not None else '',
                       f"{r['images_seen']:,}" if model else '', metric('fd', '.2f'), metric('kid_mean', '.3f'),
                       metric('precision', '.3f'), metric('recall', '.3f'),
                       f"{100 * r['min_share']:.1f}% - {100 * r['max_share']:.1f}%", r['rarest'],
                       metric('mean_pixel', '.1f'), f"{r['ms_per_image']:.1f}{mark}" if model else '', '']).strip()


def table_markdown(n, rows, marked=()):
    """table.md: a line per row (summarise's dicts, scored at n), the rows named in `marked` with a * after
    their timings, and the test images' mean pixel."""
    lines = [HEADER, '|---' * HEADER.count(' | ') + '|---|']
    lines += [table_line(r, ' *' if r['row'] in marked else '') for r in rows]
    ref = next((r['reference_mean_pixel'] for r in rows if r['reference_mean_pixel'] is not None), None)
    if ref is not None:
        lines.append(f'\nn = {n} samples per row against the test images (mean pixel {ref:.1f}).')
    return '\n'.join(lines) + '\n'


def write_table(root, rows, results, n, minutes=None):
    """table.md and table.json: a line per row of `rows` from its metrics.json files in `results`.
    Returns what table.json holds."""
    table = [summarise(row, results[row], (minutes or {}).get(row)) for row in rows]
    for r in table:
        if r['row'] == 'floor':                         # n training images, as many as each row's samples
            r['label'] = f'{n:,} training images (the floor)'
    text = table_markdown(n, table)
    (root / 'table.md').write_text(text)
    (root / 'table.json').write_text(json.dumps(dict(n=n, rows=table), indent=2) + '\n')
    print(text, end='')
    print(f'wrote {root / "table.md"} and {root / "table.json"}')
    return dict(n=n, rows=table)


# ---------------------------------------------------------------------------------------------------------
# The figures: lines of samples

def row_samples(root, row, data_dir, n=16, shipped=False):
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
    G, meta = models.load_generator(str(weights(root, row, shipped)))
    steps = FIGURE_DDIM_STEPS if row in DIFFUSION_ROWS else None
    with torch.no_grad():
        return sample.generate(G, schedule_of(meta), meta, n, batch_size=n, seed=0, steps=steps)


def image_lines(path, lines):
    """A figure of labelled lines of images: `lines` holds (title, uint8 images (N, 1, H, W)) pairs, each
    drawn as one row of N images. Nothing is written for no lines."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import torchvision
    if not lines:
        return
    fig, axes = plt.subplots(len(lines), 1, figsize=(9, 0.75 * len(lines) + 0.3), squeeze=False)
    for ax, (title, images) in zip(axes[:, 0], lines):
        grid = torchvision.utils.make_grid(images, nrow=len(images), padding=1, pad_value=255)
        ax.imshow(grid[0].numpy(), cmap='gray', vmin=0, vmax=255)
        ax.set_title(title, fontsize=8, loc='left')
        ax.axis('off')
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
    print(f'wrote {path}')


def write_figure(root, rows, data_dir, shipped=False):
    """samples.png: one line of 16 images per row, labelled."""
    lines = []
    for row in rows:
        images = row_samples(root, row, data_dir, shipped=shipped)
        label = ROWS[row] + (f', DDIM {FIGURE_DDIM_STEPS} steps' if row in DIFFUSION_ROWS else '')
        lines.append((f'{label} (mean pixel {metrics.mean_pixel(images):.0f})', images))
    image_lines(root / 'samples.png', lines)


# ---------------------------------------------------------------------------------------------------------
# The NFE comparison: the diffusion rows at each sampler beside the RGM points

def write_nfe_table(root, points, n, minutes, floor=None):
    """nfe_table.md, nfe.json, nfe.png and nfe_samples.png from the Points of the comparison (nfe_points),
    all at n samples: the table (nfe_rows) and the answers of each DDPM run (nfe_answers). Returns what
    nfe.json holds."""
    rows = nfe_rows(points, n, minutes, floor)
    nfe = dict(n=n, rows=rows, answers=[answer for answer, _ in nfe_answers(rows)])
    text = nfe_markdown(nfe)
    (root / 'nfe_table.md').write_text(text)
    (root / 'nfe.json').write_text(json.dumps(nfe, indent=2) + '\n')
    print(text, end='')
    nfe_figure(root / 'nfe.png', rows, n)
    nfe_samples(root, points, n)
    return nfe


def nfe_markdown(nfe, sentences=True, bold=lambda r: ()):
    """nfe_table.md from what nfe.json holds: the table, the answers in sentences (unless `sentences` is
    False) and the threads each sampling ran on, as sample.py recorded them; `bold(row)` names the metrics
    of a row set in bold (none in nfe_table.md)."""
    rows = nfe['rows']
    lines = [HEADER, '|---' * HEADER.count(' | ') + '|---|'] + [table_line(r, bold=bold(r)) for r in rows]
    for _, answer_lines in (nfe_answers(rows) if sentences else []):
        lines += answer_lines
    threads = sorted({str(r['threads']) for r in rows if r.get('threads') is not None})
    lines.append(f"\nn = {nfe['n']} samples per row, batch {BATCH}" + (
        f", {' or '.join(threads)} CPU {'thread' if threads == ['1'] else 'threads'} per sampling process."
        if threads else '.'))
    return '\n'.join(lines) + '\n'


def nfe_answers(rows):
    """[(answer, sentences)] of each DDPM run whose DDIM curve is in `rows`, against RGM-KLD-D (nfe_answer);
    none without RGM-KLD-D."""
    target = next((r for r in rows if r['row'] == 'kld_d'), None)
    return [nfe_answer(rows, ddpm, target) for ddpm in DIFFUSION_ROWS
            if target is not None and any(r['row'] == ddpm and r['sampler'] != ANCESTRAL for r in rows)]


def nfe_rows(points, n, minutes, floor=None):
    """The comparison's table rows: `floor` (real training images scored at the same n: what each metric
    reads at this n when nothing is wrong) first, then each Point by row and NFE."""
    rows = [dict(summarise('floor', [floor]), label=f'{n:,} training images (the floor at this n)', sampler=None)
            ] if floor else []
    for p in sorted(points, key=lambda p: (list(MODEL_ROWS).index(p.row), p.scores['nfe'])):
        sampler = p.sampling.sampler
        label = (ROWS[p.row] if p.row in RGM_POINTS
                 else f"{ROWS[p.row]}: {'DDPM ancestral' if sampler == ANCESTRAL else 'DDIM'}")
        rows.append(dict(summarise(p.row, [p.scores], minutes.get(p.row)), label=label, sampler=sampler,
                         threads=p.scores.get('threads')))
    return rows


def nfe_answer(rows, ddpm, target):
    """(answer, sentences) of one DDPM run against RGM-KLD-D (`target`): the fewest DDIM steps that reach
    its FD (the NFE ratio) and the wall-clock ratio of sampling 10,000 images at those two settings; the
    ancestral sampler at its full cost; and the metrics that may disagree with the FD: the fewest DDIM steps
    at which the DDPM's recall reaches RGM-KLD-D's, and its best precision."""
    curve = [r for r in rows if r['row'] == ddpm and r['sampler'] != ANCESTRAL]
    best = min((r for r in rows if r['row'] == ddpm), key=lambda r: r['fd'])   # any sampler
    best_ddim = min(curve, key=lambda r: r['fd'])
    reached = next((r for r in curve if r['fd'] <= target['fd']), None)
    recall_at = next((r['nfe'] for r in curve if None not in (r['recall'], target['recall'])
                      and r['recall'] >= target['recall']), None)
    best_precision = max((r['precision'] for r in curve if r['precision'] is not None), default=None)
    answer = dict(row=ddpm, reached=None if reached is None else reached['nfe'], best_fd=best['fd'],
                  best_nfe=best['nfe'], best_ddim_fd=best_ddim['fd'], best_ddim_nfe=best_ddim['nfe'],
                  recall_reached_at=recall_at, best_precision=best_precision)
    if reached is None:
        lines = [f"\n{ROWS[ddpm]}: DDIM does not reach RGM-KLD-D's FD {target['fd']:.2f} (NFE 4) at any of "
                 f"{', '.join(str(r['nfe']) for r in curve)} steps; its best is FD {best_ddim['fd']:.2f} at "
                 f"{best_ddim['nfe']} steps."]
    else:
        time_ratio, timing = time_against(reached, target)
        answer.update(fd=reached['fd'], nfe_ratio=reached['nfe'] / target['nfe'], time_ratio=time_ratio)
        lines = [f"\n{ROWS[ddpm]}: DDIM first reaches RGM-KLD-D's FD {target['fd']:.2f} (NFE 4) at "
                 f"{reached['nfe']} steps (FD {reached['fd']:.2f}): {answer['nfe_ratio']:.1f}x the NFE; "
                 f"{timing}."]
    ancestral = next((r for r in rows if r['row'] == ddpm and r['sampler'] == ANCESTRAL), None)
    if ancestral is not None:       # the sampler the DDPM was trained for, at its full cost
        time_ratio, timing = time_against(ancestral, target)
        answer.update(ancestral_fd=ancestral['fd'], ancestral_time_ratio=time_ratio)
        verb = 'reaches' if ancestral['fd'] <= target['fd'] else 'does not reach'
        lines.append(f"Ancestral sampling over all 1000 levels {verb} it (FD {ancestral['fd']:.2f}, "
                     f"{ancestral['nfe'] / target['nfe']:.0f}x the NFE); {timing}.")
    if target['recall'] is not None and best_precision is not None:
        lines.append(f"By recall it {'reaches' if recall_at else 'does not reach'} RGM-KLD-D's "
                     f"{target['recall']:.3f}{f' from {recall_at} steps' if recall_at else ''}; its best precision "
                     f"is {best_precision:.3f} against RGM-KLD-D's {target['precision']:.3f}.")
    return answer, lines


def time_against(point, target):
    """(time ratio, sentence) of sampling 10,000 images at `point` against `target`. A ratio only between
    points sampled on the same number of threads (as sample.py recorded them): otherwise None, and the
    sentence says why."""
    if point.get('threads') != target.get('threads'):
        return None, (f"no time ratio: sampled on {point.get('threads')} and {target.get('threads')} threads, "
                      f"re-sample both with the same --threads")
    ratio = point['ms_per_image'] / target['ms_per_image']
    return ratio, (f"10,000 images take {point['ms_per_image'] * 10:.0f} s against {target['ms_per_image'] * 10:.0f} s "
                   f"({ratio:.1f}x)")


def nfe_samples(root, points, n, count=16):
    """nfe_samples.png: the first `count` samples of each RGM point and of each diffusion row at the
    samplers of NFE_GRID_SAMPLERS, from the samples.npz the scores were computed on (seed 0, this n):
    the grids to read beside the metrics."""
    shown = sorted((p for p in points if p.sampling.sampler is None or p.sampling.sampler in NFE_GRID_SAMPLERS),
                   key=lambda p: (list(MODEL_ROWS).index(p.row), p.sampling.sampler or 0))
    lines = []
    for p in shown:
        r, sampler = p.scores, p.sampling.sampler
        how = '' if sampler is None else ', ancestral' if sampler == ANCESTRAL else ', DDIM'
        lines.append((f"{ROWS[p.row]}{how}, NFE {r['nfe']}: FD {r['fd']:.2f}, precision {r['precision']:.2f}, "
                      f"recall {r['recall']:.2f}",
                      metrics.load_samples(eval_dir(root, p.row, n, 0, sampler) / 'samples.npz')[:count]))
    image_lines(root / 'nfe_samples.png', lines)


def nfe_figure(path, rows, n):
    """FD, KID, precision and recall against NFE (log scale): a DDIM curve and an ancestral point per DDPM
    run, a point per RGM row, and a dashed line where real images score at the same n. FD on a log scale;
    the others on a linear one (KID is unbiased, so real images score about 0 and may score below it)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 2, figsize=(10, 7.2))
    panels = (('fd', 'FD', 'lower'), ('kid_mean', 'KID', 'lower'), ('precision', 'precision', 'higher'),
              ('recall', 'recall', 'higher'))
    for ax, (key, name, better) in zip(axes.flat, panels):
        for row in DIFFUSION_ROWS:      # the DDIM curve; the ancestral sampler, another sampler, unjoined
            curve = [r for r in rows if r['row'] == row and r[key] is not None and r['sampler'] != ANCESTRAL]
            ancestral = [r for r in rows if r['row'] == row and r[key] is not None and r['sampler'] == ANCESTRAL]
            if curve:
                line, = ax.plot([r['nfe'] for r in curve], [r[key] for r in curve], 'o-', label=f'{ROWS[row]}: DDIM')
            if ancestral:
                ax.plot(ancestral[0]['nfe'], ancestral[0][key], 's', ms=9, mfc='none', mew=2,
                        color=line.get_color() if curve else None, label=f'{ROWS[row]}: ancestral')
        for row, marker in zip(RGM_POINTS, ('*', 'D')):
            point = [r for r in rows if r['row'] == row and r[key] is not None]
            if point:
                ax.plot(point[0]['nfe'], point[0][key], marker, ms=12, label=ROWS[row])
        for r in rows:
            if r['row'] == 'floor' and r[key] is not None:
                ax.axhline(r[key], color='gray', ls='--', lw=1, label=f'real images (the floor at n = {n})')
        ax.set(xscale='log', yscale='log' if key == 'fd' else 'linear', xlabel='network evaluations per sample (NFE)',
               ylabel=f'{name} (n = {n}, {better} is better)')
        ax.grid(True, which='both', alpha=0.3)
    axes[0, 0].legend(fontsize=7, loc='lower left', bbox_to_anchor=(0, 0.1))   # below the points, above the floor
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    print(f'wrote {path}')


# ---------------------------------------------------------------------------------------------------------
# Plug-and-play (--pnp): Table 4 in small

def write_pnp_table(root, data_dir, n, shipped=False):
    """Table 4 in small: the KLD-D and KLD-SR models restoring `n` test images per task, with the
    settings each model's `pnp.py --tune` chose on `n` training images, beside the baselines: pnp_table.md.
    Returns {n, rows, tasks: {task: {row: the mean PSNR / SSIM of each method, and the setting}}}, or None
    when a row has no generator."""
    import pnp
    results = {}
    for row in PNP_ROWS:
        ckpt = weights(root, row, shipped)
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
            results.setdefault(task, {})[row] = dict(json.loads((out / 'summary.json').read_text())['mean'],
                                                     setting=setting)
    table = dict(n=n, rows=list(PNP_ROWS), tasks={task: results[task] for task in PNP_TASKS})
    text = pnp_markdown(table)
    (root / 'pnp_table.md').write_text(text)
    print(text, end='')
    return table


def pnp_markdown(table):
    """pnp_table.md from what write_pnp_table returns: PSNR / SSIM per task of each baseline and each
    row's model, with the setting it was run at."""
    rows = table['rows']
    lines = ['| task | pseudo-inverse H^+ y | bicubic | ' + ' | '.join(ROWS[r] for r in rows) + ' |',
             '|---|---|---|' + '---|' * len(rows)]
    for task, by_row in table['tasks'].items():
        first = by_row[rows[0]]
        cell = lambda m: f"{m['psnr']:.2f} / {m['ssim']:.3f}"     # noqa: E731
        s = lambda row: by_row[row]['setting']                     # noqa: E731
        lines.append(f"| {task} | {cell(first['pinv'])} | {cell(first['bicubic']) if 'bicubic' in first else ''} | "
                     + ' | '.join(f"{cell(by_row[row]['rgm'])} (M {s(row)['M']}, lambda {s(row)['lam']:g}, "
                                  f"alpha {s(row)['alpha']:g})" for row in rows) + ' |')
    return '\n'.join(lines) + '\n'


# ---------------------------------------------------------------------------------------------------------
# The results file: what a run measured (table.json, nfe.json, the plug-and-play table) with the command,
# date and machine that measured it: results.json in --root; --publish NAME copies it to results/NAME.json.
# What README.md and docs/ show of such files: bench/pages.py.

def write_results(root, table, nfe, pnp):
    """results.json: the run's parts (None for a part not made), its command line, date and machine."""
    results = dict(cli.provenance('bench/fashion_table.py'), table=table, nfe=nfe, pnp=pnp)
    (root / 'results.json').write_text(json.dumps(results, indent=2) + '\n')
    print(f"wrote {root / 'results.json'}")


def publish(root, name):
    """Copy the run's results.json to results/<name>.json and render README.md and docs/ from the results
    files (bench/render.py names the file of each table)."""
    import shutil
    import render
    shutil.copy(root / 'results.json', ROOT / 'results' / f'{name}.json')
    print(f'wrote results/{name}.json')
    for path in render.render_all():
        print(f'rendered {path}')


def results_name(text):
    """--publish's NAME: letters, digits, _ and - only (a file in results/)."""
    if not text or not all(c.isalnum() or c in '_-' for c in text):
        raise argparse.ArgumentTypeError(f'{text!r}: a results file name is letters, digits, _ and - only')
    return text


# ---------------------------------------------------------------------------------------------------------
# --ship: what a fresh clone samples and scores with

def ship(root, data_dir, classifier):
    """Write into checkpoints/ what a fresh clone samples and scores with: the EMA generator of each
    trained row of SHIPPED_ROWS (models.export_generator, fp16) and the classifier with the test set's
    statistics, its first SHIPPED_FEATURES features in fp16 and the floor (metrics.reference_of). Each
    generator file keeps its run's median seconds per step, for the training minutes of --shipped."""
    import data
    import models
    out = ROOT / 'checkpoints'
    for row in SHIPPED_ROWS:
        ckpt = final_checkpoint(root, row)      # a run's own weights only, never the shipped file again
        if ckpt is not None:
            path = out / f'{MODEL_ROWS[row][1]}.pt'
            models.export_generator(models.load_checkpoint(ckpt), path, seconds_per_step=progress(root, row)[1])
            print(f'wrote {path} ({path.stat().st_size / 2**20:.2f} MB)')
    net, accuracy = metrics.load_classifier(classifier)
    test = data.FashionMNIST(data_dir, train=False).images
    ref = metrics.reference_of(net, test, data.FashionMNIST(data_dir, train=True).images[:len(test)])
    ref['features'] = ref['features'][:SHIPPED_FEATURES].half()
    metrics.save_classifier(net, accuracy, out / 'fashion_classifier.pt', reference=ref)
    print(f"wrote {out / 'fashion_classifier.pt'} ({(out / 'fashion_classifier.pt').stat().st_size / 2**20:.2f} MB; "
          f"test accuracy {accuracy:.4f}, floor FD {ref['fd_floor']:.3f})")


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--rows', nargs='+', choices=list(ROWS), help='default: all, in this order: ' + ' '.join(ROWS))
    p.add_argument('--root', default='runs/fashion_table', help='one run folder per row, and the table')
    p.add_argument('--n', type=cli.positive_int, default=10_000, help='samples scored per row and seed')
    p.add_argument('--nfe-n', type=cli.positive_int, default=NFE_N, help='samples per point of the diffusion '
                   'comparison (DDPM rows at each sampler, and the RGM rows beside them)')
    p.add_argument('--samplers', type=int, nargs='+', default=list(SAMPLERS), choices=SAMPLERS, metavar='NFE',
                   help='the diffusion rows\' samplers: DDIM steps, 1000 = ancestral (default: all of '
                   + ' '.join(map(str, SAMPLERS)) + '); the comparison also shows the samplers an earlier run scored '
                   'at this --nfe-n')
    p.add_argument('--shipped', action='store_true', help='rows that ship weights (' + ', '.join(SHIPPED_ROWS)
                   + ') and have no final checkpoint under --root are scored from checkpoints/ instead of '
                   'trained; a final checkpoint under --root comes first (source())')
    p.add_argument('--data-dir', default='data', help='Fashion-MNIST files (see data.py)')
    p.add_argument('--classifier', default=metrics.DEFAULT_CLASSIFIER, help='the classifier file (metrics.py)')
    p.add_argument('--dry-run', action='store_true', help='print what would be done and how long it would take')
    p.add_argument('--train-only', action='store_true', help='train the rows that need it, one after the other, '
                   'and stop: score them later')
    p.add_argument('--threads', type=cli.nonnegative_int, default=0,
                   help="CPU threads of each sampling process (0: torch's default, every core); the tables say "
                   'what the samplings ran on')
    p.add_argument('--jobs', type=int, default=1, help='trainings run side by side, each on cores / jobs threads '
                   '(2 on a 2-core CPU: about 1.7x faster in all than one at a time; the table\'s training minutes '
                   'then come from runs that shared the machine)')
    p.add_argument('--ship', action='store_true', help='only write the trained generators of ' + ', '.join(SHIPPED_ROWS)
                   + ' and the classifier with the test statistics into checkpoints/')
    p.add_argument('--pnp', action='store_true', help='also Table 4 in small: KLD-D and KLD-SR on denoise, sr2, sr4')
    p.add_argument('--pnp-n', type=cli.positive_int, default=100,
                   help='training images for the settings, test images scored')
    p.add_argument('--publish', type=results_name, metavar='NAME', help='also copy results.json (what the run '
                   'measured, with its command, date and machine) to results/NAME.json and render README.md and '
                   'docs/ from the results files (bench/render.py names the file of each table: fashion_table, '
                   'fashion_table_ablations, fashion_nfe, fashion_nfe_4x, fashion_pnp)')
    args = p.parse_args()
    if args.n < 2 or args.nfe_n < 2:
        p.error('--n and --nfe-n must be at least 2')
    if args.jobs < 1:
        p.error(f'--jobs must be at least 1, got {args.jobs}')
    repeated = sorted({row for row in args.rows or [] if args.rows.count(row) > 1})
    if repeated:                    # one sampling would be reported as two seeds, a training timed twice
        p.error(f"--rows names {', '.join(repeated)} more than once")
    cli.run_main(main, args)
