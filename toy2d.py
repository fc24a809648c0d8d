"""The paper's 2D experiment (Figure 3): MAP restoration (RGM) against MMSE on a Gaussian mixture.

    python toy2d.py                  # KLD, MMD, DSWD and the MMSE baseline, K = 4 (about 6 min, 2 CPU cores)
    python toy2d.py --prior mmd      # one column
    python toy2d.py --prior kld --K 1

Each method learns G(x_{k+1}, k, z) on the 8-Gaussian mixture, samples with Algorithm 3,
and is scored against fresh data; the figure shows every level k of the data's forward
process next to each method's distribution at that level. The methods train in parallel
processes, one per CPU core (`--jobs`).
"""
import argparse
import copy
import math
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

import numpy as np
import torch
from tqdm import tqdm

import cli
import losses
import models
from schedules import make_schedule, sample_rgm

STD = 1 / math.sqrt(200)            # each mixture component has covariance I / 200


# ----------------------------------------------------------------------------
# Data sets: n points of shape (n, 2).

def _centres(name):
    if name == '8gaussians':        # radius 2, angles i pi / 4
        a = torch.arange(8) * math.pi / 4
        return 2 * torch.stack([a.cos(), a.sin()], 1)
    if name == '25gaussians':       # a 5 x 5 grid with spacing 1
        g = torch.arange(-2, 3, dtype=torch.float32)
        return torch.cartesian_prod(g, g)
    return None


def _mixture(name):
    def sample(n):
        c = _centres(name)
        return c[torch.randint(len(c), (n,))] + STD * torch.randn(n, 2)
    return sample


def _checkerboard(n):
    """8 unit squares of a 4 x 4 checkerboard on [-2, 2]^2."""
    x1 = torch.rand(n) * 4 - 2
    x2 = torch.rand(n) - 2 * torch.randint(2, (n,)) + torch.floor(x1) % 2
    return torch.stack([x1, x2], 1)


DATASETS = {'8gaussians': _mixture('8gaussians'), '25gaussians': _mixture('25gaussians'),
            'checkerboard': _checkerboard}

# Per-method defaults, tuned on a 2-core CPU (docs/toy2d.md: what was tried, with numbers): iterations,
# batch size, the fidelity weight lam, the share of the last iterations over which G's learning
# rate falls linearly to 0, and the units per hidden layer of G and of KLD's D. The paper trains
# 100k steps at batch 1000 with 32 units. Within a CPU budget, a G with 64 units draws sharper
# boundaries between the modes (fewer samples on bridges) at little cost; KLD's D gets 48: with
# 32 it misses samples on bridges, with 64 it leaves the modes unevenly weighted. MMD's cost grows
# with the square of the batch and its quality with the number of steps: 30k steps at batch 300
# beat 10k at 500. KLD's lr decay settles the mode weights, which a GAN leaves oscillating.
METHODS = {
    'kld':  dict(iters=25000, batch_size=1000, lam=0.1,  lr_decay=0.3, hidden=64, d_hidden=48),
    'mmd':  dict(iters=30000, batch_size=300,  lam=0.05, lr_decay=0.0, hidden=64),
    'dswd': dict(iters=10000, batch_size=1000, lam=30.0, lr_decay=0.0, hidden=64),   # lam for SW_1 (sw_p=1)
    'mmse': dict(iters=2000,  batch_size=1000, lam=0.0,  lr_decay=0.0, hidden=64),
}


# ----------------------------------------------------------------------------
# Training.

