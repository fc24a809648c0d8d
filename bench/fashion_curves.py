"""Learning curves on Fashion-MNIST: does RGM get better with training, and from which budget does each
of the paper's claims hold? The rows of bench/fashion_table.py trained 4x longer (16,000 steps of
batch 32, 512,000 images, about 8.5 epochs), every snapshot scored at one n:

    python bench/fashion_curves.py --root ~/rgm-runs/curves --dry-run     # what is left, how long
    python bench/fashion_curves.py --root ~/rgm-runs/curves --jobs 2      # train, score, write (hours)
    python bench/fashion_curves.py --root ~/rgm-runs/curves --score-only  # score the snapshots there now

Each row trains in --root/<row> with the preset's settings (constant learning rate, so its snapshot at
4,000 steps is the 2-epoch model of fashion_table) and keeps every checkpoint; a row cut short resumes
from its latest checkpoint, so a ladder can span several sittings. Every snapshot at a step of RUNGS
is sampled with sample.py (n images, seed 0: the same start noise for every snapshot of a row) and
scored with the Fashion-MNIST classifier against the test set: FD, KID, precision / recall, class
shares. The DDPM row's snapshots are sampled with DDIM at DDPM_STEPS and, at --ancestral-n images
(1000 network evaluations an image), ancestrally; its predicted x0 is clamped to [-1, 1] as its
authors sample it (sample.py's default). At the end --root holds curves.json (every point), curves.md
(the table at 1x / 2x / 4x the 2-epoch budget, the claims) and curves.png (FD, KID, precision and
recall against images seen).
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import cli  # noqa: E402
import metrics  # noqa: E402
import train_images  # noqa: E402
import pages  # noqa: E402
from fashion_table import (logged_rates, median_step_seconds, run, scores_of,  # noqa: E402
                           train_side_by_side)

RUNGS = (1000, 2000, 4000, 8000, 16000)     # snapshots scored: steps of batch 32
BASE = 4000                                 # the 2-epoch budget of fashion_table: 1x
# row: (label, preset, flags, steps). The first rows are the curves; the lambda rows (Figure 6 in small)
# stop at the base budget; kld_d_lrd asks whether a discriminator slower than G (the authors' ratio)
# helps coverage.
ROWS = {
    'kld_d':         ('RGM-KLD-D, K = 4', 'fashion_kld_d', [], 16000),
    'kld_d_k1':      ('RGM-KLD-D, K = 1 (one step)', 'fashion_kld_d', ['--K', '1'], 16000),
    'kld_sr':        ('RGM-KLD-SR, K = 7', 'fashion_kld_sr', [], 16000),
    'kld_d_lam0':    ('RGM-KLD-D, lambda = 0 (no fidelity)', 'fashion_kld_d', ['--lam', '0'], 16000),
    'mmse_d':        ('MMSE, K = 4 (same network without z)', 'fashion_mmse_d', [], 16000),
    'ddpm_4x':       ('DDPM, same network', 'fashion_ddpm', [], 16000),
    'kld_d_lam3e-3': ('RGM-KLD-D, lambda = 3e-3', 'fashion_kld_d', ['--lam', '3e-3'], 4000),
    'kld_d_lam1e-2': ('RGM-KLD-D, lambda = 1e-2', 'fashion_kld_d', ['--lam', '1e-2'], 4000),
    'kld_d_lrd':     ('RGM-KLD-D, lr G 2e-4, D 1.25e-4', 'fashion_kld_d', ['--lr-G', '2e-4', '--lr-D', '1.25e-4'], 16000),
}
DDPM = 'ddpm_4x'
# A second training run of kld_d's preset, the shipped 4,000-step model, scored beside the ladder: its
# distance from the kld_d row's 4,000-step snapshot is the spread between two training runs (one sample of
# it), the yardstick of the claims.
SHIPPED, SHIPPED_LABEL = 'kld_d_shipped', 'RGM-KLD-D, K = 4, the shipped run (a second training)'
DDPM_STEPS = (4, 10, 25)        # DDIM steps of the DDPM snapshots, at n
# the DDPM's ancestral sampler (all 1000 levels, at --ancestral-n) where a sampling names its DDIM steps:
# sample.py samples ancestrally when given no --steps (--steps 1000 would be DDIM over all 1000 levels)
ANCESTRAL = 'ancestral'
ANCESTRAL_NFE = 1000
DDPM_RUNGS = (4000, 16000)      # the DDPM at the RGM rows' base budget and at 4x
# (claim, better row, worse row): each compared at every budget both rows have
CLAIMS = (('K = 4 steps beat K = 1 (Table 3)', 'kld_d', 'kld_d_k1'),
          ('the SR process beats noising (Table 1)', 'kld_sr', 'kld_d'),
          ('the fidelity term helps (Table 3)', 'kld_d', 'kld_d_lam0'),
          ('MAP (RGM) beats MMSE at K = 4', 'kld_d', 'mmse_d'))
# the preset's own questions, read the same way: lambda at the weight per image it has on CIFAR-10
# (Figure 6 in small) and above, and a discriminator slower than G (the authors' learning-rate ratio)
QUESTIONS = (('lambda = 3e-3 beats the preset\'s 1e-3', 'kld_d_lam3e-3', 'kld_d'),
             ('lambda = 1e-2 beats the preset\'s 1e-3', 'kld_d_lam1e-2', 'kld_d'),
             ('a discriminator slower than G (lr 2e-4 / 1.25e-4) beats 5e-4 / 5e-4', 'kld_d_lrd', 'kld_d'))
# the figure's panels; the claims also read class coverage (the rarest class's share of the samples)
METRICS = (('fd', 'FD', -1), ('kid_mean', 'KID', -1), ('precision', 'precision', 1), ('recall', 'recall', 1))
CLAIM_METRICS = (*METRICS, ('min_share', 'rarest class', 1))
# values per image of the fidelity weight: lambda x (channels x height x width) of the data the preset trains on
PIXELS = {'fashion_mnist': 1 * 32 * 32, 'cifar10': 3 * 32 * 32, 'celeba_hq': 3 * 256 * 256}
SECONDS_PER_STEP = 0.6          # estimate until a log in --root says better (one step, 2-core VM)
SECONDS_PER_NFE = 0.004         # one image, one network evaluation, batch 500


def train_args(row, data_dir, threads, resume):
    """train_images.py's command line of a row: the preset, its flags, every checkpoint kept."""
    _, preset, flags, steps = ROWS[row]
    return ['--preset', preset, *flags, '--max-steps', str(steps), '--keep-ckpts', '0', '--data-dir', data_dir,
            *(['--threads', str(threads)] if threads else []), *(['--resume'] if resume else [])]