def make_prior(name, K, lr=1e-3, sw_p=1, d_hidden=32):
    """Return (critic_step, prior_term, critic) for one RGM prior.

    prior_term(x_k, x_k_hat, k) is g_phi(x_k_hat) in Eq. 8, per batch. critic_step(x_k, x_k_fake,
    k, step) is one update of a critic that learns on its own draw (KLD's discriminator: real
    x_k against detached fakes, Algorithm 2's D step), or None. critic is the module that
    learns (to move to a device), or None.

    KLD's D has `d_hidden` units per layer; it learns with R1 on real samples every 15 D steps
    (weight 0.02), as the authors' D does.

    DSWD uses SW_1 here, where the paper uses SW_2 (sw_p=2): on the toy, SW_2's pull on a
    sample shrinks with its distance to where it belongs, which leaves tails between the
    modes (high-quality fraction 0.84 on 3 seeds); SW_1 pulls every sample equally hard
    (0.90-0.92 with the paper's 32 units). SW_1 over a batch sums |differences|, so its lam is
    larger (30 vs 1). Images keep p=2. Five inner steps for the directions (the paper: 10) score
    as well on the toy in half the time. DSWD fits its directions on the G step's own x_k and
    x_k_hat (an inner maximisation) with Adam at the critics' lr and betas (0.5, 0.9), as the
    authors do."""
    if name == 'kld':
        D = models.ToyDiscriminator(K=K, hidden=d_hidden)
        opt = torch.optim.Adam(D.parameters(), lr=lr, betas=(0.5, 0.9))
        kld = losses.KLD()                      # R1 weight 0.02 every 15 D steps, as the authors

        def critic_step(x_k, x_k_fake, k, step):
            loss_D, _ = kld.discriminator_loss(D, x_k, x_k_fake, k, step)
            opt.zero_grad(set_to_none=True)
            loss_D.backward()
            opt.step()
        return critic_step, (lambda x_k, x_k_hat, k: kld.generator_loss(D, x_k_hat, k).mean()), D
    if name == 'mmd':
        mmd = losses.MMD(bandwidths=(0.1, 0.5, 1.0, 2.0, 10.0))
        return None, (lambda x_k, x_k_hat, k: mmd(x_k, x_k_hat)), None
    if name == 'dswd':
        dswd = losses.DSWD(models.TransformNet(2), num_projections=10, p=sw_p, inner_steps=5, C=10.0,
                           lr=lr, betas=(0.5, 0.9))
        return None, (lambda x_k, x_k_hat, k: dswd(x_k, x_k_hat)), dswd.transform
    raise ValueError(f'unknown prior {name!r}: choose one of {sorted(METHODS)}')