def snapshots(root, row):
    """{step: checkpoint} of the row's RUNGS that are on disk (SHIPPED: checkpoints/fashion_kld_d.pt at BASE)."""
    if row == SHIPPED:
        path = ROOT / 'checkpoints' / 'fashion_kld_d.pt'
        return {BASE: path} if path.is_file() else {}
    found = train_images.checkpoints(str(root / row / 'checkpoints'))
    return {step: Path(found[step]) for step in RUNGS if step in found}


def steps_done(root, row):
    return max(train_images.checkpoints(str(root / row / 'checkpoints')) or [0])


def seconds_per_step(root, row):
    """Seconds a step, from the median logged rate of the row, else of every row in --root (the same
    machine and the same side-by-side setting), else SECONDS_PER_STEP."""
    rates = logged_rates(root / row) or [r for other in ROWS for r in logged_rates(root / other)]
    return median_step_seconds(rates, 32) or SECONDS_PER_STEP


def samplings(row, step, n, ancestral_n):
    """(n, DDIM steps or None, NFE) of every sampling of one snapshot: the RGM chain itself, or the DDPM's
    samplers (ANCESTRAL: all 1000 levels, at ancestral_n images) at DDPM_RUNGS."""
    if row == SHIPPED:
        return [(n, None, 4)]
    if row != DDPM:
        K = train_images.parse_args(train_args(row, 'data', 0, False)).K
        return [(n, None, K)]
    if step not in DDPM_RUNGS:
        return []
    return [(n, s, s) for s in DDPM_STEPS] + ([(ancestral_n, ANCESTRAL, ANCESTRAL_NFE)] if ancestral_n else [])


def eval_dir(root, row, step, n, steps, clip=True):
    """A sampling's folder; a DDPM sampled without clamping x0 (clip=False) has its own."""
    tail = '' if steps is None else ('_ancestral' if steps == ANCESTRAL else f'_ddim{steps}')
    return root / row / f"eval_step{step:05d}_n{n}_seed0{tail}{'' if clip else '_noclip'}"


def scored(root, row, step, n, steps, clip=True):
    """The snapshot's metrics.json if it was scored from this very checkpoint (scores_of), else None. The
    shipped file is found in the code copy the runner runs from, so a score of it made from another copy
    counts while that copy's file holds the same bytes."""
    path, ckpt = eval_dir(root, row, step, n, steps, clip) / 'metrics.json', snapshots(root, row).get(step)
    r = scores_of(path, ckpt)
    if r is None and row == SHIPPED and ckpt is not None and path.is_file():
        r = json.loads(path.read_text())
        other = Path(r.get('ckpt', ''))
        r = r if other.is_file() and other.read_bytes() == Path(ckpt).read_bytes() else None
    return r


def todo(root, n, ancestral_n):
    """(row, step, n, steps, NFE) of every snapshot on disk not scored yet."""
    return [(row, step, m, s, nfe) for row in (*ROWS, SHIPPED) for step in snapshots(root, row)
            for m, s, nfe in samplings(row, step, n, ancestral_n) if scored(root, row, step, m, s) is None]


def plan(root, n, ancestral_n, jobs):
    """(lines, seconds) of what is left: the trainings (side by side, `jobs` at a time), then the scorings
    of every rung, those already on disk and those the trainings will write."""
    lines, train_s, score_s = [], [], 0.0
    for row, (label, _, _, steps) in ROWS.items():
        done = steps_done(root, row)
        left = (steps - done) * seconds_per_step(root, row)
        train_s.append(left)
        points = [(step, m, s, nfe) for step in RUNGS if step <= steps for m, s, nfe in samplings(row, step, n, ancestral_n)
                  if scored(root, row, step, m, s) is None]
        score_s += sum(m * nfe * SECONDS_PER_NFE for _, m, _, nfe in points)
        lines.append(f'{row:14s} step {done:5d} of {steps}: train {left / 60:4.0f} min, '
                     f'{len(points)} sampling(s) left')
    lanes = min(jobs, os.cpu_count() or 1)      # more trainings than cores run no faster in all
    wall = sum(train_s) / lanes
    lines.append(f'training {sum(train_s) / 60:.0f} min of steps at the logged rates, about {wall / 60:.0f} min '
                 f'{lanes} at a time; scoring about {score_s / 60:.0f} min')
    return lines, wall + score_s


def train(root, rows, data_dir, jobs):
    """Train the rows that are short of their steps, `jobs` at a time (fashion_table.train_side_by_side:
    on a small CPU two one-thread trainings do more in all than one on two threads; after a failure no
    further row starts)."""
    def one(root, row, data_dir, threads):
        resume = steps_done(root, row) > 0
        run([sys.executable, 'train_images.py', *train_args(row, data_dir, threads, resume), '--out', str(root / row)],
            root / f'{row}.train.log')
    train_side_by_side(root, [row for row in rows if steps_done(root, row) < ROWS[row][3]], data_dir, jobs, one)