def train(method, dataset='8gaussians', K=4, iters=None, batch_size=None, lam=None, nz=2,
          posterior=False, seed=0, device='cpu', lr=1e-3, ema_decay=0.999, progress=True,
          lr_decay=None, sw_p=1, hidden=None, d_hidden=None):
    """Train one toy model; returns the EMA generator (eval mode) and the schedule."""
    if method not in METHODS:
        raise ValueError(f'unknown method {method!r}: choose one of {sorted(METHODS)}')
    if dataset not in DATASETS:
        raise ValueError(f'unknown data set {dataset!r}: choose one of {sorted(DATASETS)}')
    if method == 'dswd' and sw_p == 2 and lam is None:
        lam = 1.0                           # the weight that goes with the paper's SW_2
    defaults = {'d_hidden': 32, **METHODS[method]}          # d_hidden: only KLD has a D
    iters, batch_size, lam, lr_decay, hidden, d_hidden = (
        defaults[name] if value is None else value for name, value in
        [('iters', iters), ('batch_size', batch_size), ('lam', lam), ('lr_decay', lr_decay),
         ('hidden', hidden), ('d_hidden', d_hidden)])
    if nz < 0 or batch_size < 2:
        raise ValueError(f'need nz >= 0 and batch size >= 2, got nz={nz}, batch size={batch_size}')
    if not 0 <= lr_decay <= 1:
        raise ValueError(f'lr_decay is a share of the iterations, in [0, 1]; got {lr_decay}')
    nz = 0 if method == 'mmse' else nz          # the MMSE estimate E[x0 | x_{k+1}] has no z
    torch.manual_seed(seed)
    schedule = make_schedule('d', K)
    G = models.ToyGenerator(K=K, nz=nz, hidden=hidden).to(device)
    G_ema = copy.deepcopy(G).requires_grad_(False)
    opt = torch.optim.Adam(G.parameters(), lr=lr, betas=(0.5, 0.9))
    decay_steps = lr_decay * iters         # the last ones; G's lr falls linearly to 0 over them
    lr_factor = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (iters - i) / decay_steps)
                                                   if decay_steps else 1.0)
    critic_step, prior_term, critic = ((None, None, None) if method == 'mmse'
                                       else make_prior(method, K, lr, sw_p, d_hidden))
    if critic is not None:
        critic.to(device)
    sample_data = DATASETS[dataset]

    def draw():
        """x0, a level k per sample, and x_k, x_{k+1} drawn with independent noises."""
        x0 = sample_data(batch_size).to(device)
        if method in ('mmd', 'dswd'):           # set-based priors compare one level at a time
            k = torch.full((batch_size,), int(torch.randint(K, ())), device=device)
        else:
            k = torch.randint(K, (batch_size,), device=device)
        return x0, k, schedule.sample(x0, k), schedule.sample(x0, k + 1)

    def restore(x_next, k):
        """G's estimate x0_hat from x_{k+1} (G is told the target level k), and x_k_hat from it."""
        x0_hat = G(x_next, k, torch.randn(len(x_next), nz, device=device) if nz > 0 else None)
        if posterior:                           # Algorithm 1: x_k_hat ~ q(x_k | x_{k+1}, x0_hat)
            return x0_hat, schedule.posterior_sample(x0_hat, x_next, k)
        return x0_hat, schedule.sample(x0_hat, k)           # Algorithm 2: x_k_hat ~ q(x_k | x0_hat)

    for step in tqdm(range(iters), desc=f'{method:>4s} K={K}', disable=not progress, mininterval=1):
        if critic_step is not None:             # D step on a draw of its own, then G step on a fresh one
            _, k, x_k, x_next = draw()
            with torch.no_grad():
                x_k_fake = restore(x_next, k)[1]
            critic_step(x_k, x_k_fake, k, step)
        x0, k, x_k, x_next = draw()
        if method == 'mmse':
            loss = losses.mmse_loss(G(x_next, k), x0).mean()
        else:
            x0_hat, x_k_hat = restore(x_next, k)
            fid = (losses.posterior_fidelity(x_next, x_k_hat, k, schedule) if posterior
                   else losses.fidelity(x_next, x0_hat, k, schedule))
            loss = lam * fid.mean() + prior_term(x_k, x_k_hat, k)                 # Eq. 8
        if not torch.isfinite(loss):
            raise FloatingPointError(f'{method}: loss is {loss.item()} at step {step}')
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lr_factor.step()
        models.ema_update(G_ema.parameters(), G.parameters(), ema_decay)
    return G_ema.eval(), schedule


# ----------------------------------------------------------------------------
# Evaluation.

def energy_distance(x, y, chunk=2048):
    """2 E|X - Y| - E|X - X'| - E|Y - Y'| (V-statistic: >= 0, and > 0 for finite samples)."""
    def mean_dist(a, b):
        return sum(torch.cdist(a[i:i + chunk], b).sum() for i in range(0, len(a), chunk)) / (len(a) * len(b))
    x, y = x.double(), y.double()
    return float(2 * mean_dist(x, y) - mean_dist(x, x) - mean_dist(y, y))


def evaluate(x, dataset, seed=1):
    """Mode coverage, quality, spread and distance of samples x (N, 2) against fresh data."""
    n = len(x)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        fresh, fresh2 = DATASETS[dataset](n), DATASETS[dataset](n)
    out = dict(n=n, energy_distance=energy_distance(x, fresh),
               energy_distance_floor=energy_distance(fresh2, fresh))
    centres = _centres(dataset)
    if centres is not None:
        d, idx = torch.cdist(x.double(), centres.double()).min(1)
        hq = d < 3 * STD                        # high quality: within 3 std of a centre
        counts = torch.bincount(idx[hq], minlength=len(centres))
        # A 2D Gaussian's per-coordinate std is sqrt(E|x - c|^2 / 2).
        spread = [math.sqrt(d[hq & (idx == m)].pow(2).mean().item() / 2) / STD
                  for m in range(len(centres)) if counts[m] > 1]
        out.update(modes=int((counts >= 0.05 * n / len(centres)).sum()), num_modes=len(centres),
                   hq_fraction=hq.float().mean().item(),
                   spread_min=min(spread, default=float('nan')),
                   spread_max=max(spread, default=float('nan')))
    return out