def score(root, points, data_dir, classifier, threads, clip=True):
    """sample.py on each (row, step, n, steps, NFE) point: samples.npz and metrics.json in its eval_dir
    (clip=False: a DDPM's x0 not clamped, in a folder of its own)."""
    for row, step, n, steps, _ in points:
        out = eval_dir(root, row, step, n, steps, clip)
        run([sys.executable, 'sample.py', '--ckpt', str(snapshots(root, row)[step]), '--n', str(n), '--batch-size',
             '500', '--seed', '0', '--data-dir', data_dir, '--classifier', classifier, '--format', 'npz',
             *(['--steps', str(steps)] if steps not in (None, ANCESTRAL) else []), *([] if clip else ['--no-clip-x0']),
             '--threads', str(threads), '--out', str(out), '--overwrite'],
            root / f'{row}.sample.log')


def unclamped_todo(root, n, ancestral_n):
    """(row, step, n, steps, NFE) of the DDPM's samplings not yet scored without clamping x0 (--unclamped)."""
    return [(DDPM, step, m, s, nfe) for step in snapshots(root, DDPM) for m, s, nfe in samplings(DDPM, step, n, ancestral_n)
            if scored(root, DDPM, step, m, s, clip=False) is None]


def sampler_name(steps, clip=True):
    """None (the RGM / MMSE chain), 'DDIM <steps>' or 'ancestral' (ANCESTRAL), and ', x0 not clamped'
    after a DDPM's sampler that did not clamp its predicted x0."""
    name = None if steps is None else 'ancestral' if steps == ANCESTRAL else f'DDIM {steps}'
    return name if clip else f'{name}{UNCLAMPED}'


def as_point(row, label, step, n, steps, nfe, r, clip=True):
    """One point of curves.json from a sampling's metrics.json r (scores of n samples): row, label, step,
    images seen, sampler, NFE, the scores and the sampling's time per image."""
    shares = r['class_shares']
    return dict(row=row, label=label, step=step, images=32 * step, n=n, nfe=nfe, sampler=sampler_name(steps, clip),
                fd=r['fd'], kid_mean=r['kid_mean'], precision=r['precision'], recall=r['recall'],
                min_share=min(shares.values()), rarest=min(shares, key=shares.get),
                ms_per_image=1e3 * r['sampling_seconds'] / r['n'], threads=r.get('threads'),
                clip_x0=r.get('clip_x0', False))


def clips(row):
    """Whether a row's samplings clamp x0 (True), for each variant it may have been scored in: the DDPM's
    also without (--unclamped); the RGM and MMSE chains have no x0 to clamp."""
    return (True, False) if row == DDPM else (True,)


def collect(root, n, ancestral_n):
    """Every scored point: dicts of row, label, step, images seen, sampler, NFE and the scores (the DDPM's
    samplings without clamping x0 too, where --unclamped made them)."""
    points = []
    for row, label in [*((row, r[0]) for row, r in ROWS.items()), (SHIPPED, SHIPPED_LABEL)]:
        for step in snapshots(root, row):
            for m, steps, nfe in samplings(row, step, n, ancestral_n):
                for clip in clips(row):
                    r = scored(root, row, step, m, steps, clip)
                    if r is not None:
                        points.append(as_point(row, label, step, m, steps, nfe, r, clip))
    return points


# The ancestral points are scored on fewer samples (--ancestral-n) than the others, and FD, KID and
# precision / recall all move with the number of samples (FD upwards as n falls). So each ancestral point is
# also set beside the first ancestral_n samples of these samplers at the same budget (the same draws as their
# n-sample points, scored again) and beside as many real images: a comparison at one n.
EQUAL_N_PEERS = ('kld_d', DDPM)     # their samplings at n (samplings() without the ancestral one)
# Clamping the DDPM's predicted x0 to [-1, 1] at each step is its authors' convention and sample.py's
# default; --unclamped also samples every DDPM point without it (the same draws), since it need not help
# every model. Such a point's sampler ends in UNCLAMPED.
UNCLAMPED = ', x0 not clamped'


def first_scores(root, row, step, n, steps, m, scorer, clip=True):
    """The metrics of the first m of a point's n samples (its samples.npz), as sample.py writes them (the
    point's sampling time included), cached as first<m>.json beside the samples and used while it is newer
    than they are; None when the point is not scored from its checkpoint as it is now, or has no samples."""
    folder = eval_dir(root, row, step, n, steps, clip)
    r, samples, cache = scored(root, row, step, n, steps, clip), folder / 'samples.npz', folder / f'first{m}.json'
    if r is None or not samples.is_file():
        return None
    if cache.is_file() and cache.stat().st_mtime >= samples.stat().st_mtime:
        return json.loads(cache.read_text())
    out = dict(r, **scorer(metrics.load_samples(samples)[:m]), first_of=n)
    cli.write_json(cache, out)
    return out


def equal_n(root, n, ancestral_n, classifier, data_dir):
    """{'n': ancestral_n, 'floor': what ancestral_n real images score, 'points': the first ancestral_n samples
    of each EQUAL_N_PEERS row's samplings (clamped or not) at every budget where the DDPM has an ancestral
    point} (curves.json's
    'equal_n'), or None when there is no ancestral point at a smaller n than the rest."""
    if not 0 < ancestral_n < n or not any(scored(root, DDPM, s, ancestral_n, ANCESTRAL) for s in DDPM_RUNGS):
        return None
    scorer = None
    points = []
    for step in DDPM_RUNGS:
        if scored(root, DDPM, step, ancestral_n, ANCESTRAL) is None:
            continue
        peers = [(row, steps, nfe, clip) for row in EQUAL_N_PEERS for _, steps, nfe in samplings(row, step, n, 0)
                 for clip in clips(row)]
        for row, steps, nfe, clip in peers:
            if scored(root, row, step, n, steps, clip) is None:
                continue
            if scorer is None:        # the classifier and the test set's reference, loaded once
                scorer = metrics.Scores(dict(dataset='fashion_mnist', channels=1), ancestral_n,
                                        classifier=classifier, data_dir=data_dir)
                scorer.prepare()
            r = first_scores(root, row, step, n, steps, ancestral_n, scorer, clip)
            if r is not None:
                points.append(as_point(row, ROWS[row][0], step, ancestral_n, steps, nfe, r, clip))
    return dict(n=ancestral_n, floor=floor_of(classifier, data_dir, ancestral_n), points=points)


def find(points, row, step, sampler=None):
    return next((p for p in points if p['row'] == row and p['step'] == step and p['sampler'] == sampler), None)


def spread(points):
    """{metric: |difference|} between the two training runs of kld_d's preset at BASE steps, or None."""
    a, b = find(points, 'kld_d', BASE), find(points, SHIPPED, BASE)
    return None if a is None or b is None else {key: abs(a[key] - b[key]) for key, _, _ in CLAIM_METRICS}


def verdicts(points, a, b, yardstick):
    """{metric: {step: 'better' | 'level' | 'worse'}} of row a against row b at every rung both have: better
    when a leads by more than the spread between two training runs (yardstick; 0 when not measured)."""
    steps = [s for s in RUNGS if find(points, a, s) and find(points, b, s)]
    out = {}
    for key, _, sign in CLAIM_METRICS:
        margin = yardstick[key] if yardstick else 0.0
        out[key] = {}
        for s in steps:
            diff = sign * (find(points, a, s)[key] - find(points, b, s)[key])
            out[key][s] = 'better' if diff > margin else 'worse' if diff < -margin else 'level'
    return out


def holds_from(by_step):
    """The smallest budget from which on the verdict is 'better' at every budget scored, or None."""
    since = None
    for s in sorted(by_step, reverse=True):
        if by_step[s] != 'better':
            break
        since = s
    return since


def claim_line(claim, a, b, points, yardstick, detail=True):
    """'- claim: holds from <budget> on <metrics>; not up to <last budget> on <metrics>. By budget: ...'
    (the verdict at each budget only with `detail`)."""
    v = verdicts(points, a, b, yardstick)
    if not v['fd']:
        return f'- {claim}: not scored yet.'
    last = budget(max(v['fd']))
    since = {}
    for key, name, _ in CLAIM_METRICS:
        since.setdefault(holds_from(v[key]), []).append(name)
    held = [f"from {budget(s)} on {', '.join(since[s])}" for s in sorted(k for k in since if k is not None)]
    summary = ('holds ' + ', '.join(held) if held else '') + (
        ('; ' if held else '') + f"not up to {last} ({32 * max(v['fd']):,} images) on {', '.join(since[None])}"
        if None in since else '')
    parts = [f'{name} ' + ', '.join(f"{verdict} at {' '.join(budget(s) for s in v[key] if v[key][s] == verdict)}"
                                    for verdict in ('better', 'level', 'worse') if verdict in v[key].values())
             for key, name, _ in CLAIM_METRICS]
    return f"- {claim}: {summary}." + (f" By budget: {'; '.join(parts)}." if detail else '')


def claim_lines(points, claims=CLAIMS, detail=True):
    """One line per claim: from which budget (1x, 2x, 4x of BASE; the rungs both rows have) the row the
    paper favours is better on each metric (at that budget and every later one), and at which budgets it is
    better, level (a difference within the spread between two training runs) or worse; then the yardstick."""
    yardstick = spread(points)
    lines = [claim_line(claim, a, b, points, yardstick, detail) for claim, a, b in claims]
    lines.append('Level: within the spread between two training runs of RGM-KLD-D at 1x, ' + (
        ', '.join(f"{name} {100 * yardstick[key]:.1f} points" if key == 'min_share' else f'{name} {yardstick[key]:.3g}'
                  for key, name, _ in CLAIM_METRICS) + ' (one pair of runs).' if yardstick
        else 'not measured yet: every difference counts.'))
    return lines


def budget(step):
    """A step count as a multiple of the 2-epoch budget: 0.25x ... 4x."""
    return f'{step / BASE:g}x'


def floor_of(classifier, data_dir, n):
    """What n real training images score against the test set, as a sample of n is scored (the floor of
    every metric at this n), or None when the data set is neither on disk nor downloadable."""
    try:
        r = metrics.reference_scores(classifier, data_dir, n, progress=False, n_test=10_000)['floor']
    except FileNotFoundError:
        return None
    return {key: r[key] for key, _, _ in METRICS}


def write(root, points, n, ancestral_n, command, floor=None, training=None, same_n=None):
    """curves.json (every point, with the command, date and machine that made them, the floor at n, each
    row's training record and the ancestral points' peers at their n: equal_n), curves.md (what
    render_markdown makes of it) and curves.png in --root."""
    made = cli.provenance('bench/fashion_curves.py')           # the date and machine of every results file
    results = dict(n=n, ancestral_n=ancestral_n, base_steps=BASE, batch=32, command=command,
                   date=made['date'], machine=made['machine'], floor=floor, training=training, points=points,
                   equal_n=same_n)
    (root / 'curves.json').write_text(json.dumps(results, indent=2) + '\n')
    text = render_markdown(results)
    (root / 'curves.md').write_text(text)
    print(text)
    figure(root / 'curves.png', points, n, floor)


def render_markdown(results):
    """The table at 1x / 2x / 4x the 2-epoch budget and the claims, from curves.json's contents."""
    return render_table(results) + '\nClaims, by budget and metric:\n' + render_claims(results)