def plot(columns, K, path):
    """columns: {title: [x_0, ..., x_K]}; one column per entry, one row per level k."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(K + 1, len(columns), figsize=(2.2 * len(columns), 2.2 * (K + 1)),
                             squeeze=False)
    for j, (title, xs) in enumerate(columns.items()):
        for k, x in enumerate(xs):
            ax = axes[k, j]
            ax.scatter(x[:, 0], x[:, 1], s=0.5, alpha=0.3, color='C0' if j == 0 else 'C3', rasterized=True)
            ax.set(xlim=(-3, 3), ylim=(-3, 3), xticks=[], yticks=[], aspect='equal')
            if k == 0:
                ax.set_title(title)
            if j == 0:
                ax.set_ylabel(f'k = {k}')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------

OUTPUTS = ('toy2d.png', 'metrics.json', 'samples_*.npy')            # what a run writes in --out


def _train_timed(kwargs, threads):
    """train(**kwargs) on `threads` CPU threads; returns (EMA generator, seconds)."""
    torch.set_num_threads(threads)
    t0 = time.time()
    G, _ = train(**kwargs)
    return G, time.time() - t0


def train_methods(kwargs, jobs, threads):
    """{method: (G, seconds)} for {method: train kwargs}, `jobs` trainings at a time.

    The methods are independent and each seeds itself, so training them in parallel processes
    gives the same networks as one after another; on 2 cores it halves the wall time.
    """
    if jobs == 1:
        return {m: _train_timed(kw, threads) for m, kw in kwargs.items()}
    # 'spawn': a fresh interpreter per worker (forking a process that has run OpenMP can hang).
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context('spawn')) as pool:
        futures = {pool.submit(_train_timed, dict(kw, progress=False), threads): m
                   for m, kw in kwargs.items()}
        for i, f in enumerate(as_completed(futures), 1):           # no progress bars from workers
            print(f'{futures[f]:>4s} trained in {f.result()[1]:.0f} s ({i}/{len(futures)})', flush=True)
        return {m: f.result() for f, m in futures.items()}


def available_cpus():
    return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1


def main(args):
    methods = list(METHODS) if args.prior == 'all' else [args.prior]
    if args.posterior and 'mmse' in methods and args.prior != 'all':
        raise ValueError('--posterior applies to the RGM priors, not to the MMSE baseline')
    cli.prepare_out(args.out, OUTPUTS, args.overwrite, 'toy2d.py run')
    jobs = args.jobs or (max(1, min(len(methods), available_cpus() // args.threads))
                         if args.device == 'cpu' else 1)
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(args.seed)
    x0 = DATASETS[args.dataset](args.n_samples)
    schedule = make_schedule('d', args.K)
    columns = {'data (forward process)': [schedule.sample(x0, k).numpy() for k in range(args.K + 1)]}
    results = {'data': evaluate(DATASETS[args.dataset](args.n_samples), args.dataset)}
    posterior = {m: args.posterior and m != 'mmse' for m in methods}
    print(f'training {", ".join(methods)}: {jobs} at a time, {args.threads} thread(s) each', flush=True)
    trained = train_methods(
        {m: dict(method=m, dataset=args.dataset, K=args.K, iters=args.iters, batch_size=args.batch_size,
                 lam=args.lam, nz=args.nz, posterior=posterior[m], seed=args.seed, device=args.device,
                 lr_decay=args.lr_decay, sw_p=args.sw_p, hidden=args.hidden,
                 d_hidden=args.d_hidden) for m in methods}, jobs, args.threads)
    for method in methods:
        G, train_s = trained[method]
        xs = sample_rgm(G, schedule, (args.n_samples, 2), G.nz, device=args.device,
                        posterior=posterior[method], trajectory=True,
                        generator=torch.Generator(args.device).manual_seed(args.seed))
        xs = [x.cpu() for x in xs[::-1]]                            # [x_0, ..., x_K]
        np.save(os.path.join(args.out, f'samples_{method}.npy'), xs[0].numpy())
        results[method] = dict(evaluate(xs[0], args.dataset), train_seconds=round(train_s, 1))
        columns[f'RGM-{method.upper()}' if method != 'mmse' else 'MMSE'] = [x.numpy() for x in xs]

    fig_path = os.path.join(args.out, 'toy2d.png')
    plot(columns, args.K, fig_path)
    cli.write_json(os.path.join(args.out, 'metrics.json'), dict(cli.provenance('toy2d.py'), config=vars(args),
                                                                 results=results))

    print(f'\n{args.dataset}, K = {args.K}, {args.n_samples} samples per method')
    cols = ['modes', 'hq_fraction', 'spread_min', 'spread_max', 'energy_distance', 'train_seconds']
    print(f"{'method':8s}" + ''.join(f'{c:>17s}' for c in cols))
    for name, r in results.items():
        cells = [r.get(c, float('nan')) for c in cols]
        print(f'{name:8s}' + ''.join(f'{c:17d}' if isinstance(c, int) else f'{c:17.4f}' for c in cells))
    print(f"(energy distance between two fresh data sets of this size: "
          f"{results['data']['energy_distance_floor']:.4f})")
    print(f'wrote {fig_path}, metrics.json and samples_<method>.npy to {os.path.abspath(args.out)}')


def per_method(key):
    """'kld 25000, mmd 30000, ...': a default of METHODS for the help texts (never typed twice)."""
    return ', '.join(f'{m} {d[key]:g}' for m, d in METHODS.items() if key in d)


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--prior', default='all', choices=list(METHODS) + ['all'],
                   help='RGM prior (kld, mmd, dswd), the MMSE baseline, or all four (default)')
    p.add_argument('--dataset', default='8gaussians', choices=list(DATASETS))
    p.add_argument('--K', type=cli.positive_int, default=4, help='number of degradation steps = NFE')
    p.add_argument('--iters', type=cli.positive_int, default=None, help=f'training iterations (default per method: {per_method("iters")})')
    p.add_argument('--batch-size', type=cli.positive_int, default=None, help=f'default per method: {per_method("batch_size")}')
    p.add_argument('--lam', type=cli.nonnegative_float, default=None, help=f'fidelity weight (default per method: {per_method("lam")})')
    p.add_argument('--lr-decay', type=cli.fraction, default=None,
                   help=f"share of the last iterations over which G's lr falls to 0 (default per method: {per_method('lr_decay')})")
    p.add_argument('--hidden', type=cli.positive_int, default=None,
                   help=f"units per hidden layer of G (default per method: {per_method('hidden')}; the paper's: 32)")
    p.add_argument('--d-hidden', type=cli.positive_int, default=None,
                   help=f"units per hidden layer of KLD's D (default: {METHODS['kld']['d_hidden']}; the paper's: 32)")
    p.add_argument('--sw-p', type=int, default=1, choices=[1, 2],
                   help="DSWD's SW_p (the paper's is 2, with lam 1; docs/toy2d.md: why 1 here)")
    p.add_argument('--nz', type=cli.nonnegative_int, default=2, help='latent dimension; 0 = no z (ablation)')
    p.add_argument('--posterior', action='store_true', help='Algorithm 1 instead of Algorithm 2')
    p.add_argument('--n-samples', type=cli.positive_int, default=10000, help='samples drawn for figure and metrics')
    p.add_argument('--seed', type=cli.seed, default=0)
    p.add_argument('--device', default='cpu', help='cpu (default: the small networks train fastest on CPU cores, '
                   'one method per core) or cuda')
    p.add_argument('--threads', type=cli.positive_int, default=1,
                   help='CPU threads per training; these small networks run fastest on one (bench/toy2d.py)')
    p.add_argument('--jobs', type=cli.positive_int, default=None,
                   help='methods trained at once, in separate processes (default: CPUs / threads); '
                        'with 1, progress bars show each training')
    p.add_argument('--out', default='runs/toy2d', help='output folder; one that holds files needs --overwrite')
    p.add_argument('--overwrite', action='store_true',
                   help="replace an earlier run's outputs in --out (toy2d.png, metrics.json, samples_*.npy)")
    return p


if __name__ == '__main__':
    cli.run_main(main, build_parser().parse_args())