def curve_samplers():
    """(row, sampler) of the rows trained past BASE: each RGM / MMSE chain, then each DDPM sampler."""
    return ([(row, None) for row, r in ROWS.items() if r[3] > BASE and row != DDPM]
            + [(DDPM, f'DDIM {s}') for s in DDPM_STEPS] + [(DDPM, 'ancestral')])


def render_main(results):
    """The README's view: every curve row at 1x -> 4x the 2-epoch budget (the DDPM: each sampler), each
    cell 'score at 128,000 images -> score at 512,000', with the floor on top."""
    n, points = results['n'], results['points']
    keys = (*METRICS, ('min_share', 'rarest class', 1))
    lines = ['| model | NFE | ' + ' | '.join(name for _, name, _ in keys) + ' |', '|---' * (len(keys) + 2) + '|']
    floor = results.get('floor')
    if floor:
        lines.append(f'| {n:,} real training images (the floor) | | '
                     + ' | '.join(pages.metric_cells(dict(floor, min_share=0.0))[:4]) + ' | |')     # no class shares
    for row, sampler in curve_samplers():
        a, b = find(points, row, BASE, sampler), find(points, row, 4 * BASE, sampler)
        if a is None and b is None:
            continue
        p = a or b
        label = ROWS[row][0] + (f', {sampler}' if sampler else '') + ('' if p['n'] == n else f" (n = {p['n']})")
        both = zip(*(pages.metric_cells(q) if q else ['...'] * len(keys) for q in (a, b)))
        lines.append(f"| {label} | {p['nfe']} | {' | '.join(' -> '.join(pair) for pair in both)} |")
    lines += ['', f"Each cell: at 1x -> at 4x the 2-epoch budget ({32 * BASE:,} -> {32 * 4 * BASE:,} training images; "
              f"'...': not scored yet). n = {n:,} samples per point (seed 0) against the 10,000 test images"
              + (f", the DDPM's ancestral points {results['ancestral_n']:,}" if results.get('ancestral_n') else '')
              + "; the DDPM's predicted x0 clamped to [-1, 1]."]
    return '\n'.join(lines) + '\n'


def lam_text(lam):
    """1e-3 for 0.001, 0 for 0."""
    return '0' if lam == 0 else f'{lam:.0e}'.replace('e-0', 'e-').replace('e+0', 'e')


def lam_of(row):
    """(lambda, the data set's values per image) of a row's training settings."""
    args = train_images.parse_args(train_args(row, 'data', 0, False))
    return args.lam, PIXELS[args.dataset]


def render_lambda(results):
    """Figure 6 in small: RGM-KLD-D at 1x with lambda 0, 1e-3 (the preset; and its second training run),
    3e-3 and 1e-2, with lambda x pixels beside the paper's data sets' values."""
    points = results['points']
    keys = (*METRICS, ('min_share', 'rarest class', 1))
    lines = ['| lambda | lambda x pixels | ' + ' | '.join(name for _, name, _ in keys) + ' |', '|---' * (len(keys) + 2) + '|']
    rows = [('kld_d_lam0', ''), ('kld_d', ''), (SHIPPED, ' (a second training run)'),
            ('kld_d_lam3e-3', ''), ('kld_d_lam1e-2', '')]
    for row, note in rows:
        p = find(points, row, BASE)
        if p is None:
            continue
        lam, pixels = lam_of('kld_d' if row == SHIPPED else row)
        lines.append(f'| {lam_text(lam)}{note} | {lam * pixels:.1f} | ' + ' | '.join(pages.metric_cells(p)) + ' |')
    cifar, celeba = (train_images.PRESETS[p]['lam'] * PIXELS[train_images.PRESETS[p]['dataset']]
                     for p in ('cifar10_kld_d', 'celeba256_kld_d'))
    lines += ['', f'RGM-KLD-D, K = 4, at 1x ({32 * BASE:,} training images), n = {results["n"]:,}. The fidelity term is a '
              f'sum over pixels, so lambda x pixels is its weight per image: {cifar:.2g} for the paper\'s CIFAR-10 '
              f'(lambda 1e-3 on 3 x 32 x 32) and {celeba:.2g} for CelebA-HQ 256 (5e-5 on 3 x 256 x 256); on '
              f"Fashion-MNIST's 1 x 32 x 32, lambda {lam_text(cifar / PIXELS['fashion_mnist'])} weighs what 1e-3 "
              'weighs on CIFAR-10.']
    return '\n'.join(lines) + '\n'


def render_ddpm(results):
    """RGM-KLD-D against the DDPM with the same network at equal training budgets (1x and 4x): every
    sampler's scores, its NFE and time per image as multiples of RGM's, and the fewest DDIM steps that
    reach RGM's FD."""
    n, points = results['n'], results['points']
    lines = ['| budget | sampler | NFE | FD | KID | precision | recall | rarest class | ms / image | NFE, time vs RGM |',
             '|---' * 10 + '|']
    verdicts, shown = [], []
    for step in (BASE, 4 * BASE):
        rgm = find(points, 'kld_d', step)
        ddpm = [(s, find(points, DDPM, step, s)) for s in ddpm_samplers()]
        ddpm = [(s, p) for s, p in ddpm if p is not None]
        if rgm is None or not ddpm:
            verdicts.append(f'- {budget(step)}: not scored yet.')
            continue
        shown += [rgm] + [p for _, p in ddpm]
        for label, p in [('RGM-KLD-D, its chain', rgm)] + [(f'DDPM, {s}', p) for s, p in ddpm]:
            ratio = '' if p is rgm else f"{p['nfe'] / rgm['nfe']:.3g}x, {p['ms_per_image'] / rgm['ms_per_image']:.3g}x"
            own_n = '' if p['n'] == n else f" (n = {p['n']:,})"
            lines.append(f"| {budget(step)} ({32 * step:,}) | {label}{own_n} | {p['nfe']} | "
                         + ' | '.join(pages.metric_cells(p))
                         + f" | {p['ms_per_image']:.1f} | {ratio} |")
        ddim = [p for s, p in ddpm if s.startswith('DDIM')]
        reach = sorted((p for p in ddim if p['fd'] <= rgm['fd']), key=lambda p: (p['nfe'], p['fd']))
        verdicts.append(f"- {budget(step)}: " + (
            f"DDIM reaches RGM-KLD-D's FD ({rgm['fd']:.2f}) first at {reach[0]['nfe']} steps ({reach[0]['sampler']}: FD "
            f"{reach[0]['fd']:.2f}, {reach[0]['nfe'] / rgm['nfe']:.3g}x the NFE)" if reach else
            f"no DDIM up to {DDPM_STEPS[-1]} steps reaches RGM-KLD-D's FD ({rgm['fd']:.2f}; best "
            f"{min(p['fd'] for p in ddim):.2f})" if ddim else 'no DDIM point scored') + '.')
    threads = sorted({p['threads'] for p in shown if p.get('threads')})
    lines += ['', *verdicts, '', f"n = {n:,} per point unless marked (seed 0); the DDPM's predicted x0 clamped to [-1, 1] "
              f"at each step, as its authors sample it, unless marked '{UNCLAMPED[2:]}'. ms / image: each point's own sampling time in the runner (batch "
              f"500, CPU threads: {' or '.join(map(str, threads)) or 'the default'}), a time ratio as good as the load "
              "was alike between the two runs."]
    return '\n'.join(lines) + '\n' + render_equal_n(results)


def ddpm_samplers():
    """The DDPM's samplers in table order: each DDIM step count, then ancestral; each clamped, then not."""
    return [name + tail for name in [f'DDIM {k}' for k in DDPM_STEPS] + ['ancestral'] for tail in ('', UNCLAMPED)]


def render_ddpm_short(results):
    """The README's view of the equal-budget comparison: at 1x and 4x, RGM-KLD-D's scores beside the DDPM's
    DDIM at its most steps and, at the ancestral points' n, its ancestral sampler beside RGM-KLD-D's first
    as many samples; FD / KID / precision / recall / rarest class."""
    points, same = results['points'], results.get('equal_n') or {}
    def scores(p):
        return ' / '.join(pages.metric_cells(p))
    lines = [f"FD / KID / precision / recall / rarest class's share; n = {results['n']:,} samples (seed 0) unless given; "
             "the DDPM's predicted x0 clamped to [-1, 1] unless said.", '']
    for step in DDPM_RUNGS:
        rgm, ddim = find(points, 'kld_d', step), find(points, DDPM, step, f'DDIM {DDPM_STEPS[-1]}')
        if rgm is None or ddim is None:
            lines.append(f'- {budget(step)}: not scored yet.')
            continue
        def also(sampler):      # the same sampler without clamping x0, where it was scored
            p = find(points, DDPM, step, sampler + UNCLAMPED)
            return f' ({scores(p)} with x0 not clamped)' if p else ''
        line = (f"- {budget(step)} ({32 * step:,} images each): RGM-KLD-D, {rgm['nfe']} NFE, {scores(rgm)}; the DDPM by "
                f"DDIM {DDPM_STEPS[-1]} ({ddim['nfe'] / rgm['nfe']:.3g}x the NFE) {scores(ddim)}{also(ddim['sampler'])}")
        ancestral = find(points, DDPM, step, 'ancestral')
        first = next((p for p in same.get('points', []) if p['step'] == step and p['row'] == 'kld_d'), None)
        if ancestral and first:
            line += (f"; at n = {ancestral['n']:,}, its ancestral sampler ({ancestral['nfe'] / rgm['nfe']:.3g}x the NFE) "
                     f"{scores(ancestral)}{also('ancestral')} against RGM-KLD-D's {scores(first)}")
        lines.append(line + '.')
    return '\n'.join(lines) + '\n'


def render_equal_n(results):
    """The ancestral points beside the first as many samples of RGM-KLD-D and of each DDIM sampler at the
    same budget and beside real images (curves.json's equal_n), with the metrics on which the ancestral
    sampler beats RGM-KLD-D; '' when there is none."""
    same = results.get('equal_n')
    if not same or not same['points']:
        return ''
    m, peers, points = same['n'], same['points'], results['points']
    lines = ['', f"At the ancestral points' n = {m:,}: the first {m:,} of each sampler's {results['n']:,} samples "
             f'(the same draws, scored again), the ancestral samples and {m:,} real training images; FD, KID and '
             'precision / recall all move with n, so only this table compares the ancestral sampler.', '',
             '| budget | sampler | NFE | FD | KID | precision | recall | rarest class |', '|---' * 8 + '|']
    if same.get('floor'):
        lines.append(f'| | {m:,} real training images (the floor at this n) | | '
                     + ' | '.join(pages.metric_cells(dict(same['floor'], min_share=0.0))[:4]) + ' | |')
    readings = []
    for step in DDPM_RUNGS:
        here = [p for p in peers if p['step'] == step]
        ancestral = [find(points, DDPM, step, 'ancestral' + tail) for tail in ('', UNCLAMPED)]
        rows = here + [p for p in ancestral if p]
        for p in rows:
            label = 'RGM-KLD-D, its chain' if p['row'] == 'kld_d' else f"DDPM, {p['sampler']}"
            lines.append(f"| {budget(step)} ({32 * step:,}) | {label} | {p['nfe']} | "
                         + ' | '.join(pages.metric_cells(p)) + ' |')
        rgm = next((p for p in rows if p['row'] == 'kld_d'), None)
        for a in (a for a in ancestral if a and rgm):
            lead = {name: sign * (a[key] - rgm[key]) for key, name, sign in CLAIM_METRICS}
            said = [f"{verdict} on {', '.join(names)}" for verdict, names in
                    (('better', [k for k, d in lead.items() if d > 0]), ('worse', [k for k, d in lead.items() if d < 0]),
                     ('equal', [k for k, d in lead.items() if d == 0])) if names]
            readings.append(f"- {budget(step)}: the DDPM's {a['sampler']} ({a['nfe']} NFE) against RGM-KLD-D "
                            f"({rgm['nfe']} NFE), both at n = {m:,}: {'; '.join(said)} (one draw each).")
    return '\n'.join([*lines, '', *readings]) + '\n'


def render_status(results):
    """Where the ladder stands: each row's scored snapshots, in thousands of steps, or 'not yet', and the
    minutes its training took at the median logged rate."""
    lines = []
    training = results.get('training') or {}
    for row, (label, _, _, steps) in ROWS.items():
        done = sorted({p['step'] for p in results['points'] if p['row'] == row})
        rungs = [s for s in (DDPM_RUNGS if row == DDPM else RUNGS) if s <= steps]
        line = f"- {label}: " + (f"{', '.join(f'{s // 1000}k' for s in done)} of {', '.join(f'{s // 1000}k' for s in rungs)} "
                                 'steps scored' if done else 'not scored yet')
        if row in training:
            t = training[row]
            line += (f"; {t['steps']:,} steps trained at {t['seconds_per_step']:.2f} s a step "
                     f"({t['steps'] * t['seconds_per_step'] / 60:.0f} min)")
        lines.append(line)
    return '\n'.join(lines) + '\n'


def training_record(root):
    """{row: steps trained and the median logged seconds a step} of every row that has a log in root."""
    out = {}
    for row in ROWS:
        rates = logged_rates(root / row)
        if rates:
            out[row] = dict(steps=steps_done(root, row), seconds_per_step=median_step_seconds(rates, 32))
    return out


def render_claims(results, detail=True):
    """The claims' lines (claim_lines) as markdown, then the preset's questions read the same way."""
    lines = claim_lines(results['points'], detail=detail)
    questions = claim_lines(results['points'], QUESTIONS, detail)[:-1]
    return '\n'.join([*lines[:-1], '', "The preset's own questions:", *questions, '', lines[-1]]) + '\n'


def render_claims_short(results):
    """The README's view of the claims: from which budget each holds, on which metrics, without the verdict
    at every budget."""
    return render_claims(results, detail=False)


def render_table(results):
    """One line per point at BASE, 2 BASE and 4 BASE steps, and the line saying how they were made."""
    n, points = results['n'], results['points']
    lines = ['| model | budget (images) | sampler, NFE | FD | KID | precision | recall | rarest class |', '|---' * 8 + '|']
    floor = results.get('floor')
    if floor:
        lines.append(f"| {n:,} real training images (the floor at this n) | | | {floor['fd']:.2f} | {floor['kid_mean']:.3f} | "
                     f"{floor['precision']:.3f} | {floor['recall']:.3f} | |")
    for step in (BASE, 2 * BASE, 4 * BASE):
        for p in (p for p in points if p['step'] == step):
            own_n = '' if p['n'] == n else f" (n = {p['n']})"
            lines.append(f"| {p['label']} | {budget(step)} ({p['images']:,}) | {p['sampler'] or 'chain'}, {p['nfe']}"
                         f"{own_n} | {p['fd']:.2f} | {p['kid_mean']:.3f} | {p['precision']:.3f} | {p['recall']:.3f} | "
                         f"{p['rarest']} {100 * p['min_share']:.1f}% |")
    lines += ['', f"n = {n} samples per point (seed 0) against the 10,000 test images; the DDPM's predicted x0 clamped "
              f"to [-1, 1] at each step. Made by `{results['command']}` on {results['date']} ({results['machine']}).", '']
    return '\n'.join(lines)


def figure(path, points, n, floor=None):
    """FD, KID, precision and recall against images seen (log scale): a line per curve row (its chain, or
    the DDPM's DDIM at each step count), the short rows as points, and a dashed line where real images
    score at the same n."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401   (matplotlib.ticker.NullFormatter)
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    order = [*ROWS, SHIPPED]
    samplers = [None, *ddpm_samplers()]
    curves = sorted({(p['row'], p['sampler']) for p in points if p['n'] == n},
                    key=lambda c: (order.index(c[0]), samplers.index(c[1])))
    for ax, (key, name, sign) in zip(axes.flat, METRICS):
        for row, sampler in curves:
            line = sorted((p for p in points if (p['row'], p['sampler']) == (row, sampler) and p['n'] == n),
                          key=lambda p: p['step'])
            label = line[0]['label'] + (f', {sampler}' if sampler else '')
            style = ('x:' if sampler.endswith(UNCLAMPED) else 's--') if sampler else \
                'o-' if row in ROWS and ROWS[row][3] > BASE else 'D'
            ax.plot([p['images'] for p in line], [p[key] for p in line], style, ms=5, label=label)
        if floor:
            ax.axhline(floor[key], color='gray', ls='--', lw=1, label=f'real images (the floor at n = {n})')
        ax.set(xscale='log', yscale='log' if key == 'fd' else 'linear', xlabel='training images seen',
               ylabel=f"{name} (n = {n}, {'lower' if sign < 0 else 'higher'} is better)")
        ax.set_xticks([32 * s for s in RUNGS], [f'{32 * s // 1000}k' for s in RUNGS])   # the rungs, in images
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.grid(True, which='both', alpha=0.3)
    axes[0, 0].legend(fontsize=6.5)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    print(f'wrote {path}')


# what --ship writes into checkpoints/: (row, step, file); the RGM model only if it beats the shipped one.
# Each file is named by its budget: fashion_kld_d.pt stays the 4,000-step model that the tables in miniature,
# the DDPM comparison at 128,000 images and the curves' yardstick (SHIPPED) are made from.
SHIP = (('kld_d', 16000, 'fashion_kld_d_4x.pt'), (DDPM, 16000, 'fashion_ddpm_4x.pt'))


def ship(root, n):
    """Export the 16,000-step RGM-KLD-D (if it beats the shipped 4,000-step run at this n on KID and recall)
    and the 16,000-step DDPM into checkpoints/ under SHIP's names (models.export_generator: EMA weights in
    fp16, the run's seconds per step). Returns the paths written."""
    import models
    points, written = collect(root, n, 0), []
    for row, step, name in SHIP:
        ckpt = snapshots(root, row).get(step)
        if ckpt is None:
            print(f'--ship: {row} has no {step}-step checkpoint yet; skipped')
            continue
        if row == 'kld_d':
            new, old = find(points, row, step), find(points, SHIPPED, BASE)
            if new is None or old is None:
                print(f'--ship: {row} at {step} steps or the shipped run is not scored at n = {n}; skipped')
                continue
            if not (new['kid_mean'] < old['kid_mean'] and new['recall'] > old['recall']):
                print(f"--ship: {row} at {step} steps does not beat the shipped run on KID and recall "
                      f"({new['kid_mean']:.3f} / {new['recall']:.3f} against {old['kid_mean']:.3f} / "
                      f"{old['recall']:.3f}); kept the shipped one")
                continue
        path = ROOT / 'checkpoints' / name
        models.export_generator(models.load_checkpoint(ckpt), path, seconds_per_step=seconds_per_step(root, row))
        print(f'wrote {path} ({path.stat().st_size / 2**20:.2f} MB)')
        written.append(path)
    return written


def publish(root):
    """Copy curves.json into results/ and curves.png into assets/, and render the docs' tables from them."""
    import shutil
    import render
    shutil.copy(root / 'curves.json', ROOT / 'results' / 'fashion_curves.json')
    shutil.copy(root / 'curves.png', ROOT / 'assets' / 'fashion_curves.png')
    for path in render.render_all():
        print(f'rendered {path}')


def main(args):
    if args.n < 10 or 0 < args.ancestral_n < 10:
        raise ValueError(f'--n {args.n} / --ancestral-n {args.ancestral_n}: the scores need at least 10 samples')
    root = Path(args.root).expanduser()
    rows = args.rows or list(ROWS)
    lines, seconds = plan(root, args.n, args.ancestral_n, args.jobs)
    print(f'learning curves in {root}, n = {args.n}; about {seconds / 3600:.1f} hours left on a 2-core CPU:')
    print('\n'.join('  ' + line for line in lines))
    if args.dry_run:
        return
    root.mkdir(parents=True, exist_ok=True)
    started = time.time()
    if not args.score_only:
        train(root, rows, args.data_dir, args.jobs)
    score(root, [p for p in todo(root, args.n, args.ancestral_n) if p[0] in (*rows, SHIPPED)], args.data_dir,
          args.classifier, args.threads)             # the shipped run, the claims' yardstick, whatever --rows
    if args.unclamped and DDPM in rows:
        score(root, unclamped_todo(root, args.n, args.ancestral_n), args.data_dir, args.classifier, args.threads,
              clip=False)
    command = cli.provenance('bench/fashion_curves.py')['command']
    write(root, collect(root, args.n, args.ancestral_n), args.n, args.ancestral_n, command,
          floor_of(args.classifier, args.data_dir, args.n), training_record(root),
          equal_n(root, args.n, args.ancestral_n, args.classifier, args.data_dir))
    if args.publish:
        publish(root)
    if args.ship:
        ship(root, args.n)
    print(f'done in {(time.time() - started) / 60:.0f} min')


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--root', default='runs/fashion_curves', help='one run folder per row, and the results; keep it '
                   'outside a work tree that is laid anew (e.g. ~/rgm-runs/curves)')
    p.add_argument('--rows', nargs='+', choices=list(ROWS), help='train and score only these (default: all)')
    p.add_argument('--n', type=cli.positive_int, default=5000, help='samples scored per snapshot')
    p.add_argument('--ancestral-n', type=cli.nonnegative_int, default=500,
                   help="samples of the DDPM's ancestral points (1000 NFE an image; 0: none)")
    p.add_argument('--jobs', type=cli.positive_int, default=2, help='trainings side by side, each on cores / jobs threads')
    p.add_argument('--threads', type=cli.nonnegative_int, default=0, help="CPU threads of each sampling (0: torch's)")
    p.add_argument('--data-dir', default='data', help='Fashion-MNIST files (see data.py)')
    p.add_argument('--classifier', default=metrics.DEFAULT_CLASSIFIER, help='the classifier file (metrics.py)')
    p.add_argument('--score-only', action='store_true', help='train nothing: score the snapshots on disk and write')
    p.add_argument('--publish', action='store_true', help='also copy curves.json to results/ and curves.png to assets/ '
                   'and render the docs from them (bench/render.py)')
    p.add_argument('--ship', action='store_true', help='also export the 16,000-step RGM-KLD-D (if it beats the shipped '
                   '4,000-step one on KID and recall) and DDPM into checkpoints/ as fashion_kld_d_4x.pt and '
                   'fashion_ddpm_4x.pt')
    p.add_argument('--unclamped', action='store_true', help="also sample each of the DDPM's points without "
                   'clamping its predicted x0 to [-1, 1] (the same draws)')
    p.add_argument('--dry-run', action='store_true', help='print what is left and how long it would take')
    return p


if __name__ == '__main__':
    cli.run_main(main, build_parser().parse_args())
